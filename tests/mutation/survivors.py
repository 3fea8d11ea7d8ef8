"""List the surviving mutants of a cosmic-ray session: file, line, operator and diff.

    python tests/mutation/survivors.py session.sqlite [--recheck "pytest command"]

With --recheck, each survivor is applied again (in this tree: run it in the copy that
tests/mutation/run makes) and the command is run against it, so that tests written after
the session can be checked to kill what it left alive; the file is restored after each.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome


def survivors(session: str) -> list:
    with use_db(session, WorkDB.Mode.open) as db:
        return [
            (item, result)
            for item, result in db.completed_work_items
            if result.worker_outcome == WorkerOutcome.NORMAL
            and result.test_outcome == TestOutcome.SURVIVED
        ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    parser.add_argument("--recheck", help="a test command to run against each survivor")
    args = parser.parse_args()
    alive = survivors(args.session)
    still_alive = 0
    for item, result in alive:
        (mutation,) = item.mutations
        where = f"{mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}"
        verdict = ""
        if args.recheck:
            source = Path(mutation.module_path)
            original = source.read_text()
            applied = subprocess.run(
                [
                    "cosmic-ray",
                    "apply",
                    str(source),
                    mutation.operator_name,
                    str(mutation.occurrence),
                ],
                capture_output=True,
            )
            try:
                run = subprocess.run(shlex.split(args.recheck), capture_output=True)
            finally:
                source.write_text(original)
            killed = applied.returncode == 0 and run.returncode != 0
            still_alive += not killed
            verdict = "  killed now" if killed else "  SURVIVES"
        print(f"{where}{verdict}")
        print("".join(f"    {line}\n" for line in (result.diff or "").splitlines()[2:]))
    print(f"{len(alive)} survivors" + (f", {still_alive} still alive" if args.recheck else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
