"""glibc's malloc, set up for a server whose calls allocate and free arrays of megabytes.

glibc gives threads their own arenas (up to eight per core), and memory freed in an arena
stays with that arena. gRPC runs calls on a pool of threads, so each thread that has
served a large graph keeps that graph's worth of freed memory, and the process grows
whenever a call lands on a thread that has not: on W1 (812,399 nodes) peak memory went
from 110 to 140-160 bytes a node over ten calls. With two arenas it stays at the first
call's peak. The threads hardly contend for them: NumPy allocates under the GIL anyway.
"""

import ctypes
import os

ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's arenas at ``arenas``, unless the MALLOC_ARENA_MAX environment variable
    already sets them; whether the cap was set (never with a C library other than glibc).

    Call it before the server starts its threads: it only limits arenas made later.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, arenas) == 1
