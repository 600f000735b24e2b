"""Checkpoints, garbage collection, and bringing lagging replicas up to date.

* After executing a checkpoint height the replica BLS-signs it (see
  :mod:`.checkpoint`); 2f + 1 matching shares make the **stable checkpoint**: the low
  watermark moves up to it and everything at or below it is forgotten (decided batches
  are kept one more interval, to hand to replicas that are slightly behind).
* Every few ticks each replica broadcasts a STATUS; a peer that is ahead answers with
  what the sender lacks: DECIDED batches with their commit certificates (proof enough
  on their own), its stable checkpoint certificate with the validator-set changes
  since the sender's checkpoint (CATCH-UP), or the NEW-VIEW of its current view. Help
  is rate-limited per peer, so a flood of STATUS costs a bounded amount.
* A replica that learns of a certified checkpoint above what it executed first tries
  to fill the gap with decided batches (when the gap lies in its window) and otherwise,
  or after a timeout, asks the driver for the state at that checkpoint (``FetchState``)
  and resumes from it on ``StateInstalled``.
"""

from __future__ import annotations

from consensus.bft import records as rec
from consensus.bft.messages import BatchReply, CatchUp, CheckpointVote, Decided, Fetch, Status
from consensus.bft.proofs import verify_commit_certificate
from consensus.types import ConsensusError, Executed, FetchState
from ledger import codec
from ledger.certificate import CertificateError, CheckpointCertificate, checkpoint_message

__all__ = ["CatchUpMixin"]


