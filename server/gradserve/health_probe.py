"""``gradserve health``: ask a server's ``grpc.health.v1.Health`` service whether it is SERVING.

Docker's HEALTHCHECK and Kubernetes exec probes run this every few seconds, so it imports
only gRPC and the health stubs: no NumPy and no ``gradserve.server`` module (the console
script, ``gradserve.command``, dispatches ``health`` here before importing the server).
Exit status: 0 SERVING, 1 anything else (not serving, unreachable), 2 a usage error.
"""

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve import cli_options

DESCRIPTION = (
    "Ask a server's grpc.health.v1.Health service whether it is SERVING: exit 0 if it is, "
    "1 if it is not or cannot be reached, 2 for a usage error."
)
# The connection options that read GRADSERVE_* variables (the others are per probe).
ENVIRONMENT_OPTIONS = ("--target", "--tls-ca", "--tls-cert", "--tls-key")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, got {text}")
    return value


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach a server: the probe's options, and ``gradserve ops list``'s."""
    parser.add_argument("--target", default="localhost:50051", help="the server, HOST:PORT")
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=5.0, help="seconds to wait for the answer"
    )
    parser.add_argument("--tls-ca", help="speak TLS, trusting this CA for the server")
    parser.add_argument("--tls-cert", help="mutual TLS: the client's certificate")
    parser.add_argument("--tls-key", help="mutual TLS: the client's key")
    parser.add_argument("--tls-server-name", help="name to expect in the server's certificate")
    cli_options.read_environment(parser, only=ENVIRONMENT_OPTIONS)


def add_arguments(probe: argparse.ArgumentParser) -> None:
    """The probe's options, also used by ``gradserve.server.cli`` for its ``health`` help."""
    probe.add_argument(
        "--service", default="", help="the service to ask about (default: the whole server)"
    )
    add_connection_arguments(probe)


def channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS when a CA or a client certificate is given."""
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.target)
    ca, key, cert = (
        Path(f).read_bytes() if f else None for f in (args.tls_ca, args.tls_key, args.tls_cert)
    )
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.target, credentials, options=options)


def run(args: argparse.Namespace) -> int:
    request = health_pb2.HealthCheckRequest(service=args.service)
    try:
        opened = channel(args)
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}", file=sys.stderr)
        return 2
    with opened:
        stub = health_pb2_grpc.HealthStub(opened)
        try:
            reply = stub.Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                print(f"{args.target}: {_known_services(stub, args)}", file=sys.stderr)
            else:
                print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _known_services(stub: health_pb2_grpc.HealthStub, args: argparse.Namespace) -> str:
    """The service names the server reports on (Health.List), to follow a NOT_FOUND."""
    try:
        listed = stub.List(health_pb2.HealthListRequest(), timeout=args.timeout)
    except grpc.RpcError:  # a server without Health.List
        return f"NOT_FOUND: the server reports on no service {args.service!r}"
    names = ", ".join(repr(name) for name in sorted(listed.statuses))
    return f"no service {args.service!r}; the server knows {names} ('' is the whole server)"


def main(argv: list[str]) -> int:
    """``gradserve health`` with ``argv`` the arguments after ``health``."""
    parser = argparse.ArgumentParser(
        prog="gradserve health",
        description=DESCRIPTION,
        formatter_class=cli_options.HelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
