"""Raft replica rules, one replica at a time, driven by hand-made events."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.raft import messages as m
from consensus.raft import records as rec
from consensus.raft.replica import CANDIDATE, FOLLOWER, LEADER, RaftReplica
from consensus.sim.app import SimApplication, make_batch, make_reconfig
from consensus.sim.certs import verify_commit_certificate
from consensus.sim.keys import Keyring
from consensus.types import (
    Commit,
    ConsensusConfig,
    ConsensusError,
    Persist,
    Propose,
    Receive,
    Restart,
    Send,
    SetTimer,
    Tick,
)
from ledger.validators import ValidatorSet

CHAIN = "test/raft"


class Cluster:
    """Identities and a shared configuration for hand-driven replicas."""

    def __init__(self, n: int = 3, **config) -> None:
        self.keyring = Keyring(CHAIN, random.Random(11))
        self.ids = [self.keyring.new_identity(f"n{i}") for i in range(n)]
        self.validators = ValidatorSet(tuple(i.validator for i in self.ids))
        self.config = ConsensusConfig(chain_id=CHAIN, validators=self.validators, **config)

    def node(self, i: int) -> bytes:
        return self.ids[i].node_id

    def replica(self, i: int, records: dict | None = None, now: int = 0) -> RaftReplica:
        replica = RaftReplica(self.config, self.ids[i].signer, self.keyring, SimApplication())
        replica.step(Restart(records or {}, now))
        return replica


def sends(actions, kind=None):
    out = []
    for action in actions:
        if isinstance(action, Send):
            msg = m.decode(action.payload)
            if kind is None or isinstance(msg, kind):
                out.append((action.to, msg))
    return out


def receive(replica, sender, message, now=None):
    return replica.step(Receive(sender, m.encode(message), now))


def elect(cluster: Cluster, replica: RaftReplica, voters=(1,)) -> list:
    """Make ``replica`` (n0) leader with votes from ``voters``; return the actions of the last step."""
    now = replica.election_deadline
    actions = replica.step(Tick(now))
    assert sends(actions, m.PreVote), "an election starts with a pre-vote"
    for v in voters:
        actions = receive(replica, cluster.node(v), m.PreVoteReply(replica.term + 1, True), now)
        if replica.role == CANDIDATE:
            break
    assert replica.role == CANDIDATE
    for v in voters:
        actions = receive(replica, cluster.node(v), m.VoteReply(replica.term, True), now)
        if replica.role == LEADER:
            break
    assert replica.role == LEADER
    return actions


def entries(*specs):
    return tuple(m.Entry(term, kind, data) for term, kind, data in specs)


def test_raft_vote_is_persisted_before_the_reply():
    cluster = Cluster()
    follower = cluster.replica(1)
    actions = receive(follower, cluster.node(0), m.RequestVote(1, 0, 0), now=50)
    kinds = [type(a).__name__ for a in actions]
    persist_at = next(i for i, a in enumerate(actions) if isinstance(a, Persist))
    reply_at = next(i for i, a in enumerate(actions) if isinstance(a, Send))
    assert persist_at < reply_at, kinds
    persisted = dict(actions[persist_at].records)
    assert rec.unseal(rec.HARD, persisted[rec.HARD]) == [1, cluster.node(0)]
    (_, reply), = sends(actions, m.VoteReply)
    assert reply.granted and reply.term == 1


def test_raft_restart_remembers_term_and_vote():
    cluster = Cluster()
    follower = cluster.replica(1)
    records: dict = {}
    for action in receive(follower, cluster.node(0), m.RequestVote(1, 0, 0), now=50):
        if isinstance(action, Persist):
            records.update(action.records)
    restarted = cluster.replica(1, records, now=60)
    assert (restarted.term, restarted.voted_for) == (1, cluster.node(0))
    (_, reply), = sends(receive(restarted, cluster.node(2), m.RequestVote(1, 0, 0), now=61), m.VoteReply)
    assert not reply.granted, "a restarted replica must not vote twice in one term"


def test_raft_election_starts_with_prevote_and_keeps_the_term():
    cluster = Cluster()
    replica = cluster.replica(0)
    actions = replica.step(Tick(replica.election_deadline))
    assert replica.term == 0, "a pre-vote does not change the term"
    assert {msg.term for _, msg in sends(actions, m.PreVote)} == {1}


def test_raft_prevote_refused_while_the_leader_is_heard():
    cluster = Cluster()
    follower = cluster.replica(1)
    receive(follower, cluster.node(0), m.AppendEntries(1, 0, 0, (), 0, (), None, None), now=10)
    (_, reply), = sends(receive(follower, cluster.node(2), m.PreVote(2, 5, 1), now=12), m.PreVoteReply)
    assert not reply.granted
    # The same request after the lease ran out is granted.
    (_, reply), = sends(receive(follower, cluster.node(2), m.PreVote(2, 5, 1), now=10 + 2 * cluster.config.timeout_ticks), m.PreVoteReply)
    assert reply.granted


def test_raft_new_leader_appends_a_noop_of_its_term():
    cluster = Cluster()
    leader = cluster.replica(0)
    actions = elect(cluster, leader)
    assert leader.log.last_index == 1 and leader.log.entry(1) == m.Entry(leader.term, m.NOOP, b"")
    appends = sends(actions, m.AppendEntries)
    assert {to for to, _ in appends} == {cluster.node(1), cluster.node(2)}


def test_raft_figure8_previous_term_entry_not_committed_by_count():
    """An entry of term 2 held by a majority is not committed by a leader of term 4 until an
    entry of term 4 is (Raft paper, section 5.4.2)."""
    cluster = Cluster()
    batch = make_batch(1, b"from-term-2")
    records = {
        rec.HARD: rec.seal(rec.HARD, [3, None]),
        rec.TAIL: rec.seal(rec.TAIL, [2, 2]),
        rec.entry_key(1): rec.seal(rec.entry_key(1), [1, m.NOOP, b""]),
        rec.entry_key(2): rec.seal(rec.entry_key(2), [2, m.BATCH, batch]),
    }
    leader = cluster.replica(0, records, now=100)
    elect(cluster, leader)
    assert leader.term == 4 and leader.log.last_index == 3
    # Follower n1 has entries 1..2 (the term-2 entry): a majority holds index 2.
    actions = receive(leader, cluster.node(1), m.AppendReply(4, True, 2, 0, 0, 0), now=101)
    assert leader.commit_index == 0, "an earlier term's entry must not commit by counting"
    assert not [a for a in actions if isinstance(a, Commit)]
    # Once the no-op of term 4 is on a majority, everything up to it commits.
    actions = receive(leader, cluster.node(1), m.AppendReply(4, True, 3, 0, 0, 0), now=102)
    assert leader.commit_index == 3
    (commit,) = [a for a in actions if isinstance(a, Commit)]
    assert (commit.height, commit.batch) == (1, batch)
    verify_commit_certificate(CHAIN, cluster.validators, commit.certificate, cluster.keyring)
    assert commit.certificate.round == 4


def test_raft_late_duplicate_append_never_truncates():
    cluster = Cluster()
    follower = cluster.replica(1)
    leader = cluster.node(0)
    b = [make_batch(i, b"x") for i in range(5)]
    first = entries((1, m.NOOP, b""), (1, m.BATCH, b[0]), (1, m.BATCH, b[1]))
    longer = first + entries((1, m.BATCH, b[2]), (1, m.BATCH, b[3]))
    receive(follower, leader, m.AppendEntries(1, 0, 0, first, 0, (), None, None), now=5)
    receive(follower, leader, m.AppendEntries(1, 0, 0, longer, 0, (), None, None), now=6)
    assert follower.log.last_index == 5
    actions = receive(follower, leader, m.AppendEntries(1, 0, 0, first, 0, (), None, None), now=7)
    assert follower.log.last_index == 5, "a late duplicate must not shorten the log"
    deletions = [k for a in actions if isinstance(a, Persist) for k, v in a.records if v is None]
    assert deletions == []
    (_, reply), = sends(actions, m.AppendReply)
    assert reply.success and reply.match_index == 3, "the reply acknowledges what that message carried"


def test_raft_conflicting_append_truncates_from_the_conflict():
    cluster = Cluster()
    follower = cluster.replica(1)
    b = [make_batch(i, b"y") for i in range(4)]
    receive(follower, cluster.node(0), m.AppendEntries(1, 0, 0, entries((1, m.NOOP, b""), (1, m.BATCH, b[0]), (1, m.BATCH, b[1])), 1, (), None, None), now=5)
    actions = receive(follower, cluster.node(2), m.AppendEntries(2, 1, 1, entries((2, m.NOOP, b""),), 1, (), None, None), now=40)
    assert follower.log.last_index == 2 and follower.log.term_at(2) == 2
    deletions = sorted(k for a in actions if isinstance(a, Persist) for k, v in a.records if v is None)
    assert deletions == [rec.entry_key(3)]


def test_raft_append_with_a_gap_is_refused_with_a_hint():
    cluster = Cluster()
    follower = cluster.replica(1)
    (_, reply), = sends(receive(follower, cluster.node(0), m.AppendEntries(1, 7, 1, entries((1, m.NOOP, b"")), 0, (), None, None), now=5), m.AppendReply)
    assert not reply.success and reply.conflict_index == 1
    assert follower.log.last_index == 0


def test_raft_followers_commit_only_with_the_leaders_signature():
    cluster = Cluster()
    leader = cluster.replica(0)
    follower = cluster.replica(1)
    (_, noop), = [s for s in sends(elect(cluster, leader), m.AppendEntries) if s[0] == cluster.node(1)]
    receive(follower, cluster.node(0), noop, now=30)
    batch = make_batch(7, b"z")
    actions = leader.step(Propose(batch, 30))
    (to, append), = [s for s in sends(actions, m.AppendEntries) if s[0] == cluster.node(1)]
    # A commit index without the signature: the follower waits.
    actions = receive(follower, cluster.node(0), m.AppendEntries(append.term, append.prev_index, append.prev_term, append.entries, 2, (), None, None), now=31)
    assert follower.commit_index == 2
    assert not [a for a in actions if isinstance(a, Commit)]
    # The leader commits once the follower acknowledges, and its next message carries the signature.
    receive(leader, cluster.node(1), m.AppendReply(leader.term, True, 2, 0, 0, 0), now=32)
    assert leader.commit_index == 2
    leader_actions = leader.step(Tick(leader.heartbeat_due))
    (to, heartbeat), = [s for s in sends(leader_actions, m.AppendEntries) if s[0] == cluster.node(1)]
    assert [c.height for c in heartbeat.certs] == [1]
    actions = receive(follower, cluster.node(0), heartbeat, now=33)
    (commit,) = [a for a in actions if isinstance(a, Commit)]
    verify_commit_certificate(CHAIN, cluster.validators, commit.certificate, cluster.keyring)
    # A forged signature is refused.
    forged = m.CertShare(1, leader.term, 0, bytes(64))
    other = cluster.replica(2)
    receive(other, cluster.node(0), m.AppendEntries(leader.term, 0, 0, leader.log.slice(1, 2), 2, (forged,), None, None), now=34)
    assert other.applied_height == 0 and other.counters.get("bad_commit_signature") == 1


def test_raft_single_server_change_only_after_own_term_commit_and_one_at_a_time():
    cluster = Cluster(n=4)
    three = ValidatorSet(cluster.validators.validators[:3])
    cluster.config = ConsensusConfig(chain_id=CHAIN, validators=three)
    leader = cluster.replica(0)
    elect(cluster, leader)
    add = make_reconfig(1, three.with_change(add=cluster.ids[3].validator))
    leader.step(Propose(add, 30))
    assert leader.log.last_index == 1, "no change before the leader commits an entry of its own term"
    receive(leader, cluster.node(1), m.AppendReply(leader.term, True, 1, 0, 0, 0), now=31)
    assert leader.log.last_index == 2 and len(leader.log.configs) == 2, "the deferred change goes in after the no-op commits"
    assert cluster.node(3) in leader.progress, "the new member is replicated to at once"
    remove = make_reconfig(2, leader.log.latest_config().with_change(remove=cluster.node(2)))
    leader.step(Propose(remove, 32))
    assert leader.log.last_index == 2, "a second change waits for the first to commit"
    two_at_once = make_reconfig(3, ValidatorSet(cluster.validators.validators[:2]))  # drops n2 and n3
    leader.step(Propose(two_at_once, 33))
    assert leader.counters.get("reconfiguration_refused") == 1
    # The first change commits with a majority of the NEW configuration (3 of 4).
    receive(leader, cluster.node(1), m.AppendReply(leader.term, True, 2, 0, 0, 0), now=34)
    assert leader.commit_index == 1
    receive(leader, cluster.node(3), m.AppendReply(leader.term, True, 2, 0, 0, 0), now=35)
    assert leader.commit_index == 2
    assert leader.log.last_index == 3 and leader.log.latest_config().n == 3


def test_raft_garbage_from_peer_is_dropped_and_counted():
    cluster = Cluster()
    replica = cluster.replica(1)
    for payload in (b"", b"\xc1", b"\x93\x01\x02", m.encode(m.VoteReply(1, True)) + b"\x00", b"\x92\x63\x01"):
        actions = replica.step(Receive(cluster.node(0), payload, 3))
        assert all(isinstance(a, SetTimer) for a in actions)
    assert replica.counters["garbage"] == 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_raft_any_bytes_from_a_peer_never_crash_the_replica(payload):
    cluster = _SHARED
    replica = cluster.replica(1)
    replica.step(Receive(cluster.node(0), payload, 1))


_SHARED = Cluster()

_uint = st.integers(min_value=0, max_value=2**40)
_entry = st.builds(lambda t, d: m.Entry(t, m.BATCH, d), _uint, st.binary(max_size=40)) | st.builds(
    lambda t: m.Entry(t, m.NOOP, b""), _uint)
_share = st.builds(m.CertShare, st.integers(1, 2**40), _uint, st.integers(0, 9), st.binary(min_size=64, max_size=64))
_messages = st.one_of(
    st.builds(m.PreVote, _uint, _uint, _uint),
    st.builds(m.PreVoteReply, _uint, st.booleans()),
    st.builds(m.RequestVote, _uint, _uint, _uint),
    st.builds(m.VoteReply, _uint, st.booleans()),
    st.builds(lambda t, p, pt, es, c, cs: m.AppendEntries(t, p, pt, tuple(es), c, tuple(cs), None, None),
              _uint, _uint, _uint, st.lists(_entry, max_size=4), _uint,
              st.lists(_share, max_size=3)),
    st.builds(m.AppendReply, _uint, st.booleans(), _uint, _uint, _uint, _uint),
    st.builds(m.SnapshotReply, _uint, _uint, _uint),
    st.builds(m.CheckpointVote, _uint, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), st.binary(min_size=96, max_size=96)),
    st.builds(m.Forward, st.binary(max_size=64)),
    st.builds(m.ShareRequest, _uint, _uint),
    st.builds(lambda t, ss: m.ShareReply(t, tuple(ss)), _uint, st.lists(_share, max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(_messages)
def test_raft_messages_round_trip_exactly(message):
    payload = m.encode(message)
    assert m.decode(payload) == message
    with pytest.raises(m.RaftMessageError):
        m.decode(payload + b"\x00")


def test_raft_message_decoding_names_the_problem():
    with pytest.raises(m.RaftMessageError, match="unknown Raft message tag 99"):
        m.decode(b"\x91\x63")
    with pytest.raises(m.RaftMessageError, match="VoteReply has 2 fields"):
        m.decode(b"\x92\x04\x01")
    with pytest.raises(m.RaftMessageError, match="granted must be a boolean"):
        m.decode(b"\x93\x04\x01\x01")


def _records_after_some_commits() -> tuple[Cluster, dict]:
    cluster = Cluster()
    follower = cluster.replica(1)
    records: dict = {}
    b = [make_batch(i, b"r") for i in range(3)]
    for action in receive(follower, cluster.node(0), m.AppendEntries(
            1, 0, 0, entries((1, m.NOOP, b""), (1, m.BATCH, b[0]), (1, m.BATCH, b[1]), (1, m.BATCH, b[2])), 0, (), None, None), now=5):
        if isinstance(action, Persist):
            for key, value in action.records:
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = value
    return cluster, records


def test_raft_restart_accepts_its_own_records():
    cluster, records = _records_after_some_commits()
    replica = cluster.replica(1, records, now=9)
    assert replica.log.last_index == 4 and replica.term == 1 and replica.log.last_height == 3


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.__setitem__(rec.entry_key(2), r[rec.entry_key(2)][:-1] + bytes([r[rec.entry_key(2)][-1] ^ 1])), "entry 2 is corrupt"),
    (lambda r: r.__setitem__(rec.entry_key(3), r[rec.entry_key(3)][:12]), "entry 3 is (truncated|corrupt)"),
    (lambda r: r.__setitem__(rec.HARD, b"\x00"), "truncated"),
    (lambda r: r.pop(rec.entry_key(2)), r"entries 2\.\.2 \(1 of them\) are missing"),
    (lambda r: r.pop(rec.entry_key(4)), "log is truncated"),
    (lambda r: r.pop(rec.HARD), "lack the hard state"),
    (lambda r: r.pop(rec.TAIL), "tail record is missing"),
    (lambda r: r.__setitem__(b"raft/zzz", b"1"), "unknown Raft record"),
    (lambda r: r.__setitem__(rec.HARD, rec.seal(rec.HARD, [0, None])), "out of order"),
])
def test_raft_restart_refuses_corrupt_records(damage, message):
    cluster, records = _records_after_some_commits()
    damage(records)
    with pytest.raises(ConsensusError, match=message):
        cluster.replica(1, records, now=9)


def test_raft_step_before_restart_is_refused():
    cluster = Cluster()
    replica = RaftReplica(cluster.config, cluster.ids[0].signer, cluster.keyring, SimApplication())
    with pytest.raises(ConsensusError, match="must receive Restart"):
        replica.step(Tick(1))


def test_raft_check_quorum_makes_a_cut_off_leader_step_down():
    cluster = Cluster()
    leader = cluster.replica(0)
    elect(cluster, leader)
    now = leader.now
    while leader.role == LEADER and now < 200:
        now += 1
        leader.step(Tick(now))
    assert leader.role == FOLLOWER and now <= leader.config.timeout_ticks * 2 + 60
    assert leader.counters["check_quorum_step_down"] == 1


def test_raft_leader_drops_a_peer_removed_while_answering_it():
    """Found by seeds 3 and 46 (simulator v1): the reply that commits the no-op lets a
    deferred removal in, which drops the replying peer's progress mid-handler."""
    cluster = Cluster(n=4)
    leader = cluster.replica(0)
    elect(cluster, leader, voters=(1, 2))
    remove = make_reconfig(1, cluster.validators.with_change(remove=cluster.node(3)))
    leader.step(Propose(remove, 40))
    assert leader.deferred_configs
    receive(leader, cluster.node(1), m.AppendReply(leader.term, True, 1, 0, 0, 0), now=41)
    receive(leader, cluster.node(3), m.AppendReply(leader.term, True, 1, 0, 0, 0), now=42)
    assert leader.commit_index == 1 and len(leader.log.configs) == 2
    assert cluster.node(3) not in leader.progress
    receive(leader, cluster.node(3), m.AppendReply(leader.term, True, 2, 0, 0, 0), now=43)  # ignored, no error


