"""The BFT replica: state, event dispatch, timers, signing rules and restart.

The protocol handlers live in mixins, one per concern: :mod:`.normal` (ordering in a
view), :mod:`.changing` (view change), :mod:`.catchup` (checkpoints, helping and
catching up) and :mod:`.restart` (rebuilding from the records). This module owns the state they share and the two rules every
handler relies on:

* **persist before send**: every record goes through :class:`Outbox`, which emits a
  ``Persist`` before the next ``Send``/``Broadcast``/``Commit``/``FetchState``;
* **never sign two digests for one (view, sequence)**: :meth:`BftReplica._sign_vote`
  checks and records the last signed (view, digest) per kind and sequence number,
  durably, before the signature can leave.
"""

from __future__ import annotations

from collections import Counter

from consensus.bft import records as rec
from consensus.bft.catchup import CatchUpMixin
from consensus.bft.changing import ViewChangeMixin
from consensus.bft.checkpoint import CheckpointTracker
from consensus.bft.log import Pending, Slot
from consensus.bft.messages import (
    BatchReply,
    CatchUp,
    CheckpointVote,
    CommitVote,
    Decided,
    Fetch,
    Message,
    MessageError,
    NewView,
    Prepare,
    PreparedCertificate,
    PrePrepare,
    Request,
    Status,
    ViewChange,
    decode,
    encode,
    vote_payload,
)
from consensus.bft.normal import NormalCaseMixin
from consensus.bft.proofs import leader_of
from consensus.bft.restart import RestartMixin
from consensus.bft.schedule import LAG_INTERVALS, ValidatorSchedule
from consensus.bft.viewchange import ViewChangeChecker
from consensus.types import (
    Action,
    Application,
    Broadcast,
    Commit,
    ConsensusConfig,
    ConsensusError,
    Event,
    Executed,
    FetchState,
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
from ledger.crypto import Kind
from ledger.validators import ValidatorSet

__all__ = ["BftReplica"]

_KINDS = {"pp": Kind.PRE_PREPARE, "p": Kind.PREPARE, "c": Kind.COMMIT}
# Back-off stops doubling after this many failed view changes (timeout x 8), so a
# healed network is never left waiting unboundedly long for the next view.
MAX_DOUBLINGS = 3
# A batch may wait at most this many view timeouts for its commit, even while other
# batches commit: the bound a slow or censoring leader cannot stretch.
FAIRNESS = 4
# Committed digests remembered so a late copy of an ordered batch is not ordered again.
RECENT_DIGESTS = 4096


class Outbox:
    """Collects actions in order; records are flushed as one ``Persist`` before the next
    action that lets anything leave the process (send, broadcast, commit, fetch)."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self._records: dict[bytes, bytes | None] = {}

    def persist(self, key: bytes, value: bytes | None) -> None:
        self._records.pop(key, None)  # keep write order: a re-write moves to the end
        self._records[key] = value

    def _flush(self) -> None:
        if self._records:
            self.actions.append(Persist(tuple(self._records.items())))
            self._records = {}

    def send(self, to: bytes, message: Message) -> None:
        self._flush()
        self.actions.append(Send(to, encode(message)))

    def broadcast(self, message: Message) -> None:
        self._flush()
        self.actions.append(Broadcast(encode(message)))

    def emit(self, action: Commit | FetchState) -> None:
        self._flush()
        self.actions.append(action)

    def finish(self) -> list[Action]:
        self._flush()
        return self.actions


class BftReplica(NormalCaseMixin, ViewChangeMixin, CatchUpMixin, RestartMixin):
    """A PBFT-style replica (see the package docstring for the protocol)."""

    def __init__(self, config: ConsensusConfig, signer: Signer, verifier: Verifier, app: Application) -> None:
        if config.checkpoint_interval < 1:
            raise ConsensusError("checkpoint_interval must be at least 1")
        if config.window < config.checkpoint_interval:
            raise ConsensusError(
                f"window ({config.window}) must be at least the checkpoint interval ({config.checkpoint_interval}):"
                " a replica must be able to reach the next checkpoint"
            )
        if config.timeout_ticks < 1:
            raise ConsensusError("timeout_ticks must be at least 1")
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.app = app
        self.me: bytes = signer.node_id
        self.k = config.checkpoint_interval
        # Heights ordered beyond the stable checkpoint (see schedule.LAG_INTERVALS).
        self.span = min(config.window, LAG_INTERVALS * self.k)
        self.base_timeout = config.timeout_ticks
        # Retransmission period: lost messages are resent, peers are told our status.
        self.resend_every = max(2, int(config.extra.get("bft_resend_ticks", config.timeout_ticks // 4)))
        self.null_digest = app.digest(b"")
        self.stats: Counter[str] = Counter()
        self.last_refusal = ""  # why the last view-change or new-view was refused (diagnostics)
        self._out = Outbox()
        self._reset(ValidatorSchedule(config.validators))
        self._meta_written = False

    # ------------------------------------------------------------------ state

    def _reset(self, schedule: ValidatorSchedule) -> None:
        """Forget all volatile state (fresh start, or before rebuilding from records)."""
        self.now = 0
        self.schedule = schedule
        self.checker = ViewChangeChecker(
            self.config.chain_id, self.k, self.span, self.verifier, schedule, self.null_digest
        )
        self.checkpoints = CheckpointTracker(self.config.chain_id, self.verifier)
        self.view = 0
        self.active = True  # False between sending a view-change and entering the view
        self.view_started = 0
        self.last_progress = 0  # tick of the last commit or stable checkpoint
        self.attempts = 0  # failed view changes since the last commit (timeout back-off)
        self.my_vc: ViewChange | None = None
        self.nv: NewView | None = None
        self.nv_plan: dict[int, bytes] = {}
        self.nv_deadline: int | None = None
        self.deferred_nv: tuple[NewView, bytes] | None = None
        self.vcs: dict[bytes, dict[int, ViewChange]] = {}
        self.sent_view_changes: dict[int, ViewChange] = {}
        self.accepted_new_views: dict[int, NewView] = {}
        self.low = 0
        self.stable = None
        self.committed = 0
        self.next_seq = 1
        self.slots: dict[int, Slot] = {}
        self.prepared: dict[int, PreparedCertificate] = {}
        self.signed: dict[tuple[str, int], tuple[int, bytes, bytes | None]] = {}
        self.batches: dict[int, dict[bytes, bytes]] = {}
        self.decided: dict[int, tuple[bytes, object]] = {}
        self.changes: list[Decided] = []
        self.pending: dict[bytes, Pending] = {}
        self.recent: dict[bytes, None] = {}
        self.my_checkpoint_votes: dict[int, CheckpointVote] = {}
        self.target = None  # highest certified checkpoint above our execution
        self.catchup_at: int | None = None
        self.fetching = None
        self.fetch_retry_at: int | None = None
        self.wanted: dict[bytes, int] = {}
        self.resend_at = 0
        self.helped: dict[bytes, int] = {}
        self.answered: dict[tuple[bytes, bytes], int] = {}
        self._timer_at: int | None = None

    @property
    def window_set(self) -> ValidatorSet:
        """The set ordering the heights of the window (low, hi]."""
        return self.schedule.set_after(self.low)

    @property
    def hi(self) -> int:
        """The high watermark: the last height this replica orders before its checkpoint moves."""
        return self.schedule.window_end(self.low, self.span)

    def leader(self, view: int | None = None) -> bytes:
        return leader_of(self.window_set, self.view if view is None else view)

    @property
    def is_member(self) -> bool:
        return self.me in self.window_set

    def timeout(self) -> int:
        return self.base_timeout << min(self.attempts, MAX_DOUBLINGS)

    # ------------------------------------------------------------------ stepping

    def step(self, event: Event) -> list[Action]:
        """Handle one event; return the actions to carry out, in order."""
        self._out = out = Outbox()
        now = getattr(event, "now", None)
        if now is not None and not isinstance(event, Restart):
            self.now = max(self.now, now)  # drivers that skip idle ticks still tell the time
        if isinstance(event, Restart):
            self._on_restart(event)
        else:
            self._ensure_base_records()
            if isinstance(event, Receive):
                self._on_receive(event.sender, event.payload)
            elif isinstance(event, Tick):
                self._on_tick(event.now)
            elif isinstance(event, Propose):
                self._on_propose(event.batch)
            elif isinstance(event, Executed):
                self._on_executed(event)
            elif isinstance(event, StateInstalled):
                self._on_state_installed(event.checkpoint, event.validator_sets)
            else:
                raise ConsensusError(f"a BFT replica does not handle {type(event).__name__}")
        self._progress()
        at = self._next_deadline()
        if at is not None and at != self._timer_at:
            out.actions.append(SetTimer(at))
            self._timer_at = at
        return out.finish()

    def _ensure_base_records(self) -> None:
        if not self._meta_written:
            self._meta_written = True
            self._out.persist(rec.META, rec.meta_value(self.me))
            self._out.persist(rec.VIEW, rec.view_value(self.view, self.active))
            self._out.persist(rec.COMMITTED, rec.height_value(self.committed))
            self._persist_schedule()

    def _persist_schedule(self) -> None:
        from ledger import codec

        self._out.persist(rec.SCHEDULE, codec.encode(self.schedule.to_fields()))
        self._out.persist(rec.CHANGES, codec.encode([d.to_fields() for d in self.changes]))

    _HANDLERS = {
        PrePrepare: "_on_pre_prepare",
        Prepare: "_on_prepare",
        CommitVote: "_on_commit_vote",
        CheckpointVote: "_on_checkpoint_vote",
        ViewChange: "_on_view_change",
        NewView: "_on_new_view",
        Request: "_on_request",
        Status: "_on_status",
        Decided: "_on_decided",
        CatchUp: "_on_catch_up",
        Fetch: "_on_fetch",
        BatchReply: "_on_batch_reply",
    }

    def _on_receive(self, sender: bytes, payload: bytes) -> None:
        if sender == self.me:
            return
        try:
            message = decode(payload)
        except MessageError:
            self.stats["dropped: malformed"] += 1
            return
        getattr(self, self._HANDLERS[type(message)])(message, sender)

    def _drop(self, reason: str) -> None:
        self.stats[f"dropped: {reason}"] += 1

    def _progress(self) -> None:
        """Do whatever became possible: execute, re-check a deferred new-view, propose."""
        for _ in range(8):
            before = (self.committed, self.low, self.view, self.active, self.next_seq)
            self._execute_ready()
            self._retry_deferred_new_view()
            self._propose_pending()
            if before == (self.committed, self.low, self.view, self.active, self.next_seq):
                break

    # ------------------------------------------------------------------ timers

    def _on_tick(self, now: int) -> None:
        self.now = max(self.now, now)
        if self.now >= self.resend_at:
            self.resend_at = self.now + self.resend_every
            self._resend()
        deadline = self._work_deadline()
        if deadline is not None and self.now >= deadline:
            self.stats["view change: leader timed out"] += 1
            self._start_view_change(self.view + 1)
        if not self.active and self.nv_deadline is not None and self.now >= self.nv_deadline:
            self.stats["view change: new-view timed out"] += 1
            self.attempts += 1
            self._start_view_change(self.view + 1)
        if self.catchup_at is not None and self.now >= self.catchup_at:
            self.catchup_at = None
            if self.target is not None and self.target.height > self.committed:
                self._start_fetch(self.target)
        if self.fetching is not None and self.fetch_retry_at is not None and self.now >= self.fetch_retry_at:
            self.fetch_retry_at = self.now + 4 * self.timeout()
            self._out.emit(FetchState(self.fetching, self._signers_of(self.fetching)))

    def _work_deadline(self) -> int | None:
        """When the leader has kept us waiting too long.

        Two limits, whichever comes first: no progress at all (no commit, no new stable
        checkpoint) for one timeout while a batch or an accepted pre-prepare waits; or
        one batch waiting ``FAIRNESS`` timeouts since it arrived (or the view started),
        plus one timeout for every K batches that were waiting before it, however much
        else is committed. So a leader can neither starve a batch nor order fewer than
        K batches per timeout while there is a backlog.
        """
        if not self.active or not self.is_member or self.fetching is not None:
            return None
        timeout = self.timeout()
        oldest = None
        fair = None
        for p in self.pending.values():
            since = max(p.since, self.view_started)
            oldest = since if oldest is None else min(oldest, since)
            limit = since + (FAIRNESS + p.ahead // self.k) * timeout
            fair = limit if fair is None else min(fair, limit)
        for slot in self.slots.values():
            if slot.seq > self.committed and slot.digest is not None:
                since = max(slot.since, self.view_started)
                oldest = since if oldest is None else min(oldest, since)
                limit = since + FAIRNESS * timeout
                fair = limit if fair is None else min(fair, limit)
        if oldest is None:
            return None
        return min(max(oldest, self.last_progress) + timeout, fair)

    def _next_deadline(self) -> int | None:
        candidates = [self.resend_at, self._work_deadline(), self.catchup_at, self.fetch_retry_at]
        if not self.active:
            candidates.append(self.nv_deadline)
        times = [t for t in candidates if t is not None]
        return max(min(times), self.now + 1) if times else None

    # ------------------------------------------------------------------ signing

    def _sign_vote(self, kind: str, view: int, seq: int, digest: bytes, pp_signature: bytes | None = None) -> bytes | None:
        """Sign a pre-prepare ("pp"), prepare ("p") or commit ("c"), or refuse.

        Refuses (None) when this replica already signed a different digest for that
        sequence number in that view, or signed in a later view. The record of what was
        signed is persisted before the signature can be sent.
        """
        previous = self.signed.get((kind, seq))
        if previous is not None:
            pv, pd, _ = previous
            if pv > view or (pv == view and pd != digest):
                self.stats[f"refused to sign a conflicting {kind}"] += 1
                return None
        signature = self.signer.sign(_KINDS[kind], vote_payload(seq, view, digest))
        if previous is None or previous[:2] != (view, digest):
            self.signed[(kind, seq)] = (view, digest, pp_signature)
            self._out.persist(rec.signed_key(kind, seq), rec.signed_value(view, digest, pp_signature))
        return signature

    def _store_batch(self, seq: int, digest: bytes, batch: bytes) -> None:
        """Keep a batch this replica votes for, durably (a new leader may re-propose it)."""
        per_seq = self.batches.setdefault(seq, {})
        if digest not in per_seq:
            per_seq[digest] = batch
            self._out.persist(rec.batch_key(seq, digest), batch)

    def _find_batch(self, seq: int, digest: bytes) -> bytes | None:
        if digest == self.null_digest:
            return b""
        batch = self.batches.get(seq, {}).get(digest)
        if batch is None and digest in self.pending:
            batch = self.pending[digest].batch
        if batch is None:
            for per_seq in self.batches.values():
                if digest in per_seq:
                    return per_seq[digest]
        return batch

    def _persist_view(self) -> None:
        self._out.persist(rec.VIEW, rec.view_value(self.view, self.active))

    def _remember_committed(self, digest: bytes) -> None:
        self.recent[digest] = None
        if len(self.recent) > RECENT_DIGESTS:
            del self.recent[next(iter(self.recent))]

    def _signers_of(self, cert) -> tuple[bytes, ...]:
        from ledger.certificate import CertificateError, bitmap_indexes

        validators = self.schedule.set_for(cert.height)
        try:
            indexes = bitmap_indexes(cert.signers, validators.n)
        except CertificateError:
            return ()
        return tuple(validators.validators[i].node_key for i in indexes if validators.validators[i].node_key != self.me)

    # ------------------------------------------------------------------ resending

    def _resend(self) -> None:
        """Retransmit what peers may have lost; links drop messages, the protocol must not stall."""
        out = self._out
        out.broadcast(Status(self.view, self.active, self.committed, self.low,
                             self.schedule.window_digest(self.low, self.span)))
        if not self.active:
            if self.my_vc is not None:
                out.broadcast(self.my_vc)
        else:
            leader = self.leader()
            for seq in sorted(self.slots):
                slot = self.slots[seq]
                if seq <= self.committed or slot.digest is None or self.now - slot.since < self.resend_every:
                    continue
                if leader == self.me and slot.batch is not None and slot.pp_signature is not None:
                    out.broadcast(PrePrepare(self.view, seq, slot.digest, slot.batch, slot.pp_signature))
                own = slot.prepares.get(self.me)
                if own is not None:
                    out.broadcast(Prepare(self.view, seq, own[0], own[1]))
                own = slot.commits.get(self.me)
                if own is not None:
                    out.broadcast(CommitVote(self.view, seq, own[0], own[1]))
            sent = 0
            for digest, p in list(self.pending.items()):
                if sent >= 8:
                    break
                if p.origin == self.me and self.now - p.since >= self.resend_every:
                    if not self.app.validate(self.committed + 1, p.batch):
                        # The application's batches may be valid at one height only (a
                        # node's block names its height and parent): once the ledger has
                        # moved past it, it can never be ordered, so stop offering it.
                        del self.pending[digest]
                        self._drop("own pending batch became invalid")
                        continue
                    if not p.announced:
                        p.announced = True
                        out.broadcast(Request(p.batch))
                    elif leader != self.me:
                        out.send(leader, Request(p.batch))
                    sent += 1
        for height, vote in sorted(self.my_checkpoint_votes.items()):
            if height > self.low:
                out.broadcast(vote)
        for digest in list(self.wanted)[:8]:
            out.broadcast(Fetch(digest))
