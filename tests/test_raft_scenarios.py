"""Raft under scripted faults in the simulator: every run is also checked for agreement,
certificates, ordering and persist-before-send after every step."""

from __future__ import annotations

from consensus.raft import SPEC
from consensus.raft.replica import LEADER
from consensus.sim.simulator import Simulation


def sim_for(seed: int, n: int = 3, **kw) -> Simulation:
    sim = Simulation(SPEC, seed, faults="clean", n=n, **kw)
    sim.start()
    sim.start_load()
    return sim


def leader_of(sim: Simulation) -> str:
    leaders = [name for name, node in sim.nodes.items() if node.up and node.replica.role == LEADER]
    assert len(leaders) == 1, f"expected one leader, found {leaders}"
    return leaders[0]


def wait_for(sim: Simulation, condition, limit: int, step: int = 5) -> int:
    while not condition():
        assert sim.now < limit, f"condition not reached by tick {limit}"
        assert not sim.violations, sim.violations
        sim.run_until(sim.now + step)
    return sim.now


def heights(sim: Simulation) -> dict[str, int]:
    return {name: node.app.height for name, node in sim.nodes.items()}


def assert_agree(sim: Simulation) -> None:
    assert not sim.violations, sim.violations
    for node in sim.nodes.values():
        for h, digest in node.app.digests.items():
            assert sim.checker.digest_at[h] == digest


def _crash_everyone_and_restart(seed: int, n: int, torn: bool) -> None:
    sim = sim_for(seed, n=n)
    wait_for(sim, lambda: sim.checker.top >= 10, 400)
    before = dict(sim.checker.digest_at)
    sim.crash_all(torn=torn)
    sim.run_until(sim.now + 12)  # torn crashes strike within a step or ten ticks
    assert not any(node.up for node in sim.nodes.values())
    sim.run_until(sim.now + 20)
    sim.restart_all()
    top = sim.checker.top
    wait_for(sim, lambda: min(heights(sim).values()) >= top + 10, sim.now + 600)
    assert_agree(sim)
    for h, digest in before.items():
        assert sim.checker.digest_at[h] == digest, "a committed batch was lost or changed by the restart"


def test_raft_all_replicas_crash_and_restart_at_once():
    for seed, n, torn in ((1, 3, False), (2, 3, True), (3, 5, True)):
        _crash_everyone_and_restart(seed, n, torn)


def test_raft_partition_isolating_the_leader():
    sim = sim_for(4, n=5)
    wait_for(sim, lambda: sim.checker.top >= 5, 400)
    old = leader_of(sim)
    old_term = sim.nodes[old].replica.term
    others = [name for name in sim.nodes if name != old]
    sim.partition([[old], others])
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 10, sim.now + 600)
    new = leader_of(sim)
    assert new != old and sim.nodes[new].replica.term > old_term
    # Check-quorum: the isolated leader stops believing it leads; it commits nothing meanwhile.
    assert sim.nodes[old].replica.role != LEADER
    assert sim.nodes[old].app.height <= top
    sim.heal_partition()
    target = sim.checker.top + 5
    wait_for(sim, lambda: sim.nodes[old].app.height >= target, sim.now + 600)
    assert leader_of(sim) == new
    assert_agree(sim)


def test_raft_prevote_stops_disruptive_rejoin():
    sim = sim_for(5, n=3)
    wait_for(sim, lambda: sim.checker.top >= 5, 400)
    leader = leader_of(sim)
    term = sim.nodes[leader].replica.term
    loner = next(name for name in sim.nodes if name != leader)
    sim.partition([[loner], [n for n in sim.nodes if n != loner]])
    sim.run_until(sim.now + 10 * sim.nodes[loner].config.timeout_ticks)  # many election timeouts
    assert sim.nodes[loner].replica.term == term, "pre-vote failed, so the isolated replica kept its term"
    sim.heal_partition()
    top = sim.checker.top
    wait_for(sim, lambda: sim.nodes[loner].app.height >= top, sim.now + 400)
    assert leader_of(sim) == leader and sim.nodes[leader].replica.term == term, "the healthy leader was not disrupted"
    assert_agree(sim)


def test_raft_validator_added_and_removed_under_load():
    sim = sim_for(6, n=3)
    wait_for(sim, lambda: sim.checker.top >= 5, 400)
    assert sim.reconfigure("add") is not None
    added = "n3"
    wait_for(sim, lambda: sim.checker.latest_set().n == 4, sim.now + 600)
    wait_for(sim, lambda: sim.nodes[added].app.height >= sim.checker.top - 2 and sim.checker.top > 20, sim.now + 600)
    # Remove the leader itself: it must hand over and go quiet.
    leader = leader_of(sim)
    assert sim.reconfigure("remove", target=leader) is not None
    wait_for(sim, lambda: sim.checker.latest_set().n == 3, sim.now + 600)
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 10, sim.now + 600)
    new_leader = leader_of(sim)
    assert new_leader != leader
    assert sim.nodes[leader].identity.node_id not in sim.checker.latest_set()
    assert sim.nodes[leader].replica.role != LEADER
    assert sim.nodes[added].app.height >= top, "the added validator follows the chain"
    # Every commit after the change was certified by the new set (the checker verified each one).
    assert_agree(sim)


def test_raft_replace_a_validator_key():
    sim = sim_for(7, n=3)
    wait_for(sim, lambda: sim.checker.top >= 5, 400)
    old_key = sim.nodes["n1"].identity.node_id
    sim.reconfigure("replace", target="n1")
    wait_for(sim, lambda: old_key not in sim.checker.latest_set() and sim.checker.latest_set().n == 3, sim.now + 900)
    top = sim.checker.top
    wait_for(sim, lambda: sim.nodes["n3"].app.height >= top + 5, sim.now + 600)
    assert_agree(sim)


def test_raft_lagging_replica_installs_a_snapshot():
    sim = sim_for(8, n=3, config_overrides={"checkpoint_interval": 4, "snapshot_interval": 8, "max_batch_entries": 8})
    wait_for(sim, lambda: sim.checker.top >= 3, 400)
    sim.crash("n2")
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 40, sim.now + 900)
    leader = sim.nodes[leader_of(sim)].replica
    assert leader.log.snapshot.height > top, "the leader compacted its log past the lagging replica"
    sim.restart("n2")
    target = sim.checker.top
    wait_for(sim, lambda: sim.nodes["n2"].app.height >= target, sim.now + 600)
    assert sim.nodes["n2"].app.installed_at, "the replica caught up through a state transfer"
    assert_agree(sim)


def test_raft_checkpoint_certificates_verify_with_real_keys():
    """Real Ed25519 commit signatures (checked by the ledger's own code) and real BLS checkpoints."""
    from ledger.certificate import CheckpointCertificate

    sim = sim_for(9, n=3, signatures="ed25519", bls="real", config_overrides={"checkpoint_interval": 2})
    wait_for(sim, lambda: any(n.replica.checkpoint for n in sim.nodes.values()), 400)
    cert, validators = next(n.replica.checkpoint for n in sim.nodes.values() if n.replica.checkpoint)
    assert isinstance(cert, CheckpointCertificate)
    cert.verify("sim/grid", validators, protocol="raft")
    assert_agree(sim)