def test_raft_new_leader_takes_the_time_from_the_message_that_elected_it():
    """Found by seed 384 (simulator v1): with idle ticks skipped, a leader elected by a vote
    arriving long after its last tick set its check-quorum deadline in the past and
    deposed itself at once."""
    cluster = Cluster()
    replica = cluster.replica(0)
    start = replica.election_deadline
    replica.step(Tick(start))
    late = start + 3 * cluster.config.timeout_ticks
    receive(replica, cluster.node(1), m.PreVoteReply(1, True), now=late)
    receive(replica, cluster.node(1), m.VoteReply(1, True), now=late)
    assert replica.role == LEADER
    assert replica.check_quorum_due >= late + cluster.config.timeout_ticks
    receive(replica, cluster.node(1), m.AppendReply(1, True, 1, 0, 0, 0), now=late + 1)
    replica.step(Tick(late + 2))
    assert replica.role == LEADER


def _checkpoint(cluster: Cluster, signers, validators: ValidatorSet, height: int = 8):
    from ledger.certificate import CheckpointCertificate, checkpoint_message, signer_bitmap

    digest, root = bytes([1]) * 32, bytes([2]) * 32
    message = checkpoint_message(CHAIN, height, digest, root)
    shares = [cluster.ids[i].signer.bls_sign(message) for i in signers]
    indexes = sorted(validators.index_of(cluster.node(i)) for i in signers)
    return CheckpointCertificate(height, digest, root, signer_bitmap(indexes, validators.n), cluster.keyring.bls_aggregate(shares))


