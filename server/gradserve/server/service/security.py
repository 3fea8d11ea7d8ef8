"""Who may call: TLS (optionally mutual) credentials and a bearer-token interceptor."""

import hmac
from pathlib import Path

import grpc
from grpc_health.v1 import health

OPEN_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"  # probes need no token


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca_file``, mutual TLS: only
    clients presenting a certificate signed by that CA get through the handshake."""
    client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token given inline or as the first line of a file (the safer way: it stays out
    of the process list)."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"the auth token file {token_file} is empty")
    return token or None


async def _deny(_requests, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Let a call through only with ``authorization: Bearer <token>`` metadata.

    The decision is made from the call's metadata alone, before its request is read: the
    refusal handler is request-streaming, so it runs at once and ends the call
    UNAUTHENTICATED without waiting for (or decoding) a message. The comparison is
    constant-time (``hmac.compare_digest``), so response timing does not reveal how much of
    a guess was right. The health service stays open for probes.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._denied = grpc.stream_stream_rpc_method_handler(_deny)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_METHOD_PREFIX):
            return await continuation(handler_call_details)
        offered = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                offered = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(offered, self._expected):
            return await continuation(handler_call_details)
        return self._denied
