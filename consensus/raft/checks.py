"""The simulator's view into Raft: the persist-before-send check and trace descriptions.

:func:`check_send` looks only at what a replica has made durable when a message
leaves, and at the message. It is the rule from the Raft paper's Figure 2 ("respond
to RPCs only after updating stable storage") made checkable:

* no message carries a term above the persisted one (a pre-vote asks for one more);
* a granted vote names the persisted vote, in the persisted term;
* a RequestVote is sent only after the candidate persisted its term and its own vote;
* an AppendEntries sends only entries that are durable in the leader's own log;
* a successful AppendReply acknowledges only entries that are durable.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from consensus.raft import messages as m
from consensus.raft import records as rec

__all__ = ["audit", "check_send", "describe"]


@lru_cache(maxsize=1024)
def _value(key: bytes, raw: bytes) -> object:
    return rec.unseal(key, raw)


def _durable_end(records: Mapping[bytes, bytes]) -> tuple[int, int]:
    """(snapshot last index, durable last index)."""
    snap = 0
    raw = records.get(rec.SNAP)
    if raw is not None:
        snap = _value(rec.SNAP, raw)[0]
    raw = records.get(rec.TAIL)
    last = _value(rec.TAIL, raw)[0] if raw is not None else snap
    return snap, last


def _entry_term(records: Mapping[bytes, bytes], index: int) -> int | None:
    key = rec.entry_key(index)
    raw = records.get(key)
    return None if raw is None else _value(key, raw)[0]


def check_send(records: Mapping[bytes, bytes], to: bytes | None, payload: bytes) -> str | None:
    try:
        msg = m.decode(payload)
    except m.RaftMessageError as exc:
        return f"sent a message that does not decode ({exc})"
    raw = records.get(rec.HARD)
    if raw is None:
        return f"sent {type(msg).__name__} before persisting any hard state"
    term, voted_for = _value(rec.HARD, raw)
    kind = type(msg)
    name = kind.__name__
    if kind is m.PreVote:
        if msg.term > term + 1:
            return f"PreVote for term {msg.term} while the persisted term is {term}"
        return None
    if kind is m.PreVoteReply:
        return None if msg.granted or msg.term <= term else f"PreVoteReply with term {msg.term} > persisted {term}"
    if kind in (m.CheckpointVote, m.Forward):
        return None
    if msg.term > term:
        return f"{name} carries term {msg.term} but the persisted term is {term}"
    if kind is m.RequestVote:
        if msg.term != term or voted_for is None:
            return f"RequestVote for term {msg.term} sent before persisting that term and the candidate's own vote"
    elif kind is m.VoteReply:
        if msg.granted and (msg.term != term or voted_for != to):
            return f"vote granted in term {msg.term} before the vote was persisted (persisted term {term})"
    elif kind is m.AppendEntries and msg.entries:
        last = msg.prev_index + len(msg.entries)
        snap, durable = _durable_end(records)
        if last > durable:
            return f"AppendEntries sends entries up to {last}; only {durable} are durable"
        if last > snap and _entry_term(records, last) != msg.entries[-1].term:
            return f"AppendEntries sends entry {last} of term {msg.entries[-1].term} that is not durable as such"
    elif kind is m.AppendReply and msg.success:
        snap, durable = _durable_end(records)
        if msg.match_index > durable:
            return f"AppendReply acknowledges {msg.match_index}; only {durable} entries are durable"
        if msg.match_index > snap and _entry_term(records, msg.match_index) is None:
            return f"AppendReply acknowledges entry {msg.match_index}, which is not durable"
    elif kind is m.SnapshotReply and msg.last_index:
        snap, durable = _durable_end(records)
        if msg.last_index > max(snap, durable):
            return f"SnapshotReply acknowledges {msg.last_index}; durable state ends at {max(snap, durable)}"
    return None


def describe(payload: bytes) -> str:
    try:
        msg = m.decode(payload)
    except m.RaftMessageError as exc:
        return f"garbage ({exc})"
    kind = type(msg)
    if kind is m.AppendEntries:
        text = f"AppendEntries t={msg.term} prev={msg.prev_index}/{msg.prev_term} n={len(msg.entries)} commit={msg.leader_commit}"
        if msg.certs:
            text += f" certs={msg.certs[0].height}..{msg.certs[-1].height}"
        if msg.checkpoint is not None:
            text += f" cp={msg.checkpoint.height}"
        return text
    if kind is m.AppendReply:
        return (f"AppendReply t={msg.term} {'ok' if msg.success else 'no'} match={msg.match_index}"
                f" conflict={msg.conflict_index} applied={msg.applied_height}")
    if kind in (m.PreVote, m.RequestVote):
        return f"{kind.__name__} t={msg.term} last={msg.last_index}/{msg.last_term}"
    if kind in (m.PreVoteReply, m.VoteReply):
        return f"{kind.__name__} t={msg.term} {'granted' if msg.granted else 'refused'}"
    if kind is m.InstallSnapshot:
        return f"InstallSnapshot t={msg.term} last={msg.snapshot.last_index} h={msg.snapshot.height}"
    if kind is m.SnapshotReply:
        return f"SnapshotReply t={msg.term} last={msg.last_index} h={msg.height}"
    if kind is m.CheckpointVote:
        return f"CheckpointVote h={msg.height}"
    if kind is m.Forward:
        return f"Forward {len(msg.batch)}B"
    if kind is m.ShareRequest:
        return f"ShareRequest t={msg.term} h={msg.height}"
    if kind is m.ShareReply:
        heights = f" h={msg.shares[0].height}..{msg.shares[-1].height}" if msg.shares else ""
        return f"ShareReply t={msg.term}{heights}"
    return kind.__name__


# Counters a Raft replica keeps that stay zero in any run without lying peers.
_NEVER = (
    "two_leaders_in_one_term",  # election safety
    "conflict_below_commit",  # a committed entry would be overwritten
    "match_beyond_log",  # a follower acknowledged entries the leader never had
    "snapshot_mismatch",  # a committed entry differs from a snapshot's
    "checkpoint_not_in_log",  # a certified checkpoint names a block this replica does not have
    "bad_commit_signature",
    "bad_checkpoint",
    "bad_checkpoint_share",
    "bad_snapshot_checkpoint",
    "checkpoint_set_mismatch",
    "no_validator_set_for_height",
)


def audit(replica: object) -> list[str]:
    counters = getattr(replica, "counters", {})
    return [f"{name} happened {counters[name]} time(s)" for name in _NEVER if counters.get(name)]
