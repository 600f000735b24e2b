"""The BFT replica under scripted faults in the simulator. Every run is also checked
after every step for agreement, certificates (against the set in force), ordering and
persist-before-send."""

from __future__ import annotations

import random

import pytest

from consensus.bft import SPEC
from consensus.bft.messages import MessageError, ViewChange, decode
from consensus.sim.faults import make_plan
from consensus.sim.simulator import Simulation


def sim_for(seed: int, n: int = 4, byzantine: dict[int, str] | None = None, **kw) -> Simulation:
    plan = make_plan(random.Random(seed), protocol="bft", byzantine_behaviours=tuple(SPEC.byzantine),
                     max_faulty=SPEC.max_faulty, mix="clean", n=n)
    plan.byzantine = dict(byzantine or {})
    sim = Simulation(SPEC, seed, plan=plan, **kw)
    sim.start()
    sim.start_load()
    return sim


def wait_for(sim: Simulation, condition, limit: int, step: int = 5) -> int:
    while not condition():
        assert sim.now < limit, f"condition not reached by tick {limit}"
        assert not sim.violations, sim.violations
        sim.run_until(sim.now + step)
    assert not sim.violations, sim.violations
    return sim.now


def honest(sim: Simulation):
    return [node for node in sim.nodes.values() if node.honest]


def replica(sim: Simulation, name: str):
    r = sim.nodes[name].replica
    return getattr(r, "honest", r)


def leader_of(sim: Simulation) -> str:
    leaders = [n.name for n in honest(sim) if n.up and SPEC.is_leader(n.replica)]
    assert len(leaders) == 1, f"expected one active leader, found {leaders}"
    return leaders[0]


def assert_agree(sim: Simulation) -> None:
    assert not sim.violations, sim.violations
    for node in honest(sim):
        for h, digest in node.app.digests.items():
            assert sim.checker.digest_at[h] == digest


def record_sends(sim: Simulation) -> list[tuple[str, bytes]]:
    """Capture every message honest replicas send (the simulator's send hook)."""
    sent: list[tuple[str, bytes]] = []
    original = sim._check_send

    def spy(node, to, payload):
        sent.append((node.name, payload))
        original(node, to, payload)

    sim._check_send = spy
    return sent


@pytest.mark.parametrize("seed, torn, n", [(1, False, 4), (2, True, 4), (3, True, 7)])
def test_bft_all_replicas_crash_and_restart_at_once(seed, torn, n):
    sim = sim_for(seed, n=n)
    wait_for(sim, lambda: sim.checker.top >= 12, 600)
    before = dict(sim.checker.digest_at)
    sim.crash_all(torn=torn)
    sim.run_until(sim.now + 12)  # a torn crash strikes within a step or ten ticks
    assert not any(node.up for node in sim.nodes.values())
    sim.run_until(sim.now + 20)
    sim.restart_all()
    top = sim.checker.top
    wait_for(sim, lambda: min(node.app.height for node in sim.nodes.values()) >= top + 12, sim.now + 900)
    assert_agree(sim)
    for h, digest in before.items():
        assert sim.checker.digest_at[h] == digest, "a committed batch was lost or changed by the restart"


@pytest.mark.parametrize("seed, n, liars", [(11, 4, {0: "equivocating_leader"}),
                                            (12, 7, {0: "equivocating_leader", 1: "equivocating_leader"})])
def test_bft_equivocating_leader_cannot_split_commits(seed, n, liars):
    sim = sim_for(seed, n=n, byzantine=liars)
    wait_for(sim, lambda: sim.checker.top >= 30, 1500)
    assert_agree(sim)
    views = {replica(sim, node.name).view for node in honest(sim)}
    assert min(views) > len(liars) - 1, "the equivocating leaders were replaced"


def test_bft_partition_isolating_the_leader_triggers_view_change():
    sim = sim_for(21, n=4)
    wait_for(sim, lambda: sim.checker.top >= 8, 600)
    old = leader_of(sim)
    old_view = replica(sim, old).view
    others = [name for name in sim.nodes if name != old]
    sim.partition([[old], others])
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 12, sim.now + 900)
    new = leader_of(sim)
    assert new != old and replica(sim, new).view > old_view
    # The isolated leader cannot gather a quorum: it commits nothing meanwhile.
    assert sim.nodes[old].app.height <= top + replica(sim, old).k
    sim.heal_partition()
    target = sim.checker.top + 5
    wait_for(sim, lambda: sim.nodes[old].app.height >= target, sim.now + 900)
    assert replica(sim, old).view == replica(sim, new).view and replica(sim, old).active
    assert_agree(sim)


