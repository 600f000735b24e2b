"""Byzantine validators in the simulator: each named lie, alone and in pairs, leaves
agreement intact and the honest replicas making progress; the slow leader's effect on
throughput and latency is measured against an honest leader's."""

from __future__ import annotations

import random

import pytest

from consensus.bft import SPEC
from consensus.bft.replica import FAIRNESS
from consensus.sim.faults import make_plan
from consensus.sim.simulator import Simulation

BEHAVIOURS = sorted(SPEC.byzantine)


def sim_for(seed: int, n: int, byzantine: dict[int, str], **kw) -> Simulation:
    plan = make_plan(random.Random(seed), protocol="bft", byzantine_behaviours=tuple(SPEC.byzantine),
                     max_faulty=SPEC.max_faulty, mix="clean", n=n)
    plan.byzantine = byzantine
    # Plain batches only: a height-bound batch a slow leader lets go stale is not load it
    # failed to order (tests/test_sim.py covers those).
    plan.bound_permille = 0
    sim = Simulation(SPEC, seed, plan=plan, **kw)
    sim.start()
    sim.start_load()
    return sim


def run_to(sim: Simulation, top: int, limit: int) -> None:
    while sim.checker.top < top:
        assert sim.now < limit, f"only {sim.checker.top} heights by tick {limit}"
        assert not sim.violations, sim.violations
        sim.run_until(sim.now + 10)
    assert not sim.violations, sim.violations


def test_bft_every_named_lie_is_available_to_the_simulator():
    assert set(BEHAVIOURS) == {"equivocating_leader", "conflicting_votes", "bad_signatures", "replay", "silent",
                               "slow_leader"}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_bft_one_byzantine_validator_cannot_stop_or_split_the_others(behaviour):
    # n0 leads view 0, so every lie is told from the leader's seat first.
    sim = sim_for(100 + BEHAVIOURS.index(behaviour), 4, {0: behaviour})
    run_to(sim, 40, 2000)
    for node in sim.nodes.values():
        if node.honest:
            assert node.app.height >= 30


@pytest.mark.parametrize("pair", [("equivocating_leader", "conflicting_votes"), ("silent", "replay"),
                                  ("bad_signatures", "slow_leader")])
def test_bft_two_byzantine_validators_of_seven_cannot_stop_or_split_the_others(pair):
    sim = sim_for(200 + len(pair[0]), 7, {0: pair[0], 1: pair[1]})
    run_to(sim, 40, 3000)


def test_bft_bad_signatures_are_counted_not_trusted():
    sim = sim_for(300, 4, {1: "bad_signatures"})
    run_to(sim, 20, 1500)
    dropped = sum(sim.nodes[name].replica.stats["dropped: bad signature"] for name in ("n0", "n2", "n3"))
    assert dropped > 0


def _latencies(sim: Simulation, since: int) -> list[int]:
    return [sim.first_commit_at[d] - sim.proposed_at[d] for d in sim.first_commit_at
            if d in sim.proposed_at and sim.proposed_at[d] >= since]


def test_bft_slow_leader_commits_every_batch_within_the_timeout():
    """Measured under a slow leader (one that holds each pre-prepare for half the view
    timeout, staying just under it, so it is never replaced): latency rises, but every
    batch still commits within ``FAIRNESS`` view timeouts, and throughput follows the
    offered load. Same seeds and load with an honest and with a slow leader."""
    timeout = 20
    for seed in (400, 401):
        results = {}
        for label, byzantine in (("honest", {}), ("slow", {0: "slow_leader"})):
            sim = sim_for(seed, 4, byzantine)
            sim.run_until(1200)
            assert not sim.violations, sim.violations
            latencies = sorted(_latencies(sim, 100))
            views = {getattr(n.replica, "honest", n.replica).view for n in sim.nodes.values()}
            results[label] = (sim.checker.top, latencies[len(latencies) // 2], latencies[-1], views)
        honest_top, honest_median, _, _ = results["honest"]
        slow_top, slow_median, slow_max, views = results["slow"]
        assert views == {0}, f"the slow leader was replaced, nothing measured: {results}"
        assert slow_median > honest_median, f"the slow leader did not slow anything: {results}"
        assert slow_max <= FAIRNESS * timeout, results
        assert slow_top >= 0.9 * honest_top, f"throughput under the slow leader fell: {results}"