def test_raft_new_member_accepts_a_checkpoint_of_a_set_it_has_not_seen_yet():
    """Found by seed 2 (simulator v3, through the audit hook): a validator added later starts
    from the genesis set and refused every checkpoint signed by the set that added it."""
    cluster = Cluster(n=4)
    three = ValidatorSet(cluster.validators.validators[:3])
    cluster.config = ConsensusConfig(chain_id=CHAIN, validators=three)
    joiner = cluster.replica(3)
    cert = _checkpoint(cluster, (0, 1, 3), cluster.validators)
    receive(joiner, cluster.node(0), m.AppendEntries(2, 0, 0, (), 0, (), cert, cluster.validators), now=5)
    assert joiner.checkpoint == (cert, cluster.validators)
    assert not joiner.counters


def test_raft_checkpoint_with_too_few_signers_is_refused():
    cluster = Cluster(n=4)
    follower = cluster.replica(1)
    cert = _checkpoint(cluster, (0, 1), cluster.validators)  # 2 of 4: not a majority
    receive(follower, cluster.node(0), m.AppendEntries(1, 0, 0, (), 0, (), cert, cluster.validators), now=5)
    assert follower.checkpoint is None and follower.counters["bad_checkpoint"] == 1


def test_raft_persist_check_flags_what_is_not_durable():
    from consensus.raft.checks import check_send

    cluster = Cluster()
    candidate = cluster.node(0)
    records = {rec.HARD: rec.seal(rec.HARD, [2, None]), rec.TAIL: rec.seal(rec.TAIL, [0, 0])}
    assert "before the vote was persisted" in check_send(records, candidate, m.encode(m.VoteReply(2, True)))
    assert check_send(records, candidate, m.encode(m.VoteReply(2, False))) is None
    assert "persisted term is 2" in check_send(records, candidate, m.encode(m.AppendReply(3, False, 0, 1, 0, 0)))
    assert "only 0 entries are durable" in check_send(records, candidate, m.encode(m.AppendReply(2, True, 1, 0, 0, 0)))
    assert "before persisting that term" in check_send(records, None, m.encode(m.RequestVote(2, 0, 0)))
    records[rec.HARD] = rec.seal(rec.HARD, [2, candidate])
    assert check_send(records, candidate, m.encode(m.VoteReply(2, True))) is None
    assert check_send({}, None, m.encode(m.PreVote(1, 0, 0))) == "sent PreVote before persisting any hard state"


