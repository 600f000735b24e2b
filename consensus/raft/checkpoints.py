"""Checkpoints, log compaction and snapshot transfer for the Raft replica.

Every ``checkpoint_interval`` heights each validator of the set in force BLS-signs
``checkpoint_message(height, block hash, state root)`` once its application has
executed that height, and sends the share to the leader. The leader aggregates a
majority into a :class:`~ledger.certificate.CheckpointCertificate` (verified before
use) and ships it to followers in AppendEntries; light clients of a Raft shard follow
these certificates.

A replica compacts its log at the newest certified checkpoint it has executed once
``snapshot_interval`` entries have piled up: the snapshot records the last included
index, term, configuration, the checkpoint and the set that signed it. A follower
whose next entry the leader no longer holds (or that lacks commit signatures the log
took with it) gets ``InstallSnapshot``, checks the checkpoint, asks the driver for
the state (``FetchState``) and, once it is installed, replaces its log.

:class:`CheckpointsAndSnapshots` is a part of :class:`~consensus.raft.replica.RaftReplica`
(it uses the replica's state and helpers); it is separate only to keep each module to
one subject.
"""

from __future__ import annotations

from consensus.raft import messages as m
from consensus.raft import records as rec
from consensus.raft.messages import SnapshotMeta
from consensus.raft.roles import FOLLOWER, LEADER
from consensus.types import Executed, FetchState, NodeId
from ledger.certificate import (
    CheckpointCertificate,
    bitmap_indexes,
    checkpoint_message,
    signer_bitmap,
)
from ledger.validators import ValidatorSet

__all__ = ["CheckpointsAndSnapshots"]

# Checkpoints a leader collects shares for at once (older ones without a majority are dropped).
MAX_OPEN_CHECKPOINTS = 8


