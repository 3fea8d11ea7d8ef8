"""The gradserve Python client."""

from gradserve.client.channel import DEFAULT_TARGET, connect

__all__ = ["DEFAULT_TARGET", "connect"]