def test_raft_replica_removed_by_an_uncommitted_change_still_campaigns():
    """Found by seed 4964 (simulator v3): the only replica holding an uncommitted change that
    removed it refused to campaign, and refused its less up-to-date peers, forever."""
    cluster = Cluster(n=4)
    removal = make_reconfig(1, cluster.validators.with_change(remove=cluster.node(1)))
    records = {
        rec.HARD: rec.seal(rec.HARD, [1, None]),
        rec.TAIL: rec.seal(rec.TAIL, [2, 1]),
        rec.entry_key(1): rec.seal(rec.entry_key(1), [1, m.NOOP, b""]),
        rec.entry_key(2): rec.seal(rec.entry_key(2), [1, m.BATCH, removal]),
    }
    replica = cluster.replica(1, records, now=0)
    assert cluster.node(1) not in replica.log.latest_config()
    actions = replica.step(Tick(replica.election_deadline))
    assert sends(actions, m.PreVote), "it may be needed to commit the change"
    now = replica.now
    receive(replica, cluster.node(0), m.PreVoteReply(2, True), now)
    assert replica.role != CANDIDATE, "its own pre-vote does not count: one grant of {n0, n2, n3} is too few"
    receive(replica, cluster.node(2), m.PreVoteReply(2, True), now)
    assert replica.role == CANDIDATE
    receive(replica, cluster.node(0), m.VoteReply(2, True), now)
    assert replica.role == CANDIDATE, "its own vote does not count: one grant of three is not a majority"
    receive(replica, cluster.node(2), m.VoteReply(2, True), now)
    assert replica.role == LEADER
    receive(replica, cluster.node(0), m.AppendReply(2, True, 3, 0, 0, 0), now + 1)
    actions = receive(replica, cluster.node(2), m.AppendReply(2, True, 3, 0, 0, 0), now + 1)
    (commit,) = [a for a in actions if isinstance(a, Commit)]
    assert commit.height == 1 and commit.batch == removal
    assert replica.role == FOLLOWER, "once its removal commits it steps down"
    assert not replica._eligible(), "and stays quiet"


