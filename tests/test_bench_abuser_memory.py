"""bench/abuser_memory.py on a two-second run, so that it cannot rot unnoticed: it stopped
with a TypeError after its first kind once bench/soak.py's ledger began to name who holds
the budget (038f117), and nothing ran it until the next re-measure."""

import re

from bench import abuser_memory
from bench.ports import free_port


def test_a_short_run_reads_the_servers_ledger_after_the_attack():
    """gzip bombs are refused by grpc before any handler, so the server's ledger holds
    nothing after them; the line says so from the server's own metrics."""
    line = abuser_memory.measure("gzip_bombs", seconds=2, settle=0.5, metrics_port=free_port())
    held = re.search(
        r"budget in use ([0-9.]+) MiB \(held by (.+?)\), plan cache ([0-9.]+) MiB", line
    )
    assert held, line
    assert float(held[1]) == 0.0 and held[2] == "nothing", line
    assert float(held[3]) < 1.0, line  # the legitimate client's one small plan at most
    assert re.search(r"RSS idle +\d+, peak +\d+, after +\d+ MiB", line), line
