"""Ordering within a view: pre-prepare, prepare, commit, and execution in order.

* The leader of the view (view mod n over the set ordering the window) assigns each
  batch the next sequence number in the window (low, low + K] and broadcasts a signed
  PRE-PREPARE carrying the batch.
* A backup accepts one pre-prepare per (view, seq): from the leader, inside the
  window, correctly signed, whose batch has the digest claimed and passes
  ``Application.validate``. It then signs a PREPARE. A batch the application cannot
  judge before executing the height below (``validate`` answers None: a block arrives
  before this backup has collected the commit votes of its parent) waits in the slot
  and is judged right after that execution, instead of being taken for an invalid one.
  A leader that signs an invalid batch or two different batches for one sequence
  number has proven itself faulty: the backup starts a view change at once.
* Prepared = the pre-prepare + prepares of quorum - 1 distinct other members for the
  same digest (2f + 1 validators in all). The prepared certificate is persisted
  before the COMMIT vote leaves.
* A quorum of commit votes for (view, seq, digest) is the commit certificate; batches
  are committed strictly in sequence order, never past the window.
"""

from __future__ import annotations

from consensus.bft import records as rec
from consensus.bft.log import Pending, Slot
from consensus.bft.messages import (
    CommitVote,
    Prepare,
    PreparedCertificate,
    PrePrepare,
    Request,
    vote_payload,
)
from consensus.bft.proofs import build_commit_certificate
from consensus.bft.schedule import effective_after
from consensus.types import Commit
from ledger import codec
from ledger.crypto import Kind

__all__ = ["NormalCaseMixin"]

# Batches waiting to be ordered, per validator that offered them: a Byzantine peer
# can fill its own share, not anyone else's.
MAX_PENDING_PER_ORIGIN = 256
# Validator-set changes kept to let a lagging replica learn who signed a checkpoint.
MAX_CHANGE_PROOFS = 64


