"""The ``gradserve`` command: ``serve`` runs the server, ``health`` probes one.

Every option can also be set by an environment variable, GRADSERVE_ plus the option's
name in capitals with dashes as underscores (``--max-message-mb`` is
GRADSERVE_MAX_MESSAGE_MB); a flag on the command line wins.
"""

import argparse
import logging
import os
import signal
import sys
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.server.app import DEFAULT_MAX_MESSAGE_BYTES, start_server
from gradserve.server.metrics import CallMetrics, serve_metrics
from gradserve.server.registry import PluginError, load_registry

log = logging.getLogger("gradserve")


def _env(name: str, default):
    return os.environ.get("GRADSERVE_" + name.upper().replace("-", "_"), default)


def _flag(env_value) -> bool:
    return str(env_value).lower() in ("1", "true", "yes", "on")


def _metrics_port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535, 0 = off)")
    return int(text)


def _serve(args: argparse.Namespace) -> int:
    allow = [name.strip() for name in args.ops.split(",") if name.strip()] if args.ops else None
    try:
        registry = load_registry(allow=allow, strict=args.strict_plugins)
    except PluginError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if not registry:
        log.error("cannot start: no ops loaded (is gradserve-ops-core installed?)")
        return 2
    address = f"{args.host}:{args.port}"
    metrics = CallMetrics() if args.metrics_port else None
    try:
        running = start_server(
            registry,
            address=address,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            threads=args.threads,
            metrics=metrics,
        )
    except RuntimeError as exc:
        log.error("cannot listen on %s: %s", address, exc)
        return 2
    if metrics:
        try:
            metrics_http = serve_metrics(metrics, args.host, args.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", args.host, args.metrics_port, exc)
            running.stop(0)
            return 2
        log.info("metrics on http://%s:%d/metrics", args.host, metrics_http.server_port)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("serving on %s:%d with ops: %s", args.host, running.port, ", ".join(sorted(registry)))
    stopping.wait()
    log.info("shutting down: NOT_SERVING, draining calls for up to %g s", args.grace)
    running.stop(args.grace)
    if metrics:
        metrics_http.shutdown()
    log.info("stopped")
    return 0


def _health(args: argparse.Namespace) -> int:
    request = health_pb2.HealthCheckRequest(service=args.service)
    with grpc.insecure_channel(args.target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gradient server")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to bind")
    serve.add_argument("--port", type=int, default=_env("port", 50051), help="0 picks one")
    serve.add_argument(
        "--max-message-mb",
        type=int,
        default=_env("max-message-mb", DEFAULT_MAX_MESSAGE_BYTES // 2**20),
        help="largest request and response, in MiB (default 64)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=_env("grace", 10.0),
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default 10)",
    )
    serve.add_argument(
        "--threads", type=int, default=_env("threads", 8), help="handler threads (default 8)"
    )
    serve.add_argument(
        "--ops", default=_env("ops", None), help="comma-separated allow-list of ops to load"
    )
    serve.add_argument(
        "--strict-plugins",
        action="store_true",
        default=_flag(_env("strict-plugins", "")),
        help="fail start-up when an op plugin fails to load, instead of skipping it",
    )
    serve.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=_env("metrics-port", 0),
        help="serve Prometheus metrics over HTTP on this port (default 0: off)",
    )
    serve.add_argument("--log-level", default=_env("log-level", "INFO"))
    serve.set_defaults(run=_serve)

    probe = commands.add_parser("health", help="exit 0 if a server reports SERVING")
    probe.add_argument("--target", default=_env("target", "localhost:50051"))
    probe.add_argument("--service", default="", help="service name ('' = whole server)")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    probe.set_defaults(run=_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
