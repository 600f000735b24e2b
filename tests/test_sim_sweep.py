"""The seed sweep of ``make test``: 300 seeds of every protocol present, no seed skipped.

The long sweeps (20,000 seeds per protocol) are the separate command
``python -m consensus.sim --protocol P --seeds 20000 --jobs 2``.
"""

from __future__ import annotations

import os

import pytest

from consensus import protocols
from consensus.sim.runner import summarise, sweep

SEEDS = 300


@pytest.mark.slow
@pytest.mark.parametrize("protocol", protocols.available())
def test_sim_seed_sweep_has_no_violation(protocol):
    # Seeds are independent runs; use both cores of a CI machine.
    results = sweep(protocols.get(protocol), range(SEEDS), jobs=min(2, os.cpu_count() or 1))
    summary = summarise(protocol, results, faults="random", liveness_bound=None)
    problems = [
        f"seed {r.seed} [{r.plan}]: {r.safety_violations[:2]} {r.liveness_failure or ''}"
        for r in results if not r.ok
    ]
    assert summary["seeds"] == SEEDS
    assert not problems, "\n".join(problems)
    assert summary["p99_ticks_to_commit_after_heal"] is not None
