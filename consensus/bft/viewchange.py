"""View change: what a view-change message must prove and what a new-view must choose.

A **view-change** for view v' carries the sender's stable checkpoint certificate (at
height c; none for genesis) and, for every sequence number of its window (c, hi(c)]
it prepared, the prepared certificate of the highest view it prepared it in.
Certificates for views at or above v', or outside that window, make the message
invalid: an honest replica never sends them. One validator set orders a window, so
every certificate above the new view's m belongs to the set ordering the heights
above m.

A **new-view** for v' carries 2f + 1 valid view-changes from distinct members of the
set that orders the heights above m (m = the highest checkpoint among them) and the
leader's pre-prepares for every sequence number in (m, max-s], where max-s is the
highest prepared sequence number above m: for each, the digest of the prepared
certificate with the highest view, or the null batch where there is none. Every
replica recomputes this choice from the view-changes and refuses a new-view whose
pre-prepares differ in any way. That recomputation is what keeps a batch committed in
an earlier view at its height: its 2f + 1 committers hold prepared certificates, and
any 2f + 1 view-changes include at least one honest committer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from consensus.bft.messages import (
    NewView,
    ViewChange,
    new_view_payload,
    view_change_payload,
    vote_payload,
)
from consensus.bft.proofs import leader_of, prepared_is_valid, verify_checkpoint_certificate
from consensus.bft.schedule import ValidatorSchedule
from consensus.types import Verifier
from ledger.certificate import CertificateError, CheckpointCertificate
from ledger.crypto import Kind

__all__ = ["ViewChangeChecker", "ViewChangeRefused", "choose_view_changes", "new_view_plan"]

# Verified proofs remembered so retransmissions and the copies inside new-views are
# not checked again; BLS checkpoint certificates are the expensive ones.
_CACHE_LIMIT = 1024


class ViewChangeRefused(ValueError):
    """A view-change or new-view message does not prove what it must."""


def new_view_plan(view_changes: Sequence[ViewChange]) -> tuple[int, list[tuple[int, bytes | None]]]:
    """``(m, [(seq, digest or None for the null batch), ...])`` for seq in (m, max-s]."""
    m = max(vc.checkpoint_height for vc in view_changes)
    best: dict[int, tuple[int, bytes]] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            if cert.seq <= m:
                continue
            current = best.get(cert.seq)
            # Two valid certificates of one view and sequence with different digests
            # need more than f liars; the tie-break only keeps the choice deterministic.
            if current is None or (cert.view, cert.digest) > current:
                best[cert.seq] = (cert.view, cert.digest)
    top = max(best, default=m)
    return m, [(s, best[s][1] if s in best else None) for s in range(m + 1, top + 1)]


def choose_view_changes(
    candidates: Iterable[ViewChange], schedule: ValidatorSchedule
) -> tuple[int, list[ViewChange]] | None:
    """Pick a quorum of view-changes for a new-view: ``(m, chosen)`` or None if short.

    Only members of the set ordering the heights above m count, and m is the highest
    checkpoint among the counted ones; the highest checkpoints are preferred so the
    new view starts as late as possible.
    """
    pool = sorted(candidates, key=lambda vc: (-vc.checkpoint_height, vc.signer))
    while pool:
        m = pool[0].checkpoint_height
        validators = schedule.set_after(m)
        if pool[0].signer not in validators:
            pool = pool[1:]
            continue
        members = [vc for vc in pool if vc.signer in validators]
        if len(members) < validators.bft_quorum:
            return None
        return m, members[: validators.bft_quorum]
    return None


class ViewChangeChecker:
    """Checks view-change and new-view messages against a replica's validator schedule.

    The caller makes sure the schedule is known up to the checkpoints involved (it has
    executed or installed state up to them).
    """

    def __init__(self, chain_id: str, checkpoint_interval: int, span: int, verifier: Verifier,
                 schedule: ValidatorSchedule, null_digest: bytes) -> None:
        self.chain_id = chain_id
        self.k = checkpoint_interval
        self.span = span
        self.verifier = verifier
        self.schedule = schedule
        self.null_digest = null_digest
        self._good_checkpoints: dict[bytes, None] = {}
        self._good_view_changes: dict[tuple[bytes, int, bytes], None] = {}

    def check_checkpoint(self, cert: CheckpointCertificate) -> None:
        """Raise :class:`CertificateError` unless the set in force at its height signed ``cert``."""
        if cert.height % self.k:
            raise CertificateError(f"checkpoint height {cert.height} is not a multiple of {self.k}")
        key = cert.encode()
        if key in self._good_checkpoints:
            return
        verify_checkpoint_certificate(self.chain_id, self.schedule.set_for(cert.height), cert, self.verifier)
        _remember(self._good_checkpoints, key)

    def check_view_change(self, vc: ViewChange) -> None:
        """Raise :class:`ViewChangeRefused` unless ``vc`` is well signed and its proofs hold."""
        key = (vc.signer, vc.new_view, vc.signature)
        if key in self._good_view_changes:
            return
        if not self.verifier.verify(vc.signer, Kind.VIEW_CHANGE, view_change_payload(vc), vc.signature):
            raise ViewChangeRefused("view-change signature does not verify")
        c = vc.checkpoint_height
        if vc.checkpoint is not None:
            try:
                self.check_checkpoint(vc.checkpoint)
            except CertificateError as exc:
                raise ViewChangeRefused(f"view-change checkpoint: {exc}") from None
        validators = self.schedule.set_after(c)
        end = self.schedule.window_end(c, self.span)
        for cert in vc.prepared:
            if not c < cert.seq <= end:
                raise ViewChangeRefused(f"prepared certificate for {cert.seq} outside the window ({c}, {end}]")
            if cert.view >= vc.new_view:
                raise ViewChangeRefused("prepared certificate from a view not below the new view")
            if not prepared_is_valid(cert, validators, self.verifier):
                raise ViewChangeRefused(f"prepared certificate for {cert.seq} in view {cert.view} does not verify")
        _remember(self._good_view_changes, key)

    def check_new_view(self, nv: NewView) -> tuple[int, list[tuple[int, bytes | None]]]:
        """Return ``(m, plan)`` if ``nv`` is a valid new-view; else raise.

        It must be signed by the leader of its view; who relayed it does not matter.
        """
        signers = [vc.signer for vc in nv.view_changes]
        if len(set(signers)) != len(signers):
            raise ViewChangeRefused("new-view counts one validator twice")
        if not nv.view_changes:
            raise ViewChangeRefused("new-view carries no view-changes")
        if any(vc.new_view != nv.view for vc in nv.view_changes):
            raise ViewChangeRefused("new-view carries view-changes for another view")
        m, plan = new_view_plan(nv.view_changes)
        validators = self.schedule.set_after(m)
        if any(s not in validators for s in signers):
            raise ViewChangeRefused("new-view carries a view-change from a non-member")
        if len(signers) < validators.bft_quorum:
            raise ViewChangeRefused(f"new-view has {len(signers)} view-changes; {validators.bft_quorum} are needed")
        leader = leader_of(validators, nv.view)
        for vc in nv.view_changes:
            self.check_view_change(vc)
        expected = [(s, self.null_digest if d is None else d) for s, d in plan]
        if [(s, d) for s, d, _ in nv.pre_prepares] != expected:
            raise ViewChangeRefused("new-view pre-prepares differ from the ones its view-changes prove")
        for s, d, signature in nv.pre_prepares:
            if not self.verifier.verify(leader, Kind.PRE_PREPARE, vote_payload(s, nv.view, d), signature):
                raise ViewChangeRefused(f"new-view pre-prepare for {s} does not verify")
        if not self.verifier.verify(leader, Kind.NEW_VIEW, new_view_payload(nv), nv.signature):
            raise ViewChangeRefused("new-view is not signed by the leader of its view")
        return m, plan


def _remember(cache: dict, key: object) -> None:
    cache[key] = None
    if len(cache) > _CACHE_LIMIT:
        del cache[next(iter(cache))]
