"""Keep a seeded random sample of a cosmic-ray session's pending mutants; skip the rest.

    python tests/mutation/sample.py session.sqlite N [--seed S] [--per-module]

For a module with more mutants than a session has time for (tests/mutation/run does this
when MUTATION_SAMPLE=N is set): the N mutants kept are drawn uniformly, so the share killed
estimates the module's score; TESTING.md gives the sample size beside each score. With
--per-module (MUTATION_PER_MODULE=1) N are drawn from each module of the session instead,
so that a small module grouped with large ones still gets a sample of its own.
"""

import argparse
import random
import sys
from collections import defaultdict

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    parser.add_argument("size", type=int)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--per-module", action="store_true")
    args = parser.parse_args()
    with use_db(args.session, WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
        groups = defaultdict(list)
        for index, item in enumerate(pending):
            module = str(item.mutations[0].module_path) if args.per_module else ""
            groups[module].append(index)
        draw = random.Random(args.seed)
        kept = set()
        for module in sorted(groups):
            indices = groups[module]
            kept.update(draw.sample(indices, min(args.size, len(indices))))
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
