"""Build and run the gRPC server: our service, health and reflection, wired in one place.

The server is ``grpc.aio``: calls are coroutines on one event loop, which runs in a thread
of its own, and evaluation runs on a small executor (``--threads``). ``start_server``
returns once it listens; ``RunningServer.stop`` drains it (health NOT_SERVING, new calls
UNAVAILABLE, in-flight calls given the grace to finish) and stops it.
"""

import asyncio
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradserve.server.engine import plan_cache as plans
from gradserve.server.engine.run import Engine
from gradserve.server.registry import LoadedOp
from gradserve.server.runtime.isolation import TRUSTED_DISTRIBUTIONS, IsolatedEvaluator
from gradserve.server.service import compute_slots
from gradserve.server.service.admission import MemoryBudget
from gradserve.server.service.arrival import FLOW_CONTROL_OPTIONS, ArrivalGate
from gradserve.server.service.calls import (
    DEFAULT_SEND_TIMEOUT_S,
    DEFAULT_STREAM_STALL_TIMEOUT_S,
    ServerState,
    call_log,
)
from gradserve.server.service.health_listing import ListingHealthServicer
from gradserve.server.service.large_calls import share_large_calls
from gradserve.server.service.limits import Limits
from gradserve.server.service.metrics import CallMetrics, watch_plan_cache
from gradserve.server.service.security import BearerTokenInterceptor
from gradserve.server.service.sending import SendingShare
from gradserve.server.service.servicer import SERVICE_NAME, GradientServicer, handlers

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MEMORY_BYTES = 1024 * 1024 * 1024
DEFAULT_THREADS = 4
DEFAULT_MAX_CONNECTION_AGE_S = 600.0
ARRIVING_SHARE = 4  # by default request bytes still arriving may take a quarter of the budget
# HTTP/2 streams one connection may have open at once: calls waiting for their request
# cost little, but not nothing. grpc core counts against it the streams a client has reset
# whose calls the server has not finished yet, so this also bounds how many handler
# coroutines a rapid-reset connection keeps queued ahead of other clients' calls: at 1,024
# a flood of 13k resets a second took a legitimate call's p50 from 0.6 to 188 ms; at 128
# it was calm in three runs of four (43x in one), at 64 in all four (at most 1.6x; see
# bench/rapid_reset.py). Raised to --max-calls-per-connection if that is larger: a grpc
# client holds its further calls until a stream is free.
MAX_STREAMS_PER_CONNECTION = 64

