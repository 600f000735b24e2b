"""What the simulator asks of the BFT protocol beyond the replica: an independent
persist-before-send check, one-line message descriptions for traces, and who leads.

:func:`check_send` reads only the durable records and the message leaving, not the
replica's memory, so it catches a replica that signs before it has recorded what it
signed, however that came about.
"""

from __future__ import annotations

from collections.abc import Mapping

from consensus.bft import records as rec
from consensus.bft.messages import (
    CheckpointVote,
    CommitVote,
    MessageError,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode,
)
from ledger import codec

__all__ = ["audit", "check_send", "describe", "is_leader"]


def _signed(records: Mapping[bytes, bytes], kind: str, seq: int) -> tuple[int, bytes] | None:
    value = records.get(rec.signed_key(kind, seq))
    if value is None:
        return None
    fields = codec.decode(value)
    return fields[0], fields[1]


def _view(records: Mapping[bytes, bytes]) -> tuple[int, bool] | None:
    value = records.get(rec.VIEW)
    return None if value is None else tuple(codec.decode(value))


def _owner(records: Mapping[bytes, bytes]) -> bytes | None:
    value = records.get(rec.META)
    return None if value is None else codec.decode(value)[2]


def check_send(records: Mapping[bytes, bytes], to: bytes | None, payload: bytes) -> str | None:
    """The persist-before-send rule a message breaks, or None.

    A vote must go out with its (view, seq, digest) durable; a commit vote with its
    prepared certificate; a view-change or new-view with the view and the message itself.
    """
    try:
        message = decode(payload)
    except MessageError:
        return None
    if isinstance(message, (PrePrepare, Prepare, CommitVote)):
        kind = {PrePrepare: "pp", Prepare: "p", CommitVote: "c"}[type(message)]
        name = {"pp": "pre-prepare", "p": "prepare", "c": "commit"}[kind]
        recorded = _signed(records, kind, message.seq)
        if recorded != (message.view, message.digest):
            return f"{name} v={message.view} seq={message.seq} sent but the record says {recorded}"
        if kind == "p" and rec.batch_key(message.seq, message.digest) not in records:
            return f"prepare v={message.view} seq={message.seq} sent before its batch was recorded"
        if kind == "c":
            value = records.get(rec.prepared_key(message.seq))
            if value is None:
                return f"commit v={message.view} seq={message.seq} sent before its prepared certificate was recorded"
            fields = codec.decode(value)
            if (fields[1], fields[2]) != (message.view, message.digest):
                return f"commit v={message.view} seq={message.seq} sent but the prepared certificate is for view {fields[1]}"
        return None
    if isinstance(message, ViewChange):
        view = _view(records)
        if view is None or view[0] < message.new_view:
            return f"view-change to {message.new_view} sent while the recorded view is {view}"
        if message.signer == _owner(records) and records.get(rec.view_change_key(message.new_view)) != payload:
            return f"view-change to {message.new_view} sent but not recorded as sent"
        return None
    if isinstance(message, NewView):
        view = _view(records)
        if view is None or view[0] < message.view:
            return f"new-view {message.view} sent while the recorded view is {view}"
        if view == (message.view, True) and records.get(rec.NV) != payload:
            return f"new-view {message.view} differs from the recorded one"
        return None
    if isinstance(message, CheckpointVote):
        stable = records.get(rec.STABLE)
        if records.get(rec.checkpoint_vote_key(message.height)) is None and stable is None:
            return f"checkpoint vote at {message.height} sent before it was recorded"
    return None


def describe(payload: bytes) -> str:
    try:
        m = decode(payload)
    except MessageError as exc:
        return f"garbage ({exc})"
    name = type(m).__name__
    if isinstance(m, (PrePrepare, Prepare, CommitVote)):
        return f"{name} v={m.view} s={m.seq} d={m.digest.hex()[:8]}"
    if isinstance(m, CheckpointVote):
        return f"{name} h={m.height} d={m.digest.hex()[:8]}"
    if isinstance(m, ViewChange):
        return f"{name} v={m.new_view} ckpt={m.checkpoint_height} prepared={[c.seq for c in m.prepared]}"
    if isinstance(m, NewView):
        return f"{name} v={m.view} pp={[s for s, _, _ in m.pre_prepares]}"
    fields = {k: getattr(m, k) for k in getattr(m, "__slots__", ()) if isinstance(getattr(m, k), int)}
    return f"{name} {' '.join(f'{k}={v}' for k, v in fields.items())}".strip()


def audit(replica: object) -> list[str]:
    """Anomalies an honest replica noticed that no correct run produces (they are counted
    under ``stats["anomaly: ..."]``): conflicting certificates or re-proposals at heights
    it committed."""
    inner = getattr(replica, "honest", replica)
    stats = getattr(inner, "stats", {})
    return [f"{key} (x{count})" for key, count in sorted(stats.items()) if key.startswith("anomaly:") and count]


def is_leader(replica: object) -> bool:
    inner = getattr(replica, "honest", replica)
    return bool(getattr(inner, "active", False)) and inner.leader() == inner.me and inner.is_member
