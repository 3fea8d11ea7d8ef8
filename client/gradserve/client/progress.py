"""The progress bar of long streams: shown on a terminal for large results, else silent."""

import sys

from tqdm import tqdm

PROGRESS_ABOVE = 100_000  # nodes; smaller results arrive too fast for a bar to help


def progress_bar(total: int, show: bool | None) -> tqdm:
    """A bar over ``total`` nodes on stderr. ``show`` None: only for a large result on a
    terminal; True or False forces it on or off."""
    if show is None:
        show = total >= PROGRESS_ABOVE and sys.stderr.isatty()
    return tqdm(total=total, unit="node", unit_scale=True, disable=not show, leave=False)