# grpc core's own limits on floods of control frames. A rapid-reset client (streams opened
# and reset at once, thousands a second) is answered with a PING for one reset in ten; one
# that does not read what it induces (pings, resets) past 1,000 frames is disconnected. A
# client pinging more often than every 5 minutes without calls gets a GOAWAY at the second
# strike (grpc's defaults, stated here).
#
# Calls that arrive while the event loop is busy wait in grpc core's queue until the
# server takes them; past max_pending_requests waiting, core refuses new calls at random
# (the client sees CANCELLED), all of them past the hard limit. A stream reset while it
# waits stays counted there until the server takes the next call or 30 s have passed, so
# under a reset flood grpc's defaults (1,000 and 3,000) refused 3 to 13 of 155-191 calls
# of 16 bench/soak.py clients in 20 s beside its rapid-reset abuser. An entry left by a
# reset stream costs about a hundred bytes: two Python threads resetting 3k streams a
# second each raised the server's peak by 28 MiB with these limits
# (tests/test_resilience_fairness.py has the flood). A waiting call that is not reset
# holds what its HTTP/2 window let in, and max-concurrent-streams bounds those per
# connection.
MAX_PENDING_CALLS = 100_000
FLOOD_LIMITS = [
    ("grpc.http2.ping_on_rst_stream_percent", 10),
    ("grpc.http2.max_pending_induced_frames", 1_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 3 * MAX_PENDING_CALLS),
]

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    port: int
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _server: grpc.aio.Server
    _health: health.aio.HealthServicer
    _state: ServerState
    isolation: IsolatedEvaluator | None = None

    def stop(self, grace: float, *, drain_delay: float = 0.0) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish for up to
        ``grace`` s, then stop (calls still running are cancelled).

        ``drain_delay`` s pass between reporting NOT_SERVING and refusing new calls: a load
        balancer that polls health (HAProxy, Kubernetes endpoints) takes the server out in
        that time, so the calls it still routes here are served, not refused."""
        asyncio.run_coroutine_threadsafe(
            self._drain_and_stop(grace, drain_delay), self._loop
        ).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._state.executor.shutdown(wait=False, cancel_futures=True)
        call_log.flush()
        if self.isolation is not None:
            self.isolation.close()

    async def _drain_and_stop(self, grace: float, drain_delay: float) -> None:
        state = self._state
        if drain_delay > 0:
            await self._health.enter_graceful_shutdown()
            await asyncio.sleep(drain_delay)
        state.draining = True  # before NOT_SERVING when there is no delay: a probe may count on it
        await self._health.enter_graceful_shutdown()
        for waiting in list(state.waiting_for_request):
            waiting.cancel_waiting()
        try:
            if state.active:
                await asyncio.wait_for(state.all_ended.wait(), grace)
        except TimeoutError:
            log.warning("the grace (%g s) ran out; cancelling %d call(s)", grace, state.active)
        state.stopped = True
        await self._server.stop(0)


def start_server(
    registry: Mapping[str, LoadedOp],
    *,
    address: str = "127.0.0.1:0",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    threads: int = DEFAULT_THREADS,
    send_timeout: float = DEFAULT_SEND_TIMEOUT_S,
    stream_stall_timeout: float = DEFAULT_STREAM_STALL_TIMEOUT_S,
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE_S,
    reuse_port: bool = False,
    plan_cache_bytes: int | None = None,
    max_arriving_bytes: int | None = None,
    metrics: CallMetrics | None = None,
    limits: Limits | None = None,
    credentials: grpc.ServerCredentials | None = None,
    auth_token: str | Sequence[str] | None = None,
    enable_reflection: bool = True,
    isolation_workers: int = 0,
    trusted_plugins: Iterable[str] = (),
) -> RunningServer:
    """Start serving on ``address`` (port 0 picks a free port) and return the bound port.

    Health reports SERVING for the whole server and for GradientService once started.
    gRPC sets SO_REUSEPORT by default on Linux, which would let a second server start on a
    port already in use and silently share it; it is off unless ``reuse_port`` is asked for.
    ``metrics``, when given, records every call (see ``gradserve.server.service.metrics``).
    ``credentials`` serve TLS instead of plaintext; ``auth_token`` requires a bearer token
    (or one of several) on every call but health checks; with several, each holds at most
    ``limits.max_calls_per_token`` of the call slots. With ``isolation_workers``, plans
    using ops from distributions other than gradserve-ops-core and ``trusted_plugins`` run
    in that many replaceable worker processes (the registry must then come from the entry
    points, which the workers load again). A connection older than ``max_connection_age``
    seconds (0: no limit) is asked to go away, and closed once its calls have had the
    default deadline to finish: what bounds a reader that never reads (see
    ``CallScope._abandon``); an EvaluateStream whose reader takes no chunk for
    ``stream_stall_timeout`` seconds while other calls wait for memory is abandoned then,
    and gives back all but the chunk being written. The plan cache holds at most
    ``plan_cache_bytes`` (default: a quarter of ``max_memory_bytes``), request messages
    still arriving at most ``max_arriving_bytes`` (default: a quarter; see ``arrival``), and
    the calls in flight the rest of ``max_memory_bytes``. docs/running-safely.md explains
    every option.
    """
    if plan_cache_bytes is None:
        plan_cache_bytes = max_memory_bytes // plans.BUDGET_SHARE
    if max_arriving_bytes is None:
        max_arriving_bytes = max_memory_bytes // ARRIVING_SHARE
    if plan_cache_bytes < 0 or max_arriving_bytes <= 0:
        raise ValueError("the plan cache and the bytes arriving cannot be negative")
    if plan_cache_bytes + max_arriving_bytes >= max_memory_bytes:
        raise ValueError(
            f"the plan cache ({plan_cache_bytes // 2**20} MiB) and the requests arriving "
            f"({max_arriving_bytes // 2**20} MiB) must together be smaller than the memory "
            f"budget ({max_memory_bytes // 2**20} MiB)"
        )
    isolation = _isolation_workers(registry, isolation_workers, trusted_plugins)
    tokens = tuple(filter(None, [auth_token] if isinstance(auth_token, str) else auth_token or ()))
    budget = MemoryBudget(max_memory_bytes, reserved=plan_cache_bytes, arriving=max_arriving_bytes)
    share_large_calls(budget)
    state = ServerState(
        limits=limits or Limits(),
        budget=budget,
        sending=SendingShare(budget, max_message_bytes),
        arrival=ArrivalGate(max_arriving_bytes, max_message_bytes),
        # Beyond a thread per compute slot, one for each step that may park meanwhile.
        executor=ThreadPoolExecutor(
            max_workers=threads * (1 + compute_slots.PARKED), thread_name_prefix="gradserve"
        ),
        threads=threads,
        send_timeout_s=send_timeout,
        stall_s=stream_stall_timeout,
        metrics=metrics,
        per_token={} if len(tokens) > 1 else None,
    )
    plan_cache = plans.PlanCache(plan_cache_bytes)
    if metrics:
        watch_plan_cache(metrics, plan_cache, state.budget, state.arrival, state.sending)
    ops = {name: loaded.op for name, loaded in registry.items()}
    engine = Engine(ops, plan_cache, isolation)
    servicer = GradientServicer(registry, engine, state, max_message_bytes)
    interceptors = [
        *([metrics.interceptor(f"/{SERVICE_NAME}/")] if metrics else []),
        *([BearerTokenInterceptor(tokens)] if tokens else []),
    ]
    calls_per_connection = state.limits.max_calls_per_connection
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", max(MAX_STREAMS_PER_CONNECTION, calls_per_connection)),
        # Compressed requests are refused by grpc itself, before anything is inflated
        # (UNIMPLEMENTED, "Compression algorithm ... is disabled"): a 64 KB gzip request
        # inflating to 63 MB stalled a worker. Replies are never compressed either.
        ("grpc.compression_enabled_algorithms_bitset", 1),  # identity only
        *FLOOD_LIMITS,
        *FLOW_CONTROL_OPTIONS,
    ]
    if max_connection_age > 0:
        grace = state.limits.default_deadline_s
        options += [
            ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(grace * 1000)),
        ]

    async def start() -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
        state.on_loop()
        server = grpc.aio.server(interceptors=interceptors, options=options)
        server.add_generic_rpc_handlers((handlers(servicer),))
        health_servicer = ListingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if enable_reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        await server.start()
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return server, health_servicer, port

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gradserve-loop", daemon=True)
    thread.start()
    try:
        server, health_servicer, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        state.executor.shutdown(wait=False)
        if isolation is not None:
            isolation.close()
        raise
    return RunningServer(port, loop, thread, server, health_servicer, state, isolation)


def _isolation_workers(
    registry: Mapping[str, LoadedOp], workers: int, trusted_plugins: Iterable[str]
) -> IsolatedEvaluator | None:
    trusted = TRUSTED_DISTRIBUTIONS | set(trusted_plugins)
    untrusted = [name for name, op in registry.items() if op.distribution not in trusted]
    if not (workers and untrusted):
        return None
    log.info("ops %s run in %d isolated worker(s)", ", ".join(untrusted), workers)
    return IsolatedEvaluator(registry, untrusted, workers)


@contextmanager
def running_server(registry: Mapping[str, LoadedOp], **options) -> Iterator[RunningServer]:
    """A started server that is always stopped on exit (as in grpc's route_guide tests)."""
    running = start_server(registry, **options)
    try:
        yield running
    finally:
        running.stop(grace=0)
