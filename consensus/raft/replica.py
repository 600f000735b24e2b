"""The Raft replica: ``step(event) -> actions``, with no I/O of its own.

Rules this code keeps, each from the Raft paper or a known failure (see
``CONSENSUS-NOTES.md``):

* **Persist before send.** Every state change (term, vote, entries, truncation,
  commit signatures, snapshot) is queued as records, and the queue is flushed as a
  ``Persist`` action before any message leaves (:meth:`_send`). A restart therefore
  never forgets a vote or an acknowledged entry.
* **Pre-vote and check-quorum.** A replica first asks whether it *could* win; voters
  refuse while they hear from a leader (the lease), so a node returning from a
  partition with an inflated term cannot depose a healthy leader. A leader that has
  not heard from a majority for an election timeout steps down.
* **No-op at leader start; commit only current-term entries by counting** (Figure 8).
  Entries of earlier terms commit indirectly, behind the no-op.
* **Truncate only on conflict.** A late, duplicated AppendEntries whose entries all
  match never shortens the log; replies report the match of *that* message.
* **Single-server membership change**: one change in flight, and only after the
  leader committed an entry of its own term. The latest configuration in the log is
  used at once for quorums. A leader that removed itself stops taking proposals and
  steps down when the change commits.
* **Snapshots** carry the last included index, term, configuration and the BLS
  checkpoint certificate proving the state; a lagging follower is sent one and fetches
  the state (``FetchState``).

Certificates: when an entry commits, the leader signs ``commit_vote_payload(height,
term, digest)`` (kind ``raft/commit``) and ships the signature to followers, who check
it and persist it before emitting ``Commit``. Every ``checkpoint_interval`` heights,
every replica BLS-signs the checkpoint and the leader aggregates a majority into a
:class:`~ledger.certificate.CheckpointCertificate`.

A leader outside the set that certifies a committed height (a validator added by a
reconfiguration, leading before it holds the signatures of the heights just before the
change) asks that set's members for them (``ShareRequest``): a member signs a height
only once it knows the entry committed, exactly what the leader's own signature
vouches for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from consensus.raft import messages as m
from consensus.raft import records as rec
from consensus.raft.checkpoints import CheckpointsAndSnapshots
from consensus.raft.log import RaftLog
from consensus.raft.messages import BATCH, NOOP, CertShare, Entry, SnapshotMeta
from consensus.raft.roles import CANDIDATE, FOLLOWER, LEADER, PRECANDIDATE
from consensus.types import (
    Action,
    Application,
    Commit,
    ConsensusConfig,
    ConsensusError,
    Event,
    Executed,
    NodeId,
    Persist,
    Propose,
    Receive,
    Restart,
    Send,
    SetTimer,
    Signer,
    StateInstalled,
    Tick,
    Verifier,
)
from ledger.certificate import (
    CheckpointCertificate,
    CommitCertificate,
    commit_vote_payload,
)
from ledger.crypto import Kind
from ledger.validators import ValidatorSet

__all__ = ["CANDIDATE", "FOLLOWER", "LEADER", "PRECANDIDATE", "RaftReplica"]


# AppendEntries a leader keeps in flight to one follower before waiting for replies (pipelining).
MAX_INFLIGHT = 4
# Commit signatures sent to one follower per message.
CERTS_PER_MESSAGE = 64
# Proposals a non-leader buffers for when it leads (a bounded mempool of batches).
MAX_BUFFERED = 4096
# Buffered proposals passed on to a newly learnt leader.
FORWARD_ON_NEW_LEADER = 64
# Digests of committed batches remembered to refuse re-proposals after compaction.
RECENT_COMMITTED = 4096


@dataclass
class _Progress:
    next: int
    match: int = 0
    inflight: int = 0
    last_ack: int = 0
    applied_height: int = -1  # unknown until the follower first replies
    checkpoint_height: int = 0


class RaftReplica(CheckpointsAndSnapshots):
    """One Raft validator. Construct, then feed ``Restart`` first (empty records for a fresh node)."""

    def __init__(self, config: ConsensusConfig, signer: Signer, verifier: Verifier, app: Application) -> None:
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.app = app
        self.id: NodeId = signer.node_id
        self.started = False
        self.term = 0
        self.voted_for: bytes | None = None
        self.log = RaftLog(rec.genesis_snapshot(config.validators), app)
        self.role = FOLLOWER
        self.leader: NodeId | None = None
        self.now = 0
        self.commit_index = 0
        self.applied_index = 0
        self.applied_height = 0
        self.executed_height = 0
        self.certs: dict[int, CertShare] = {}
        self.checkpoint: tuple[CheckpointCertificate, ValidatorSet] | None = None
        self.election_deadline = 0
        self.heartbeat_due = 0
        self.check_quorum_due = 0
        self.last_contact = -(1 << 62)
        self.prevotes: dict[NodeId, bool] = {}
        self.votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, _Progress] = {}
        self.noop_index = 0
        self.buffered: dict[bytes, bytes] = {}
        self.deferred_configs: dict[bytes, bytes] = {}
        self.recent_committed: dict[bytes, None] = {}
        self.checkpoint_shares: dict[tuple[int, bytes, bytes], dict[int, bytes]] = {}
        self.my_checkpoint_vote: m.CheckpointVote | None = None
        self.vote_sent_to: tuple[NodeId, int] | None = None
        self.pending_snapshot: SnapshotMeta | None = None
        self.fetch_retry_at = 0
        self.counters: dict[str, int] = {}
        self._jitter = 0
        self._out: list[Action] = []
        self._records: dict[bytes, bytes | None] = {}

    # ---------------------------------------------------------------- interface

    def step(self, event: Event) -> list[Action]:
        """Handle one event; return the actions to carry out in order (see ``consensus.types``)."""
        self._out = []
        self._records = {}
        kind = type(event)
        if kind is Restart:
            self._restart(event)
        elif not self.started:
            raise ConsensusError(f"a Raft replica must receive Restart before {kind.__name__}")
        else:
            now = getattr(event, "now", None)
            if type(now) is int and now > self.now:
                self.now = now
            if kind is Receive:
                self._receive(event.sender, event.payload)
            elif kind is Tick:
                self._tick()
            elif kind is Propose:
                self._propose(event.batch, forward=True)
            elif kind is Executed:
                self._executed(event)
            elif kind is StateInstalled:
                self._state_installed(event.checkpoint)
            else:
                raise ConsensusError(f"unknown event {kind.__name__}")
        self._flush()
        self._out.append(SetTimer(self._next_deadline()))
        return self._out

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER

    # ------------------------------------------------------------- persistence

    def _persist(self, key: bytes, value: object | None) -> None:
        self._records[key] = None if value is None else rec.seal(key, value)

    def _persist_hard_state(self) -> None:
        self._persist(rec.HARD, [self.term, self.voted_for])

    def _persist_tail(self) -> None:
        self._persist(rec.TAIL, [self.log.last_index, self.log.last_term])

    def _flush(self) -> None:
        if self._records:
            self._out.append(Persist(tuple(self._records.items())))
            self._records = {}

    def _send(self, to: NodeId, message: m.Message) -> None:
        if to == self.id:
            return
        self._flush()  # persist before send: nothing leaves before the state it depends on
        self._out.append(Send(to, m.encode(message)))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ---------------------------------------------------------------- restart

    def _restart(self, event: Restart) -> None:
        if self.started:
            raise ConsensusError("Restart given to a running Raft replica; build a new one from its records")
        state = rec.load(event.records, self.config.validators, self.app)
        self.term, self.voted_for, self.log = state.term, state.voted_for, state.log
        self.certs = state.certs
        self.checkpoint = state.checkpoint
        snapshot = self.log.snapshot
        if snapshot.checkpoint is not None and snapshot.height > self._checkpoint_height():
            self.checkpoint = (snapshot.checkpoint, snapshot.checkpoint_validators)
        self.commit_index = self.applied_index = self.log.snapshot.last_index
        self.applied_height = self.executed_height = self.log.snapshot.height
        self.now = event.now
        self.started = True
        if not event.records:
            self._persist_hard_state()
            self._persist_tail()
        self._reset_election_deadline()

    # ------------------------------------------------------------------- time

    def _timeout(self) -> int:
        """A fresh randomised election timeout in [T, 2T): deterministic from the seed."""
        self._jitter += 1
        base = max(1, self.config.timeout_ticks)
        material = b"%d/%d/%d" % (self.config.seed, self._jitter, self.term) + self.id
        return base + int.from_bytes(hashlib.sha256(material).digest()[:4], "big") % base

    def _reset_election_deadline(self) -> None:
        self.election_deadline = self.now + self._timeout()

    def _next_deadline(self) -> int:
        if self.role == LEADER:
            deadline = min(self.heartbeat_due, self.check_quorum_due)
        else:
            deadline = self.election_deadline
        if self.pending_snapshot is not None:
            deadline = min(deadline, self.fetch_retry_at)
        return max(deadline, self.now + 1)

    def _tick(self) -> None:
        now = self.now
        if self.pending_snapshot is not None and now >= self.fetch_retry_at:
            self._request_state(self.pending_snapshot, self.leader)
        if self.role == LEADER:
            if now >= self.check_quorum_due:
                self.check_quorum_due = now + self.config.timeout_ticks
                if not self._quorum_active():
                    self._count("check_quorum_step_down")
                    self._become_follower(None)
                    return
            if now >= self.heartbeat_due:
                self.heartbeat_due = now + max(1, self.config.heartbeat_ticks)
                self._request_shares()
                for peer, progress in self.progress.items():
                    if progress.inflight and now - progress.last_ack > 2 * self.config.heartbeat_ticks:
                        # Replies stopped: assume the pipeline was lost and resend from the match.
                        progress.inflight = 0
                        progress.next = progress.match + 1
                    self._send_append(peer)
        elif now >= self.election_deadline:
            self._start_prevote()

    def _quorum_active(self) -> bool:
        config = self.log.latest_config()
        horizon = self.now - self.config.timeout_ticks
        active = 0
        for v in config.validators:
            if v.node_key == self.id:
                active += 1
            else:
                progress = self.progress.get(v.node_key)
                if progress is not None and progress.last_ack >= horizon:
                    active += 1
        return active >= config.majority

    # -------------------------------------------------------------- elections

    def _in_lease(self) -> bool:
        """True while this replica has a live leader (itself included): it then refuses to help depose it."""
        if self.role == LEADER:
            return True
        return self.leader is not None and self.now - self.last_contact < self.config.timeout_ticks

    def _eligible(self) -> bool:
        """May this replica stand for election?

        * A replica outside its latest configuration still campaigns while that change is
          uncommitted, as it may be needed to commit it (Raft dissertation, 4.1); its own
          vote does not count. Once it knows the change committed, it stays quiet.
        * It need not be able to sign every height it would commit: a leader outside the
          set of a height asks that set's members for the signature (``ShareRequest``).
          Refusing to stand instead leaves a new member that alone holds the latest
          entries unable to lead while it refuses every other candidate's vote.
        """
        if self.id in self.log.latest_config():
            return True
        return self.log.config_in_flight(self.commit_index)

    def _has_quorum(self, voters: dict[NodeId, bool]) -> bool:
        config = self.log.latest_config()
        return sum(1 for v in config.validators if v.node_key in voters) >= config.majority

    def _log_up_to_date(self, last_index: int, last_term: int) -> bool:
        return (last_term, last_index) >= (self.log.last_term, self.log.last_index)

    def _peers(self) -> list[NodeId]:
        return [v.node_key for v in self.log.latest_config().validators if v.node_key != self.id]

    def _start_prevote(self) -> None:
        self._reset_election_deadline()
        if not self._eligible():
            self.role = FOLLOWER
            return
        self.role = PRECANDIDATE
        self.leader = None
        self.prevotes = {self.id: True}
        if self._has_quorum(self.prevotes):
            self._campaign()
            return
        request = m.PreVote(self.term + 1, self.log.last_index, self.log.last_term)
        for peer in self._peers():
            self._send(peer, request)

    def _campaign(self) -> None:
        self.term += 1
        self.voted_for = self.id
        self.role = CANDIDATE
        self.leader = None
        self.votes = {self.id: True}
        self._persist_hard_state()
        self._reset_election_deadline()
        if self._has_quorum(self.votes):
            self._become_leader()
            return
        request = m.RequestVote(self.term, self.log.last_index, self.log.last_term)
        for peer in self._peers():
            self._send(peer, request)

    def _observe_term(self, term: int) -> None:
        """A higher term seen: adopt it, forget the vote, follow (nobody yet)."""
        if term > self.term:
            self.term = term
            self.voted_for = None
            self._persist_hard_state()
            self._become_follower(None)

    def _become_follower(self, leader: NodeId | None) -> None:
        if self.role == LEADER and leader != self.id:
            self.progress = {}
            self.checkpoint_shares = {}
        previous = self.leader
        self.role = FOLLOWER
        self.leader = leader
        if leader is not None:
            self.last_contact = self.now
            if leader != previous and leader != self.id:
                # Proposals that waited for a leader go to the new one (the most recent few).
                for batch in list(self.buffered.values())[-FORWARD_ON_NEW_LEADER:]:
                    self._send(leader, m.Forward(batch))

    def _on_prevote(self, sender: NodeId, msg: m.PreVote) -> None:
        grant = msg.term > self.term and not self._in_lease() and self._log_up_to_date(msg.last_index, msg.last_term)
        self._send(sender, m.PreVoteReply(msg.term if grant else self.term, grant))

    def _on_prevote_reply(self, sender: NodeId, msg: m.PreVoteReply) -> None:
        if not msg.granted:
            if msg.term > self.term:
                self._observe_term(msg.term)
            return
        if self.role != PRECANDIDATE or msg.term != self.term + 1:
            return
        self.prevotes[sender] = True
        if self._has_quorum(self.prevotes):
            self._campaign()

    def _on_request_vote(self, sender: NodeId, msg: m.RequestVote) -> None:
        if msg.term > self.term and self._in_lease():
            self._count("vote_refused_in_lease")
            return
        self._observe_term(msg.term)
        grant = (
            msg.term == self.term
            and self.voted_for in (None, sender)
            and self._log_up_to_date(msg.last_index, msg.last_term)
        )
        if grant:
            self.voted_for = sender
            self._persist_hard_state()
            self._reset_election_deadline()
        self._send(sender, m.VoteReply(self.term, grant))

    def _on_vote_reply(self, sender: NodeId, msg: m.VoteReply) -> None:
        if msg.term > self.term:
            self._observe_term(msg.term)
            return
        if self.role != CANDIDATE or msg.term != self.term or not msg.granted:
            return
        self.votes[sender] = True
        if self._has_quorum(self.votes):
            self._become_leader()

    def _become_leader(self) -> None:
        self.role = LEADER
        self.leader = self.id
        self.progress = {}
        self.checkpoint_shares = {}
        self._sync_progress()
        for progress in self.progress.values():
            progress.last_ack = self.now
        self.heartbeat_due = self.now + max(1, self.config.heartbeat_ticks)
        self.check_quorum_due = self.now + self.config.timeout_ticks
        # A no-op of this term: earlier entries commit behind it (never by counting).
        self._append(Entry(self.term, NOOP, b""))
        self.noop_index = self.log.last_index
        for peer in self.progress:
            self._send_append(peer)
        self._advance_commit()
        for batch in list(self.buffered.values()):
            self._propose(batch)
        self.buffered = {}

    # ------------------------------------------------------------ replication

    def _sync_progress(self) -> None:
        """Track exactly the members of the latest configuration (new ones start probing at the end)."""
        peers = self._peers()
        for peer in peers:
            if peer not in self.progress:
                self.progress[peer] = _Progress(next=self.log.last_index + 1, last_ack=self.now)
        for peer in list(self.progress):
            if peer not in peers:
                del self.progress[peer]

    def _append(self, entry: Entry) -> None:
        config_count = len(self.log.configs)
        self.log.append(entry)
        self._persist(rec.entry_key(self.log.last_index), entry.to_fields())
        self._persist_tail()
        if len(self.log.configs) != config_count and self.role == LEADER:
            self._sync_progress()

    def _propose(self, batch: bytes, *, forward: bool = False) -> None:
        """Order ``batch`` if leading; otherwise keep it for when this replica leads and,
        for a client's proposal (``forward``), pass it to the known leader."""
        if not isinstance(batch, bytes):
            self._count("proposal_not_bytes")
            return
        digest = self.app.digest(batch)
        if digest in self.log.digests or digest in self.recent_committed:
            return
        if self.role != LEADER or self.id not in self.log.latest_config():
            if digest not in self.buffered:
                if len(self.buffered) >= MAX_BUFFERED:
                    self.buffered.pop(next(iter(self.buffered)))
                self.buffered[digest] = batch
            if forward and self.leader is not None and self.leader != self.id:
                self._send(self.leader, m.Forward(batch))
            return
        height = self.log.last_height + 1
        if not self.app.validate(height, batch):
            self._count("proposal_refused")
            return
        change = self.app.validator_set_change(height, batch)
        if change is not None:
            current = self.log.latest_config()
            if not _single_server_change(current, change):
                self._count("reconfiguration_refused")
                return
            if self.log.config_in_flight(self.commit_index) or self.commit_index < self.noop_index:
                # One change at a time, and only once this leader committed in its own term.
                self.deferred_configs.setdefault(digest, batch)
                return
            self.deferred_configs.pop(digest, None)
        self._append(Entry(self.term, BATCH, batch))
        for peer, progress in self.progress.items():
            if progress.inflight < MAX_INFLIGHT:
                self._send_append(peer)
        self._advance_commit()

    def _send_append(self, peer: NodeId) -> None:
        progress = self.progress.get(peer)
        if progress is None or self.role != LEADER:
            return  # a configuration change or a step-down just removed it
        snapshot = self.log.snapshot
        behind = progress.next <= snapshot.last_index or (
            # The follower has the entries but not the commit signatures, which went with the log.
            0 <= progress.applied_height < snapshot.height and progress.applied_height + 1 not in self.certs
        )
        if behind and snapshot.checkpoint is not None:
            self._send(peer, m.InstallSnapshot(self.term, snapshot))
            return
        prev = progress.next - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            progress.next = self.log.last_index + 1
            prev = self.log.last_index
            prev_term = self.log.last_term
        last = min(self.log.last_index, prev + max(1, self.config.max_batch_entries))
        entries = self.log.slice(prev + 1, last) if last > prev else []
        size = 0
        for i, entry in enumerate(entries):
            size += len(entry.data)
            if size > m.MAX_APPEND_BYTES and i > 0:
                entries = entries[:i]
                break
        certs = []
        height = max(progress.applied_height, 0) + 1
        while len(certs) < CERTS_PER_MESSAGE and height in self.certs and height <= self.applied_height:
            certs.append(self.certs[height])
            height += 1
        checkpoint = validators = None
        if self.checkpoint is not None and progress.checkpoint_height < self.checkpoint[0].height:
            checkpoint, validators = self.checkpoint
        self._send(peer, m.AppendEntries(self.term, prev, prev_term, tuple(entries), self.commit_index,
                                         tuple(certs), checkpoint, validators))
        if entries:
            progress.next = prev + len(entries) + 1
            progress.inflight += 1

    def _on_append(self, sender: NodeId, msg: m.AppendEntries) -> None:
        if msg.term < self.term:
            self._send(sender, m.AppendReply(self.term, False, 0, 0, self.applied_height, self._checkpoint_height()))
            return
        self._observe_term(msg.term)
        if self.role != FOLLOWER or self.leader != sender:
            if self.role == LEADER:
                self._count("two_leaders_in_one_term")  # impossible unless votes were lost
            self._become_follower(sender)
        self.last_contact = self.now
        self._reset_election_deadline()
        if msg.checkpoint is not None:
            self._learn_checkpoint(msg.checkpoint, msg.checkpoint_validators)
        self._take_shares(msg.certs)

        log = self.log
        snapshot = log.snapshot
        prev, prev_term, entries = msg.prev_index, msg.prev_term, list(msg.entries)
        if prev < snapshot.last_index:
            # Entries up to the snapshot are committed here already: skip them.
            skip = snapshot.last_index - prev
            if skip >= len(entries):
                self._reply_append(sender, True, prev + len(entries))
                return
            entries = entries[skip:]
            prev, prev_term = snapshot.last_index, snapshot.last_term
            if msg.entries[skip - 1].term != prev_term:
                self._count("snapshot_mismatch")
                self._reply_append(sender, False, 0, conflict=snapshot.last_index + 1)
                return
        if prev > log.last_index:
            self._reply_append(sender, False, 0, conflict=log.last_index + 1)
            return
        if log.term_at(prev) != prev_term:
            self._reply_append(sender, False, 0, conflict=log.first_index_of_term(prev))
            return
        index = prev
        changed = False
        for entry in entries:
            index += 1
            if index <= log.last_index:
                if log.term_at(index) == entry.term:
                    continue  # already have it: a late duplicate never truncates
                if index <= self.commit_index:
                    self._count("conflict_below_commit")
                    self._reply_append(sender, False, 0, conflict=self.commit_index + 1)
                    return
                for dropped in log.truncate_from(index):
                    self._persist(rec.entry_key(dropped), None)
                changed = True
            log.append(entry)
            self._persist(rec.entry_key(index), entry.to_fields())
            changed = True
        if changed:
            self._persist_tail()
        match = prev + len(entries)
        if min(msg.leader_commit, match) > self.commit_index:
            self.commit_index = min(msg.leader_commit, match)
        self._apply()
        self._reply_append(sender, True, match)
        self._offer_checkpoint_vote()

    def _reply_append(self, leader: NodeId, success: bool, match: int, *, conflict: int = 0) -> None:
        self._send(leader, m.AppendReply(self.term, success, match, conflict, self.applied_height,
                                         self._checkpoint_height()))


    def _on_append_reply(self, sender: NodeId, msg: m.AppendReply) -> None:
        if msg.term > self.term:
            self._observe_term(msg.term)
            return
        if self.role != LEADER or msg.term != self.term:
            return
        progress = self.progress.get(sender)
        if progress is None:
            return
        progress.last_ack = self.now
        progress.applied_height = msg.applied_height
        progress.checkpoint_height = msg.checkpoint_height
        if msg.success:
            if msg.match_index > self.log.last_index:
                self._count("match_beyond_log")
                return
            progress.match = max(progress.match, msg.match_index)
            progress.next = max(progress.next, progress.match + 1)
            progress.inflight = max(0, progress.inflight - 1)
            self._advance_commit()
            if progress.next <= self.log.last_index and progress.inflight < MAX_INFLIGHT:
                self._send_append(sender)
        else:
            if msg.conflict_index >= progress.next and progress.inflight == 0:
                return  # a stale rejection of something already superseded
            # A fresh rejection names an index at or below the rejected prev; never go below the match.
            progress.next = max(progress.match + 1, min(msg.conflict_index, progress.next))
            progress.inflight = 0
            self._send_append(sender)

    def _advance_commit(self) -> None:
        if self.role != LEADER:
            return
        config = self.log.latest_config()
        matches = []
        for v in config.validators:
            if v.node_key == self.id:
                matches.append(self.log.last_index)
            else:
                progress = self.progress.get(v.node_key)
                matches.append(progress.match if progress is not None else 0)
        matches.sort(reverse=True)
        candidate = matches[config.majority - 1]
        # Figure 8: only an entry of the current term commits by counting replicas.
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            self.commit_index = candidate
            self._apply()

    # ---------------------------------------------------------------- applying

    def _apply(self) -> None:
        log = self.log
        while self.applied_index < self.commit_index:
            index = self.applied_index + 1
            entry = log.entry(index)
            if entry.kind == BATCH:
                height = log.height_at(index)
                digest = log.digest_at(index)
                cert = self._certificate(height, digest)
                if cert is None:
                    break  # wait for the signature (a leader outside the set asks for it)
                self._flush()
                self._out.append(Commit(height, entry.data, digest, cert))
                self.applied_height = height
                self.buffered.pop(digest, None)
                self.recent_committed[digest] = None
                if len(self.recent_committed) > RECENT_COMMITTED:
                    self.recent_committed.pop(next(iter(self.recent_committed)))
            self.applied_index = index
        if self.role == LEADER:
            if self.id not in log.latest_config() and not log.config_in_flight(self.commit_index):
                # This leader's removal committed: hand over by going quiet.
                self._become_follower(None)
                return
            if self.deferred_configs and not log.config_in_flight(self.commit_index) and self.commit_index >= self.noop_index:
                digest, batch = next(iter(self.deferred_configs.items()))
                del self.deferred_configs[digest]
                self._propose(batch)

    def _certificate(self, height: int, digest: bytes) -> CommitCertificate | None:
        """The commit certificate of ``height``: a held signature if it verifies, else (leader) a new one."""
        validators = self.log.set_for_height(height)
        if validators is None:
            self._count("no_validator_set_for_height")
            return None
        share = self.certs.get(height)
        if share is not None:
            if share.signer < validators.n and self.verifier.verify(
                validators.validators[share.signer].node_key, Kind.RAFT_COMMIT,
                commit_vote_payload(height, share.term, digest), share.signature,
            ):
                return CommitCertificate("raft", height, share.term, digest, ((share.signer, share.signature),))
            self._count("bad_commit_signature")
            del self.certs[height]
            self._persist(rec.cert_key(height), None)
            share = None
        if self.role != LEADER:
            return None
        signer = validators.index_of(self.id)
        if signer is None:
            return None  # a member of that set signs it (``_request_shares``)
        signature = self.signer.sign(Kind.RAFT_COMMIT, commit_vote_payload(height, self.term, digest))
        self._keep_share(CertShare(height, self.term, signer, signature))
        return CommitCertificate("raft", height, self.term, digest, ((signer, signature),))

    def _request_shares(self) -> None:
        """Leader: ask for the signature of the next height to apply when only another set can give it."""
        if self.applied_index >= self.commit_index:
            return
        height = self.applied_height + 1
        if height in self.certs:
            return
        validators = self.log.set_for_height(height)
        if validators is None or self.id in validators:
            return
        request = m.ShareRequest(self.term, height)
        for v in validators.validators:
            self._send(v.node_key, request)

    def _on_share_request(self, sender: NodeId, msg: m.ShareRequest) -> None:
        """Follower: sign the committed heights from ``msg.height`` on that this replica's set certifies."""
        if msg.term != self.term or self.role != FOLLOWER or self.leader != sender:
            return
        log = self.log
        shares = []
        height = msg.height
        while len(shares) < CERTS_PER_MESSAGE:
            share = self.certs.get(height)
            if share is None:
                index = log.index_of_height(height)
                validators = log.set_for_height(height)
                signer = None if validators is None else validators.index_of(self.id)
                if index is None or index > self.commit_index or signer is None:
                    break
                signature = self.signer.sign(Kind.RAFT_COMMIT, commit_vote_payload(height, self.term, log.digest_at(index)))
                share = CertShare(height, self.term, signer, signature)
                if height > self.applied_height:
                    self._keep_share(share)
            shares.append(share)
            height += 1
        if not shares:
            return
        self._apply()
        self._send(sender, m.ShareReply(self.term, tuple(shares)))

    def _on_share_reply(self, msg: m.ShareReply) -> None:
        """Leader: keep the signatures it lacked (``_certificate`` verifies them) and apply."""
        if msg.term != self.term or self.role != LEADER:
            return
        self._take_shares(msg.shares)
        self._apply()

    def _take_shares(self, shares) -> None:
        """Keep the commit signatures of heights not applied yet that this replica lacks."""
        for share in shares:
            if share.height > self.applied_height and share.height not in self.certs:
                self._keep_share(share)

    def _keep_share(self, share: CertShare) -> None:
        self.certs[share.height] = share
        self._persist(rec.cert_key(share.height), [share.term, share.signer, share.signature])

    # ---------------------------------------------------------------- receiving

    def _receive(self, sender: NodeId, payload: bytes) -> None:
        try:
            msg = m.decode(payload)
        except m.RaftMessageError:
            self._count("garbage")
            return
        kind = type(msg)
        if kind is m.AppendEntries:
            self._on_append(sender, msg)
        elif kind is m.AppendReply:
            self._on_append_reply(sender, msg)
        elif kind is m.PreVote:
            self._on_prevote(sender, msg)
        elif kind is m.PreVoteReply:
            self._on_prevote_reply(sender, msg)
        elif kind is m.RequestVote:
            self._on_request_vote(sender, msg)
        elif kind is m.VoteReply:
            self._on_vote_reply(sender, msg)
        elif kind is m.InstallSnapshot:
            self._on_install_snapshot(sender, msg)
        elif kind is m.SnapshotReply:
            self._on_snapshot_reply(sender, msg)
        elif kind is m.CheckpointVote:
            self._on_checkpoint_vote(sender, msg)
        elif kind is m.Forward:
            self._propose(msg.batch)
        elif kind is m.ShareRequest:
            self._on_share_request(sender, msg)
        elif kind is m.ShareReply:
            self._on_share_reply(msg)


def _single_server_change(current: ValidatorSet, proposed: ValidatorSet) -> bool:
    """True when ``proposed`` adds exactly one validator to ``current`` or removes exactly one."""
    old = {v.node_key: v for v in current.validators}
    new = {v.node_key: v for v in proposed.validators}
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    if len(added) + len(removed) != 1:
        return False
    # The validators that stay keep their keys; order follows ``ValidatorSet.with_change``.
    return all(old[k] == new[k] for k in new if k in old)

