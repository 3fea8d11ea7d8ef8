"""The gradserve server: op registry, vectorized engine, gRPC servicer and CLI."""

from importlib.metadata import version

# The installed distribution's release (the repository's VERSION file): ListOps reports it
# as server_version and `gradserve --version` prints it.
__version__ = version("gradserve-server")
