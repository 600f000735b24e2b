"""The replica's side of view changes (the proofs themselves: :mod:`.viewchange`).

* A replica starts a view change to v + 1 when the leader keeps a batch or an accepted
  pre-prepare waiting longer than the timeout, or proves itself faulty. It persists the
  new view and its VIEW-CHANGE message, then sends it, and from then on takes part in
  no view below v + 1. The message is signed once per view: after a restart the same
  bytes are resent, never a second, different view-change.
* Its new-view timer starts once 2f + 1 view-changes for its view are in (so a lone
  replica cannot race through views). When it expires without a valid NEW-VIEW the
  replica moves on to the next view and the timeout doubles (up to x8); a commit
  resets it.
* Once f + 1 validators ask for views above its own, a replica joins the highest view
  that f + 1 of them ask for: at least one of them is honest, and it does not lag
  behind.
* The new leader builds the NEW-VIEW from 2f + 1 view-changes; every replica checks it
  by recomputing the choice. A replica behind the new-view's checkpoint catches up
  first, then enters the view.
"""

from __future__ import annotations

import dataclasses

from consensus.bft import records as rec
from consensus.bft.messages import (
    NewView,
    ViewChange,
    encode,
    new_view_payload,
    view_change_payload,
)
from consensus.bft.proofs import leader_of
from consensus.bft.viewchange import ViewChangeRefused, choose_view_changes, new_view_plan
from ledger.certificate import CertificateError
from ledger.crypto import Kind

__all__ = ["ViewChangeMixin"]

# View-changes kept per sender (its lowest views above ours): enough for the join rule
# and for collecting a quorum, bounded under a flood of far-future views.
VIEWS_PER_SENDER = 3


