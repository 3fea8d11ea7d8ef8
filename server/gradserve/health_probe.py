"""``gradserve health``: ask a server's ``grpc.health.v1.Health`` service whether it is SERVING.

Docker's HEALTHCHECK and Kubernetes exec probes run this every few seconds, so it imports
only gRPC and the health stubs: no NumPy and no ``gradserve.server`` module (the console
script, ``gradserve.command``, dispatches ``health`` here before importing the server).
Exit status: 0 SERVING, 1 anything else (not serving, unreachable), 2 a usage error.
"""

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _env(name: str, default):
    return os.environ.get("GRADSERVE_" + name.upper().replace("-", "_"), default)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, got {text}")
    return value


def add_arguments(probe: argparse.ArgumentParser) -> None:
    """The probe's options, also used by ``gradserve.server.cli`` for its ``health`` help."""
    probe.add_argument("--target", default=_env("target", "localhost:50051"))
    probe.add_argument("--service", default="", help="service name ('' = whole server)")
    probe.add_argument("--timeout", type=_positive_seconds, default=5.0, help="seconds (default 5)")
    probe.add_argument("--tls-ca", default=_env("tls-ca", None), help="CA of the server (TLS)")
    probe.add_argument("--tls-cert", default=_env("tls-cert", None), help="client cert (mTLS)")
    probe.add_argument("--tls-key", default=_env("tls-key", None), help="client key (mTLS)")
    probe.add_argument(
        "--tls-server-name", default=None, help="name to expect in the server's certificate"
    )


def _channel(args: argparse.Namespace) -> grpc.Channel:
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
        channel = _channel(args)
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}", file=sys.stderr)
        return 2
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str]) -> int:
    """``gradserve health`` with ``argv`` the arguments after ``health``."""
    parser = argparse.ArgumentParser(
        prog="gradserve health", description="exit 0 if a server reports SERVING"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
