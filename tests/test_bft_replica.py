"""One BFT replica (or a handful on a loss-free in-test network), driven event by event:
watermarks, signing rules across restarts, view-change proofs, timers, records."""

from __future__ import annotations

import dataclasses
import random
from collections import deque

import pytest

from consensus.bft import BftReplica
from consensus.bft import records as rec
from consensus.bft.audit import check_send
from consensus.bft.messages import (
    CommitVote,
    NewView,
    Prepare,
    PreparedCertificate,
    PrePrepare,
    Request,
    Status,
    ViewChange,
    decode,
    encode,
    new_view_payload,
    view_change_payload,
    vote_payload,
)
from consensus.bft.viewchange import new_view_plan
from consensus.sim.app import SimApplication, make_batch, make_bound_batch, make_invalid_batch
from consensus.sim.keys import Keyring
from consensus.types import (
    Broadcast,
    Commit,
    ConsensusConfig,
    ConsensusError,
    Executed,
    Persist,
    Propose,
    Receive,
    Restart,
    Send,
    SetTimer,
    Tick,
)
from ledger.crypto import Kind
from ledger.validators import ValidatorSet

CHAIN = "test/grid-north"


class Cluster:
    """Identities, genesis and config for n validators; builds replicas and signed messages."""

    def __init__(self, n: int = 4, *, k: int = 4, timeout: int = 20, seed: int = 1, signatures: str = "cheap") -> None:
        self.ring = Keyring(CHAIN, random.Random(seed), signatures=signatures)
        self.ids = [self.ring.new_identity(f"v{i}") for i in range(n)]
        self.genesis = ValidatorSet(tuple(i.validator for i in self.ids))
        self.config = ConsensusConfig(chain_id=CHAIN, validators=self.genesis, checkpoint_interval=k, window=k,
                                      timeout_ticks=timeout)
        self.app = SimApplication()

    def node(self, i: int) -> bytes:
        return self.ids[i].node_id

    def replica(self, i: int) -> BftReplica:
        return BftReplica(self.config, self.ids[i].signer, self.ring, SimApplication())

    def sign(self, i: int, kind: str, payload: bytes) -> bytes:
        return self.ids[i].signer.sign(kind, payload)

    def pre_prepare(self, leader: int, view: int, seq: int, batch: bytes) -> PrePrepare:
        d = self.app.digest(batch)
        return PrePrepare(view, seq, d, batch, self.sign(leader, Kind.PRE_PREPARE, vote_payload(seq, view, d)))

    def prepare(self, i: int, view: int, seq: int, digest: bytes) -> Prepare:
        return Prepare(view, seq, digest, self.sign(i, Kind.PREPARE, vote_payload(seq, view, digest)))

    def prepared(self, leader: int, voters: list[int], view: int, seq: int, digest: bytes) -> PreparedCertificate:
        pp = self.sign(leader, Kind.PRE_PREPARE, vote_payload(seq, view, digest))
        prepares = sorted((self.node(i), self.sign(i, Kind.PREPARE, vote_payload(seq, view, digest))) for i in voters)
        return PreparedCertificate(seq, view, digest, pp, tuple(prepares))

    def view_change(self, i: int, new_view: int, prepared=()) -> ViewChange:
        unsigned = ViewChange(new_view, self.node(i), None, tuple(prepared), b"")
        return dataclasses.replace(unsigned, signature=self.sign(i, Kind.VIEW_CHANGE, view_change_payload(unsigned)))

    def new_view(self, leader: int, view: int, vcs: list[ViewChange], plan=None) -> NewView:
        if plan is None:
            _, plan = new_view_plan(vcs)
        null = self.app.digest(b"")
        pps = tuple(
            (s, null if d is None else d, self.sign(leader, Kind.PRE_PREPARE, vote_payload(s, view, null if d is None else d)))
            for s, d in plan
        )
        unsigned = NewView(view, tuple(vcs), pps, b"")
        return dataclasses.replace(unsigned, signature=self.sign(leader, Kind.NEW_VIEW, new_view_payload(unsigned)))


def sends(actions) -> list:
    return [decode(a.payload) for a in actions if isinstance(a, (Send, Broadcast))]


def started(replica: BftReplica) -> dict[bytes, bytes]:
    """Boot a replica from empty records; return its durable records."""
    records: dict[bytes, bytes] = {}
    apply_persists(records, replica.step(Restart({}, 0)))
    return records


