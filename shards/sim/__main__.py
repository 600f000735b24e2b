"""``python -m shards.sim --seeds N [--first F] [--jobs J]`` or ``--seed S`` (replay with a trace).

Prints one JSON line::

    {"seeds", "flows", "committed", "refunded", "refused_by_limit", "invariant_violations", "failing_seeds"}

``committed`` counts flows settled on every hop, ``refunded`` flows refunded on every
hop they reached (refused, over capacity, timed out) or cancelled on all hops by a
redispatch, ``refused_by_limit`` purchases the origin refused because the consumer's
position with what its unanswered flows hold would pass its limit. Exits 1 when any invariant is violated. ``--seed S`` replays one seed,
writes its trace and its violations to stderr, and prints the same JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor

from shards.sim.runner import run_seed


def _one(seed: int):
    result, _ = run_seed(seed)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run (from --first)")
    parser.add_argument("--first", type=int, default=0, help="the first seed of the sweep")
    parser.add_argument("--seed", type=int, help="replay this one seed with a trace on stderr")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for a sweep")
    args = parser.parse_args(argv)
    if args.seed is not None:
        result, lines = run_seed(args.seed, trace=True)
        for line in lines:
            print(line, file=sys.stderr)
        for violation in result.violations:
            print(f"VIOLATION: {violation}", file=sys.stderr)
        results = [result]
    else:
        seeds = range(args.first, args.first + args.seeds)
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                results = list(pool.map(_one, seeds, chunksize=4))
        else:
            results = [_one(s) for s in seeds]
    failing = [r.seed for r in results if r.violations]
    summary = {
        "seeds": len(results),
        "flows": sum(r.flows for r in results),
        "committed": sum(r.committed for r in results),
        "refunded": sum(r.refunded for r in results),
        "refused_by_limit": sum(r.refused_by_limit for r in results),
        "invariant_violations": sum(len(r.violations) for r in results),
        "failing_seeds": failing,
    }
    print(json.dumps(summary))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
