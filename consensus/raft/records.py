"""What a Raft replica persists, and how a restart checks it before trusting it.

Records (keys are bytes, values canonical arrays followed by an 8-byte checksum of key
and body, so a torn or flipped value is caught rather than misread):

* ``raft/hard``  ``[term, voted_for | None]``
* ``raft/tail``  ``[last_index, last_term]``: where the log ends, so a lost tail is noticed
* ``raft/snap``  the snapshot metadata (absent until the first compaction)
* ``raft/cp``    ``[checkpoint certificate, validator set]``: the newest certified checkpoint
* ``raft/e`` + index (8 bytes, big-endian)   ``[term, kind, data]``
* ``raft/c`` + height (8 bytes, big-endian)  ``[term, signer index, signature]``: commit signatures

:func:`load` refuses (``ConsensusError``) anything truncated, corrupt or inconsistent:
a bad checksum, an entry missing in the middle or at the end, terms going backwards
or beyond the hard state, unknown keys. Guessing would risk voting twice or losing a
committed entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from consensus.raft.log import RaftLog
from consensus.raft.messages import CertShare, Entry, RaftMessageError, SnapshotMeta
from consensus.types import Application, ConsensusError
from ledger import codec
from ledger.certificate import CertificateError, CheckpointCertificate
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = ["HARD", "Recovered", "cert_key", "entry_key", "load", "seal", "unseal"]

HARD = b"raft/hard"
TAIL = b"raft/tail"
SNAP = b"raft/snap"
CHECKPOINT = b"raft/cp"
ENTRY_PREFIX = b"raft/e"
CERT_PREFIX = b"raft/c"
_CHECKSUM_LEN = 8
# Records hold whole batches; the node bounds blocks, this bounds what a restart will decode.
MAX_RECORD_SIZE = 64 << 20


def entry_key(index: int) -> bytes:
    return ENTRY_PREFIX + index.to_bytes(8, "big")


def cert_key(height: int) -> bytes:
    return CERT_PREFIX + height.to_bytes(8, "big")


def _checksum(key: bytes, body: bytes) -> bytes:
    return hashlib.sha256(key + body).digest()[:_CHECKSUM_LEN]


def seal(key: bytes, value: object) -> bytes:
    body = codec.encode(value)
    return body + _checksum(key, body)


def unseal(key: bytes, raw: bytes) -> object:
    """The value of a record; ``ConsensusError`` if it is truncated or corrupt."""
    name = _name(key)
    if not isinstance(raw, bytes) or len(raw) <= _CHECKSUM_LEN:
        raise ConsensusError(f"Raft record {name} is truncated")
    body, checksum = raw[:-_CHECKSUM_LEN], raw[-_CHECKSUM_LEN:]
    if _checksum(key, body) != checksum:
        raise ConsensusError(f"Raft record {name} is corrupt (checksum mismatch); refusing to start")
    try:
        return codec.decode(body, max_size=MAX_RECORD_SIZE)
    except codec.CodecError as exc:
        raise ConsensusError(f"Raft record {name} does not decode: {exc}") from None


def _name(key: bytes) -> str:
    if key.startswith(ENTRY_PREFIX) and len(key) == len(ENTRY_PREFIX) + 8:
        return f"entry {int.from_bytes(key[len(ENTRY_PREFIX):], 'big')}"
    if key.startswith(CERT_PREFIX) and len(key) == len(CERT_PREFIX) + 8:
        return f"commit signature {int.from_bytes(key[len(CERT_PREFIX):], 'big')}"
    return key.decode("ascii", "replace")


@dataclass
class Recovered:
    term: int
    voted_for: bytes | None
    log: RaftLog
    certs: dict[int, CertShare]
    checkpoint: tuple[CheckpointCertificate, ValidatorSet] | None


def genesis_snapshot(validators: ValidatorSet) -> SnapshotMeta:
    return SnapshotMeta(0, 0, 0, validators, None, None)


def load(records: Mapping[bytes, bytes], genesis: ValidatorSet, app: Application) -> Recovered:
    """Rebuild a replica's durable state from ``records``; refuse anything inconsistent."""
    if not records:
        return Recovered(0, None, RaftLog(genesis_snapshot(genesis), app), {}, None)
    entries: dict[int, bytes] = {}
    certs_raw: dict[int, bytes] = {}
    for key in records:
        if not isinstance(key, bytes):
            raise ConsensusError(f"Raft record key {key!r} is not bytes")
        if key.startswith(ENTRY_PREFIX) and len(key) == len(ENTRY_PREFIX) + 8:
            entries[int.from_bytes(key[len(ENTRY_PREFIX):], "big")] = key
        elif key.startswith(CERT_PREFIX) and len(key) == len(CERT_PREFIX) + 8:
            certs_raw[int.from_bytes(key[len(CERT_PREFIX):], "big")] = key
        elif key not in (HARD, TAIL, SNAP, CHECKPOINT):
            raise ConsensusError(f"unknown Raft record {key!r}; refusing to start from records this version did not write")
    if HARD not in records:
        raise ConsensusError("Raft records lack the hard state (term and vote); refusing to start")
    hard = unseal(HARD, records[HARD])
    if not isinstance(hard, list) or len(hard) != 2 or type(hard[0]) is not int or hard[0] < 0:
        raise ConsensusError("Raft hard state is not [term, voted_for]")
    term, voted_for = hard
    if voted_for is not None and not isinstance(voted_for, bytes):
        raise ConsensusError("Raft hard state: voted_for must be a node id or nil")

    snapshot = genesis_snapshot(genesis)
    if SNAP in records:
        try:
            snapshot = SnapshotMeta.from_fields(unseal(SNAP, records[SNAP]))
        except RaftMessageError as exc:
            raise ConsensusError(f"Raft snapshot record is malformed: {exc}") from None
        if snapshot.checkpoint is None:
            raise ConsensusError("Raft snapshot record lacks its checkpoint certificate")
    if snapshot.last_term > term:
        raise ConsensusError(f"Raft snapshot term {snapshot.last_term} is above the persisted term {term}")

    last_index, last_term = snapshot.last_index, snapshot.last_term
    if TAIL in records:
        tail = unseal(TAIL, records[TAIL])
        if not (isinstance(tail, list) and len(tail) == 2 and all(type(x) is int and x >= 0 for x in tail)):
            raise ConsensusError("Raft tail record is not [last_index, last_term]")
        last_index, last_term = tail
    elif entries:
        raise ConsensusError("Raft log entries are present but the tail record is missing")
    if last_index < snapshot.last_index:
        raise ConsensusError(f"Raft log ends at {last_index}, before its snapshot at {snapshot.last_index}")
    expected = set(range(snapshot.last_index + 1, last_index + 1))
    present = set(entries)
    if present != expected:
        missing = sorted(expected - present)
        extra = sorted(present - expected)
        if missing:
            raise ConsensusError(
                f"Raft log is truncated: entries {missing[0]}..{missing[-1]} ({len(missing)} of them) are missing "
                f"between snapshot {snapshot.last_index} and tail {last_index}; refusing to start"
            )
        raise ConsensusError(f"Raft log has entries {extra[0]}..{extra[-1]} beyond its tail {last_index}")

    log = RaftLog(snapshot, app)
    previous = snapshot.last_term
    for index in range(snapshot.last_index + 1, last_index + 1):
        key = entries[index]
        try:
            entry = Entry.from_fields(unseal(key, records[key]))
        except RaftMessageError as exc:
            raise ConsensusError(f"Raft entry {index} is malformed: {exc}") from None
        if entry.term < previous or entry.term > term:
            raise ConsensusError(f"Raft entry {index} has term {entry.term}, out of order (previous {previous}, current {term})")
        previous = entry.term
        log.append(entry)
    if log.last_term != last_term:
        raise ConsensusError(f"Raft tail says the last term is {last_term}, the last entry has {log.last_term}")

    certs: dict[int, CertShare] = {}
    for height in sorted(certs_raw):
        key = certs_raw[height]
        fields = unseal(key, records[key])
        if not (isinstance(fields, list) and len(fields) == 3):
            raise ConsensusError(f"Raft commit signature for height {height} is malformed")
        try:
            share = CertShare.from_fields([height, *fields])
        except RaftMessageError as exc:
            raise ConsensusError(f"Raft commit signature for height {height} is malformed: {exc}") from None
        certs[height] = share

    checkpoint = None
    if CHECKPOINT in records:
        fields = unseal(CHECKPOINT, records[CHECKPOINT])
        try:
            if not (isinstance(fields, list) and len(fields) == 2):
                raise ValueError("expected [certificate, validators]")
            checkpoint = (CheckpointCertificate.from_fields(fields[0]), ValidatorSet.from_fields(fields[1]))
        except (CertificateError, ValidatorSetError, ValueError) as exc:
            raise ConsensusError(f"Raft checkpoint record is malformed: {exc}") from None
    return Recovered(term, voted_for, log, certs, checkpoint)
