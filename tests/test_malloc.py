"""The server caps glibc's malloc arenas (see gradserve.server.runtime.malloc)."""

import os
import platform
import subprocess
import sys

import pytest

from gradserve.server.runtime import malloc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Four threads hold a malloc'd block at the same time, then glibc reports its arenas.
COUNT_ARENAS = """
import ctypes, sys, threading
from gradserve.server.runtime import malloc
if sys.argv[1] == "capped":
    assert malloc.limit_arenas(1)
if sys.argv[1] == "operator":
    assert not malloc.limit_arenas(1)
if sys.argv[1] == "server":
    malloc.configure()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
together = threading.Barrier(5)

def allocate():
    libc.malloc(1000)
    together.wait()
    together.wait()

threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
together.wait()
libc.malloc_stats()
together.wait()
"""


def run_python(script: str, mode: str, **operator: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter, given ``mode``, without the operator's malloc
    settings in its environment (they would win over the module's) but ``operator``'s."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"
    }
    env.update(operator)
    return subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )


def arenas(mode: str, **operator: str) -> int:
    # malloc_stats writes "Arena N:" per arena
    return run_python(COUNT_ARENAS, mode, **operator).stderr.count("Arena ")


def test_threads_share_the_capped_arenas():
    assert arenas("default") > 1
    assert arenas("capped") == 1
    assert arenas("server") == 2  # the server's setting, as the module's docstring states


def test_an_operator_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert not malloc.limit_arenas()
    # and the effect: with the operator's 8 arenas the threads get arenas of their own
    assert arenas("operator", MALLOC_ARENA_MAX="8") > 1


# A 200 MB block is touched and freed; then the resident set is printed, in MiB.
RESIDENT_AFTER_FREE = """
import sys
import numpy as np
from gradserve.server.runtime import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_freed_memory()
if sys.argv[1] == "operator":
    assert not malloc.keep_freed_memory()
block = np.ones(25_000_000)
del block
with open("/proc/self/statm") as statm:
    print(int(statm.read().split()[1]) * 4096 // 2**20)
"""


def resident_mib_after_free(mode: str, **operator: str) -> int:
    return int(run_python(RESIDENT_AFTER_FREE, mode, **operator).stdout)


def test_freed_memory_is_kept_for_the_next_call():
    # By default glibc unmaps a block that large when it is freed; kept, it stays resident
    # and the next call's arrays reuse its pages without faulting them in again.
    assert resident_mib_after_free("default") + 150 < resident_mib_after_free("keep")


def test_an_operator_setting_of_the_thresholds_wins(monkeypatch):
    monkeypatch.setenv(
        "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1000000:glibc.malloc.trim_threshold=1000000"
    )
    assert not malloc.keep_freed_memory()  # and this process's malloc is left as it was
    # and the effect: with the operator's 1 MB thresholds the freed block goes back
    tunables = "glibc.malloc.mmap_threshold=1000000:glibc.malloc.trim_threshold=1000000"
    kept = resident_mib_after_free("keep")
    assert resident_mib_after_free("operator", GLIBC_TUNABLES=tunables) + 150 < kept


# 2,000 blocks of 100 KB, touched, then every other one freed: holes in the heap that
# free() cannot give back (they are not at its top). The resident set before and after
# handing back the freed memory, in MiB.
RESIDENT_AFTER_HAND_BACK = """
import ctypes
from gradserve.server.runtime import malloc
malloc.configure()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(100_000) for _ in range(2_000)]
for block in blocks:
    ctypes.memset(block, 1, 100_000)
for block in blocks[::2]:
    libc.free(block)
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 2**20
before = resident()
assert malloc.hand_back_freed()
print(before, resident())
"""


def test_freed_memory_between_live_blocks_is_handed_back():
    """What a request body left in grpc's small buffers among other streams' (about 100 MB
    freed between live blocks here): hand_back_freed gives it back where free() cannot."""
    before, after = map(int, run_python(RESIDENT_AFTER_HAND_BACK, "server").stdout.split())
    assert before - after > 80, (before, after)
