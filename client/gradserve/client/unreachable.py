"""Why no call got through to the server (UNAVAILABLE), said in one line with what to do.

gRPC reports every failure to connect as UNAVAILABLE with C-core's words ("failed to connect
to all addresses; last error: ... Connection refused"). What went wrong is told apart by
those words and by whether the client's channel uses TLS:

- nothing listens at the target (refused, unknown host): start a server, or point at one;
- a plaintext client on a TLS port: the server closes the connection at once;
- a TLS client on a plaintext port: the TLS handshake reads a wrong record version;
- a TLS client the server does not trust: a mutual-TLS server closes the connection in the
  handshake (no client certificate, or one signed by a CA it does not trust);
- a TLS client that does not trust the server's certificate.

The Node.js and Go clients give the same messages (``client/node``, ``client/go``).
"""

# The same words in every client (Python, Node.js, Go); tests/test_client_messages.py
# compares them. What to pass in each language is in docs/sdk/errors.md.
NO_SERVER = (
    "no gradserve server answers at {target}: start one with `gradserve serve`, "
    "or set GRADSERVE_TARGET"
)
SERVER_WANTS_TLS = (
    "the server at {target} expects TLS and this client connects in plaintext: "
    "give the client the CA certificate that signed the server's"
)
SERVER_WANTS_PLAINTEXT = (
    "the server at {target} speaks plaintext and this client connects with TLS: "
    "connect without TLS, or start the server with --tls-cert and --tls-key"
)
SERVER_WANTS_CERTIFICATE = (
    "the server at {target} refused the TLS connection: it requires a client certificate "
    "signed by a CA it trusts (mutual TLS): give the client its certificate and key"
)
SERVER_NOT_TRUSTED = (
    "the server at {target} presented a certificate this client does not trust: "
    "give the client the CA certificate that signed it"
)
# C-core's words, lower-cased, for each cause.
_NOTHING_LISTENS = ("connection refused", "errors resolving", "dns resolution failed")
_CLOSED = "socket closed"
_WRONG_VERSION = "wrong_version_number"
_NOT_TRUSTED = "certificate_verify_failed"


def explain(details: str, target: str, tls: bool) -> tuple[str, bool]:
    """The message for an UNAVAILABLE call, and whether the server refused this client's
    TLS identity (an authentication problem rather than a server that is not there)."""
    words = details.lower()
    connecting = "failed to connect" in words
    if any(cause in words for cause in _NOTHING_LISTENS):
        return NO_SERVER.format(target=target), False
    if tls and _WRONG_VERSION in words:
        return SERVER_WANTS_PLAINTEXT.format(target=target), False
    if tls and _NOT_TRUSTED in words:
        return SERVER_NOT_TRUSTED.format(target=target), False
    if connecting and _CLOSED in words:
        if tls:
            return SERVER_WANTS_CERTIFICATE.format(target=target), True
        return SERVER_WANTS_TLS.format(target=target), False
    return f"the server at {target} is unavailable: {details}", False
