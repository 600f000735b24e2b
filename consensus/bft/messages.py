"""The BFT wire messages: canonical codec arrays with a type tag, decoded strictly.

Every message is ``[tag, field, ...]``. :func:`decode` accepts exactly the shapes
below and raises :class:`MessageError` for anything else (wrong tag, wrong arity,
wrong types, negative numbers, digests that are not 32 bytes), so the replica never
touches a half-parsed message. What a message *means* (right sender, right view,
valid signatures) is checked by the replica, not here.

The signed payloads are defined here too, so signer and verifier cannot disagree:

* pre-prepare, prepare and commit sign :func:`vote_payload` ``[seq, view, digest]``
  under their own ``Kind``; for commit this is exactly
  :func:`ledger.certificate.commit_vote_payload`, which makes a quorum of commit votes
  a :class:`~ledger.certificate.CommitCertificate` as it stands;
* a view-change signs its whole body (:func:`view_change_payload`), a new-view its
  whole body (:func:`new_view_payload`).

The chain id (shard id) is bound in by the injected signer, so no vote can be replayed
on another shard or as another kind of message.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import codec
from ledger.certificate import (
    CertificateError,
    CheckpointCertificate,
    CommitCertificate,
    commit_vote_payload,
)

__all__ = [
    "BatchReply",
    "CatchUp",
    "CheckpointVote",
    "CommitVote",
    "Decided",
    "Fetch",
    "Message",
    "MessageError",
    "NewView",
    "PrePrepare",
    "Prepare",
    "PreparedCertificate",
    "Request",
    "Status",
    "ViewChange",
    "decode",
    "encode",
    "new_view_payload",
    "view_change_payload",
    "vote_payload",
]

# A batch is an encoded block; the node caps blocks well below this. A NEW-VIEW carries
# up to n VIEW-CHANGEs of K prepared certificates of n signatures each (n = 31, K = 64:
# about 4 MiB). Anything larger is refused before it is parsed.
MAX_MESSAGE_BYTES = 8 << 20
# Ed25519 and the simulator's stand-ins are 64 bytes; leave room, refuse megabyte "signatures".
MAX_SIGNATURE_BYTES = 128
DIGEST_LEN = 32
BLS_SIGNATURE_LEN = 96
NODE_ID_LEN = 32


class MessageError(ValueError):
    """A peer message is not one of the BFT message shapes."""


# ------------------------------------------------------------------------ payloads


def vote_payload(seq: int, view: int, digest: bytes) -> bytes:
    """What pre-prepares, prepares and commits sign (each under its own ``Kind``)."""
    return commit_vote_payload(seq, view, digest)


# ------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """The leader of ``view`` assigns ``batch`` (whose digest is ``digest``) to ``seq``."""

    view: int
    seq: int
    digest: bytes
    batch: bytes
    signature: bytes

    TAG = 1

    def to_fields(self) -> list:
        return [self.TAG, self.view, self.seq, self.digest, self.batch, self.signature]


@dataclass(frozen=True, slots=True)
class Prepare:
    view: int
    seq: int
    digest: bytes
    signature: bytes

    TAG = 2

    def to_fields(self) -> list:
        return [self.TAG, self.view, self.seq, self.digest, self.signature]


@dataclass(frozen=True, slots=True)
class CommitVote:
    view: int
    seq: int
    digest: bytes
    signature: bytes

    TAG = 3

    def to_fields(self) -> list:
        return [self.TAG, self.view, self.seq, self.digest, self.signature]


@dataclass(frozen=True, slots=True)
class CheckpointVote:
    """A BLS share over ``checkpoint_message(chain_id, height, digest, state_root)``."""

    height: int
    digest: bytes
    state_root: bytes
    signature: bytes

    TAG = 4

    def to_fields(self) -> list:
        return [self.TAG, self.height, self.digest, self.state_root, self.signature]


@dataclass(frozen=True, slots=True)
class PreparedCertificate:
    """Proof that ``digest`` was prepared at (``view``, ``seq``): the leader's pre-prepare
    signature and the prepare signatures of distinct other validators, by node key."""

    seq: int
    view: int
    digest: bytes
    pre_prepare_signature: bytes
    prepares: tuple[tuple[bytes, bytes], ...]  # (node key, signature), ascending node key

    def to_fields(self) -> list:
        return [self.seq, self.view, self.digest, self.pre_prepare_signature, [[k, s] for k, s in self.prepares]]

    @classmethod
    def from_fields(cls, fields: object) -> PreparedCertificate:
        _shape(fields, 5, "a prepared certificate is [seq, view, digest, pre-prepare signature, prepares]")
        seq, view, digest, pp_sig, prepares = fields
        if not isinstance(prepares, list):
            raise MessageError("prepared certificate prepares must be a list")
        pairs = []
        for item in prepares:
            _shape(item, 2, "a prepare in a certificate is [node key, signature]")
            pairs.append((_node(item[0]), _sig(item[1])))
        keys = [k for k, _ in pairs]
        if keys != sorted(set(keys)):
            raise MessageError("prepared certificate signers must be distinct and in ascending order")
        return cls(_pos(seq, "seq"), _nat(view, "view"), _digest(digest), _sig(pp_sig), tuple(pairs))


@dataclass(frozen=True, slots=True)
class ViewChange:
    """``signer`` moves to ``new_view``: its stable checkpoint and what it prepared above it."""

    new_view: int
    signer: bytes
    checkpoint: CheckpointCertificate | None  # None: the genesis checkpoint (height 0)
    prepared: tuple[PreparedCertificate, ...]  # ascending seq
    signature: bytes

    TAG = 5

    @property
    def checkpoint_height(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.height

    def body(self) -> list:
        return [
            self.new_view,
            self.signer,
            None if self.checkpoint is None else self.checkpoint.to_fields(),
            [p.to_fields() for p in self.prepared],
        ]

    def to_fields(self) -> list:
        return [self.TAG, *self.body(), self.signature]

    @classmethod
    def from_fields(cls, fields: object) -> ViewChange:
        _shape(fields, 6, "a view-change is [tag, new view, signer, checkpoint, prepared, signature]")
        _, new_view, signer, checkpoint, prepared, signature = fields
        cert = None
        if checkpoint is not None:
            try:
                cert = CheckpointCertificate.from_fields(checkpoint)
            except CertificateError as exc:
                raise MessageError(f"view-change checkpoint: {exc}") from None
        if not isinstance(prepared, list):
            raise MessageError("view-change prepared certificates must be a list")
        certs = tuple(PreparedCertificate.from_fields(p) for p in prepared)
        seqs = [c.seq for c in certs]
        if seqs != sorted(set(seqs)):
            raise MessageError("view-change prepared certificates must have distinct, ascending sequence numbers")
        return cls(_pos(new_view, "new view"), _node(signer), cert, certs, _sig(signature))


@dataclass(frozen=True, slots=True)
class NewView:
    """The leader of ``view`` proves its choices: 2f + 1 view-changes and the pre-prepares
    (``(seq, digest, signature)``) it derived from them, null batches for gaps."""

    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[tuple[int, bytes, bytes], ...]
    signature: bytes

    TAG = 6

    def body(self) -> list:
        return [self.view, [vc.to_fields() for vc in self.view_changes], [[s, d, g] for s, d, g in self.pre_prepares]]

    def to_fields(self) -> list:
        return [self.TAG, *self.body(), self.signature]


@dataclass(frozen=True, slots=True)
class Request:
    """A batch offered for ordering, passed on so every replica times the leader out on it."""

    batch: bytes

    TAG = 7

    def to_fields(self) -> list:
        return [self.TAG, self.batch]


@dataclass(frozen=True, slots=True)
class Status:
    """Unsigned periodic summary; peers answer it with whatever the sender is missing.

    ``window`` is the sender's :meth:`~consensus.bft.schedule.ValidatorSchedule.window_digest`
    (which sets order its window), so a peer can tell it missed a validator-set change.
    """

    view: int
    active: bool
    committed: int
    low: int
    window: bytes

    TAG = 8

    def to_fields(self) -> list:
        return [self.TAG, self.view, self.active, self.committed, self.low, self.window]


@dataclass(frozen=True, slots=True)
class Decided:
    """A committed batch with its commit certificate: proof enough on its own."""

    seq: int
    batch: bytes
    certificate: CommitCertificate

    TAG = 9

    def to_fields(self) -> list:
        return [self.TAG, self.seq, self.batch, self.certificate.to_fields()]

    @classmethod
    def from_fields(cls, fields: object) -> Decided:
        _shape(fields, 4, "a decided batch is [tag, seq, batch, certificate]")
        _, seq, batch, cert = fields
        try:
            certificate = CommitCertificate.from_fields(cert)
        except CertificateError as exc:
            raise MessageError(f"decided batch: {exc}") from None
        seq = _pos(seq, "seq")
        if certificate.protocol != "bft" or certificate.height != seq:
            raise MessageError("decided batch: the certificate is not a BFT certificate for that height")
        return cls(seq, _bytes(batch, "batch"), certificate)


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A stable checkpoint certificate (if the asker is behind it) and the decided
    batches that changed the validator set, so the asker can tell who signs what."""

    checkpoint: CheckpointCertificate | None
    changes: tuple[Decided, ...]

    TAG = 10

    def to_fields(self) -> list:
        return [
            self.TAG,
            None if self.checkpoint is None else self.checkpoint.to_fields(),
            [d.to_fields() for d in self.changes],
        ]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Who has the batch with this digest? (Re-proposed batches the replica never saw.)"""

    digest: bytes

    TAG = 11

    def to_fields(self) -> list:
        return [self.TAG, self.digest]


@dataclass(frozen=True, slots=True)
class BatchReply:
    batch: bytes

    TAG = 12

    def to_fields(self) -> list:
        return [self.TAG, self.batch]


Message = (
    PrePrepare | Prepare | CommitVote | CheckpointVote | ViewChange | NewView
    | Request | Status | Decided | CatchUp | Fetch | BatchReply
)


# --------------------------------------------------------------------- (de)coding


def encode(message: Message) -> bytes:
    return codec.encode(message.to_fields())


def view_change_payload(vc: ViewChange) -> bytes:
    return codec.encode(vc.body())


def new_view_payload(nv: NewView) -> bytes:
    return codec.encode(nv.body())


def decode(data: bytes) -> Message:
    """Parse one wire message; raises :class:`MessageError` for anything malformed."""
    try:
        fields = codec.decode(data, max_size=MAX_MESSAGE_BYTES)
    except codec.CodecError as exc:
        raise MessageError(f"not a canonical message: {exc}") from None
    if not isinstance(fields, list) or not fields or type(fields[0]) is not int:
        raise MessageError("a BFT message is an array starting with an integer type tag")
    parser = _PARSERS.get(fields[0])
    if parser is None:
        raise MessageError(f"unknown BFT message tag {fields[0]}")
    return parser(fields)


def _vote_fields(fields: list, cls, what: str):
    _shape(fields, 5, f"a {what} is [tag, view, seq, digest, signature]")
    _, view, seq, digest, sig = fields
    return cls(_nat(view, "view"), _pos(seq, "seq"), _digest(digest), _sig(sig))


def _pre_prepare(fields: list) -> PrePrepare:
    _shape(fields, 6, "a pre-prepare is [tag, view, seq, digest, batch, signature]")
    _, view, seq, digest, batch, sig = fields
    return PrePrepare(_nat(view, "view"), _pos(seq, "seq"), _digest(digest), _bytes(batch, "batch"), _sig(sig))


def _checkpoint_vote(fields: list) -> CheckpointVote:
    _shape(fields, 5, "a checkpoint vote is [tag, height, digest, state root, signature]")
    _, height, digest, root, sig = fields
    if not isinstance(sig, bytes) or len(sig) != BLS_SIGNATURE_LEN:
        raise MessageError(f"a checkpoint signature is {BLS_SIGNATURE_LEN} bytes")
    return CheckpointVote(_pos(height, "height"), _digest(digest), _digest(root), sig)


def _new_view(fields: list) -> NewView:
    _shape(fields, 5, "a new-view is [tag, view, view-changes, pre-prepares, signature]")
    _, view, vcs, pps, sig = fields
    if not isinstance(vcs, list) or not isinstance(pps, list):
        raise MessageError("new-view view-changes and pre-prepares must be lists")
    changes = []
    for item in vcs:
        if not isinstance(item, list) or not item or item[0] != ViewChange.TAG:
            raise MessageError("a new-view carries view-change messages")
        changes.append(ViewChange.from_fields(item))
    triples = []
    for item in pps:
        _shape(item, 3, "a new-view pre-prepare is [seq, digest, signature]")
        triples.append((_pos(item[0], "seq"), _digest(item[1]), _sig(item[2])))
    seqs = [t[0] for t in triples]
    if seqs != sorted(set(seqs)):
        raise MessageError("new-view pre-prepares must have distinct, ascending sequence numbers")
    return NewView(_nat(view, "view"), tuple(changes), tuple(triples), _sig(sig))


def _status(fields: list) -> Status:
    _shape(fields, 6, "a status is [tag, view, active, committed, low, window digest]")
    _, view, active, committed, low, window = fields
    if type(active) is not bool:
        raise MessageError("status active flag is a boolean")
    return Status(_nat(view, "view"), active, _nat(committed, "committed"), _nat(low, "low"), _digest(window))


def _catch_up(fields: list) -> CatchUp:
    _shape(fields, 3, "a catch-up is [tag, checkpoint or nil, changes]")
    _, checkpoint, changes = fields
    cert = None
    try:
        if checkpoint is not None:
            cert = CheckpointCertificate.from_fields(checkpoint)
    except CertificateError as exc:
        raise MessageError(f"catch-up checkpoint: {exc}") from None
    if not isinstance(changes, list):
        raise MessageError("catch-up changes must be a list")
    decided = tuple(Decided.from_fields(c) for c in changes)
    seqs = [d.seq for d in decided]
    if seqs != sorted(set(seqs)):
        raise MessageError("catch-up changes must have distinct, ascending heights")
    return CatchUp(cert, decided)


def _single_bytes(cls, what: str):
    def parse(fields: list):
        _shape(fields, 2, f"a {what} is [tag, bytes]")
        return cls(_bytes(fields[1], what))

    return parse


def _fetch(fields: list) -> Fetch:
    _shape(fields, 2, "a fetch is [tag, digest]")
    return Fetch(_digest(fields[1]))


_PARSERS = {
    PrePrepare.TAG: _pre_prepare,
    Prepare.TAG: lambda f: _vote_fields(f, Prepare, "prepare"),
    CommitVote.TAG: lambda f: _vote_fields(f, CommitVote, "commit"),
    CheckpointVote.TAG: _checkpoint_vote,
    ViewChange.TAG: ViewChange.from_fields,
    NewView.TAG: _new_view,
    Request.TAG: _single_bytes(Request, "request"),
    Status.TAG: _status,
    Decided.TAG: Decided.from_fields,
    CatchUp.TAG: _catch_up,
    Fetch.TAG: _fetch,
    BatchReply.TAG: _single_bytes(BatchReply, "batch reply"),
}


# ------------------------------------------------------------------- field checks


def _shape(fields: object, n: int, what: str) -> None:
    if not isinstance(fields, list) or len(fields) != n:
        raise MessageError(what)


def _nat(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise MessageError(f"{what} must be a non-negative integer")
    return value


def _pos(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise MessageError(f"{what} must be a positive integer")
    return value


def _digest(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_LEN:
        raise MessageError(f"a digest is {DIGEST_LEN} bytes")
    return value


def _node(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != NODE_ID_LEN:
        raise MessageError(f"a node key is {NODE_ID_LEN} bytes")
    return value


def _sig(value: object) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_SIGNATURE_BYTES:
        raise MessageError(f"a signature is 1 to {MAX_SIGNATURE_BYTES} bytes")
    return value


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise MessageError(f"{what} must be bytes")
    return value
