"""The ``gradserve`` command: ``serve`` runs the server, ``health`` probes one, ``ops list``
lists a running server's ops, ``ops check`` gradient-checks the installed ones.

Every option of ``serve`` can also be set by an environment variable, GRADSERVE_ plus the
option's name in capitals with dashes as underscores (``--max-message-mb`` is
GRADSERVE_MAX_MESSAGE_MB); a flag on the command line wins. Options are declared with plain
defaults: ``gradserve.cli_options.read_environment`` gives each its variable, and the help
shows both (docs/server.md's table is generated from the same parser).
"""

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from gradserve import cli_options, health_probe
from gradserve.server import ops_list
from gradserve.server.engine.plan_cache import BUDGET_SHARE
from gradserve.server.ops_check import check_ops
from gradserve.server.registry import PluginError, load_registry
from gradserve.server.runtime import malloc
from gradserve.server.runtime.workers import (
    check_address_free,
    serve_workers,
    stop_signal_event,
    wait_until_set,
)
from gradserve.server.service import limits, metrics_multiprocess, tracing
from gradserve.server.service.app import (
    ARRIVING_SHARE,
    DEFAULT_MAX_CONNECTION_AGE_S,
    DEFAULT_MAX_MEMORY_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_THREADS,
    start_server,
)
from gradserve.server.service.arrival import PATIENCE, READ_HOLD_S
from gradserve.server.service.calls import (
    DEFAULT_SEND_TIMEOUT_S,
    DEFAULT_STREAM_STALL_TIMEOUT_S,
)
from gradserve.server.service.log_format import log_handler
from gradserve.server.service.metrics import CallMetrics, serve_metrics
from gradserve.server.service.security import read_tokens, server_credentials

log = logging.getLogger("gradserve")


def _port(text: str) -> int:
    if not str(text).isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def _whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _whole(1)


