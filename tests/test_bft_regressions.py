"""Bugs the simulator's seed sweeps found in the BFT replica, each pinned by a scripted
test (seed numbers are of simulator v2/v3 and name the run that found it)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from consensus.bft import BftReplica
from consensus.bft import records as rec
from consensus.bft.messages import CatchUp, CheckpointVote, Status, ViewChange, encode
from consensus.bft.schedule import effective_after
from consensus.sim.app import SimApplication, make_batch, make_reconfig
from consensus.types import Commit, Receive, Restart, StateInstalled, Tick
from ledger import codec
from ledger.certificate import checkpoint_message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bft_replica import Cluster, MiniNet, apply_persists, sends, started  # noqa: E402


def test_bft_new_view_relayed_by_a_peer_is_accepted():
    """Seed 132: a replica left in a view change got the new-view from a peer (answering
    its STATUS), refused it as 'not from the leader', and waited forever."""
    c = Cluster()
    vcs = [c.view_change(i, 1) for i in (0, 2, 3)]
    nv = c.new_view(1, 1, vcs)
    backup = c.replica(3)
    started(backup)
    backup.step(Receive(c.node(2), encode(nv)))  # relayed by v2; signed by v1, the leader
    assert backup.view == 1 and backup.active


def test_bft_replica_left_behind_in_a_view_change_is_brought_along():
    """Seed 80: two replicas waited in view change 1 with two view-changes each (no
    quorum, so no timer) while the third had moved on to view 2: nobody resent the
    view-changes for view 1, and the cluster stalled."""
    c = Cluster()
    ahead = c.replica(0)
    started(ahead)
    for i in (1, 2, 3):
        ahead.step(Receive(c.node(i), encode(c.view_change(i, 1))))
    assert ahead.view == 1 and ahead.nv_deadline is not None  # the leader of view 1 is silent
    ahead.step(Tick(ahead.nv_deadline))
    assert ahead.view == 2
    behind = c.replica(2)
    started(behind)
    behind.step(Receive(c.node(3), encode(c.view_change(3, 1))))
    behind.step(Receive(c.node(1), encode(c.view_change(1, 1))))
    assert behind.view == 1 and not behind.active
    status = next(m for m in sends(behind.step(Tick(behind.resend_at))) if isinstance(m, Status))
    relayed = sends(ahead.step(Receive(c.node(2), encode(status))))
    assert {m.signer for m in relayed if isinstance(m, ViewChange) and m.new_view == 1} >= {c.node(0)}
    for message in relayed:
        behind.step(Receive(c.node(0), encode(message)))
    assert behind.nv_deadline is not None, "with a quorum of view-changes its timer runs"


def test_bft_stale_state_install_is_ignored():
    """Seed 8 (v2): two fetches answered out of order; the older installation arrived after
    the replica had moved past it, and the replica halted."""
    c = Cluster()
    net = MiniNet(c)
    for serial in range(1, 10):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(5)
    replica = net.replicas[1]
    assert replica.committed == 9 and replica.stable is not None and replica.stable.height == 8
    actions = replica.step(StateInstalled(replica.stable))
    assert replica.committed == 9 and replica.stats["dropped: state installed below the committed height"] == 1
    assert not [a for a in actions if isinstance(a, Commit)]


def test_bft_restart_hands_over_again_the_commits_it_recorded():
    """All-crash seeds: a torn crash fell between recording a commit and handing it to the
    application; the restarted replica believed it had committed it and went on."""
    c = Cluster()
    net = MiniNet(c)
    for serial in range(1, 4):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(3)
    records = dict(net.records[2])
    actions = c.replica(2).step(Restart(records, 50))
    assert [a.height for a in actions if isinstance(a, Commit)] == [1, 2, 3]


def test_bft_restarted_replica_counts_its_own_checkpoint_vote():
    """Seed 15 (v2): after everyone restarted, each replica's own checkpoint vote (from its
    records) was not counted, so no checkpoint became stable and the window stayed shut."""
    c = Cluster(k=4)
    net = MiniNet(c)
    for serial in range(1, 5):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(1)
    records = dict(net.records[1])
    # Keep v1's own vote for height 4, but pretend the checkpoint never became stable.
    own = net.replicas[1].stable
    assert own is not None and own.height == 4
    vote = CheckpointVote(4, own.block_hash, own.state_root,
                          c.ids[1].signer.bls_sign(checkpoint_message(c.config.chain_id, 4, own.block_hash, own.state_root)))
    records.pop(rec.STABLE)
    records[rec.checkpoint_vote_key(4)] = codec.encode([4, vote.digest, vote.state_root, vote.signature])
    again = c.replica(1)
    apply_persists(records, again.step(Restart(records, 10)))
    assert again.low == 0
    for i in (0, 2):
        share = c.ids[i].signer.bls_sign(checkpoint_message(c.config.chain_id, 4, own.block_hash, own.state_root))
        again.step(Receive(c.node(i), encode(CheckpointVote(4, own.block_hash, own.state_root, share))))
    assert again.low == 4, "two peers' votes and its own recorded one make the quorum"


def test_bft_joining_validator_learns_the_set_changes_it_skipped_from_peers():
    """Seeds 59 and 67 (v2): a new validator installed state past a reconfiguration it
    never executed, kept the genesis set for its window and counted quorums with it."""
    c = Cluster(k=4)
    joiner_id = c.ring.new_identity("v4")
    bigger = c.genesis.with_change(add=joiner_id.validator)
    after = effective_after(1, 4)
    net = MiniNet(c)
    net.propose(make_reconfig(1, bigger), to=0)
    for serial in range(2, after + 1):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(5)
    helper = net.replicas[0]
    assert helper.low == after and helper.window_set == bigger
    joiner = BftReplica(c.config, joiner_id.signer, c.ring, SimApplication())
    started(joiner)
    joiner.step(StateInstalled(helper.stable))  # a driver that tells no validator sets
    assert joiner.low == after and joiner.window_set == c.genesis, "it cannot know what it skipped"
    status = next(m for m in sends(joiner.step(Tick(joiner.resend_at))) if isinstance(m, Status))
    answer = [m for m in sends(helper.step(Receive(joiner_id.node_id, encode(status)))) if isinstance(m, CatchUp)]
    assert answer and [d.seq for d in answer[0].changes] == [1], "the helper sees the mismatch and sends the proof"
    joiner.step(Receive(c.node(0), encode(answer[0])))
    assert joiner.window_set == bigger and joiner.is_member


def test_bft_state_install_takes_the_validator_sets_recorded_in_the_state():
    c = Cluster(k=4)
    net = MiniNet(c, up=[0, 1, 2])
    for serial in range(1, 10):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(5)
    cert = net.replicas[0].stable
    newcomer_id = c.ring.new_identity("v4")
    later = c.genesis.with_change(add=newcomer_id.validator)
    lagging = c.replica(3)
    started(lagging)
    lagging.step(Receive(c.node(0), encode(CatchUp(cert, ()))))
    assert lagging.fetching == cert
    lagging.step(StateInstalled(cert, ((cert.height, c.genesis), (cert.height + 4, later))))
    assert lagging.committed == cert.height and lagging.low == cert.height
    assert lagging.schedule.set_after(cert.height + 4) == later
    assert lagging.hi == cert.height + 4, "the window stops where the set changes"


def test_bft_state_install_restating_the_current_set_does_not_narrow_the_window():
    """Seed 14567 (v4): the driver's StateInstalled restated the set in force at the
    checkpoint; recorded as a 'change', it cut the replica's window short of its peers',
    so it refused their view-changes (prepared certificates 'outside the window') and the
    view change never completed."""
    c = Cluster(k=4)
    c.config = dataclasses.replace(c.config, window=16)
    net = MiniNet(c, up=[0, 1, 2])
    for serial in range(1, 10):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(5)
    cert = net.replicas[0].stable
    lagging = c.replica(3)
    started(lagging)
    lagging.step(Receive(c.node(0), encode(CatchUp(cert, ()))))
    lagging.step(StateInstalled(cert, ((cert.height, c.genesis),)))
    peer = net.replicas[0]
    assert lagging.low == peer.low == cert.height
    assert lagging.hi == peer.hi == cert.height + 16
    assert lagging.schedule.window_digest(cert.height, 16) == peer.schedule.window_digest(cert.height, 16)
    # The windows of replicas with older checkpoints, against which view-changes are
    # checked, must be the same for everyone too.
    older = cert.height - 4
    assert lagging.schedule.window_end(older, 16) == peer.schedule.window_end(older, 16) == older + 16


class _HeightBoundApp(SimApplication):
    """Batches in ``stale`` are no longer valid at any height, like a node's block once
    the ledger has moved past the height it was built for."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: set[bytes] = set()

    def validate(self, height: int, batch: bytes) -> bool:
        return batch not in self.stale and super().validate(height, batch)