def apply_persists(records: dict[bytes, bytes], actions) -> None:
    for action in actions:
        if isinstance(action, Persist):
            for key, value in action.records:
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = value


class MiniNet:
    """A loss-free FIFO network for a few replicas, checking persist-before-send on every send."""

    def __init__(self, cluster: Cluster, up: list[int] | None = None) -> None:
        self.c = cluster
        self.up = list(range(len(cluster.ids))) if up is None else up
        self.replicas = {i: cluster.replica(i) for i in self.up}
        self.records = {i: {} for i in self.up}
        self.apps = {i: SimApplication() for i in self.up}
        self.queue: deque = deque()
        self.now = 0
        self.sent: list[tuple[int, object]] = []
        self.commits: dict[int, list[Commit]] = {i: [] for i in self.up}
        for i in self.up:
            self.step(i, Restart({}, 0))

    def step(self, i: int, event) -> None:
        actions = self.replicas[i].step(event)
        followups = []
        for action in actions:
            if isinstance(action, Persist):
                apply_persists(self.records[i], [action])
            elif isinstance(action, (Send, Broadcast)):
                to = action.to if isinstance(action, Send) else None
                problem = check_send(self.records[i], to, action.payload)
                assert problem is None, problem
                self.sent.append((i, decode(action.payload)))
                targets = [self.index(to)] if to is not None else [j for j in self.up if j != i]
                for j in targets:
                    if j in self.replicas:
                        self.queue.append((j, self.c.node(i), action.payload))
            elif isinstance(action, Commit):
                self.commits[i].append(action)
                app = self.apps[i]
                if action.height == app.height + 1:
                    followups.append(Executed(action.height, action.digest, app.execute(action.height, action.digest)))
        for event in followups:
            self.step(i, event)

    def index(self, node: bytes) -> int:
        return next(i for i, ident in enumerate(self.c.ids) if ident.node_id == node)

    def deliver_all(self, limit: int = 100_000) -> None:
        while self.queue and limit:
            limit -= 1
            j, sender, payload = self.queue.popleft()
            self.step(j, Receive(sender, payload))

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.now += 1
            for i in self.up:
                self.step(i, Tick(self.now))
            self.deliver_all()

    def propose(self, batch: bytes, to: int = 0) -> None:
        self.step(to, Propose(batch))
        self.deliver_all()


# ---------------------------------------------------------------------------- tests


def test_bft_window_must_reach_the_next_checkpoint():
    c = Cluster()
    with pytest.raises(ConsensusError, match="window"):
        BftReplica(dataclasses.replace(c.config, window=2), c.ids[0].signer, c.ring, SimApplication())


def test_bft_watermarks_refuse_far_future_sequence():
    c = Cluster(k=4)
    backup = c.replica(1)
    started(backup)
    batch = make_batch(1, b"meter readings")
    for seq in (5, 64, 10**9, 2**63):  # the window is (0, 4]
        actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, seq, batch))))
        assert not sends(actions), f"voted for sequence {seq} outside the window"
    assert backup.stats["dropped: sequence number outside the window"] == 4
    assert not backup.slots, "far-future sequence numbers must not take memory"
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 4, batch))))
    assert [type(m) for m in sends(actions)] == [Prepare]


def test_bft_backup_never_prepares_two_digests_for_one_view_and_sequence_even_after_restart():
    c = Cluster()
    backup = c.replica(1)
    records = started(backup)
    first, second = make_batch(1, b"a"), make_batch(2, b"b")
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, first))))
    apply_persists(records, actions)
    (prepare,) = sends(actions)
    assert prepare.digest == c.app.digest(first)
    # The replica crashes and restarts from its records; the leader now equivocates.
    again = c.replica(1)
    apply_persists(records, again.step(Restart(dict(records), 5)))
    actions = again.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, second))))
    assert not [m for m in sends(actions) if isinstance(m, Prepare) and m.digest == c.app.digest(second)]
    # The same digest may be repeated (a retransmission), never a different one.
    actions = again.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, first))))
    assert all(m.digest == c.app.digest(first) for m in sends(actions) if isinstance(m, Prepare))