def _seconds(*, zero_allowed: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, above 0 (or at least 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if zero_allowed and not 0 <= value < math.inf:
            raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
        if not zero_allowed and not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        choices = ", ".join(level.lower() for level in LOG_LEVELS)
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {choices})")
    return text.upper()


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the usage of ``serve`` is a screenful), exit status 2; help
    that shows each option's default and variable (subcommands' parsers are this class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", cli_options.HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _reason(exc: OSError) -> str:
    """``[Errno 98] Address already in use`` -> ``address already in use``."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _serve(args: argparse.Namespace) -> int:
    malloc.configure()  # before any gRPC thread, and inherited by forked workers
    allow = [name.strip() for name in args.ops.split(",") if name.strip()] if args.ops else None
    try:
        registry = load_registry(allow=allow, strict=args.strict_plugins)
    except PluginError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if not registry:
        log.error("cannot start: no ops loaded (is gradserve-ops-core installed?)")
        return 2
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        log.error("cannot start: --tls-cert and --tls-key go together (--tls-client-ca needs both)")
        return 2
    if args.plan_cache_mb is not None and int(args.plan_cache_mb) >= args.max_memory_mb:
        log.error("cannot start: --plan-cache-mb must be less than --max-memory-mb")
        return 2
    budget = args.max_memory_mb * 2**20
    plan_cache = _plan_cache_bytes(args)
    arriving = _arriving_bytes(args)
    shares = (budget // BUDGET_SHARE if plan_cache is None else plan_cache) + (
        budget // ARRIVING_SHARE if arriving is None else arriving
    )
    if shares >= budget:
        log.error(
            "cannot start: --plan-cache-mb and --max-arriving-mb (default: a quarter of "
            "--max-memory-mb each) together must be less than --max-memory-mb"
        )
        return 2
    tls_files = [f for f in (args.tls_cert, args.tls_key, args.tls_client_ca) if f]
    try:
        for tls_file in tls_files:
            Path(tls_file).read_bytes()  # fail now, not in every worker
        tokens = read_tokens(args.auth_token, args.auth_token_file)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    server_limits = limits.Limits(
        max_nodes=args.max_nodes,
        max_fan_in=args.max_fan_in,
        max_concurrent_calls=args.max_concurrent_calls,
        default_deadline_s=args.default_deadline,
        request_timeout_s=args.request_timeout,
        calls_per_connection=args.max_calls_per_connection,
        calls_per_token=args.max_calls_per_token,
    )
    describe = "ops: " + ", ".join(sorted(registry))

    def serve_one(
        port: int, *, reuse_port: bool, metrics_port: int, ready: Callable[[], None] | None
    ) -> int:
        """Serve until SIGTERM/SIGINT, then drain: the whole server, or (when ``ready`` is
        given, called once it listens) one worker of it. gRPC objects are made here, after
        any fork. A worker records metrics for the supervisor to serve (``metrics_port``
        0 here)."""
        stopping = stop_signal_event()
        if tracing.configure():
            log.info("tracing: spans exported over OTLP (OTEL_* environment)")
        metrics = CallMetrics() if args.metrics_port else None
        address = f"{args.host}:{port}"
        try:
            running = start_server(
                registry,
                address=address,
                max_message_bytes=args.max_message_mb * 1024 * 1024,
                max_memory_bytes=args.max_memory_mb * 1024 * 1024,
                send_timeout=args.send_timeout,
                stream_stall_timeout=args.stream_stall_timeout,
                max_connection_age=args.max_connection_age,
                threads=args.threads,
                plan_cache_bytes=_plan_cache_bytes(args),
                max_arriving_bytes=_arriving_bytes(args),
                reuse_port=reuse_port,
                metrics=metrics,
                limits=server_limits,
                credentials=(
                    server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
                    if args.tls_cert
                    else None
                ),
                auth_token=tokens,
                enable_reflection=not args.no_reflection,
                isolation_workers=args.isolation_workers,
                trusted_plugins=[d.strip() for d in args.trusted_plugins.split(",") if d.strip()],
            )
        except RuntimeError as exc:  # the address was taken since the check, or TLS failed
            log.error("cannot listen on %s: %s", address, exc)
            return 1
        if metrics_port:
            try:
                metrics_http = serve_metrics(metrics, args.host, metrics_port)
            except OSError as exc:
                log.error("cannot serve metrics on %s:%d: %s", args.host, metrics_port, exc)
                running.stop(0)
                return 1
            log.info("metrics on http://%s:%d/metrics", args.host, metrics_http.server_port)
        if ready:
            log.info("worker serving")
            ready()
        else:
            log.info("serving on %s:%d; %s", args.host, running.port, describe)
        wait_until_set(stopping)
        then = f"new calls taken for {args.drain_delay:g} s more, then " if args.drain_delay else ""
        log.info("shutting down: NOT_SERVING, %sdraining calls for up to %g s", then, args.grace)
        running.stop(args.grace, drain_delay=args.drain_delay)
        if metrics_port:
            metrics_http.shutdown()
        log.info("stopped")
        return 0

    try:
        check_address_free(args.host, args.port)
    except OSError as exc:  # before gRPC tries, whose C-core would log its own lines
        log.error("cannot listen on %s:%d: %s", args.host, args.port, _reason(exc))
        return 1
    log.info(
        "tls=%s mutual-tls=%s auth-token=%s reflection=%s",
        *(bool(x) for x in (args.tls_cert, args.tls_client_ca, tokens, not args.no_reflection)),
    )
    if args.workers == 1:
        return serve_one(args.port, reuse_port=False, metrics_port=args.metrics_port, ready=None)

    def run_worker(index: int, port: int, ready: Callable[[], None]) -> int:
        return serve_one(port, reuse_port=True, metrics_port=0, ready=ready)

    with contextlib.ExitStack() as stack:
        on_exit = None
        if args.metrics_port:  # one endpoint, summing every worker's metric files
            directory = stack.enter_context(metrics_multiprocess.shared_directory())
            try:
                metrics_http = metrics_multiprocess.serve_all_workers(
                    args.host, args.metrics_port, directory
                )
            except OSError as exc:
                log.error("cannot serve metrics on %s:%d: %s", args.host, args.metrics_port, exc)
                return 1
            stack.callback(metrics_http.shutdown)
            log.info(
                "metrics of every worker on http://%s:%d/metrics", args.host, args.metrics_port
            )
            on_exit = metrics_multiprocess.worker_exited
        try:
            return serve_workers(
                run_worker,
                host=args.host,
                port=args.port,
                workers=args.workers,
                describe=describe,
                on_exit=on_exit,
            )
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, _reason(exc))
            return 1


def _plan_cache_bytes(args: argparse.Namespace) -> int | None:
    """--plan-cache-mb in bytes (None: the default share of the memory budget)."""
    return None if args.plan_cache_mb is None else int(args.plan_cache_mb) * 2**20


def _arriving_bytes(args: argparse.Namespace) -> int | None:
    """--max-arriving-mb in bytes (None: the default share of the memory budget)."""
    return None if args.max_arriving_mb is None else int(args.max_arriving_mb) * 2**20


def _ops_check(args: argparse.Namespace) -> int:
    registry = load_registry()
    if args.op is not None:
        if args.op not in registry:
            log.error("cannot check: no loaded op is called %r", args.op)
            return 2
        registry = {args.op: registry[args.op]}
    return check_ops(registry, points=args.points, seed=args.seed)


def _add_safety_options(serve: argparse.ArgumentParser) -> None:
    """The limits and security options of ``serve`` (docs/running-safely.md)."""
    for name, default, unit in (
        ("max-nodes", limits.DEFAULT_MAX_NODES, "nodes in one graph"),
        ("max-fan-in", limits.DEFAULT_MAX_FAN_IN, "inputs of one node"),
        ("max-concurrent-calls", limits.DEFAULT_MAX_CONCURRENT_CALLS, "calls at once"),
    ):
        serve.add_argument(f"--{name}", type=_positive_int, default=default, help=unit)
    serve.add_argument(
        "--max-memory-mb",
        type=_positive_int,
        default=DEFAULT_MAX_MEMORY_BYTES // 2**20,
        help="memory budget of the calls in flight, per worker process, in MiB",
    )
    serve.add_argument(
        "--send-timeout",
        type=_seconds(zero_allowed=False),
        default=DEFAULT_SEND_TIMEOUT_S,
        help="seconds a client may take to read a reply message before its call is abandoned",
    )
    serve.add_argument(
        "--stream-stall-timeout",
        type=_seconds(zero_allowed=False),
        default=DEFAULT_STREAM_STALL_TIMEOUT_S,
        help="seconds an EvaluateStream's reader may take to read a chunk while other calls "
        "wait for memory, before its call is abandoned and gives its memory to them",
    )
    serve.add_argument(
        "--max-connection-age",
        type=_seconds(zero_allowed=True),
        default=DEFAULT_MAX_CONNECTION_AGE_S,
        help="seconds after which a connection is asked to go away, and closed once its "
        "calls had the default deadline to finish; 0: never",
    )
    serve.add_argument(
        "--default-deadline",
        type=_seconds(zero_allowed=False),
        default=limits.DEFAULT_DEADLINE_S,
        help="seconds for calls that set no deadline",
    )
    # Issue 19: what a request may take while it arrives, and one connection's share.
    serve.add_argument(
        "--request-timeout",
        type=_seconds(zero_allowed=False),
        default=limits.DEFAULT_REQUEST_TIMEOUT_S,
        help="seconds a call's request message may take to arrive, within its deadline",
    )
    serve.add_argument(
        "--max-arriving-mb",
        type=_positive_int,
        default=None,
        help="MiB of request messages still arriving, within --max-memory-mb: this divided "
        "by --max-message-mb requests may arrive at once (at least one), a read held over "
        f"{READ_HOLD_S:g} s while others wait is refused ({READ_HOLD_S * PATIENCE:g} s on a "
        "connection whose earlier requests arrived) (default: "
        f"1/{ARRIVING_SHARE} of --max-memory-mb)",
    )
    serve.add_argument(
        "--max-calls-per-connection",
        type=_positive_int,
        default=None,
        help="calls in progress from one connection at once (default: 1/"
        f"{limits.CONNECTION_SHARE} of --max-concurrent-calls)",
    )
    serve.add_argument(
        "--max-calls-per-token",
        type=_positive_int,
        default=None,
        help="calls in progress with one bearer token at once, when --auth-token-file holds "
        f"several (default: 1/{limits.TOKEN_SHARE} of --max-concurrent-calls)",
    )
    serve.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    serve.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", help="mutual TLS: require client certificates signed by this CA"
    )
    serve.add_argument("--auth-token", help="require this bearer token on every call")
    serve.add_argument(
        "--auth-token-file",
        help="file with one token a line, one per tenant (wins over --auth-token)",
    )
    serve.add_argument(
        "--isolation-workers",
        type=_whole(0),
        default=2,
        help="worker processes for graphs using untrusted ops; 0 runs them in-process",
    )
    serve.add_argument(
        "--trusted-plugins",
        default="",
        help="comma-separated distributions whose ops run in-process like gradserve-ops-core",
    )
    serve.add_argument(
        "--no-reflection", action="store_true", help="do not serve server reflection"
    )


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the gradient server",
        description="Run the gradient server. Every option can also be set by the "
        "environment variable shown with it; a flag on the command line wins.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=_port, default=50051, help="port to bind; 0 picks one")
    serve.add_argument(
        "--max-message-mb",
        type=_positive_int,
        default=DEFAULT_MAX_MESSAGE_BYTES // 2**20,
        help="largest request and response, in MiB",
    )
    serve.add_argument(
        "--grace",
        type=_seconds(zero_allowed=True),
        default=10.0,
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT",
    )
    serve.add_argument(
        "--drain-delay",
        type=_seconds(zero_allowed=True),
        default=0.0,
        help="seconds a stopping server keeps taking new calls while its health already says"
        " NOT_SERVING, so that a load balancer polling health takes it out first; the"
        " grace follows",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="server processes sharing the port (default: the number of cores)",
    )
    serve.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help="evaluation threads per worker process",
    )
    serve.add_argument(
        "--plan-cache-mb",
        type=_whole(0),
        default=None,
        help="MiB of compiled plans kept for reuse, within --max-memory-mb (default: "
        f"1/{BUDGET_SHARE} of --max-memory-mb)",
    )
    serve.add_argument("--ops", help="comma-separated allow-list of ops to load (default: all)")
    serve.add_argument(
        "--strict-plugins",
        action="store_true",
        help="fail start-up when an op plugin fails to load, instead of skipping it",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="serve Prometheus metrics over HTTP on this port; 0: off",
    )
    serve.add_argument(
        "--log-level",
        type=_log_level,
        default="info",
        help="debug, info, warning, error or critical",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line",
    )
    _add_safety_options(serve)
    cli_options.read_environment(serve)
    serve.set_defaults(run=_serve)


def _add_ops(commands) -> None:
    ops = commands.add_parser(
        "ops",
        help="list a running server's ops, or check the installed ones",
        description="List a running server's ops, or check the installed ops' derivatives.",
    )
    ops_commands = ops.add_subparsers(dest="ops_command", required=True, metavar="COMMAND")
    listing = ops_commands.add_parser(
        "list",
        help="list a running server's ops: name, arity, second order, distribution",
        description="List a running server's ops: name, arity, second order, distribution.",
    )
    health_probe.add_connection_arguments(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=ops_list.run)
    check = ops_commands.add_parser(
        "check",
        help="check every installed op's derivatives against central finite differences",
        description="Check every installed op's derivatives (or one op's) against central "
        "finite differences of its forward, at random points of its domain.",
    )
    check.add_argument("--op", help="check only this op")
    check.add_argument("--points", type=_positive_int, default=200, help="random points per op")
    check.add_argument("--seed", type=int, default=0, help="seed of the random points")
    check.set_defaults(run=_ops_check)


DESCRIPTION = (
    "gradserve evaluates graphs of scalar operations sent over gRPC and returns their "
    "values and gradients."
)
EPILOG = "Run 'gradserve COMMAND --help' for a command's options. The documentation is in docs/."


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradserve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=cli_options.HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"gradserve {version('gradserve-server')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    probe = commands.add_parser(
        "health",
        help="exit 0 if a server reports SERVING",
        description=health_probe.DESCRIPTION,
    )
    health_probe.add_arguments(probe)
    probe.set_defaults(run=health_probe.run)
    _add_ops(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        handlers=[log_handler(getattr(args, "log_format", "text"))],
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
