"""The seed runner: many seeded runs of one protocol, summarised as one JSON object.

No seed is ever skipped: a run that raises is a failing seed like any other.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from consensus.sim.simulator import RunResult, Simulation
from consensus.sim.spec import ProtocolSpec

__all__ = ["p99", "run_seed", "summarise", "sweep"]


def run_seed(spec: ProtocolSpec, seed: int, *, faults: str = "random", signatures: str = "cheap",
             bls: str = "cheap", trace: bool = False) -> RunResult:
    """One run; an exception escaping the simulator becomes a safety violation of that seed."""
    sim = Simulation(spec, seed, faults=faults, signatures=signatures, bls=bls, trace=trace)
    try:
        return sim.run()
    except Exception as exc:
        sim.checker.violations.append(
            f"simulation raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
        )
        return sim.result()


def p99(values: list[int]) -> int | None:
    """The 99th percentile by nearest rank (an observed value, never interpolated)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-99 * len(ordered) // 100)  # ceil(0.99 n)
    return ordered[max(rank, 1) - 1]


def _worker(args: tuple) -> RunResult:
    name, seed, faults, signatures, bls = args
    from consensus import protocols

    result = run_seed(protocols.get(name), seed, faults=faults, signatures=signatures, bls=bls)
    result.trace = None
    return result


def sweep(spec: ProtocolSpec, seeds: Iterable[int], *, faults: str = "random", jobs: int = 1,
          signatures: str = "cheap", bls: str = "cheap") -> list[RunResult]:
    """Run every seed (in parallel processes when ``jobs`` > 1); results in seed order."""
    seeds = list(seeds)
    if jobs <= 1:
        return [run_seed(spec, s, faults=faults, signatures=signatures, bls=bls) for s in seeds]
    import multiprocessing

    work = [(spec.name, s, faults, signatures, bls) for s in seeds]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return list(pool.imap(_worker, work, chunksize=8))


def summarise(protocol: str, results: list[RunResult], *, faults: str, liveness_bound: int | None) -> dict:
    """The one-line report: counts, failing seeds and the p99 of ticks to commit after the heal."""
    failing = [r.seed for r in results if not r.ok]
    ticks = [r.ticks_to_commit_after_heal for r in results if r.ticks_to_commit_after_heal is not None]
    return {
        "protocol": protocol,
        "seeds": len(results),
        "safety_violations": sum(len(r.safety_violations) for r in results),
        "liveness_failures": sum(1 for r in results if r.liveness_failure is not None),
        "failing_seeds": failing,
        "p99_ticks_to_commit_after_heal": p99(ticks),
        "max_ticks_to_commit_after_heal": max(ticks, default=None),
        "liveness_bound_ticks": liveness_bound,
        "faults": faults,
        "first_seed": results[0].seed if results else None,
        "messages": sum(r.messages for r in results),
        "commits": sum(r.commits for r in results),
        "faults_injected": _totals(results),
    }


def _totals(results: list[RunResult]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r.stats.items():
            totals[key] = totals.get(key, 0) + value
    return dict(sorted(totals.items()))