def test_bft_commit_vote_only_after_the_prepared_certificate_is_recorded():
    c = Cluster()
    backup = c.replica(1)
    records = started(backup)
    batch = make_batch(1, b"settlement")
    d = c.app.digest(batch)
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, batch))))
    actions += backup.step(Receive(c.node(2), encode(c.prepare(2, 0, 1, d))))
    kinds = [type(a).__name__ for a in actions]
    commit_at = next(i for i, a in enumerate(actions) if isinstance(a, Broadcast) and isinstance(decode(a.payload), CommitVote))
    persisted = [k for a in actions[:commit_at] if isinstance(a, Persist) for k, _ in a.records]
    assert rec.prepared_key(1) in persisted and rec.signed_key("c", 1) in persisted, kinds
    apply_persists(records, actions)
    assert check_send(records, None, actions[commit_at].payload) is None


def test_bft_check_send_catches_a_vote_sent_before_it_was_recorded():
    c = Cluster()
    backup = c.replica(1)
    records = started(backup)
    batch = make_batch(1, b"x")
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, batch))))
    send = next(a for a in actions if isinstance(a, Broadcast))
    problem = check_send(records, None, send.payload)  # records as they were before the Persist
    assert problem is not None and "prepare" in problem
    forged_vc = c.view_change(1, 3)
    assert "view-change" in check_send(records, None, encode(forged_vc))


def test_bft_cluster_commits_in_order_and_persists_before_every_send():
    c = Cluster(n=4, k=4)
    net = MiniNet(c)
    for serial in range(1, 11):
        net.propose(make_batch(serial, b"load"), to=serial % 4)
    net.run(40)
    heights = {i: [cm.height for cm in net.commits[i]] for i in net.up}
    for i, hs in heights.items():
        assert hs == list(range(1, len(hs) + 1)), f"replica {i} committed out of order: {hs}"
        assert len(hs) == 10
    digests = {tuple(cm.digest for cm in net.commits[i]) for i in net.up}
    assert len(digests) == 1
    for cm in net.commits[0]:
        assert cm.certificate.protocol == "bft" and cm.certificate.height == cm.height
        assert len(cm.certificate.signatures) >= c.genesis.bft_quorum
    assert all(net.replicas[i].low == 8 for i in net.up), "checkpoints at 4 and 8 became stable"


def test_bft_commit_certificate_verifies_as_a_ledger_certificate_with_real_keys():
    c = Cluster(n=4, k=4, signatures="ed25519")
    net = MiniNet(c)
    for serial in range(1, 4):
        net.propose(make_batch(serial, b"real keys"), to=0)
    net.run(10)
    assert len(net.commits[2]) == 3
    for cm in net.commits[2]:
        cm.certificate.verify(CHAIN, c.genesis, height=cm.height, digest=cm.digest)


def test_bft_invalid_batch_from_leader_starts_a_view_change_without_voting():
    c = Cluster()
    backup = c.replica(2)
    started(backup)
    junk = make_invalid_batch(1, b"junk")
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, junk))))
    out = sends(actions)
    assert not [m for m in out if isinstance(m, Prepare)]
    assert [m.new_view for m in out if isinstance(m, ViewChange)] == [1]
    assert backup.view == 1 and not backup.active


def test_bft_backup_holds_a_block_that_arrives_before_its_parent_commits():
    """A ledger checks block h + 1 on the state after h. When the leader's pre-prepare for
    h + 1 overtakes the last commit vote this backup needs for h (the leader heard from a
    quorum first), the application cannot judge it yet: the backup holds it, judges it
    once h is executed, and prepares it, instead of blaming an honest leader."""
    c = Cluster()
    app = SimApplication(in_order=True)
    backup = BftReplica(c.config, c.ids[2].signer, c.ring, app)
    started(backup)
    first, second = make_bound_batch(1, 1), make_bound_batch(2, 2)
    d1 = app.digest(first)
    backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, first))))
    for i in (1, 3):
        backup.step(Receive(c.node(i), encode(c.prepare(i, 0, 1, d1))))
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 2, second))))
    assert not [m for m in sends(actions) if isinstance(m, (Prepare, ViewChange))]
    assert backup.view == 0 and backup.active
    actions = []
    for i in (0, 1):
        vote = CommitVote(0, 1, d1, c.sign(i, Kind.COMMIT, vote_payload(1, 0, d1)))
        actions += backup.step(Receive(c.node(i), encode(vote)))
    assert [a.height for a in actions if isinstance(a, Commit)] == [1]
    actions = backup.step(Executed(1, d1, app.execute(1, d1)))
    assert [(m.seq, m.digest) for m in sends(actions) if isinstance(m, Prepare)] == [(2, app.digest(second))]
    assert backup.view == 0 and backup.active