class CatchUpMixin:
    # ------------------------------------------------------------------ checkpoints

    def _on_executed(self, event: Executed) -> None:
        height = event.height
        if height <= self.low or height > self.committed:
            return
        decided = self.decided.get(height)
        if decided is not None and decided[1].digest != event.digest:
            raise ConsensusError(f"the driver executed digest {event.digest.hex()[:16]} at {height}, not the committed batch")
        if height == self.committed:
            self._drop_stale_pending()
            self._judge_held()
        if height % self.k or height in self.my_checkpoint_votes:
            return
        validators = self.schedule.set_for(height)
        if self.me not in validators:
            return
        message = checkpoint_message(self.config.chain_id, height, event.digest, event.state_root)
        vote = CheckpointVote(height, event.digest, event.state_root, self.signer.bls_sign(message))
        self.my_checkpoint_votes[height] = vote
        self._out.persist(
            rec.checkpoint_vote_key(height),
            codec.encode([height, event.digest, event.state_root, vote.signature]),
        )
        self._out.broadcast(vote)
        cert = self.checkpoints.add(self.me, vote, validators)
        if cert is not None:
            self._on_checkpoint_certificate(cert)

    def _on_checkpoint_vote(self, vote: CheckpointVote, sender: bytes) -> None:
        height = vote.height
        if height % self.k or not self.low < height <= self.hi:
            self._drop("checkpoint vote outside the window")
            return
        validators = self.schedule.set_for(height)
        if sender not in validators:
            self._drop("checkpoint vote from a non-member")
            return
        cert = self.checkpoints.add(sender, vote, validators)
        if cert is not None:
            self._on_checkpoint_certificate(cert)

    def _on_checkpoint_certificate(self, cert: CheckpointCertificate) -> None:
        """A verified certificate: make it stable, or catch up to it."""
        if cert.height <= self.low:
            return
        if cert.height <= self.committed:
            decided = self.decided.get(cert.height)
            if decided is not None and decided[1].digest != cert.block_hash:
                self.stats["anomaly: a checkpoint certificate contradicts our commit"] += 1
                return
            self._make_stable(cert)
            return
        if self.target is None or cert.height > self.target.height:
            self.target = cert
        if cert.height <= self.hi and self.fetching is None:
            # Within our window: decided batches from peers can fill the gap.
            if self.catchup_at is None:
                self.catchup_at = self.now + self.timeout()
        else:
            self._start_fetch(cert)

    def _make_stable(self, cert: CheckpointCertificate) -> None:
        height = cert.height
        self.low, self.stable = height, cert
        self._out.persist(rec.STABLE, cert.encode())
        for seq in [s for s in self.slots if s <= height]:
            del self.slots[seq]
        for seq in [s for s in self.prepared if s <= height]:
            del self.prepared[seq]
            self._out.persist(rec.prepared_key(seq), None)
        for kind, seq in [key for key in self.signed if key[1] <= height]:
            del self.signed[(kind, seq)]
            self._out.persist(rec.signed_key(kind, seq), None)
        for seq in [s for s in self.batches if s <= height]:
            for digest in self.batches.pop(seq):
                self._out.persist(rec.batch_key(seq, digest), None)
        for seq in [s for s in self.decided if s <= height - self.k]:
            del self.decided[seq]
            self._out.persist(rec.decided_key(seq), None)
        for h in [h for h in self.my_checkpoint_votes if h <= height]:
            del self.my_checkpoint_votes[h]
            self._out.persist(rec.checkpoint_vote_key(h), None)
        self.checkpoints.forget_through(height)
        self.wanted = {d: s for d, s in self.wanted.items() if s > height}
        self.nv_plan = {s: d for s, d in self.nv_plan.items() if s > height}
        if self.target is not None and self.target.height <= height:
            self.target = None
            self.catchup_at = None
        self.next_seq = max(self.next_seq, height + 1)
        self.last_progress = self.now
        self.stats["checkpoints made stable"] += 1

    def _start_fetch(self, cert: CheckpointCertificate) -> None:
        if self.fetching is not None and self.fetching.height >= cert.height:
            return
        self.fetching = self.target = cert
        self.catchup_at = None
        self.fetch_retry_at = self.now + 4 * self.timeout()
        self.stats["state fetches"] += 1
        self._out.emit(FetchState(cert, self._signers_of(cert)))

    def _on_state_installed(self, cert: CheckpointCertificate, validator_sets=()) -> None:
        if cert.height <= self.committed:
            # The answer to an older FetchState, overtaken by a later one or by decided
            # batches; the driver installs state only above the application's height.
            self._drop("state installed below the committed height")
            return
        try:
            self.checker.check_checkpoint(cert)
        except CertificateError as exc:
            raise ConsensusError(f"state installed at an uncertified checkpoint: {exc}") from None
        if validator_sets:
            # The installed state is certified; the sets it records are authoritative.
            for after, validators in validator_sets:
                self.schedule.add(after, validators)
            self._persist_schedule()
        self.committed = cert.height
        self._out.persist(rec.COMMITTED, rec.height_value(cert.height))
        for seq in [s for s in self.decided if s <= cert.height]:
            del self.decided[seq]
            self._out.persist(rec.decided_key(seq), None)
        if self.fetching is not None and self.fetching.height <= cert.height:
            self.fetching = None
            self.fetch_retry_at = None
        # Batches others offered were probably ordered while we were away; their
        # owners still hold them. Our own stay pending until we see them committed.
        self.pending = {d: p for d, p in self.pending.items() if p.origin == self.me}
        self._make_stable(cert)
        if self.target is not None and self.target.height > self.committed:
            self._on_checkpoint_certificate(self.target)

    # ------------------------------------------------------------------ helping peers

    def _on_status(self, status: Status, sender: bytes) -> None:
        # Answered for anyone (a joining validator is not a member yet, an observer
        # never is): all we send is certified, and only once per resend period.
        last = self.helped.get(sender)
        if last is not None and self.now - last < self.resend_every:
            return
        helped = False
        behind = status.low < self.low and self.stable is not None
        # It missed a validator-set change (it installed state without learning it):
        # the set it believes orders its window differs from the one we know.
        misled = status.low <= self.committed and status.window != self.schedule.window_digest(status.low, self.span)
        if behind or misled:
            self._out.send(sender, CatchUp(self.stable if behind else None, tuple(self.changes)))
            helped = True
        if status.committed < self.committed:
            top = min(self.committed, self.schedule.window_end(status.low, self.span), status.committed + self.k)
            for seq in range(status.committed + 1, top + 1):
                decided = self.decided.get(seq)
                if decided is not None:
                    self._out.send(sender, Decided(seq, decided[0], decided[1]))
                    helped = True
        if self.active and self.nv is not None and (
            status.view < self.view or (status.view == self.view and not status.active)
        ):
            self._out.send(sender, self.nv)
            helped = True
        elif not status.active and status.view <= self.view:
            # It waits in a view change we have seen through (or also wait in): the
            # new-view lets it enter the view; a quorum of view-changes lets it start
            # its timer, so it does not wait for a new-view that will never come.
            nv = self.accepted_new_views.get(status.view)
            relay = [nv] if nv is not None else self.view_change_quorum(status.view)
            if not relay and status.view in self.sent_view_changes:
                relay = [self.sent_view_changes[status.view]]
            for message in relay:
                self._out.send(sender, message)
                helped = True
        if helped:
            if len(self.helped) > 1024:
                self.helped.clear()
            self.helped[sender] = self.now

    def _on_decided(self, msg: Decided, sender: bytes) -> None:
        seq = msg.seq
        ours = self.decided.get(seq)
        if ours is not None and ours[1].digest != msg.certificate.digest and seq > self.low:
            try:
                verify_commit_certificate(self.window_set, msg.certificate, self.verifier)
            except CertificateError:
                return
            self.stats["anomaly: a valid commit certificate for another batch at a committed height"] += 1
            return
        if seq <= self.committed or seq > self.hi or ours is not None or self.fetching is not None:
            return
        try:
            verify_commit_certificate(self.window_set, msg.certificate, self.verifier)
        except CertificateError:
            self._drop("invalid commit certificate")
            return
        if self.app.digest(msg.batch) != msg.certificate.digest:
            self._drop("decided batch does not match its certificate")
            return
        self.decided[seq] = (msg.batch, msg.certificate)

    def _on_catch_up(self, msg: CatchUp, sender: bytes) -> None:
        known = {d.seq for d in self.changes}
        for change in msg.changes:
            if change.seq in known:
                continue
            try:
                verify_commit_certificate(self.schedule.set_for(change.seq), change.certificate, self.verifier)
            except CertificateError:
                self._drop("invalid validator-change proof")
                return
            if self.app.digest(change.batch) != change.certificate.digest:
                self._drop("invalid validator-change proof")
                return
            validators = self.app.validator_set_change(change.seq, change.batch)
            if validators is None:
                self._drop("validator-change proof changes nothing")
                return
            self._learn_change(change.seq, change.batch, change.certificate, validators)
        cert = msg.checkpoint
        if cert is not None and not (self.fetching is not None and cert.height <= self.fetching.height):
            self._consider_checkpoint(cert)

    def _on_fetch(self, msg: Fetch, sender: bytes) -> None:
        if sender not in self.schedule.members():
            self._drop("fetch from a non-validator")
            return
        last = self.answered.get((sender, msg.digest))
        if last is not None and self.now - last < self.resend_every:
            return
        batch = None
        for per_seq in self.batches.values():
            batch = per_seq.get(msg.digest)
            if batch is not None:
                break
        if batch is None and msg.digest in self.pending:
            batch = self.pending[msg.digest].batch
        if batch is None:
            batch = next((b for b, c in self.decided.values() if c.digest == msg.digest), None)
        if batch is not None:
            if len(self.answered) > 4096:
                self.answered.clear()
            self.answered[(sender, msg.digest)] = self.now
            self._out.send(sender, BatchReply(batch))

    def _on_batch_reply(self, msg: BatchReply, sender: bytes) -> None:
        digest = self.app.digest(msg.batch)
        seq = self.wanted.pop(digest, None)
        if seq is None:
            return
        slot = self.slots.get(seq)
        if slot is None:
            return
        if slot.digest == digest and slot.batch is None and not slot.invalid:
            self._accept_batch(slot, msg.batch)
            self._maybe_prepare(slot)
        else:
            self.batches.setdefault(seq, {})[digest] = msg.batch
            self._out.persist(rec.batch_key(seq, digest), msg.batch)
            self._check_committed(slot)
