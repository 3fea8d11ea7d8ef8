"""Evaluate graphs that use untrusted ops in worker processes that can be replaced.

A Python thread cannot be killed, so an op plugin that hangs would hold a handler thread
forever. Ops from trusted distributions (gradserve-ops-core and ``--trusted-plugins``) run
in-process, the fast path; a plan that uses any other op is evaluated in a worker process.
When the call is cancelled or its deadline passes, the worker is killed and a fresh one
takes its place, so the server's capacity comes back.

Workers are started with ``spawn`` (forking a process that runs gRPC threads is unsafe) and
load the same ops from the same entry points; they compile and evaluate the graph arrays
they are sent. Errors come back as plain tuples and are raised again here.
"""

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gradserve.server.engine.errors import Cancelled, GraphError, OpFailure
from gradserve.server.engine.plan import GraphArrays, compile_graph
from gradserve.server.engine.run import Inputs, run
from gradserve.server.registry import load_registry

TRUSTED_DISTRIBUTIONS = frozenset({"gradserve-ops-core"})
_POLL_S = 0.05

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside ignore SIGINT from their first instruction.

    A Ctrl-C reaches the terminal's whole process group; the server, not the signal, ends
    its workers, and a worker interrupted while importing NumPy printed a traceback. An
    ignored signal (unlike a Python handler) survives spawn's exec, and Python keeps it
    ignored. Only the main thread may change handlers: a worker replacing a killed one,
    started from a handler thread, ignores SIGINT from ``_work`` on. In the meantime the
    main thread blocks SIGINT, so that one arriving now is held for the restored handler
    (Linux keeps a blocked signal pending even while it is ignored) rather than lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _work(connection, op_names: list[str]) -> None:
    """The worker's loop: receive a job, send back ("ok", values, grads), with the value
    and gradient tangents after them when the job has leaf tangents, or an error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server ends its workers (see above)
    ops = {name: loaded.op for name, loaded in load_registry(allow=op_names).items()}
    while True:
        try:
            graph, inputs = connection.recv()
        except EOFError:  # the server has gone: nothing left to do
            return
        try:
            connection.send(("ok", *run(compile_graph(graph, ops), inputs)))
        except GraphError as exc:
            connection.send(("graph", exc.reason, exc.node, exc.field, exc.index))
        except MemoryError:
            connection.send(("memory",))
        except OpFailure as exc:
            problem = str(exc).split(f"op {exc.op!r} ", 1)[-1]
            cause = "".join(traceback.format_exception(exc.__cause__ or exc))
            connection.send(("op", exc.op, exc.node, problem, cause))


class _Worker:
    def __init__(self, op_names: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_work, args=(child, op_names), daemon=True)
        with _children_ignore_sigint():
            self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class IsolatedEvaluator:
    """A fixed number of replaceable worker processes for plans that use untrusted ops.

    The workers load every op in ``op_names`` (a plan may mix trusted and untrusted ops).
    """

    def __init__(self, op_names: Iterable[str], untrusted: Iterable[str], workers: int) -> None:
        self._op_names = sorted(op_names)
        self._untrusted = frozenset(untrusted)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(workers):
            self._idle.put(_Worker(self._op_names))

    @property
    def untrusted(self) -> frozenset[str]:
        """The names of the ops that run in the workers (``Op.isolated`` in the server)."""
        return self._untrusted

    def run(
        self, graph: GraphArrays, inputs: Inputs, should_stop: Callable[[], bool]
    ) -> tuple[np.ndarray, ...]:
        """``engine.run.run`` in a worker, which compiles ``graph`` again; ``should_stop``
        is polled while waiting for a worker and for its answer. A worker abandoned by a
        cancelled or expired call is replaced."""
        worker = self._take(should_stop)
        try:
            worker.connection.send((graph, inputs))
            while not worker.connection.poll(_POLL_S):
                if should_stop():
                    raise Cancelled()
                if not worker.process.is_alive():
                    raise RuntimeError("the isolated worker process died (an op crashed it)")
            answer = worker.connection.recv()
        except BaseException:
            worker.kill()
            self._idle.put(_Worker(self._op_names))
            raise
        self._idle.put(worker)
        return _unpack(answer)

    def _take(self, should_stop: Callable[[], bool]) -> _Worker:
        """An idle worker that is alive: one that died while idle (killed from outside,
        say) is replaced here, before a call could be sent to it."""
        while True:
            try:
                worker = self._idle.get(timeout=_POLL_S)
            except queue.Empty:
                if should_stop():
                    raise Cancelled() from None
                continue
            if worker.process.is_alive():
                return worker
            log.warning("isolated worker %d died while idle; replacing it", worker.process.pid)
            worker.kill()
            self._idle.put(_Worker(self._op_names))

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get().kill()


def _unpack(answer: tuple) -> tuple[np.ndarray, ...]:
    kind, *rest = answer
    if kind == "ok":
        return tuple(rest)
    if kind == "graph":
        reason, node, field, index = rest
        raise GraphError(reason, node=node, field=field, index=index)
    if kind == "memory":
        raise MemoryError("an isolated worker ran out of memory")
    op, node, problem, cause = rest
    log.error("op %r failed in an isolated worker:\n%s", op, cause)
    raise OpFailure(op, node, problem)
