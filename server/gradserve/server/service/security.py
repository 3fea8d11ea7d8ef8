"""Who may call: TLS (optionally mutual) credentials and a bearer-token interceptor.

The caller's token is also whom ``calls.CallScope`` counts a call against when several
tokens are accepted: ``bearer`` reads it from the call's metadata."""

import hmac
from collections.abc import Sequence
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


def read_tokens(token: str | None, token_file: str | None) -> tuple[str, ...]:
    """The tokens the server accepts: the one given inline, or each non-empty line of a
    file (the safer way: they stay out of the process list). Each token is a tenant, who
    holds at most max-calls-per-token of the call slots when there are several."""
    if token_file:
        lines = Path(token_file).read_text().splitlines()
        tokens = tuple(line.strip() for line in lines if line.strip())
        if not tokens:
            raise ValueError(f"the auth token file {token_file} is empty")
        return tokens
    return (token,) if token else ()


async def _deny(_requests, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Let a call through only with ``authorization: Bearer <token>`` metadata, for any of
    the tokens.

    The decision is made from the call's metadata alone, before its request is read: the
    refusal handler is request-streaming, so it runs at once and ends the call
    UNAUTHENTICATED without waiting for (or decoding) a message. The comparison is
    constant-time (``hmac.compare_digest``) against every token, so response timing does
    not reveal how much of a guess was right, nor which token it came near. The health
    service stays open for probes.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self._expected = [f"Bearer {token}".encode() for token in tokens]
        self._denied = grpc.stream_stream_rpc_method_handler(_deny)

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_METHOD_PREFIX):
            return await continuation(handler_call_details)
        offered = bearer(handler_call_details.invocation_metadata).encode()
        matched = False
        for expected in self._expected:
            matched |= hmac.compare_digest(offered, expected)
        if matched:
            return await continuation(handler_call_details)
        return self._denied


def bearer(metadata) -> str:
    """The ``authorization`` value of a call's metadata ("" without one)."""
    for key, value in metadata or ():
        if key == "authorization":
            return value  # a text header: grpc hands it over as str
    return ""
