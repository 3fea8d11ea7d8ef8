"""Free loopback ports for servers whose port must be known before they start (the
balancer's, and the tests' metrics ports)."""

import socket


def free_port() -> int:
    """A port that was free a moment ago (for flags where 0 does not mean "pick one")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
