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
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds between restarts, so that a worker failing at once does not spin


def stop_signal_event() -> threading.Event:
    """An event that the next SIGTERM or SIGINT sets (handlers installed by this call)."""
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    return stopping


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (a free one for port 0) for SO_REUSEPORT workers; yield the port.

    The port is first bound without SO_REUSEPORT, so that a port another server already
    uses is an error (OSError) rather than silently shared. The reservation socket never
    listens, so it receives no connections.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(address)
        port = probe.getsockname()[1]
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((address[0], port, *address[2:]))
        yield port


def serve_workers(
    run_worker: Callable[[int], None], *, host: str, port: int, workers: int, describe: str
) -> int:
    """Fork ``workers`` processes running ``run_worker(port)``; supervise them until a stop
    signal, then stop them. Returns the exit status for the command."""
    fork = multiprocessing.get_context("fork")
    with reserved_port(host, port) as port:
        processes = [fork.Process(target=run_worker, args=(port,)) for _ in range(workers)]
        for process in processes:
            process.start()
        log.info("serving on %s:%d with %d worker processes; %s", host, port, workers, describe)
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        while not stopping.wait(RESTART_DELAY):
            for i, process in enumerate(processes):
                if not process.is_alive():
                    log.error(
                        "worker %d exited with %s; restarting it", process.pid, process.exitcode
                    )
                    processes[i] = fork.Process(target=run_worker, args=(port,))
                    processes[i].start()
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
    log.info("stopped")
    return 0
