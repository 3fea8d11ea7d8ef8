"""glibc's malloc, set up for a server whose calls allocate and free arrays of megabytes.

Arenas: glibc gives threads their own arenas (up to eight per core), and memory freed in an
arena stays with that arena. gRPC runs calls on a pool of threads, so each thread that has
served a large graph keeps that graph's worth of freed memory, and the process grows
whenever a call lands on a thread that has not: on W1 (812,399 nodes) peak memory went
from 110 to 140-160 bytes a node over ten calls. With two arenas it stays at the first
call's peak. The threads hardly contend for them: NumPy allocates under the GIL anyway.

Freed memory kept: glibc maps every block above 32 MiB afresh and unmaps it when freed, and
returns freed memory at the top of its heap to the system beyond 64 MiB. A batch call then
faults in every page of its arrays again, call after call: W4 (10,064 nodes x 1,000 rows,
80 MB arrays) spent a third of its time there on this VM (0.59 -> 0.35 s with blocks of up
to 1 GiB served from the heap and up to 1 GiB of freed memory kept). The cost is that the
server keeps the memory of its largest recent call instead of handing it back; peak memory
does not change (W1: 112 and 115 bytes a node).
"""

import ctypes
import os
import threading

ARENAS = 2
KEEP_BYTES = 1 << 30  # blocks served from the heap, and freed memory kept, up to this size
# From glibc's malloc.h, with the environment variables that set the same (they win).
_M_ARENA_MAX, _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -8, -3, -1
_OPERATOR_SETTINGS = {
    _M_ARENA_MAX: ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
}


def _set(parameter: int, value: int) -> bool:
    """mallopt(parameter, value) unless the environment already sets it; whether it was set
    (never with a C library other than glibc)."""
    variable, tunable = _OPERATOR_SETTINGS[parameter]
    if variable in os.environ or tunable in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(parameter, value) == 1


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's arenas at ``arenas``; whether the cap was set.

    Call it before the server starts its threads: it only limits arenas made later.
    """
    return _set(_M_ARENA_MAX, arenas)


def keep_freed_memory(size: int = KEEP_BYTES) -> bool:
    """Serve blocks of up to ``size`` bytes from the heap and keep up to ``size`` bytes of
    freed memory for the next call; whether both were set."""
    served_from_heap = _set(_M_MMAP_THRESHOLD, size)
    kept = _set(_M_TRIM_THRESHOLD, size)
    return served_from_heap and kept


def configure() -> None:
    """Both settings, for the server: call it before any thread starts."""
    limit_arenas()
    keep_freed_memory()


_handing_back = threading.Lock()


def hand_back_freed() -> bool:
    """Give the system the freed pages anywhere in malloc's heaps (``malloc_trim(0)``), not
    only at their tops; whether any were given (never with a C library other than glibc).

    A request body that never finishes arrives in grpc's small buffers, interleaved with
    other streams' in the same heap: once its call ends and they are freed, the holes they
    leave stay resident (eight partial 60 MB bodies held 265-344 MiB resident against the
    256 MiB of read slots, with 242 MiB allocated at most). It walks every arena, 2-80 ms
    on such a heap: call it off the event loop (``hand_back_freed_soon``)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim is not None and trim(0) == 1


def hand_back_freed_soon() -> None:
    """``hand_back_freed`` on a thread of its own, unless one is under way already."""
    if _handing_back.acquire(blocking=False):
        threading.Thread(target=_hand_back_then_release, name="malloc-trim", daemon=True).start()


def _hand_back_then_release() -> None:
    try:
        hand_back_freed()
    finally:
        _handing_back.release()
