"""The shard-tree simulator: a seed sweep, the seeds of bugs found, and the checker's teeth.

The full acceptance sweep is ``.venv/bin/python -m shards.sim --seeds 1000 --jobs 2``
(about 3 minutes of CPU); ``make test`` runs 200 seeds here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shards import flow as flow_module
from shards.sim.runner import run_seed

ROOT = Path(__file__).resolve().parent.parent

# Seeds that found bugs, each with what it found; they must stay green.
REGRESSION_SEEDS = {
    0: "flows never settled: the keeper waited for the origin's last block time, which an idle shard never advances",
    1: "a validator-set change removed every validator (the victim was drawn once per member)",
    47: "a cancelled flow with price 0 and no fees paid the consumer a refund of 0",
    220: "the same zero refund, on a path through a distribution shard",
    1094: "a relayer changed the epoch number of an absence proof and the delivery was still accepted",
    1375: "the same laxity: schedule proofs for epochs the client did not ask about were ignored, not refused",
}


def test_sweep_of_200_seeds_has_no_invariant_violation():
    out = subprocess.run(
        [sys.executable, "-m", "shards.sim", "--seeds", "200", "--first", "5000", "--jobs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary) == {"seeds", "flows", "committed", "refunded", "refused_by_limit", "invariant_violations",
                            "failing_seeds"}
    assert summary["seeds"] == 200
    assert summary["invariant_violations"] == 0, summary["failing_seeds"]
    assert out.returncode == 0
    # The sweep exercises both outcomes, many times.
    assert summary["committed"] > 500 and summary["refunded"] > 500
    assert summary["refused_by_limit"] > 20  # consumers meet their position limits, holds included
    assert summary["committed"] + summary["refunded"] == summary["flows"]


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_regression_seed_stays_green(seed):
    result, _ = run_seed(seed)
    assert result.violations == [], REGRESSION_SEEDS[seed]
    assert result.flows > 0


def test_a_seed_replays_exactly():
    first, trace_a = run_seed(11, trace=True)
    second, trace_b = run_seed(11, trace=True)
    assert trace_a == trace_b
    assert (first.flows, first.committed, first.refunded, first.blocks) == (second.flows, second.committed, second.refunded, second.blocks)


def test_a_run_exercises_every_kind_of_ending_and_fault():
    totals = {"settled": 0, "refunded": 0, "cancelled": 0, "quote": 0, "mangled": 0}
    for seed in range(40, 52):
        result, _ = run_seed(seed)
        assert result.violations == []
        totals["settled"] += result.committed
        totals["refunded"] += result.refunded - result.cancelled
        totals["cancelled"] += result.cancelled
        totals["quote"] += result.refused_by_quote
        totals["mangled"] += result.mangled_refused
    assert all(v > 0 for v in totals.values()), totals


def test_the_checker_catches_a_hop_that_keeps_its_fee_on_cancellation(monkeypatch):
    """A bug planted in the flow module must turn seeds red (the invariants have teeth)."""
    original = flow_module.FlowModule._on_cancel_done

    def keeps_fee(self, now, packet):
        record = self._expect(packet, ("cancelling",), from_next=True)
        if record.held and not record.is_origin:
            self._put(record.but(held=0))  # the fee vanishes instead of travelling back
            record = self.record(packet.flow_id)
        return original(self, now, packet)

    monkeypatch.setattr(flow_module.FlowModule, "_on_cancel_done", keeps_fee)
    failing = [s for s in range(12) if run_seed(s)[0].violations]
    assert failing, "no seed noticed the lost fee"


def test_the_checker_catches_a_hop_that_forgets_to_release_capacity(monkeypatch):
    original = flow_module.FlowModule._reserve

    def never_release(self, spec, index, sign):
        if sign > 0:
            original(self, spec, index, sign)

    monkeypatch.setattr(flow_module.FlowModule, "_reserve", never_release)
    failing = [s for s in range(6) if run_seed(s)[0].violations]
    assert failing, "no seed noticed the leaked reservation"
