"""Restarting a BFT replica from its durable records (see :mod:`.records`).

The replica rebuilds what it signed (so it can never sign differently), its view or
the view change it was in (resending the very same view-change message), the
new-view that started its view (so the leader's re-proposals stay fixed), its
prepared certificates, decided batches and checkpoint votes. It then hands the
decided batches it holds to the application again, since a crash may have fallen
between recording a commit and handing it over.
"""

from __future__ import annotations

from consensus.bft import records as rec
from consensus.bft.log import Slot
from consensus.bft.messages import vote_payload
from consensus.bft.schedule import ValidatorSchedule
from consensus.bft.viewchange import new_view_plan
from consensus.types import Commit, Restart
from ledger.crypto import Kind

__all__ = ["RestartMixin"]


class RestartMixin:
    def _on_restart(self, event: Restart) -> None:
        recovered = rec.load(event.records, self.me, self.span, self.app.digest)
        self._reset(ValidatorSchedule(self.config.validators) if recovered is None else recovered.schedule)
        self.now = event.now
        self.view_started = self.last_progress = event.now
        if recovered is None:
            self._meta_written = False
            self._ensure_base_records()
        else:
            self._meta_written = True
            self._restore(recovered)
            # A crash may have fallen between recording a commit and handing it over:
            # hand over again what we hold; the application ignores heights it has.
            for seq in sorted(self.decided):
                batch, cert = self.decided[seq]
                self._out.emit(Commit(seq, batch, cert.digest, cert))
        self.resend_at = self.now + self.resend_every
        self._resend()

    def _restore(self, r: rec.Recovered) -> None:
        self.view, self.active, self.committed = r.view, r.active, r.committed
        self.stable, self.low = r.stable, r.low
        self.changes = list(r.changes)
        self.signed = dict(r.signed)
        self.prepared = dict(r.prepared)
        self.batches = {s: dict(b) for s, b in r.batches.items()}
        self.decided = dict(r.decided)
        self.my_checkpoint_votes = dict(r.checkpoint_votes)
        for height, vote in self.my_checkpoint_votes.items():
            if height > self.low:
                self.checkpoints.add(self.me, vote, self.schedule.set_for(height))
        for _, cert in self.decided.values():
            self._remember_committed(cert.digest)
        self.sent_view_changes = dict(r.view_changes)
        for vc in r.view_changes.values():
            self._store_view_change(self.me, vc)
        if not self.active:
            self.my_vc = r.view_changes[self.view]
            return
        if self.view > 0 and r.new_view is not None:
            self.nv = r.new_view
            self.accepted_new_views[self.view] = r.new_view
            m, plan = new_view_plan(r.new_view.view_changes)
            signatures = {s: g for s, _, g in r.new_view.pre_prepares}
            for s, d in plan:
                digest = self.null_digest if d is None else d
                self.nv_plan[s] = digest
                if s > self.low:
                    self._open_slot(s, digest, signatures[s])
            self.next_seq = max(self.next_seq, max(self.nv_plan, default=m) + 1)
        for (kind, seq), (view, digest, pp_sig) in sorted(self.signed.items(), key=lambda kv: kv[0][1]):
            if view != self.view or seq <= self.low:
                continue
            if kind == "pp":
                signature = self.signer.sign(Kind.PRE_PREPARE, vote_payload(seq, view, digest))
                self._open_slot(seq, digest, signature)
                self.next_seq = max(self.next_seq, seq + 1)
            elif kind == "p" and pp_sig is not None:
                slot = self._open_slot(seq, digest, pp_sig)
                if slot.digest == digest:
                    slot.sent_prepare = True
                    slot.prepares[self.me] = (digest, self.signer.sign(Kind.PREPARE, vote_payload(seq, view, digest)))
        for (kind, seq), (view, digest, _) in self.signed.items():
            slot = self.slots.get(seq)
            if kind == "c" and view == self.view and slot is not None and slot.digest == digest:
                slot.sent_commit = True
                slot.commits[self.me] = (digest, self.signer.sign(Kind.COMMIT, vote_payload(seq, view, digest)))

    def _open_slot(self, seq: int, digest: bytes, pp_signature: bytes) -> Slot:
        """A slot with an accepted pre-prepare (from the new-view or from our records)."""
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq, self.view, self.now)
        if slot.digest is None:
            slot.digest, slot.pp_signature = digest, pp_signature
            batch = self._find_batch(seq, digest)
            if batch is not None:
                slot.batch = batch
            elif seq > self.committed:
                self.wanted[digest] = seq
        return slot

