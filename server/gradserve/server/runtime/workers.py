"""Run several server processes on one port (``gradserve serve --workers N``).

Python runs one thread of Python at a time, so one process cannot use more than about one
core for the parts of a call that are not inside NumPy. Following grpc's multiprocessing
example, the parent reserves the port, then forks workers before any gRPC object exists;
each worker binds the same port with SO_REUSEPORT and the kernel spreads connections over
them. The parent restarts a worker that dies, and on SIGTERM/SIGINT passes the signal on
and waits for the workers to drain.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds between restarts, so that a worker failing at once does not spin
ORPHAN_POLL = 0.5  # seconds between a worker's checks that its parent is still there
SIGNAL_POLL = 0.2  # seconds: how late a stop signal may be noticed (see wait_until_set)
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def _take_stop_signals() -> None:
    """In a new worker, before it serves: SIGTERM ends it at once (nothing to drain yet),
    SIGINT is left to the parent (a terminal's Ctrl-C reaches both, and the parent passes
    SIGTERM on), then the stop signals the parent held at the fork are let through.
    ``stop_signal_event`` replaces both once the worker starts serving."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_signal_event() -> threading.Event:
    """An event that the next SIGTERM or SIGINT sets (handlers installed by this call).

    The handler sets it from a thread of its own. A handler runs in the main thread between
    two bytecodes, possibly while that thread holds the event's lock (in ``wait``, in
    ``set``, or in the handler of a signal just before): taking the lock there deadlocked
    the worker supervisor when two SIGTERMs came close together (a process group's kill
    and `uv run` passing it on)."""
    stopping = threading.Event()

    def handle(*_) -> None:
        threading.Thread(target=stopping.set, name="stop-signal", daemon=True).start()

    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    return stopping


def wait_until_set(event: threading.Event) -> None:
    """``event.wait()`` for an event a signal handler sets, in the main thread.

    The kernel may deliver a process's signal to any thread (gRPC has several); the Python
    handler then runs only when the main thread next runs Python code, which a wait without
    a timeout never does: the server would serve on after SIGTERM or Ctrl-C."""
    while not event.wait(SIGNAL_POLL):
        pass


def check_address_free(host: str, port: int) -> int:
    """Bind ``host:port`` without SO_REUSEPORT and let it go: an OSError (EADDRINUSE) when
    another process holds it, rather than a port silently shared. Returns the port (a free
    one for port 0)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(address)
        return probe.getsockname()[1]


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (a free one for port 0) for SO_REUSEPORT workers; yield the port.

    The port is first bound without SO_REUSEPORT, so that a port another server already
    uses is an error (OSError) rather than silently shared. The reservation socket never
    listens, so it receives no connections.
    """
    port = check_address_free(host, port)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((address[0], port, *address[2:]))
        yield port


def _stop_when_orphaned(parent: int) -> None:
    """In a worker: if the parent dies without stopping us (SIGKILL, a crash), stop too,
    gracefully, instead of serving on unsupervised."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL)
    os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(
    run_worker: Callable[[int, int, Callable[[], None]], int],
    *,
    host: str,
    port: int,
    workers: int,
    describe: str,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Fork ``workers`` processes, worker i running ``run_worker(i, port, ready)``: it calls
    ``ready()`` once it listens, and returns its exit status. The server is announced once
    every worker is ready. Workers that exit are restarted until a stop signal, which is
    then passed on to them. ``on_exit(pid)``, when given, is called for every worker that
    has exited. Returns the exit status for the command."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Semaphore(0)

    parent = os.getpid()

    def work(index: int, port: int) -> None:
        _take_stop_signals()
        threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
        sys.exit(run_worker(index, port, ready.release))

    def spawn(index: int, port: int) -> multiprocessing.Process:
        process = fork.Process(target=work, args=(index, port))
        # Held until the child has its own dispositions (``_take_stop_signals``): else a
        # stop signal in between ran the parent's inherited handler, and the worker served on.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return process

    with reserved_port(host, port) as port:
        stopping = stop_signal_event()
        processes = [spawn(index, port) for index in range(workers)]
        started = 0
        while started < workers and not stopping.is_set():
            if ready.acquire(timeout=RESTART_DELAY):
                started += 1
            elif not all(process.is_alive() for process in processes):
                log.error("a worker failed to start; stopping")
                stopping.set()
        if started == workers:
            log.info("serving on %s:%d with %d worker processes; %s", host, port, workers, describe)
        while not stopping.wait(RESTART_DELAY):
            for index, process in enumerate(processes):
                if not process.is_alive():
                    log.error("worker %d exited (%s); restarting it", process.pid, process.exitcode)
                    if on_exit:
                        on_exit(process.pid)
                    processes[index] = spawn(index, port)
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
            if on_exit:
                on_exit(process.pid)
    log.info("stopped")
    return 0 if started == workers else 2
