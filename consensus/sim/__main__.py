"""``python -m consensus.sim``: sweep seeds, or replay one seed with its trace.

    python -m consensus.sim --protocol raft --seeds 500
    python -m consensus.sim --protocol bft --seeds 20000 --jobs 2
    python -m consensus.sim --protocol raft --seed 1234        # trace of one run

A sweep prints one JSON line ``{"protocol", "seeds", "safety_violations",
"liveness_failures", "failing_seeds", "p99_ticks_to_commit_after_heal", ...}`` and
exits 1 if any seed failed. ``--seed`` prints every delivery, drop, crash, restart and
commit with its tick, then the run's JSON line, and exits 1 if the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from consensus import protocols
from consensus.sim.faults import MIXES
from consensus.sim.keys import BLS_MODES, SIGNATURE_MODES
from consensus.sim.runner import run_seed, summarise, sweep
from consensus.sim.simulator import DEFAULT_LIVENESS_FACTOR, TIMEOUT_TICKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", required=True, choices=protocols.NAMES)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seeds", type=int, help="run seeds FIRST .. FIRST+N-1")
    what.add_argument("--seed", type=int, help="replay one seed (with the same --faults as its sweep) and print its trace")
    parser.add_argument("--first", type=int, default=0, help="first seed of a sweep (default 0)")
    parser.add_argument("--faults", default="random", choices=MIXES, help="fault mix (default: drawn per seed)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes for a sweep")
    parser.add_argument("--signatures", default="cheap", choices=SIGNATURE_MODES)
    parser.add_argument("--bls", default="cheap", choices=BLS_MODES)
    parser.add_argument("--verbose", action="store_true", help="print each failing seed's problems to stderr")
    args = parser.parse_args(argv)
    spec = protocols.get(args.protocol)
    timeout = TIMEOUT_TICKS
    bound = spec.liveness_bound_ticks(timeout) if spec.liveness_bound_ticks else DEFAULT_LIVENESS_FACTOR * timeout

    if args.seed is not None:
        result = run_seed(spec, args.seed, faults=args.faults, signatures=args.signatures, bls=args.bls, trace=True)
        for line in result.trace or ():
            print(line)
        print(json.dumps({
            "protocol": result.protocol,
            "seed": result.seed,
            "plan": result.plan,
            "safety_violations": result.safety_violations,
            "liveness_failure": result.liveness_failure,
            "ticks_to_commit_after_heal": result.ticks_to_commit_after_heal,
            "liveness_bound_ticks": bound,
            "height": result.height,
            "ticks": result.ticks,
            "messages": result.messages,
        }))
        return 0 if result.ok else 1

    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    results = sweep(spec, range(args.first, args.first + args.seeds), faults=args.faults, jobs=args.jobs,
                    signatures=args.signatures, bls=args.bls)
    if args.verbose:
        for r in results:
            if not r.ok:
                print(f"seed {r.seed} [{r.plan}]", file=sys.stderr)
                for v in r.safety_violations:
                    print(f"  safety: {v}", file=sys.stderr)
                if r.liveness_failure:
                    print(f"  liveness: {r.liveness_failure}", file=sys.stderr)
    summary = summarise(args.protocol, results, faults=args.faults, liveness_bound=bound)
    print(json.dumps(summary))
    return 0 if not summary["failing_seeds"] else 1


if __name__ == "__main__":
    sys.exit(main())
