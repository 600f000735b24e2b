"""The BFT replica's durable records, and rebuilding a replica from them.

Everything the replica signs that could conflict with a later signature is recorded
*before* the message leaves (the ``Persist`` action precedes the send):

==========================  ===============================================
``bft/meta``                format tag, version and the validator's node key
``bft/view``                ``[view, active]``: the current view, and whether the
                            replica has entered it (False: view change in progress)
``bft/vc/<view>``           the view-change messages sent for the last few views
``bft/nv``                  the new-view accepted for the current view (its proof)
``bft/committed``           ``[height]`` of the last committed batch
``bft/stable``              the stable checkpoint certificate
``bft/schedule``            the validator schedule (see :mod:`.schedule`)
``bft/changes``             decided batches that changed the validator set
``bft/sig/pp|p|c/<seq>``    the last (view, digest) signed as pre-prepare, prepare,
                            commit at that sequence number
``bft/prep/<seq>``          the prepared certificate of the highest view
``bft/batch/<seq><digest>`` batches voted for, so a new leader's choice can be fetched
``bft/dec/<seq>``           committed batches with their certificates (kept one
                            checkpoint interval below the stable one, to help laggards)
``bft/ckv/<height>``        this replica's checkpoint vote
==========================  ===============================================

The driver writes the records of one ``Persist`` atomically. :func:`load` refuses
(``ConsensusError``) records that are truncated, undecodable or inconsistent with
each other, e.g. a commit vote without the prepared certificate that must precede it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from consensus.bft.messages import (
    CheckpointVote,
    Decided,
    MessageError,
    NewView,
    PreparedCertificate,
    ViewChange,
    decode,
)
from consensus.bft.schedule import ScheduleError, ValidatorSchedule
from consensus.types import ConsensusError
from ledger import codec
from ledger.certificate import CertificateError, CheckpointCertificate, CommitCertificate

__all__ = ["Recovered", "load"]

FORMAT = ["gridledger/bft-records", 1]
META = b"bft/meta"
VIEW = b"bft/view"
_VC = b"bft/vc/"
NV = b"bft/nv"
COMMITTED = b"bft/committed"
STABLE = b"bft/stable"
SCHEDULE = b"bft/schedule"
CHANGES = b"bft/changes"
_SIGNED = b"bft/sig/"
_PREPARED = b"bft/prep/"
_BATCH = b"bft/batch/"
_DECIDED = b"bft/dec/"
_CKPT_VOTE = b"bft/ckv/"

SIGNED_KINDS = ("pp", "p", "c")
_SINGLE = frozenset({META, VIEW, NV, COMMITTED, STABLE, SCHEDULE, CHANGES})


def _h(n: int) -> bytes:
    return n.to_bytes(8, "big")


def signed_key(kind: str, seq: int) -> bytes:
    return _SIGNED + kind.encode() + b"/" + _h(seq)


def view_change_key(view: int) -> bytes:
    return _VC + _h(view)


def prepared_key(seq: int) -> bytes:
    return _PREPARED + _h(seq)


def batch_key(seq: int, digest: bytes) -> bytes:
    return _BATCH + _h(seq) + digest


def decided_key(seq: int) -> bytes:
    return _DECIDED + _h(seq)


def checkpoint_vote_key(height: int) -> bytes:
    return _CKPT_VOTE + _h(height)


def meta_value(node_id: bytes) -> bytes:
    return codec.encode([*FORMAT, node_id])


def view_value(view: int, active: bool) -> bytes:
    return codec.encode([view, active])


def height_value(height: int) -> bytes:
    return codec.encode([height])


def signed_value(view: int, digest: bytes, pp_signature: bytes | None = None) -> bytes:
    return codec.encode([view, digest] if pp_signature is None else [view, digest, pp_signature])


def decided_value(batch: bytes, cert: CommitCertificate) -> bytes:
    return codec.encode([batch, cert.to_fields()])


@dataclass
class Recovered:
    """What :func:`load` rebuilt; the replica turns it into its working state."""

    view: int
    active: bool
    committed: int
    schedule: ValidatorSchedule
    stable: CheckpointCertificate | None = None
    view_changes: dict[int, ViewChange] = field(default_factory=dict)  # sent, by view
    new_view: NewView | None = None
    changes: list[Decided] = field(default_factory=list)
    # (kind, seq) -> (view, digest, pre-prepare signature or None)
    signed: dict[tuple[str, int], tuple[int, bytes, bytes | None]] = field(default_factory=dict)
    prepared: dict[int, PreparedCertificate] = field(default_factory=dict)
    batches: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    decided: dict[int, tuple[bytes, CommitCertificate]] = field(default_factory=dict)
    checkpoint_votes: dict[int, CheckpointVote] = field(default_factory=dict)

    @property
    def low(self) -> int:
        return 0 if self.stable is None else self.stable.height


def load(
    records: Mapping[bytes, bytes], node_id: bytes, span: int, digest: Callable[[bytes], bytes]
) -> Recovered | None:
    """Rebuild from ``records`` (None when the replica never persisted anything).

    Raises :class:`ConsensusError` naming the first record that is missing, corrupt or
    inconsistent; the replica must not start from records it cannot trust.
    """
    mine = {k: v for k, v in records.items() if k.startswith(b"bft/")}
    if not mine:
        return None
    for key, value in mine.items():
        if not isinstance(value, bytes):
            raise ConsensusError(f"bft record {key!r} holds {type(value).__name__}, not bytes")
    meta = _value(mine, META, "format")
    if not isinstance(meta, list) or meta[:2] != FORMAT or len(meta) != 3:
        raise ConsensusError(f"bft records are of an unknown format {mine.get(META)!r}; expected {FORMAT}")
    if meta[2] != node_id:
        raise ConsensusError("bft records belong to another validator's key")
    view, active = _fields(mine, VIEW, 2, "view", (int, bool))
    (committed,) = _fields(mine, COMMITTED, 1, "committed height", (int,))
    try:
        schedule = ValidatorSchedule.from_fields(_value(mine, SCHEDULE, "validator schedule"))
    except ScheduleError as exc:
        raise ConsensusError(f"bft record {SCHEDULE!r}: {exc}") from None
    rec = Recovered(view, active, committed, schedule)
    if STABLE in mine:
        try:
            rec.stable = CheckpointCertificate.decode(mine[STABLE])
        except CertificateError as exc:
            raise ConsensusError(f"bft record {STABLE!r}: {exc}") from None
    low = rec.low
    if view < 0 or not low <= committed <= low + span:
        raise ConsensusError(
            f"bft records: committed height {committed} outside [{low}, {low + span}] of the stable checkpoint"
        )
    for key in mine:
        if key.startswith(_VC):
            vc = _message(mine, key, ViewChange)
            if key != view_change_key(vc.new_view) or vc.new_view > view:
                raise ConsensusError(f"bft record {key!r} holds a view-change to view {vc.new_view}")
            rec.view_changes[vc.new_view] = vc
    if NV in mine:
        rec.new_view = _message(mine, NV, NewView)
    if not active and view not in rec.view_changes:
        raise ConsensusError(f"bft records: in a view change to {view} but the view-change message is missing")
    if active and view > 0 and (rec.new_view is None or rec.new_view.view != view):
        raise ConsensusError(f"bft records: in view {view} but the new-view that started it is missing")
    if CHANGES in mine:
        items = _value(mine, CHANGES, "validator changes")
        try:
            rec.changes = [Decided.from_fields(item) for item in items]
        except (MessageError, TypeError) as exc:
            raise ConsensusError(f"bft record {CHANGES!r}: {exc}") from None
    _load_log(mine, rec, digest)
    return rec


def _load_log(mine: dict[bytes, bytes], rec: Recovered, digest: Callable[[bytes], bytes]) -> None:
    for key, value in mine.items():
        if key.startswith(_SIGNED):
            kind, _, seq = key[len(_SIGNED):].partition(b"/")
            kind_s = kind.decode(errors="replace")
            if kind_s not in SIGNED_KINDS or len(seq) != 8:
                raise ConsensusError(f"bft record {key!r} has an unknown key")
            fields = _decode(key, value)
            n = 3 if kind_s == "p" else 2
            if not isinstance(fields, list) or len(fields) != n or type(fields[0]) is not int or not isinstance(fields[1], bytes):
                raise ConsensusError(f"bft record {key!r} is not [view, digest{', pre-prepare signature' if n == 3 else ''}]")
            if fields[0] > rec.view:
                raise ConsensusError(f"bft record {key!r} signs view {fields[0]}, above the persisted view {rec.view}")
            rec.signed[(kind_s, int.from_bytes(seq, "big"))] = (fields[0], fields[1], fields[2] if n == 3 else None)
        elif key.startswith(_PREPARED):
            try:
                cert = PreparedCertificate.from_fields(_decode(key, value))
            except MessageError as exc:
                raise ConsensusError(f"bft record {key!r}: {exc}") from None
            rec.prepared[cert.seq] = cert
        elif key.startswith(_BATCH):
            rest = key[len(_BATCH):]
            if len(rest) != 40 or digest(value) != rest[8:]:
                raise ConsensusError(f"bft record {key!r}: the batch does not match its digest")
            rec.batches.setdefault(int.from_bytes(rest[:8], "big"), {})[rest[8:]] = value
        elif key.startswith(_DECIDED):
            fields = _decode(key, value)
            try:
                batch, cert = fields
                cert = CommitCertificate.from_fields(cert)
            except (ValueError, TypeError, CertificateError) as exc:
                raise ConsensusError(f"bft record {key!r} is not [batch, commit certificate]: {exc}") from None
            if not isinstance(batch, bytes) or digest(batch) != cert.digest:
                raise ConsensusError(f"bft record {key!r}: the batch does not match its certificate")
            rec.decided[cert.height] = (batch, cert)
        elif key.startswith(_CKPT_VOTE):
            fields = _decode(key, value)
            if (
                not isinstance(fields, list)
                or len(fields) != 4
                or type(fields[0]) is not int
                or not all(isinstance(f, bytes) for f in fields[1:])
            ):
                raise ConsensusError(f"bft record {key!r} is not a checkpoint vote")
            rec.checkpoint_votes[fields[0]] = CheckpointVote(*fields)
        elif key not in _SINGLE and not key.startswith(_VC):
            raise ConsensusError(f"bft record {key!r} is of no kind this replica writes")
    for (kind, seq), (view, dig, _) in rec.signed.items():
        if seq <= rec.low:
            continue
        # A prepare is recorded with its batch. (A new leader's pre-prepares may name
        # batches it has yet to fetch, so "pp" records carry no such guarantee.)
        if kind == "p" and dig not in rec.batches.get(seq, {}):
            raise ConsensusError(f"bft records: the batch voted for at {seq} in view {view} is missing")
        if kind == "c":
            cert = rec.prepared.get(seq)
            if cert is None or cert.view < view or (cert.view == view and cert.digest != dig):
                raise ConsensusError(f"bft records: commit vote at {seq} without the prepared certificate before it")
    if any(h > rec.committed for h in rec.decided):
        raise ConsensusError("bft records: a decided batch above the committed height")


def _decode(key: bytes, value: bytes) -> object:
    try:
        return codec.decode(value, max_size=1 << 30)
    except codec.CodecError as exc:
        raise ConsensusError(f"bft record {key!r} is corrupt: {exc}") from None


def _value(mine: dict[bytes, bytes], key: bytes, what: str) -> object:
    if key not in mine:
        raise ConsensusError(f"bft records are truncated: the {what} record {key!r} is missing")
    return _decode(key, mine[key])


def _fields(mine: dict[bytes, bytes], key: bytes, n: int, what: str, types: tuple[type, ...]) -> list:
    value = _value(mine, key, what)
    if not isinstance(value, list) or len(value) != n or any(type(v) is not t for v, t in zip(value, types, strict=False)):
        raise ConsensusError(f"bft record {key!r} is not a valid {what}")
    return value


def _message(mine: dict[bytes, bytes], key: bytes, cls: type) -> object:
    try:
        message = decode(mine[key])
    except MessageError as exc:
        raise ConsensusError(f"bft record {key!r}: {exc}") from None
    if not isinstance(message, cls):
        raise ConsensusError(f"bft record {key!r} holds a {type(message).__name__}, not a {cls.__name__}")
    return message
