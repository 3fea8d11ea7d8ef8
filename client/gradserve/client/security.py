"""Credentials for a channel to a server started with TLS, mutual TLS or a bearer token.

Pass the result to ``connect(target, credentials=...)``.
"""

from pathlib import Path

import grpc


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def channel_credentials(
    *,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    token: str | None = None,
    local: bool = False,
) -> grpc.ChannelCredentials:
    """TLS credentials, optionally with a client certificate (mutual TLS) and a bearer token.

    ``ca_file`` is the CA that signed the server's certificate (default: the system's roots).
    ``cert_file`` and ``key_file`` go together, for servers that require client certificates.
    ``token`` is sent as ``authorization: Bearer <token>`` on every call. gRPC sends tokens
    only over a protected channel: for a plaintext server on this machine, pass
    ``local=True`` (loopback or a Unix socket) instead of TLS files.
    """
    if bool(cert_file) != bool(key_file):
        raise ValueError("cert_file and key_file go together")
    if local:
        if ca_file or cert_file:
            raise ValueError("local=True means no TLS; do not pass TLS files with it")
        transport = grpc.local_channel_credentials()
    else:
        transport = grpc.ssl_channel_credentials(_read(ca_file), _read(key_file), _read(cert_file))
    if token is None:
        return transport
    return grpc.composite_channel_credentials(transport, grpc.access_token_call_credentials(token))