def test_bft_own_pending_batch_that_became_invalid_is_dropped_not_resent_forever():
    """node-bugs #3: a validator's own batch (a block built for one height) that was never
    ordered was re-announced at every resend period, forever, and refused every time."""
    from consensus.bft.messages import Request
    from consensus.types import Propose

    c = Cluster()
    app = _HeightBoundApp()
    backup = BftReplica(c.config, c.ids[1].signer, c.ring, app)
    started(backup)
    batch = make_batch(1, b"nudge")
    backup.step(Propose(batch))
    digest = app.digest(batch)
    assert digest in backup.pending
    sent = sends(backup.step(Tick(backup.resend_at)))
    assert any(isinstance(m, Request) and m.batch == batch for m in sent), "still valid: offered again"
    app.stale.add(batch)
    sent = sends(backup.step(Tick(backup.resend_at)))
    assert not any(isinstance(m, Request) and m.batch == batch for m in sent)
    assert digest not in backup.pending
    assert backup.stats["dropped: own pending batch became invalid"] == 1


def test_bft_backup_forgets_a_waiting_batch_that_a_commit_made_invalid_instead_of_timing_the_leader_out():
    """A validator's nudge (a block built for height h) reaches every backup; the leader
    commits another block at h. The nudge can never be ordered: kept waiting, its fairness
    timer expired and the backups changed view against an honest leader."""
    from consensus.types import Propose

    c = Cluster()
    apps = {i: _HeightBoundApp() for i in range(4)}
    net = MiniNet(c)
    for i in range(4):
        net.replicas[i] = BftReplica(c.config, c.ids[i].signer, c.ring, apps[i])
        net.records[i] = {}
        net.step(i, Restart({}, 0))
    nudge = make_batch(7, b"nudge for height 1")
    apps[0].stale.add(nudge)  # the leader has its own block for height 1 under way
    net.step(1, Propose(nudge))  # validator 1 offers it to the leader, then to everyone
    net.run(int(net.replicas[1].resend_every) + 1)
    digest = apps[2].digest(nudge)
    assert all(digest in net.replicas[i].pending for i in (1, 2, 3)), "backups hold the offered batch"
    for app in apps.values():
        app.stale.add(nudge)  # once height 1 is filled, the nudge is valid nowhere
    net.step(0, Propose(make_batch(1, b"the leader's block")))
    net.run(5)
    assert all(r.committed >= 1 for r in net.replicas.values())
    assert all(digest not in r.pending for r in net.replicas.values())
    net.run(6 * c.config.timeout_ticks)
    assert all(r.view == 0 for r in net.replicas.values()), "no view change against the honest leader"
