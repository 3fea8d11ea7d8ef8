"""The installed gradserve-client's release version (one for every gradserve distribution,
the Go module and the npm package: the repository's VERSION file)."""

from importlib.metadata import version

__version__ = version("gradserve-client")
