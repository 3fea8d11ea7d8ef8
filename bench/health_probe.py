"""How long `gradserve health` takes, against the bare import of what it needs.

`uv run python bench/health_probe.py` starts a `gradserve serve --workers 1`, then times,
interleaved, RUNS runs of the probe (the console script, a new process each time, as Docker
and Kubernetes run it) and of `python -c "import grpc, grpc_health.v1.health_pb2_grpc"`,
and prints the medians and their ratio (the target is at most 2.5x).
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import GRADSERVE, gradserve

RUNS = 15
TARGET_RATIO = 2.5
BASELINE = [sys.executable, "-c", "import grpc, grpc_health.v1.health_pb2_grpc"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    with gradserve(workers=1) as server:
        probe = [GRADSERVE, "health", "--target", server.target, "--timeout", "5"]
        timed(probe), timed(BASELINE)  # warm the page cache
        probes, imports = [], []
        for _ in range(RUNS):
            probes.append(timed(probe))
            imports.append(timed(BASELINE))
    probe_s, import_s = statistics.median(probes), statistics.median(imports)
    ratio = probe_s / import_s
    verdict = "ok" if ratio <= TARGET_RATIO else "FAIL"
    print(f"gradserve health: {probe_s * 1e3:.0f} ms (median of {RUNS})")
    print(f"import grpc, grpc_health.v1.health_pb2_grpc: {import_s * 1e3:.0f} ms")
    print(f"ratio {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
