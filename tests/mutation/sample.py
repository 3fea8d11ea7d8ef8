"""Keep a seeded random sample of a cosmic-ray session's pending mutants; skip the rest.

    python tests/mutation/sample.py session.sqlite N [--seed S]

For a module with more mutants than a session has time for (tests/mutation/run does this
when MUTATION_SAMPLE=N is set): the N mutants kept are drawn uniformly, so the share killed
estimates the module's score; TESTING.md gives the sample size beside each score.
"""

import argparse
import random
import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    parser.add_argument("size", type=int)
    parser.add_argument("--seed", type=int, default=26)
    args = parser.parse_args()
    with use_db(args.session, WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
        kept = set(
            random.Random(args.seed).sample(range(len(pending)), min(args.size, len(pending)))
        )
        for index, item in enumerate(pending):
            if index not in kept:
                db.set_result(
                    item.job_id,
                    WorkResult(output="Not in the sample", worker_outcome=WorkerOutcome.SKIPPED),
                )
    print(f"sample: {len(kept)} of {len(pending)} mutants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
