"""Raft's wire messages: canonical arrays ``[tag, field...]``, decoded strictly.

A peer's bytes are untrusted until decoded: :func:`decode` accepts exactly the shapes
below (types, signs, lengths) and raises :class:`RaftMessageError` for anything else,
which the replica counts and drops. Messages are not signed: Raft tolerates crashes,
not lies, and the node's peer handshake already authenticates who sent them. The
only signatures are the leader's commit certificates and the BLS checkpoint shares,
which outlive the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import codec
from ledger.certificate import CertificateError, CheckpointCertificate
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = [
    "BATCH",
    "NOOP",
    "AppendEntries",
    "AppendReply",
    "CertShare",
    "CheckpointVote",
    "Entry",
    "Forward",
    "InstallSnapshot",
    "PreVote",
    "PreVoteReply",
    "RaftMessageError",
    "RequestVote",
    "ShareReply",
    "ShareRequest",
    "SnapshotMeta",
    "SnapshotReply",
    "VoteReply",
    "decode",
]

# A message may carry up to ``max_batch_entries`` batches, each an encoded block. Blocks
# are bounded by the node (a few MiB at most), so 64 MiB leaves room for a full
# AppendEntries without letting one frame pin unbounded memory.
MAX_MESSAGE_SIZE = 64 << 20
# The leader cuts an AppendEntries at this many bytes of batches, whatever max_batch_entries says.
MAX_APPEND_BYTES = 8 << 20

NOOP = 0
BATCH = 1
ENTRY_KINDS = (NOOP, BATCH)


class RaftMessageError(ValueError):
    """Bytes from a peer are not a well-formed Raft message."""


def _uint(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise RaftMessageError(f"{what} must be a non-negative integer")
    return value


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise RaftMessageError(f"{what} must be a boolean")
    return value


def _bytes(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise RaftMessageError(f"{what} must be {'' if size is None else f'{size} '}bytes")
    return value


def _list(value: object, what: str, size: int | None = None) -> list:
    if not isinstance(value, list) or (size is not None and len(value) != size):
        raise RaftMessageError(f"{what} must be a list" + ("" if size is None else f" of {size} items"))
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    """A log entry: a no-op (a new leader's first entry) or a batch (one height)."""

    term: int
    kind: int
    data: bytes

    def to_fields(self) -> list:
        return [self.term, self.kind, self.data]

    @classmethod
    def from_fields(cls, fields: object) -> Entry:
        term, kind, data = _list(fields, "an entry", 3)
        kind = _uint(kind, "entry kind")
        if kind not in ENTRY_KINDS:
            raise RaftMessageError(f"entry kind {kind} is not one of {ENTRY_KINDS}")
        data = _bytes(data, "entry data")
        if kind == NOOP and data:
            raise RaftMessageError("a no-op entry carries no data")
        return cls(_uint(term, "entry term"), kind, data)


@dataclass(frozen=True, slots=True)
class CertShare:
    """The leader's commit signature for one height: ``(height, term, signer index, signature)``."""

    height: int
    term: int
    signer: int
    signature: bytes

    def to_fields(self) -> list:
        return [self.height, self.term, self.signer, self.signature]

    @classmethod
    def from_fields(cls, fields: object) -> CertShare:
        height, term, signer, signature = _list(fields, "a commit signature", 4)
        if _uint(height, "certified height") == 0:
            raise RaftMessageError("certified heights start at 1")
        return cls(height, _uint(term, "certificate term"), _uint(signer, "signer index"),
                   _bytes(signature, "signature"))


def _validator_set(fields: object, what: str) -> ValidatorSet:
    try:
        return ValidatorSet.from_fields(fields)
    except (ValidatorSetError, TypeError, ValueError) as exc:
        raise RaftMessageError(f"{what}: {exc}") from None


def _checkpoint(fields: object) -> CheckpointCertificate:
    try:
        return CheckpointCertificate.from_fields(fields)
    except CertificateError as exc:
        raise RaftMessageError(f"checkpoint: {exc}") from None


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot is: the last entry it replaces, its height, the configuration then,
    and the checkpoint certificate (with the set that signed it) that proves its state."""

    last_index: int
    last_term: int
    height: int
    config: ValidatorSet
    checkpoint: CheckpointCertificate | None
    checkpoint_validators: ValidatorSet | None

    def to_fields(self) -> list:
        return [
            self.last_index, self.last_term, self.height, self.config.to_fields(),
            None if self.checkpoint is None else self.checkpoint.to_fields(),
            None if self.checkpoint_validators is None else self.checkpoint_validators.to_fields(),
        ]

    @classmethod
    def from_fields(cls, fields: object) -> SnapshotMeta:
        last_index, last_term, height, config, cp, cp_set = _list(fields, "a snapshot", 6)
        checkpoint = None if cp is None else _checkpoint(cp)
        cp_validators = None if cp_set is None else _validator_set(cp_set, "checkpoint validators")
        if (checkpoint is None) != (cp_validators is None):
            raise RaftMessageError("a snapshot carries a checkpoint and its validators, or neither")
        meta = cls(_uint(last_index, "snapshot index"), _uint(last_term, "snapshot term"), _uint(height, "snapshot height"),
                   _validator_set(config, "snapshot configuration"), checkpoint, cp_validators)
        if checkpoint is not None and checkpoint.height != meta.height:
            raise RaftMessageError("the snapshot's checkpoint is for another height")
        return meta


# ---------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class PreVote:
    """Would you vote for me in ``term`` (my term + 1)? Changes nobody's term."""

    TAG = 1
    term: int
    last_index: int
    last_term: int

    def fields(self) -> list:
        return [self.term, self.last_index, self.last_term]

    @classmethod
    def parse(cls, f: list) -> PreVote:
        return cls(_uint(f[0], "term"), _uint(f[1], "last index"), _uint(f[2], "last term"))


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    TAG = 2
    term: int
    granted: bool

    def fields(self) -> list:
        return [self.term, self.granted]

    @classmethod
    def parse(cls, f: list) -> PreVoteReply:
        return cls(_uint(f[0], "term"), _bool(f[1], "granted"))


@dataclass(frozen=True, slots=True)
class RequestVote:
    TAG = 3
    term: int
    last_index: int
    last_term: int

    def fields(self) -> list:
        return [self.term, self.last_index, self.last_term]

    @classmethod
    def parse(cls, f: list) -> RequestVote:
        return cls(_uint(f[0], "term"), _uint(f[1], "last index"), _uint(f[2], "last term"))


@dataclass(frozen=True, slots=True)
class VoteReply:
    TAG = 4
    term: int
    granted: bool

    def fields(self) -> list:
        return [self.term, self.granted]

    @classmethod
    def parse(cls, f: list) -> VoteReply:
        return cls(_uint(f[0], "term"), _bool(f[1], "granted"))


@dataclass(frozen=True, slots=True)
class AppendEntries:
    TAG = 5
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    certs: tuple[CertShare, ...]
    checkpoint: CheckpointCertificate | None
    checkpoint_validators: ValidatorSet | None

    def fields(self) -> list:
        return [
            self.term, self.prev_index, self.prev_term, [e.to_fields() for e in self.entries],
            self.leader_commit, [c.to_fields() for c in self.certs],
            None if self.checkpoint is None else self.checkpoint.to_fields(),
            None if self.checkpoint_validators is None else self.checkpoint_validators.to_fields(),
        ]

    @classmethod
    def parse(cls, f: list) -> AppendEntries:
        checkpoint = None if f[6] is None else _checkpoint(f[6])
        validators = None if f[7] is None else _validator_set(f[7], "checkpoint validators")
        if (checkpoint is None) != (validators is None):
            raise RaftMessageError("a checkpoint travels with the validators that signed it")
        return cls(
            _uint(f[0], "term"), _uint(f[1], "prev index"), _uint(f[2], "prev term"),
            tuple(Entry.from_fields(e) for e in _list(f[3], "entries")),
            _uint(f[4], "leader commit"),
            tuple(CertShare.from_fields(c) for c in _list(f[5], "certificates")),
            checkpoint, validators,
        )


@dataclass(frozen=True, slots=True)
class AppendReply:
    """``match_index`` is the last index known to match the leader's log (success only);
    ``conflict_index`` is where the leader should retry from (failure only)."""

    TAG = 6
    term: int
    success: bool
    match_index: int
    conflict_index: int
    applied_height: int
    checkpoint_height: int

    def fields(self) -> list:
        return [self.term, self.success, self.match_index, self.conflict_index, self.applied_height,
                self.checkpoint_height]

    @classmethod
    def parse(cls, f: list) -> AppendReply:
        return cls(_uint(f[0], "term"), _bool(f[1], "success"), _uint(f[2], "match index"),
                   _uint(f[3], "conflict index"), _uint(f[4], "applied height"), _uint(f[5], "checkpoint height"))


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    TAG = 7
    term: int
    snapshot: SnapshotMeta

    def fields(self) -> list:
        return [self.term, self.snapshot.to_fields()]

    @classmethod
    def parse(cls, f: list) -> InstallSnapshot:
        snapshot = SnapshotMeta.from_fields(f[1])
        if snapshot.checkpoint is None:
            raise RaftMessageError("an installed snapshot must carry its checkpoint certificate")
        return cls(_uint(f[0], "term"), snapshot)


@dataclass(frozen=True, slots=True)
class SnapshotReply:
    TAG = 8
    term: int
    last_index: int
    height: int

    def fields(self) -> list:
        return [self.term, self.last_index, self.height]

    @classmethod
    def parse(cls, f: list) -> SnapshotReply:
        return cls(_uint(f[0], "term"), _uint(f[1], "last index"), _uint(f[2], "height"))


@dataclass(frozen=True, slots=True)
class CheckpointVote:
    """A replica's BLS share over (height, block hash, state root), sent to the leader."""

    TAG = 9
    height: int
    digest: bytes
    state_root: bytes
    signature: bytes

    def fields(self) -> list:
        return [self.height, self.digest, self.state_root, self.signature]

    @classmethod
    def parse(cls, f: list) -> CheckpointVote:
        return cls(_uint(f[0], "height"), _bytes(f[1], "digest", 32), _bytes(f[2], "state root", 32),
                   _bytes(f[3], "signature", 96))


@dataclass(frozen=True, slots=True)
class Forward:
    """A proposal a follower passes to the leader it knows (clients may submit to any validator)."""

    TAG = 10
    batch: bytes

    def fields(self) -> list:
        return [self.batch]

    @classmethod
    def parse(cls, f: list) -> Forward:
        return cls(_bytes(f[0], "batch"))


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """A leader outside the set that certifies ``height`` asks that set's members to sign it.

    A replica added by a reconfiguration may lead before it holds the commit signatures of
    the heights just before the change, which only the old set can give.
    """

    TAG = 11
    term: int
    height: int

    def fields(self) -> list:
        return [self.term, self.height]

    @classmethod
    def parse(cls, f: list) -> ShareRequest:
        return cls(_uint(f[0], "term"), _uint(f[1], "height"))


@dataclass(frozen=True, slots=True)
class ShareReply:
    """Commit signatures a follower gives the leader, from the requested height on."""

    TAG = 12
    term: int
    shares: tuple[CertShare, ...]

    def fields(self) -> list:
        return [self.term, [c.to_fields() for c in self.shares]]

    @classmethod
    def parse(cls, f: list) -> ShareReply:
        return cls(_uint(f[0], "term"), tuple(CertShare.from_fields(c) for c in _list(f[1], "commit signatures")))


Message = (PreVote | PreVoteReply | RequestVote | VoteReply | AppendEntries | AppendReply | InstallSnapshot
           | SnapshotReply | CheckpointVote | Forward | ShareRequest | ShareReply)

_TYPES = {cls.TAG: cls for cls in (PreVote, PreVoteReply, RequestVote, VoteReply, AppendEntries, AppendReply,
                                   InstallSnapshot, SnapshotReply, CheckpointVote, Forward, ShareRequest,
                                   ShareReply)}
_ARITY = {PreVote: 3, PreVoteReply: 2, RequestVote: 3, VoteReply: 2, AppendEntries: 8, AppendReply: 6,
          InstallSnapshot: 2, SnapshotReply: 3, CheckpointVote: 4, Forward: 1, ShareRequest: 2, ShareReply: 2}


def encode(message: Message) -> bytes:
    return codec.encode([message.TAG, *message.fields()])


def decode(payload: bytes) -> Message:
    """Decode a peer's payload; :class:`RaftMessageError` says what was wrong."""
    try:
        value = codec.decode(payload, max_size=MAX_MESSAGE_SIZE)
    except codec.CodecError as exc:
        raise RaftMessageError(f"not a canonical message: {exc}") from None
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise RaftMessageError("a Raft message is [tag, fields...]")
    cls = _TYPES.get(value[0])
    if cls is None:
        raise RaftMessageError(f"unknown Raft message tag {value[0]}")
    fields = value[1:]
    if len(fields) != _ARITY[cls]:
        raise RaftMessageError(f"{cls.__name__} has {_ARITY[cls]} fields, got {len(fields)}")
    return cls.parse(fields)