class ViewChangeMixin:
    def _start_view_change(self, new_view: int) -> None:
        if new_view <= self.view or not self.is_member:
            return
        self.view = new_view
        self.active = False
        self.nv = None
        self.nv_plan = {}
        self.nv_deadline = None
        self.slots.clear()
        self.wanted = {d: s for d, s in self.wanted.items() if s <= self.committed}
        prepared = tuple(self.prepared[s] for s in sorted(self.prepared) if self.low < s <= self.hi)
        unsigned = ViewChange(new_view, self.me, self.stable, prepared, b"")
        signature = self.signer.sign(Kind.VIEW_CHANGE, view_change_payload(unsigned))
        vc = dataclasses.replace(unsigned, signature=signature)
        self.my_vc = vc
        self._persist_view()
        self._out.persist(rec.view_change_key(new_view), encode(vc))
        self.sent_view_changes[new_view] = vc
        for old in sorted(self.sent_view_changes)[:-RECENT_VIEWS]:
            # Kept for a few views, for replicas still waiting in them; never re-signed.
            del self.sent_view_changes[old]
            self._out.persist(rec.view_change_key(old), None)
        self._out.persist(rec.NV, None)
        self._out.broadcast(vc)
        self._store_view_change(self.me, vc)
        self._prune_view_changes()
        self._after_view_change_input()

    def _store_view_change(self, signer: bytes, vc: ViewChange) -> None:
        views = self.vcs.setdefault(signer, {})
        views[vc.new_view] = vc
        while len(views) > VIEWS_PER_SENDER:
            del views[min(views)]

    def _prune_view_changes(self) -> None:
        """Forget view-changes for views long left; recent ones are relayed to laggards."""
        for signer in list(self.vcs):
            views = self.vcs[signer]
            for v in [v for v in views if v < self.view - RECENT_VIEWS]:
                del views[v]
            if not views:
                del self.vcs[signer]

    def view_change_quorum(self, view: int) -> list[ViewChange]:
        """The view-changes we hold for ``view`` from members, if they are a quorum."""
        validators = self.window_set
        held = [views[view] for signer, views in self.vcs.items() if view in views and signer in validators]
        return held if len(held) >= validators.bft_quorum else []

    def _on_view_change(self, vc: ViewChange, sender: bytes) -> None:
        # View-changes may be relayed (to a replica still waiting in that view): the
        # signature, not the link, says whose it is.
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            return
        if vc.signer not in self.window_set:
            self._drop("view-change from a non-member")
            return
        known = self.vcs.get(vc.signer, {}).get(vc.new_view)
        if known is not None:
            return
        if vc.checkpoint_height > self.committed:
            # It is ahead of us: catch up to its checkpoint first; it will resend.
            self._consider_checkpoint(vc.checkpoint)
            return
        try:
            self.checker.check_view_change(vc)
        except ViewChangeRefused as exc:
            self._drop("invalid view-change")
            self.last_refusal = f"view-change {vc.new_view}: {exc}"
            return
        self._store_view_change(vc.signer, vc)
        if vc.checkpoint is not None and vc.checkpoint_height > self.low:
            self._on_checkpoint_certificate(vc.checkpoint)
        self._after_view_change_input()

    def _after_view_change_input(self) -> None:
        self._maybe_join()
        if not self.active and self.nv_deadline is None:
            validators = self.window_set
            count = sum(1 for s, views in self.vcs.items() if self.view in views and s in validators)
            if count >= validators.bft_quorum:
                self.nv_deadline = self.now + self.timeout()
        self._try_new_view()

    def _maybe_join(self) -> None:
        validators = self.window_set
        higher = sorted(
            (max(views) for s, views in self.vcs.items() if s in validators and s != self.me and max(views) > self.view),
            reverse=True,
        )
        if len(higher) >= validators.f + 1:
            self.stats["view change: joined f + 1 others"] += 1
            self._start_view_change(higher[validators.f])

    def _try_new_view(self) -> None:
        """As the leader of the view being changed to, send the NEW-VIEW once possible."""
        if self.active:
            return
        candidates = [views[self.view] for views in self.vcs.values() if self.view in views]
        choice = choose_view_changes(candidates, self.schedule)
        if choice is None:
            return
        m, chosen = choice
        if m > self.committed or leader_of(self.schedule.set_after(m), self.view) != self.me:
            return
        _, plan = new_view_plan(chosen)
        pre_prepares = []
        for seq, digest in plan:
            digest = self.null_digest if digest is None else digest
            signature = self._sign_vote("pp", self.view, seq, digest)
            if signature is None:
                return
            pre_prepares.append((seq, digest, signature))
        unsigned = NewView(self.view, tuple(chosen), tuple(pre_prepares), b"")
        nv = dataclasses.replace(unsigned, signature=self.signer.sign(Kind.NEW_VIEW, new_view_payload(unsigned)))
        top = next(vc for vc in chosen if vc.checkpoint_height == m)
        if m > self.low and top.checkpoint is not None:
            self._on_checkpoint_certificate(top.checkpoint)
        self._enter_view(nv, m, plan)
        self._out.broadcast(nv)

    def _on_new_view(self, nv: NewView, sender: bytes) -> None:
        if nv.view < self.view or (nv.view == self.view and self.active):
            return
        if not nv.view_changes:
            self._drop("invalid new-view")
            return
        top = max(nv.view_changes, key=lambda vc: vc.checkpoint_height)
        if top.checkpoint_height > self.committed:
            # Catch up to the new view's checkpoint, then come back to it.
            self._consider_checkpoint(top.checkpoint)
            if self.deferred_nv is None or self.deferred_nv[0].view <= nv.view:
                self.deferred_nv = (nv, sender)
            return
        try:
            m, plan = self.checker.check_new_view(nv)
        except ViewChangeRefused as exc:
            self._drop("invalid new-view")
            self.last_refusal = f"new-view {nv.view}: {exc}"
            return
        if m > self.low and top.checkpoint is not None:
            self._on_checkpoint_certificate(top.checkpoint)
        self._enter_view(nv, m, plan)

    def _retry_deferred_new_view(self) -> None:
        if self.deferred_nv is None:
            return
        nv, sender = self.deferred_nv
        if nv.view < self.view or (nv.view == self.view and self.active):
            self.deferred_nv = None
            return
        if max(vc.checkpoint_height for vc in nv.view_changes) <= self.committed:
            self.deferred_nv = None
            self._on_new_view(nv, sender)

    def _enter_view(self, nv: NewView, m: int, plan: list[tuple[int, bytes | None]]) -> None:
        """Start taking part in ``nv.view``, with the new-view's pre-prepares in the log."""
        self.view = nv.view
        self.active = True
        self.nv = nv
        _keep_recent(self.accepted_new_views, nv.view, nv)
        self.my_vc = None
        self.nv_deadline = None
        self.view_started = self.now
        self._persist_view()
        self._out.persist(rec.NV, encode(nv))
        self.slots.clear()
        self.wanted = {d: s for d, s in self.wanted.items() if s <= self.committed}
        self.nv_plan = {}
        signatures = {s: g for s, _, g in nv.pre_prepares}
        for seq, digest in plan:
            digest = self.null_digest if digest is None else digest
            self.nv_plan[seq] = digest
            ours = self.decided.get(seq)
            if ours is not None and ours[1].digest != digest:
                self.stats["anomaly: a new-view re-proposes another batch at a committed height"] += 1
            if seq > self.low:
                self._open_slot(seq, digest, signatures[seq])
        self.next_seq = max(max(self.nv_plan, default=m) + 1, self.committed + 1, self.low + 1)
        self._prune_view_changes()
        self.stats["views entered"] += 1
        view = self.view
        for seq in sorted(self.slots):
            slot = self.slots.get(seq)
            if slot is None or self.view != view or not self.active:
                return  # an invalid re-proposed batch moved us on to the next view
            if slot.batch is not None and slot.batch != b"" and seq > self.committed:
                batch, slot.batch = slot.batch, None
                self._accept_batch(slot, batch)
            if self.view == view and self.active:
                self._maybe_prepare(slot)

    def _consider_checkpoint(self, cert) -> None:
        if cert is None or cert.height <= self.low:
            return
        try:
            self.checker.check_checkpoint(cert)
        except CertificateError:
            self._drop("invalid checkpoint certificate")
            return
        self._on_checkpoint_certificate(cert)


# Past view-changes sent and new-views accepted, kept to answer replicas still stuck
# in those views (the current ones are also resent periodically).
RECENT_VIEWS = 4


def _keep_recent(store: dict, view: int, message: object) -> None:
    store[view] = message
    while len(store) > RECENT_VIEWS:
        del store[min(store)]