def test_bft_replica_restarted_mid_view_change_does_not_double_sign():
    sim = sim_for(31, n=4)
    sent = record_sends(sim)
    wait_for(sim, lambda: sim.checker.top >= 8, 600)
    leader = leader_of(sim)
    sim.crash(leader)  # the leader is gone for good: the others must change view
    victim = next(name for name in sim.nodes if name != leader)
    wait_for(sim, lambda: not replica(sim, victim).active, sim.now + 600, step=1)
    changing_to = replica(sim, victim).view
    sim.crash(victim)
    sim.run_until(sim.now + 15)
    sim.restart(victim)
    assert replica(sim, victim).view == changing_to and not replica(sim, victim).active
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 10, sim.now + 900)
    by_view: dict[int, set[bytes]] = {}
    for name, payload in sent:
        if name != victim:
            continue
        try:
            message = decode(payload)
        except MessageError:
            continue
        if isinstance(message, ViewChange) and message.signer == sim.nodes[victim].identity.node_id:
            by_view.setdefault(message.new_view, set()).add(payload)
    assert changing_to in by_view
    assert all(len(payloads) == 1 for payloads in by_view.values()), "two different view-changes for one view"
    assert_agree(sim)


def test_bft_validator_added_and_removed_under_load():
    sim = sim_for(41, n=4, config_overrides={"checkpoint_interval": 4, "window": 4})
    wait_for(sim, lambda: sim.checker.top >= 6, 600)
    assert sim.reconfigure("add") is not None
    added = "n4"
    wait_for(sim, lambda: sim.checker.latest_set().n == 5, sim.now + 600)
    new_set = sim.checker.latest_set()
    wait_for(sim, lambda: replica(sim, added).is_member and sim.nodes[added].app.height >= sim.checker.top - 4,
             sim.now + 900)
    # The added validator votes: commit certificates now carry its signature.
    wait_for(sim, lambda: any(
        new_set.index_of(sim.nodes[added].identity.node_id) in [i for i, _ in c.signatures]
        for c in _recent_certificates(sim)), sim.now + 600)
    removed = "n1"
    assert sim.reconfigure("remove", target=removed) is not None
    wait_for(sim, lambda: sim.checker.latest_set().n == 4, sim.now + 600)
    wait_for(sim, lambda: not replica(sim, removed).is_member, sim.now + 600)
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 12, sim.now + 900)
    assert sim.nodes[added].app.height >= top, "the added validator follows the chain"
    assert_agree(sim)  # every certificate was checked against the set in force at its height


def _recent_certificates(sim: Simulation):
    r = replica(sim, "n0")
    return [cert for _, cert in r.decided.values()]


def test_bft_replace_a_validator_key():
    sim = sim_for(42, n=4, config_overrides={"checkpoint_interval": 4, "window": 4})
    wait_for(sim, lambda: sim.checker.top >= 5, 600)
    old_key = sim.nodes["n2"].identity.node_id
    sim.reconfigure("replace", target="n2")
    wait_for(sim, lambda: old_key not in sim.checker.latest_set(), sim.now + 900)
    # The change takes effect LAG_INTERVALS checkpoints later; then the old key goes quiet.
    wait_for(sim, lambda: old_key not in sim.checker.set_in_force(sim.checker.top), sim.now + 900)
    wait_for(sim, lambda: not replica(sim, "n2").is_member and replica(sim, "n4").is_member, sim.now + 900)
    top = sim.checker.top
    wait_for(sim, lambda: sim.nodes["n4"].app.height >= top + 8, sim.now + 900)
    assert_agree(sim)


def test_bft_lagging_replica_catches_up_from_checkpoint():
    sim = sim_for(51, n=4, config_overrides={"checkpoint_interval": 4, "window": 4})
    wait_for(sim, lambda: sim.checker.top >= 3, 600)
    sim.crash("n3")
    top = sim.checker.top
    wait_for(sim, lambda: sim.checker.top >= top + 24, sim.now + 1200)
    for name in ("n0", "n1", "n2"):
        assert min(replica(sim, name).decided, default=top + 24) > top + 1, "peers forgot the batches it lacks"
    sim.restart("n3")
    target = sim.checker.top
    wait_for(sim, lambda: sim.nodes["n3"].app.height >= target, sim.now + 900)
    assert sim.nodes["n3"].app.installed_at, "it installed a certified checkpoint's state"
    assert replica(sim, "n3").stats["state fetches"] >= 1
    assert replica(sim, "n3").low >= sim.nodes["n3"].app.installed_at[0]
    assert_agree(sim)


def test_bft_run_with_real_ed25519_and_bls_signatures():
    sim = sim_for(61, n=4, signatures="ed25519", bls="real", config_overrides={"checkpoint_interval": 8, "window": 8})
    wait_for(sim, lambda: sim.checker.top >= 9, 600)
    assert all(replica(sim, n.name).low >= 8 for n in honest(sim)), "a BLS checkpoint certificate became stable"
    stable = replica(sim, "n0").stable
    stable.verify("sim/grid", sim.genesis)  # the ledger's own BLS check
    assert_agree(sim)