def test_bft_equivocation_proven_by_two_pre_prepares_starts_a_view_change():
    c = Cluster()
    backup = c.replica(3)
    started(backup)
    backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, make_batch(1, b"a")))))
    actions = backup.step(Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, make_batch(2, b"b")))))
    assert [m.new_view for m in sends(actions) if isinstance(m, ViewChange)] == [1]


def _backup_in_view_change(c: Cluster, i: int = 2):
    replica = c.replica(i)
    records = started(replica)
    apply_persists(records, replica.step(Propose(make_batch(99, b"waiting"))))
    apply_persists(records, replica.step(Tick(c.config.timeout_ticks + 1)))
    assert replica.view == 1 and not replica.active
    return replica, records


def test_bft_view_timeout_doubles():
    c = Cluster(n=7, timeout=10)
    subject, _ = _backup_in_view_change(c, 6)
    deadlines = []
    for view in range(1, 6):
        assert subject.view == view and not subject.active
        for i in range(5):
            if i != view:  # the leader of each view is silent; 5 others make a quorum with us
                subject.step(Receive(c.node(i), encode(c.view_change(i, view))))
        assert subject.nv_deadline is not None
        deadlines.append(subject.nv_deadline - subject.now)
        subject.step(Tick(subject.nv_deadline))
    assert deadlines == [10, 20, 40, 80, 80], "doubling per failed view change, capped at x8"
    # A commit resets the back-off.
    subject.attempts = 0
    assert subject.timeout() == 10


def test_bft_join_a_view_change_that_f_plus_one_replicas_ask_for():
    c = Cluster(n=4)
    backup = c.replica(3)
    started(backup)
    backup.step(Receive(c.node(1), encode(c.view_change(1, 5))))
    assert backup.view == 0 and backup.active, "one replica (maybe faulty) cannot move us"
    actions = backup.step(Receive(c.node(2), encode(c.view_change(2, 6))))
    assert backup.view == 5 and not backup.active
    assert [m.new_view for m in sends(actions) if isinstance(m, ViewChange)] == [5]


def test_bft_restart_mid_view_change_resends_the_same_view_change():
    c = Cluster()
    replica, records = _backup_in_view_change(c)
    signed = records[rec.view_change_key(1)]
    again = c.replica(2)
    actions = again.step(Restart(dict(records), 100))
    vcs = [a.payload for a in actions if isinstance(a, Broadcast) and isinstance(decode(a.payload), ViewChange)]
    assert vcs == [signed]
    assert again.view == 1 and not again.active
    # Asked again to change to view 1 (f + 1 others), it signs nothing new for that view.
    actions = again.step(Receive(c.node(0), encode(c.view_change(0, 1))))
    actions += again.step(Receive(c.node(1), encode(c.view_change(1, 1))))
    assert all(a.payload == signed for a in actions if isinstance(a, (Send, Broadcast))
               and isinstance(decode(a.payload), ViewChange) and decode(a.payload).new_view == 1)


def _prepared_batch(c: Cluster):
    batch = make_batch(7, b"prepared in view 0")
    return batch, c.app.digest(batch)


def test_bft_valid_new_view_is_accepted_and_re_proposes_the_prepared_batch():
    c = Cluster()
    batch, d = _prepared_batch(c)
    cert = c.prepared(0, [1, 2], 0, 2, d)
    vcs = [c.view_change(1, 1, [cert]), c.view_change(2, 1), c.view_change(3, 1)]
    nv = c.new_view(1, 1, vcs)
    assert [(s, dd) for s, dd, _ in nv.pre_prepares] == [(1, c.app.digest(b"")), (2, d)], "gap filled by the null batch"
    backup = c.replica(3)
    started(backup)
    backup.step(Receive(c.node(1), encode(nv)))
    assert backup.view == 1 and backup.active
    assert backup.nv_plan == {1: c.app.digest(b""), 2: d}


