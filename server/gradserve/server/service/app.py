"""Build and run the gRPC server: our service, health and reflection, wired in one place."""

import logging
from collections.abc import Iterable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradserve.server.engine.plan_cache import DEFAULT_MAX_NODES, PlanCache
from gradserve.server.registry import LoadedOp
from gradserve.server.runtime.isolation import TRUSTED_DISTRIBUTIONS, IsolatedEvaluator
from gradserve.server.service.codec import CodecInterceptor
from gradserve.server.service.limits import Limits
from gradserve.server.service.metrics import CallMetrics, watch_plan_cache
from gradserve.server.service.security import BearerTokenInterceptor
from gradserve.server.service.servicer import GradientServicer, call_log
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GradientService"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    isolated: IsolatedEvaluator | None = None

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace`` s, then stop."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        call_log.flush()
        if self.isolated is not None:
            self.isolated.close()


def start_server(
    registry: Mapping[str, LoadedOp],
    *,
    address: str = "127.0.0.1:0",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    threads: int = 8,
    reuse_port: bool = False,
    plan_cache_nodes: int = DEFAULT_MAX_NODES,
    metrics: CallMetrics | None = None,
    limits: Limits | None = None,
    credentials: grpc.ServerCredentials | None = None,
    auth_token: str | None = None,
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
    on every call but health checks. Calls beyond ``limits.max_concurrent_calls`` get
    RESOURCE_EXHAUSTED at once instead of queueing without bound. With
    ``isolation_workers``, plans using ops from distributions other than gradserve-ops-core
    and ``trusted_plugins`` run in that many replaceable worker processes (the registry must
    then come from the entry points, which the workers load again).
    """
    limits = limits or Limits()
    isolated = _isolated_evaluator(registry, isolation_workers, trusted_plugins)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gradserve"),
        interceptors=[  # the first is outermost: metrics see every call's final status
            *([metrics] if metrics else []),
            *([BearerTokenInterceptor(auth_token)] if auth_token else []),
            CodecInterceptor(),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
        maximum_concurrent_rpcs=limits.max_concurrent_calls,
    )
    plan_cache = PlanCache(plan_cache_nodes)
    if metrics:
        watch_plan_cache(metrics, plan_cache)
    servicer = GradientServicer(registry, plan_cache, limits, isolated)
    pb_grpc.add_GradientServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if enable_reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, port, isolated)


def _isolated_evaluator(
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
