"""Free loopback ports for servers whose port must be known before they start (the
balancer's, the tests' metrics ports, and servers bound to "localhost")."""

import errno
import socket


def free_port() -> int:
    """A port that was free a moment ago (for flags where 0 does not mean "pick one")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_localhost_address() -> str:
    """The address "localhost:PORT", its port free a moment ago on both 127.0.0.1 and ::1, for a
    server bound to "localhost". With "localhost:0", grpc binds the port the first address
    got on the others too and is content when one of them fails: if another process held
    the port on the other family, a client of "localhost" could reach that process instead
    (a plaintext client's call to a TLS-only test server succeeded, once, beside a soak)."""
    while True:
        with socket.socket() as v4:
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6) as v6:
                    v6.bind(("::1", port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                # No IPv6 loopback here: "localhost" is 127.0.0.1 alone.
            return f"localhost:{port}"
