"""The progress bar of long streams: shown on a terminal for large results, else silent.

The bar is tqdm's, an optional dependency (``pip install 'gradserve-client[progress]'``):
without it streams run the same, with no bar."""

import sys
import warnings

try:
    from tqdm import tqdm
except ImportError:  # the [progress] extra is not installed
    tqdm = None

PROGRESS_ABOVE = 100_000  # nodes; smaller results arrive too fast for a bar to help


class NoBar:
    """What a stream updates when no bar is shown and tqdm is not installed."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, show: bool | None) -> "tqdm | NoBar":
    """A bar over ``total`` nodes on stderr. ``show`` None: only for a large result on a
    terminal; True or False forces it on or off."""
    if tqdm is None:
        if show:
            warnings.warn(
                "progress=True needs tqdm: pip install 'gradserve-client[progress]'",
                stacklevel=3,
            )
        return NoBar()
    if show is None:
        show = total >= PROGRESS_ABOVE and sys.stderr.isatty()
    return tqdm(total=total, unit="node", unit_scale=True, disable=not show, leave=False)