def test_bft_new_view_with_forged_prepared_certificate_is_refused():
    c = Cluster()
    batch, d = _prepared_batch(c)
    genuine = c.prepared(0, [1, 2], 0, 2, d)
    # v3 signs the prepares in the names of v1 and v2: the certificate is forged.
    forged = dataclasses.replace(genuine, prepares=tuple(sorted(
        (c.node(i), c.sign(3, Kind.PREPARE, vote_payload(2, 0, d))) for i in (1, 2))))
    # A prepared certificate made of commit votes (another kind) is forged too.
    wrong_kind = dataclasses.replace(genuine, prepares=tuple(sorted(
        (c.node(i), c.sign(i, Kind.COMMIT, vote_payload(2, 0, d))) for i in (1, 2))))
    # Too few prepares.
    short = dataclasses.replace(genuine, prepares=genuine.prepares[:1])
    for bad in (forged, wrong_kind, short):
        vcs = [c.view_change(1, 1, [bad]), c.view_change(2, 1), c.view_change(3, 1)]
        backup = c.replica(3)
        started(backup)
        backup.step(Receive(c.node(1), encode(c.new_view(1, 1, vcs))))
        assert backup.view == 0 and backup.active, "a new-view resting on a forged certificate was accepted"
        assert backup.stats["dropped: invalid new-view"] == 1
        assert "does not verify" in backup.last_refusal


@pytest.mark.parametrize("defect", ["drops the prepared batch", "too few view-changes", "not the leader",
                                    "view-change for another view", "duplicate signer"])
def test_bft_new_view_that_does_not_prove_its_choices_is_refused(defect):
    c = Cluster()
    batch, d = _prepared_batch(c)
    cert = c.prepared(0, [1, 2], 0, 2, d)
    vcs = [c.view_change(1, 1, [cert]), c.view_change(2, 1), c.view_change(3, 1)]
    leader = 1
    plan = None
    if defect == "drops the prepared batch":
        plan = [(1, None), (2, None)]
    elif defect == "too few view-changes":
        vcs = vcs[1:]
    elif defect == "not the leader":
        leader = 2
    elif defect == "view-change for another view":
        vcs[2] = c.view_change(3, 2)
    elif defect == "duplicate signer":
        vcs[2] = vcs[1]
    backup = c.replica(3)
    started(backup)
    backup.step(Receive(c.node(leader), encode(c.new_view(leader, 1, vcs, plan))))
    assert backup.view == 0 and backup.active
    assert backup.stats["dropped: invalid new-view"] == 1


def test_bft_new_leader_builds_a_new_view_that_keeps_a_batch_committed_in_the_old_view():
    c = Cluster()
    net = MiniNet(c, up=[1, 2, 3])  # the leader of view 0 is down from the start
    batch, d = _prepared_batch(c)
    # Before it went down, v0 got the batch prepared by v1 and v2 in view 0 at sequence 1.
    for i in (1, 2):
        net.step(i, Receive(c.node(0), encode(c.pre_prepare(0, 0, 1, batch))))
    net.deliver_all()
    assert all(net.replicas[i].prepared.get(1) is not None for i in (1, 2))
    net.propose(make_batch(8, b"next"), to=3)
    net.run(60)
    assert all(r.view >= 1 and r.active for r in net.replicas.values())
    for i in net.up:
        assert [cm.digest for cm in net.commits[i]][:1] == [d], "the prepared batch kept its height"


def test_bft_restart_refuses_truncated_or_corrupt_records():
    c = Cluster()
    net = MiniNet(c)
    for serial in range(1, 4):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(5)
    good = dict(net.records[1])
    c.replica(1).step(Restart(dict(good), 10))  # sanity: the records as written load
    some_prepare = next(k for k in good if k.startswith(b"bft/sig/p/"))
    cases = {
        "the view record is missing": {k: v for k, v in good.items() if k != rec.VIEW},
        "a value is cut short": {**good, rec.COMMITTED: good[rec.COMMITTED][:-1]},
        "a vote record is garbage": {**good, some_prepare: b"\xc1"},
        "a batch no longer matches its digest": {
            **good, next(k for k in good if k.startswith(b"bft/batch/")): b"tampered"},
        "records of another validator": {**good, rec.META: rec.meta_value(c.node(2))},
        "an unknown record": {**good, b"bft/mystery": b"\x90"},
        "a commit vote without its prepared certificate": {
            k: v for k, v in good.items() if not k.startswith(b"bft/prep/")},
    }
    for what, records in cases.items():
        with pytest.raises(ConsensusError):
            c.replica(1).step(Restart(records, 10))
            pytest.fail(f"restarted although {what}")