class NormalCaseMixin:
    # ------------------------------------------------------------------ proposals

    def _on_propose(self, batch: bytes) -> None:
        digest = self.app.digest(batch)
        if digest in self.recent or digest in self.pending:
            return
        if not self.app.validate(self.committed + 1, batch):
            self._drop("invalid proposal")
            return
        own = [d for d, p in self.pending.items() if p.origin == self.me]
        if len(own) >= MAX_PENDING_PER_ORIGIN:
            # The newest proposal matters most to the application; the oldest goes.
            del self.pending[own[0]]
            self._drop("oldest proposal evicted")
        self.pending[digest] = Pending(batch, self.now, self.me, ahead=len(self.pending))
        leader = self.leader()
        if leader != self.me:
            # To the leader now; to everyone if it is still waiting at the next resend
            # (see ``_resend``), so that every honest replica can time the leader out.
            self._out.send(leader, Request(batch))

    def _on_request(self, msg: Request, sender: bytes) -> None:
        if sender not in self.window_set:
            self._drop("request from a non-member")
            return
        digest = self.app.digest(msg.batch)
        if digest in self.recent or digest in self.pending:
            return
        if sum(1 for p in self.pending.values() if p.origin == sender) >= MAX_PENDING_PER_ORIGIN:
            self._drop("request beyond the sender's share")
            return
        if not self.app.validate(self.committed + 1, msg.batch):
            self._drop("invalid request")
            return
        self.pending[digest] = Pending(msg.batch, self.now, sender, ahead=len(self.pending))

    def _drop_stale_pending(self) -> None:
        """Forget waiting batches the application no longer accepts at the next height.

        Called once the application has executed everything committed, so its answer is
        about the next height. A node's block is valid at one height only: a block built
        for a height another block filled can never be ordered, and kept here it would
        run its fairness timer out and blame an honest leader with a view change.
        """
        for digest, pending in list(self.pending.items()):
            if not self.app.validate(self.committed + 1, pending.batch):
                del self.pending[digest]
                self._drop("pending batch became invalid")

    def _propose_pending(self) -> None:
        """As the leader, assign waiting batches to the free sequence numbers of the window."""
        if not self.active or self.fetching is not None or self.leader() != self.me:
            return
        self.next_seq = max(self.next_seq, self.committed + 1, self.low + 1)
        assigned = {slot.digest for slot in self.slots.values() if slot.digest is not None}
        for digest, pending in list(self.pending.items()):
            if self.next_seq > self.hi:
                return
            if digest in assigned or digest in self.recent:
                continue
            seq = self.next_seq
            if seq in self.slots and self.slots[seq].digest is not None:
                self.next_seq += 1
                continue
            if not self.app.validate(seq, pending.batch):
                del self.pending[digest]
                self._drop("pending batch became invalid")
                continue
            signature = self._sign_vote("pp", self.view, seq, digest)
            self.next_seq += 1
            if signature is None:
                continue
            self._store_batch(seq, digest, pending.batch)
            slot = self.slots.setdefault(seq, Slot(seq, self.view, self.now))
            slot.digest, slot.pp_signature, slot.batch = digest, signature, pending.batch
            self._out.broadcast(PrePrepare(self.view, seq, digest, pending.batch, signature))
            assigned.add(digest)
            self._check_prepared(slot)

    # ------------------------------------------------------------------ pre-prepare

    def _in_window(self, view: int, seq: int) -> bool:
        if not self.active or view != self.view:
            self._drop("vote for another view")
            return False
        if not self.low < seq <= self.hi:
            # Watermarks: a faulty leader cannot make us hold far-future sequence numbers.
            self._drop("sequence number outside the window")
            return False
        return True

    def _on_pre_prepare(self, msg: PrePrepare, sender: bytes) -> None:
        if not self._in_window(msg.view, msg.seq):
            return
        if sender != self.leader():
            self._drop("pre-prepare not from the leader")
            return
        fixed = self.nv_plan.get(msg.seq)
        if fixed is not None and fixed != msg.digest:
            self._drop("pre-prepare contradicts the new-view")
            return
        if not self.verifier.verify(sender, Kind.PRE_PREPARE, vote_payload(msg.seq, msg.view, msg.digest), msg.signature):
            self._drop("bad signature")
            return
        if self.app.digest(msg.batch) != msg.digest:
            self._drop("batch does not match its digest")
            return
        slot = self.slots.setdefault(msg.seq, Slot(msg.seq, self.view, self.now))
        if slot.digest is not None and slot.digest != msg.digest:
            # Two signed pre-prepares for one (view, seq): the leader equivocates.
            self.stats["view change: leader equivocated"] += 1
            self._start_view_change(self.view + 1)
            return
        if slot.digest is None:
            slot.digest, slot.pp_signature = msg.digest, msg.signature
        if slot.batch is None and not slot.invalid:
            self._accept_batch(slot, msg.batch)
        self._maybe_prepare(slot)

    def _accept_batch(self, slot: Slot, batch: bytes) -> None:
        """Validate the batch of an accepted pre-prepare before voting for it."""
        self.wanted.pop(slot.digest, None)
        if batch == b"" and slot.digest == self.null_digest:
            slot.batch = batch  # the null batch fills a gap; there is nothing to validate
            return
        if slot.seq <= self.committed:
            decided = self.decided.get(slot.seq)
            if decided is not None and decided[1].digest == slot.digest:
                slot.batch = batch
            return
        verdict = self.app.validate(slot.seq, batch)
        if verdict is None:
            slot.unchecked = batch  # judged once the height below is executed (_judge_held)
            self.stats["pre-prepare held until its parent is executed"] += 1
            return
        slot.unchecked = None
        if not verdict:
            slot.invalid = True
            self.stats["view change: leader proposed an invalid batch"] += 1
            self._start_view_change(self.view + 1)
            return
        slot.batch = batch

    def _judge_held(self) -> None:
        """After executing the committed height: judge the next slot's held batch."""
        slot = self.slots.get(self.committed + 1)
        if slot is None or slot.unchecked is None or slot.batch is not None or slot.invalid:
            return
        self._accept_batch(slot, slot.unchecked)
        self._maybe_prepare(slot)

    def _maybe_prepare(self, slot: Slot) -> None:
        if slot.sent_prepare or slot.batch is None or slot.invalid or not self.is_member:
            self._check_prepared(slot)
            return
        if self.leader() == self.me:  # the leader's pre-prepare stands for its prepare
            self._check_prepared(slot)
            return
        signature = self._sign_vote("p", self.view, slot.seq, slot.digest, slot.pp_signature)
        if signature is None:
            return
        self._store_batch(slot.seq, slot.digest, slot.batch)
        slot.sent_prepare = True
        slot.prepares[self.me] = (slot.digest, signature)
        self._out.broadcast(Prepare(self.view, slot.seq, slot.digest, signature))
        self._check_prepared(slot)

    # ------------------------------------------------------------------ prepare / commit

    def _on_prepare(self, msg: Prepare, sender: bytes) -> None:
        if not self._in_window(msg.view, msg.seq):
            return
        if sender not in self.window_set or sender == self.leader():
            self._drop("prepare from a non-member or the leader")
            return
        slot = self.slots.setdefault(msg.seq, Slot(msg.seq, self.view, self.now))
        if sender in slot.prepares:
            return
        if not self.verifier.verify(sender, Kind.PREPARE, vote_payload(msg.seq, msg.view, msg.digest), msg.signature):
            self._drop("bad signature")
            return
        slot.prepares[sender] = (msg.digest, msg.signature)
        self._check_prepared(slot)

    def _check_prepared(self, slot: Slot) -> None:
        """Prepared: persist the certificate, then send the commit vote."""
        if slot.digest is None or slot.batch is None or slot.invalid:
            return
        current = self.prepared.get(slot.seq)
        if current is None or current.view != self.view:
            matching = slot.matching(slot.prepares, slot.digest)
            matching.pop(self.leader(), None)
            if len(matching) < self.window_set.bft_quorum - 1:
                return
            cert = PreparedCertificate(slot.seq, self.view, slot.digest, slot.pp_signature, tuple(sorted(matching.items())))
            self.prepared[slot.seq] = cert
            self._store_batch(slot.seq, slot.digest, slot.batch)
            self._out.persist(rec.prepared_key(slot.seq), codec.encode(cert.to_fields()))
        elif current.digest != slot.digest:
            return
        if not slot.sent_commit and self.is_member:
            signature = self._sign_vote("c", self.view, slot.seq, slot.digest)
            if signature is None:
                return
            slot.sent_commit = True
            slot.commits[self.me] = (slot.digest, signature)
            self._out.broadcast(CommitVote(self.view, slot.seq, slot.digest, signature))
        self._check_committed(slot)

    def _on_commit_vote(self, msg: CommitVote, sender: bytes) -> None:
        if not self._in_window(msg.view, msg.seq):
            return
        if sender not in self.window_set:
            self._drop("commit from a non-member")
            return
        slot = self.slots.setdefault(msg.seq, Slot(msg.seq, self.view, self.now))
        if sender in slot.commits:
            return
        if not self.verifier.verify(sender, Kind.COMMIT, vote_payload(msg.seq, msg.view, msg.digest), msg.signature):
            self._drop("bad signature")
            return
        slot.commits[sender] = (msg.digest, msg.signature)
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        """A quorum of commit votes on one digest is a commit certificate."""
        if slot.seq <= self.committed or slot.seq in self.decided:
            return
        validators = self.window_set
        for digest in sorted({d for d, _ in slot.commits.values()}):
            votes = slot.matching(slot.commits, digest)
            if len(votes) < validators.bft_quorum:
                continue
            if slot.digest == digest and slot.batch is not None:
                batch = slot.batch
            elif slot.digest == digest and slot.unchecked is not None:
                batch = slot.unchecked  # a quorum committed it before this replica could judge it
            else:
                batch = self._find_batch(slot.seq, digest)
            if batch is None:
                self.wanted[digest] = slot.seq
                return
            cert = build_commit_certificate(validators, slot.seq, self.view, digest, votes)
            self.decided[slot.seq] = (batch, cert)
            return

    # ------------------------------------------------------------------ execution

    def _execute_ready(self) -> None:
        """Commit decided batches in sequence order, up to the end of the window."""
        while self.fetching is None:
            seq = self.committed + 1
            if seq > self.hi or seq not in self.decided:
                return
            batch, cert = self.decided[seq]
            self.committed = seq
            # One Persist for the height, the batch and any validator-set change it makes:
            # a crash right after the Commit must not leave a committed change unrecorded.
            self._out.persist(rec.COMMITTED, rec.height_value(seq))
            self._out.persist(rec.decided_key(seq), rec.decided_value(batch, cert))
            if batch != b"":
                changed = self.app.validator_set_change(seq, batch)
                if changed is not None:
                    self._learn_change(seq, batch, cert, changed)
            self._out.emit(Commit(seq, batch, cert.digest, cert))
            self.pending.pop(cert.digest, None)
            self._remember_committed(cert.digest)
            self.attempts = 0
            self.last_progress = self.now
            if self.target is not None and self.target.height <= self.committed:
                self._on_checkpoint_certificate(self.target)

    def _learn_change(self, seq: int, batch: bytes, cert, validators) -> None:
        from consensus.bft.messages import Decided

        self.schedule.add(effective_after(seq, self.k), validators)
        if all(d.seq != seq for d in self.changes):
            self.changes.append(Decided(seq, batch, cert))
            self.changes.sort(key=lambda d: d.seq)
            del self.changes[:-MAX_CHANGE_PROOFS]
        self._persist_schedule()
