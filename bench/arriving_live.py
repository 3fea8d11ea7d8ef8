"""The bytes a server holds for request bodies still arriving, by malloc's own count.

    uv run python bench/arriving_live.py [--arriving-mb 256] [--seconds 15]

bench/h2_flood.py reads the server's resident memory, which also counts memory freed and
kept for the next call (gradserve.server.runtime.malloc keeps up to 1 GiB in two arenas), so
its peak overstates what the server held at once. This runs the server in this process,
with the same malloc settings, and samples glibc's ``mallinfo2`` (bytes allocated and in
use) every 20 ms while eight partial 60 MB bodies (bench/h2_flood.py's senders, run in a
subprocess so that their own buffers do not count) flood it for ``--seconds``. The growth
over idle is to stay within ``--arriving-mb``. glibc only.
"""

import argparse
import ctypes
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradserve.server.runtime import malloc

MIB = 2**20
SENDERS = """
import sys, threading, time
from collections import Counter
sys.path.insert(0, {root!r})
from bench.h2_flood import flood
stop, totals = threading.Event(), Counter()
senders = [threading.Thread(target=flood, args=({port}, 60 * 2**20, 59 * 2**20, stop, totals))
           for _ in range(8)]
for sender in senders:
    sender.start()
time.sleep({seconds})
stop.set()
for sender in senders:
    sender.join(10)
"""


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def in_use_mib() -> float:
    """Bytes malloc has handed out and not had back: heap blocks plus mapped blocks."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / MIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arriving-mb", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    malloc.limit_arenas()
    malloc.keep_freed_memory()
    from gradserve.server.registry import load_registry
    from gradserve.server.service.app import running_server

    arriving = args.arriving_mb * MIB
    with running_server(load_registry(), max_arriving_bytes=arriving) as server:
        time.sleep(0.5)
        idle = peak = in_use_mib()
        root = str(Path(__file__).resolve().parents[1])
        code = SENDERS.format(root=root, port=server.port, seconds=args.seconds)
        senders = subprocess.Popen([sys.executable, "-c", code])
        while senders.poll() is None:
            peak = max(peak, in_use_mib())
            time.sleep(0.02)
        taken_back = server._state.arrival.taken_back
    print(
        f"--max-arriving-mb {args.arriving_mb}: malloc in use idle {idle:.0f} MiB, peak "
        f"{peak:.0f} MiB (+{peak - idle:.0f}); read slots taken back {taken_back}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