def test_bft_garbage_and_strangers_are_dropped_and_counted():
    c = Cluster()
    stranger = Keyring(CHAIN, random.Random(99)).new_identity("outsider")
    backup = c.replica(1)
    started(backup)
    rng = random.Random(5)
    for _ in range(200):
        backup.step(Receive(c.node(2), rng.randbytes(rng.randint(0, 80))))
    assert backup.stats["dropped: malformed"] >= 190
    batch = make_batch(1, b"x")
    d = c.app.digest(batch)
    strange = [
        Prepare(0, 1, d, stranger.signer.sign(Kind.PREPARE, vote_payload(1, 0, d))),
        Request(batch),
        CommitVote(0, 1, d, stranger.signer.sign(Kind.COMMIT, vote_payload(1, 0, d))),
    ]
    for message in strange:
        assert not sends(backup.step(Receive(stranger.node_id, encode(message))))
    # A vote whose signature is not the sender's, or is made for another chain, is dropped.
    other_chain = Keyring("test/grid-south", random.Random(1)).new_identity("v2")
    backup.step(Receive(c.node(2), encode(Prepare(0, 1, d, other_chain.signer.sign(Kind.PREPARE, vote_payload(1, 0, d))))))
    backup.step(Receive(c.node(2), encode(Prepare(0, 1, d, c.sign(3, Kind.PREPARE, vote_payload(1, 0, d))))))
    assert backup.stats["dropped: bad signature"] == 2
    assert not backup.pending


def test_bft_view_change_flood_from_one_validator_takes_bounded_memory():
    c = Cluster()
    backup = c.replica(3)
    started(backup)
    for view in range(1, 500):
        backup.step(Receive(c.node(1), encode(c.view_change(1, view))))
    assert sum(len(v) for v in backup.vcs.values()) <= 3
    assert backup.view == 0 and backup.active


def test_bft_status_of_a_lagging_peer_is_answered_with_decided_batches():
    c = Cluster()
    net = MiniNet(c, up=[0, 1, 2])
    for serial in range(1, 4):
        net.propose(make_batch(serial, b"x"), to=0)
    net.run(3)
    helper = net.replicas[0]
    assert helper.committed == 3
    actions = helper.step(Receive(c.node(3), encode(Status(0, True, 0, 0, c.genesis.hash))))
    decided = [m for m in sends(actions) if type(m).__name__ == "Decided"]
    assert [m.seq for m in decided] == [1, 2, 3]
    # Rate-limited: asking again at once gets nothing.
    assert not sends(helper.step(Receive(c.node(3), encode(Status(0, True, 0, 0, c.genesis.hash)))))


def test_bft_timer_is_requested_for_the_earliest_deadline():
    c = Cluster()
    replica = c.replica(1)
    actions = replica.step(Restart({}, 0))
    timers = [a.at for a in actions if isinstance(a, SetTimer)]
    assert timers and timers[-1] == replica.resend_every


def test_bft_request_flood_from_one_validator_takes_bounded_memory():
    c = Cluster()
    backup = c.replica(2)
    started(backup)
    for serial in range(1, 600):
        backup.step(Receive(c.node(3), encode(Request(make_batch(serial, b"flood")))))
    assert len(backup.pending) == 256
    assert backup.stats["dropped: request beyond the sender's share"] == 599 - 256
    backup.step(Receive(c.node(1), encode(Request(make_batch(10_000, b"honest")))))
    assert len(backup.pending) == 257, "another validator's batch still gets in"


def test_bft_audit_reports_a_conflicting_commit_certificate():
    """No correct run can produce two certified batches for one height; if one is ever
    shown to a replica (more than f validators lied), it says so to the simulator."""
    from consensus.bft import SPEC
    from consensus.bft.messages import Decided
    from consensus.bft.proofs import build_commit_certificate

    c = Cluster()
    net = MiniNet(c)
    net.propose(make_batch(1, b"the batch everyone committed"), to=0)
    net.run(2)
    replica = net.replicas[1]
    assert replica.committed == 1 and SPEC.audit(replica) == []
    other = make_batch(2, b"a batch four liars certify")
    d = c.app.digest(other)
    votes = {c.node(i): c.sign(i, Kind.COMMIT, vote_payload(1, 0, d)) for i in range(4)}
    forged = build_commit_certificate(c.genesis, 1, 0, d, votes)
    replica.step(Receive(c.node(2), encode(Decided(1, other, forged))))
    assert SPEC.audit(replica) == ["anomaly: a valid commit certificate for another batch at a committed height (x1)"]