class CheckpointsAndSnapshots:
    """Checkpoint shares and certificates, compaction, and InstallSnapshot on both sides."""

    def _checkpoint_height(self) -> int:
        return self.checkpoint[0].height if self.checkpoint is not None else 0

    def _executed(self, event: Executed) -> None:
        if event.height > self.executed_height:
            self.executed_height = event.height
        interval = max(1, self.config.checkpoint_interval)
        if event.height % interval == 0 and event.height > self._checkpoint_height():
            validators = self.log.set_for_height(event.height)
            if validators is not None and self.id in validators:
                message = checkpoint_message(self.config.chain_id, event.height, event.digest, event.state_root)
                vote = m.CheckpointVote(event.height, event.digest, event.state_root, self.signer.bls_sign(message))
                if self.my_checkpoint_vote is None or vote.height > self.my_checkpoint_vote.height:
                    self.my_checkpoint_vote = vote
                    self.vote_sent_to = None
                self._offer_checkpoint_vote()
        self._maybe_compact()

    def _offer_checkpoint_vote(self) -> None:
        vote = self.my_checkpoint_vote
        if vote is None or vote.height <= self._checkpoint_height() or self.leader is None:
            return
        if self.vote_sent_to == (self.leader, self.term):
            return
        self.vote_sent_to = (self.leader, self.term)
        if self.leader == self.id:
            self._on_checkpoint_vote(self.id, vote)
        else:
            self._send(self.leader, vote)

    def _on_checkpoint_vote(self, sender: NodeId, vote: m.CheckpointVote) -> None:
        if self.role != LEADER or vote.height <= self._checkpoint_height():
            return
        validators = self.log.set_for_height(vote.height)
        if validators is None:
            return
        index = validators.index_of(sender)
        if index is None:
            self._count("checkpoint_vote_from_non_member")
            return
        shares = self.checkpoint_shares.setdefault((vote.height, vote.digest, vote.state_root), {})
        while len(self.checkpoint_shares) > MAX_OPEN_CHECKPOINTS:
            # Checkpoints that never gathered a majority: keep only the newest few.
            del self.checkpoint_shares[min(self.checkpoint_shares)]
        shares[index] = vote.signature
        if len(shares) < validators.majority:
            return
        indexes = sorted(shares)
        message = checkpoint_message(self.config.chain_id, vote.height, vote.digest, vote.state_root)
        try:
            aggregate = self.verifier.bls_aggregate([shares[i] for i in indexes])
        except ValueError:
            aggregate = b""
        keys = [validators.validators[i].bls_key for i in indexes]
        if not aggregate or not self.verifier.bls_fast_aggregate_verify(keys, message, aggregate):
            # Some share is bad: keep only those that verify alone, and wait for more.
            for i in indexes:
                if not self.verifier.bls_fast_aggregate_verify([validators.validators[i].bls_key], message, shares[i]):
                    del shares[i]
                    self._count("bad_checkpoint_share")
            return
        cert = CheckpointCertificate(vote.height, vote.digest, vote.state_root,
                                     signer_bitmap(indexes, validators.n), aggregate)
        self.checkpoint_shares = {k: v for k, v in self.checkpoint_shares.items() if k[0] > vote.height}
        self._adopt_checkpoint(cert, validators)

    def _checkpoint_valid(self, cert: CheckpointCertificate, validators: ValidatorSet) -> bool:
        try:
            indexes = bitmap_indexes(cert.signers, validators.n)
        except ValueError:
            return False
        if len(indexes) < validators.majority:
            return False
        message = checkpoint_message(self.config.chain_id, cert.height, cert.block_hash, cert.state_root)
        return self.verifier.bls_fast_aggregate_verify([validators.validators[i].bls_key for i in indexes],
                                                       message, cert.aggregate)

    def _learn_checkpoint(self, cert: CheckpointCertificate, validators: ValidatorSet) -> None:
        if cert.height <= self._checkpoint_height():
            return
        # Only a height this replica has applied tells it for sure which set was in force.
        known = self.log.set_for_height(cert.height) if cert.height <= self.applied_height else None
        if known is not None and known.hash != validators.hash:
            self._count("checkpoint_set_mismatch")
            return
        if not self._checkpoint_valid(cert, validators):
            self._count("bad_checkpoint")
            return
        self._adopt_checkpoint(cert, validators)

    def _adopt_checkpoint(self, cert: CheckpointCertificate, validators: ValidatorSet) -> None:
        self.checkpoint = (cert, validators)
        self._persist(rec.CHECKPOINT, [cert.to_fields(), validators.to_fields()])
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Snapshot at the newest certified checkpoint this replica has executed, once the log is long."""
        if self.checkpoint is None:
            return
        cert, validators = self.checkpoint
        log = self.log
        if cert.height <= log.snapshot.height or cert.height > min(self.executed_height, self.applied_height):
            return
        if self.applied_index - log.snapshot.last_index < max(1, self.config.snapshot_interval):
            return
        index = log.index_of_height(cert.height)
        if index is None or log.digest_at(index) != cert.block_hash:
            self._count("checkpoint_not_in_log")
            return
        snapshot = SnapshotMeta(index, log.term_at(index), cert.height, log.config_at_index(index), cert, validators)
        self._install_snapshot_meta(snapshot)

    def _install_snapshot_meta(self, snapshot: SnapshotMeta) -> None:
        # Commit signatures outlive their entries by one snapshot: a follower that has the
        # entries but missed the signatures catches up without a state transfer.
        floor = self.log.snapshot.height
        for dropped in self.log.compact(snapshot):
            self._persist(rec.entry_key(dropped), None)
        for height in sorted(h for h in self.certs if h <= floor):
            del self.certs[height]
            self._persist(rec.cert_key(height), None)
        self._persist(rec.SNAP, snapshot.to_fields())
        self._persist_tail()

    def _on_install_snapshot(self, sender: NodeId, msg: m.InstallSnapshot) -> None:
        if msg.term < self.term:
            self._send(sender, m.SnapshotReply(self.term, 0, 0))
            return
        self._observe_term(msg.term)
        if self.role != FOLLOWER or self.leader != sender:
            self._become_follower(sender)
        self.last_contact = self.now
        self._reset_election_deadline()
        snapshot = msg.snapshot
        if snapshot.height <= self.applied_height:
            # Already past it: the entries up to there are committed and applied here.
            self._send(sender, m.SnapshotReply(self.term, min(snapshot.last_index, self.applied_index), self.applied_height))
            return
        if self.pending_snapshot is not None and self.pending_snapshot.height >= snapshot.height:
            return
        if not self._checkpoint_valid(snapshot.checkpoint, snapshot.checkpoint_validators):
            self._count("bad_snapshot_checkpoint")
            return
        self._request_state(snapshot, sender)

    def _request_state(self, snapshot: SnapshotMeta, source: NodeId | None) -> None:
        self.pending_snapshot = snapshot
        self.fetch_retry_at = self.now + self.config.timeout_ticks
        self._flush()
        self._out.append(FetchState(snapshot.checkpoint, () if source is None else (source,)))

    def _state_installed(self, cert: CheckpointCertificate) -> None:
        snapshot = self.pending_snapshot
        if snapshot is None or snapshot.checkpoint != cert:
            self._count("unexpected_state_installed")
            return
        self.pending_snapshot = None
        if snapshot.height <= self.applied_height:
            return
        self._install_snapshot_meta(snapshot)
        self.commit_index = max(self.commit_index, snapshot.last_index)
        self.applied_index = max(self.applied_index, snapshot.last_index)
        self.applied_height = max(self.applied_height, snapshot.height)
        self.executed_height = max(self.executed_height, snapshot.height)
        if snapshot.height > self._checkpoint_height():
            self.checkpoint = (snapshot.checkpoint, snapshot.checkpoint_validators)
            self._persist(rec.CHECKPOINT, [snapshot.checkpoint.to_fields(), snapshot.checkpoint_validators.to_fields()])
        self._apply()
        if self.leader is not None and self.leader != self.id:
            self._send(self.leader, m.SnapshotReply(self.term, snapshot.last_index, self.applied_height))

    def _on_snapshot_reply(self, sender: NodeId, msg: m.SnapshotReply) -> None:
        if msg.term > self.term:
            self._observe_term(msg.term)
            return
        if self.role != LEADER or msg.term != self.term:
            return
        progress = self.progress.get(sender)
        if progress is None:
            return
        progress.last_ack = self.now
        if msg.last_index:
            progress.match = max(progress.match, min(msg.last_index, self.log.last_index))
            progress.next = max(progress.next, progress.match + 1)
            progress.applied_height = max(progress.applied_height, msg.height)
            progress.inflight = 0
            self._advance_commit()
            self._send_append(sender)