def test_raft_new_member_holding_the_latest_entries_leads_and_gets_the_old_sets_signatures():
    """Found by seed 585 (simulator v6): the old leader replicated past a reconfiguration to
    the new member only, then stayed down. The new member alone held the latest entries, so
    it refused the others' votes, and it would not stand because it could not sign the
    heights before the change: no leader, ever. It now leads and asks the old set's members
    for the signatures of those heights."""
    cluster = Cluster(n=4)
    old = ValidatorSet(tuple(i.validator for i in cluster.ids[:3]))
    cluster.config = ConsensusConfig(chain_id=CHAIN, validators=old)
    first, add, third = make_batch(1, b"a"), make_reconfig(2, old.with_change(add=cluster.ids[3].validator)), make_batch(3, b"c")
    log = [[1, m.NOOP, b""], [1, m.BATCH, first], [1, m.BATCH, add], [1, m.BATCH, third]]
    def records(entries: list) -> dict:
        out = {rec.HARD: rec.seal(rec.HARD, [1, None]), rec.TAIL: rec.seal(rec.TAIL, [len(entries), 1])}
        for index, fields in enumerate(entries, 1):
            out[rec.entry_key(index)] = rec.seal(rec.entry_key(index), fields)
        return out

    # n2 saw the change (so it needs the newcomer's vote), n0 only the no-op.
    newcomer, n0, n2 = cluster.replica(3, records(log)), cluster.replica(0, records(log[:1])), cluster.replica(2, records(log[:3]))
    assert cluster.node(3) in n2.log.latest_config()
    assert not newcomer._log_up_to_date(n2.log.last_index, n2.log.last_term), "the newcomer refuses n2"
    alive = {cluster.node(0): n0, cluster.node(2): n2, cluster.node(3): newcomer}
    commits: dict[bytes, list[Commit]] = {key: [] for key in alive}

    def run(sender: bytes, actions) -> None:
        queue = [(sender, a) for a in actions]
        while queue:
            source, action = queue.pop(0)
            if isinstance(action, Commit):
                commits[source].append(action)
            elif isinstance(action, Send) and action.to in alive:  # n1, the old leader, stays down
                target = alive[action.to]
                queue += [(action.to, a) for a in target.step(Receive(source, action.payload, now))]

    now = newcomer.election_deadline
    run(cluster.node(3), newcomer.step(Tick(now)))
    assert newcomer.role == LEADER, "the only up-to-date member stands and wins"
    for _ in range(3):
        now = newcomer.heartbeat_due
        run(cluster.node(3), newcomer.step(Tick(now)))
    latest = old.with_change(add=cluster.ids[3].validator)
    for key, replica in alive.items():
        assert [c.height for c in commits[key]] == [1, 2, 3], key
        for commit in commits[key]:
            validators = old if commit.height <= 2 else latest
            verify_commit_certificate(CHAIN, validators, commit.certificate, cluster.keyring)
        assert not replica.counters.get("bad_commit_signature")
    (signer, _), = commits[cluster.node(3)][0].certificate.signatures
    assert old.validators[signer].node_key in (cluster.node(0), cluster.node(2)), "an old member signed height 1"
