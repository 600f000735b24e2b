"""Seeds that found a bug stay as tests.

A seed names a scenario only together with the simulator that expands it (fault plan
generator and run semantics, ``SIM_VERSION``). Seeds of the current version replay
exactly; a seed found under an older version no longer names the same scenario, so
each of those bugs is also pinned by a scripted test, named here and checked to exist.
"""

from __future__ import annotations

import importlib

import pytest

from consensus import protocols
from consensus.sim.runner import run_seed
from consensus.sim.simulator import SIM_VERSION

# (protocol, seed, simulator version, what it found, scripted test "module::name" or "")
REGRESSIONS = [
    ("raft", 3, 1, "a reply that committed the no-op let a deferred removal in; the leader then "
                   "sent to the peer it had just removed (KeyError)",
     "tests.test_raft::test_raft_leader_drops_a_peer_removed_while_answering_it"),
    ("raft", 46, 1, "same KeyError, removal proposed from inside a commit",
     "tests.test_raft::test_raft_leader_drops_a_peer_removed_while_answering_it"),
    ("raft", 384, 1, "events carried no time: a leader elected by a late vote deposed itself by check-quorum",
     "tests.test_raft::test_raft_new_leader_takes_the_time_from_the_message_that_elected_it"),
    ("raft", 123, 1, "simulator: liveness demanded catch-up of a validator removed after the probe",
     "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 174, 1, "simulator: liveness quorum measured on a set a later change had shrunk",
     "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 245, 1, "as 123", "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 288, 1, "as 174", "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 410, 1, "as 174", "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 430, 1, "as 123", "tests.test_raft_scenarios::test_raft_validator_added_and_removed_under_load"),
    ("raft", 2, 3, "audit: a validator added later refused checkpoints of the set that added it",
     "tests.test_raft::test_raft_new_member_accepts_a_checkpoint_of_a_set_it_has_not_seen_yet"),
    ("raft", 24, 3, "as 2", "tests.test_raft::test_raft_new_member_accepts_a_checkpoint_of_a_set_it_has_not_seen_yet"),
    ("raft", 298, 3, "as 2, with partitions and crashes",
     "tests.test_raft::test_raft_new_member_accepts_a_checkpoint_of_a_set_it_has_not_seen_yet"),
    ("raft", 4964, 3, "the only replica holding an uncommitted change removing it would not campaign: "
                      "no leader after the heal", "tests.test_raft::test_raft_replica_removed_by_an_uncommitted_change_still_campaigns"),
    ("raft", 13232, 5, "simulator: a removal after the heal ignored the replicas staying down (2 of 4 down)",
     "tests.test_sim::test_sim_removal_after_the_heal_leaves_the_smaller_set_able_to_elect"),
    ("raft", 585, 6, "a new member alone held the latest entries but would not stand, as it could not "
                     "sign the heights before the change: no leader after the heal",
     "tests.test_raft::test_raft_new_member_holding_the_latest_entries_leads_and_gets_the_old_sets_signatures"),
    ("bft", 1473, 4, "simulator: the stay-down choice left the outgoing set unable to certify the "
                     "hand-over checkpoint (found by the BFT helper under v3; v4 keeps that set live)",
     "tests.test_sim::test_sim_stay_down_leaves_every_set_since_the_last_checkpoint_able_to_certify_it"),
]

CURRENT = [r for r in REGRESSIONS if r[2] == SIM_VERSION]
OLDER = [r for r in REGRESSIONS if r[2] != SIM_VERSION]


@pytest.mark.parametrize("protocol, seed, version, found, scripted", CURRENT,
                         ids=[f"{r[0]}-{r[1]}" for r in CURRENT])
def test_sim_regression_seed_replays_clean(protocol, seed, version, found, scripted):
    assert protocol in protocols.available(), f"protocol {protocol} is missing"
    result = run_seed(protocols.get(protocol), seed)
    assert result.ok, (found, result.safety_violations, result.liveness_failure)


@pytest.mark.parametrize("protocol, seed, version, found, scripted", OLDER,
                         ids=[f"{r[0]}-{r[1]}-v{r[2]}" for r in OLDER])
def test_sim_regression_of_an_older_simulator_is_pinned_by_a_scripted_test(protocol, seed, version, found, scripted):
    assert scripted, f"seed {seed} ({found}) needs a scripted test or a seed of simulator v{SIM_VERSION}"
    module, name = scripted.split("::")
    assert callable(getattr(importlib.import_module(module), name, None)), f"{scripted} does not exist"
    # The seed itself still runs clean under the current simulator.
    assert run_seed(protocols.get(protocol), seed).ok
