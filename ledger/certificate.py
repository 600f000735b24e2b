"""Certificates: what makes a block, and the state root in its header, final.

* A **commit certificate** proves a block was committed at a height. BFT: the Ed25519
  commit votes of at least 2f + 1 distinct validators over (height, view, block hash).
  Raft: the leader's signature over (height, term, block hash) of a majority-acknowledged
  entry (Raft tolerates crashes, not lies, so one validator's word is the protocol's).
* A **checkpoint certificate** proves (height, block hash, state root) with one BLS
  aggregate signature and a bitmap of the signers, so an observer, a light client or a
  neighbouring shard checks any number of signers with one aggregate verification.

The exact bytes each validator signs are defined here and nowhere else: consensus
signs them, observers and light clients verify them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import codec
from ledger.crypto import Kind, signing_bytes, verify_signature
from ledger.validators import ValidatorSet

__all__ = [
    "CertificateError",
    "CheckpointCertificate",
    "CommitCertificate",
    "checkpoint_message",
    "commit_vote_payload",
]

PROTOCOLS = ("bft", "raft")


class CertificateError(ValueError):
    """A certificate is malformed or does not prove what it claims."""


def commit_vote_payload(height: int, round_: int, digest: bytes) -> bytes:
    """The payload of a commit vote (BFT) or of a Raft leader's commit signature."""
    return codec.encode([height, round_, digest])


def _commit_kind(protocol: str) -> str:
    return Kind.COMMIT if protocol == "bft" else Kind.RAFT_COMMIT


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    protocol: str
    height: int
    round: int  # the BFT view, or the Raft term
    digest: bytes  # the block hash
    signatures: tuple[tuple[int, bytes], ...]  # (validator index, Ed25519 signature), ascending index

    def to_fields(self) -> list:
        return [self.protocol, self.height, self.round, self.digest, [[i, s] for i, s in self.signatures]]

    @classmethod
    def from_fields(cls, fields: object) -> CommitCertificate:
        if not isinstance(fields, list) or len(fields) != 5:
            raise CertificateError("a commit certificate is [protocol, height, round, digest, signatures]")
        protocol, height, round_, digest, sigs = fields
        if protocol not in PROTOCOLS:
            raise CertificateError(f"unknown consensus protocol {protocol!r}")
        if type(height) is not int or height < 0 or type(round_) is not int or round_ < 0:
            raise CertificateError("certificate height and round are non-negative integers")
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise CertificateError("certificate digest is a 32-byte block hash")
        if not isinstance(sigs, list):
            raise CertificateError("certificate signatures are a list")
        pairs = []
        for item in sigs:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or type(item[0]) is not int
                or not isinstance(item[1], bytes)
            ):
                raise CertificateError("a certificate signature is [validator index, signature]")
            pairs.append((item[0], item[1]))
        return cls(protocol, height, round_, digest, tuple(pairs))

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        try:
            return cls.from_fields(codec.decode(data))
        except codec.CodecError as exc:
            raise CertificateError(f"commit certificate: {exc}") from None

    def verify(self, chain_id: str, validators: ValidatorSet, *, height: int | None = None, digest: bytes | None = None) -> None:
        """Raise :class:`CertificateError` unless this certificate commits ``digest`` at ``height``."""
        if height is not None and height != self.height:
            raise CertificateError(f"certificate is for height {self.height}, not {height}")
        if digest is not None and digest != self.digest:
            raise CertificateError("certificate is for a different block hash")
        needed = validators.bft_quorum if self.protocol == "bft" else 1
        payload = commit_vote_payload(self.height, self.round, self.digest)
        kind = _commit_kind(self.protocol)
        seen: set[int] = set()
        last = -1
        for index, signature in self.signatures:
            if index <= last:
                raise CertificateError("certificate signatures must be in ascending validator order, without repeats")
            last = index
            if index >= validators.n:
                raise CertificateError(f"certificate names validator {index}; the set has {validators.n}")
            if not verify_signature(validators.validators[index].node_key, chain_id, kind, payload, signature):
                raise CertificateError(f"signature of validator {index} does not verify")
            seen.add(index)
        if len(seen) < needed:
            raise CertificateError(f"certificate has {len(seen)} valid signatures; {needed} are needed")


def checkpoint_payload(height: int, block_hash: bytes, state_root: bytes) -> bytes:
    return codec.encode([height, block_hash, state_root])


def checkpoint_message(chain_id: str, height: int, block_hash: bytes, state_root: bytes) -> bytes:
    """The message every validator BLS-signs for a checkpoint (domain-separated like Ed25519 votes)."""
    return signing_bytes(chain_id, Kind.CHECKPOINT, checkpoint_payload(height, block_hash, state_root))


def signer_bitmap(indexes: list[int] | set[int], n: int) -> bytes:
    """Bit i (little-endian within each byte) set for validator i."""
    bitmap = bytearray((n + 7) // 8)
    for i in indexes:
        if not 0 <= i < n:
            raise CertificateError(f"signer index {i} outside a set of {n}")
        bitmap[i // 8] |= 1 << (i % 8)
    return bytes(bitmap)


def bitmap_indexes(bitmap: bytes, n: int) -> list[int]:
    if len(bitmap) != (n + 7) // 8:
        raise CertificateError(f"signer bitmap is {len(bitmap)} bytes; a set of {n} needs {(n + 7) // 8}")
    indexes = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1]
    if indexes and indexes[-1] >= n:
        raise CertificateError("signer bitmap names a validator outside the set")
    return indexes


@dataclass(frozen=True, slots=True)
class CheckpointCertificate:
    height: int
    block_hash: bytes
    state_root: bytes
    signers: bytes  # bitmap over the validator set
    aggregate: bytes  # BLS aggregate signature, 96 bytes

    def to_fields(self) -> list:
        return [self.height, self.block_hash, self.state_root, self.signers, self.aggregate]

    @classmethod
    def from_fields(cls, fields: object) -> CheckpointCertificate:
        if not isinstance(fields, list) or len(fields) != 5:
            raise CertificateError("a checkpoint certificate is [height, block_hash, state_root, signers, aggregate]")
        height, block_hash, state_root, signers, aggregate = fields
        if type(height) is not int or height < 0:
            raise CertificateError("checkpoint height is a non-negative integer")
        for name, value, size in (("block hash", block_hash, 32), ("state root", state_root, 32), ("aggregate", aggregate, 96)):
            if not isinstance(value, bytes) or len(value) != size:
                raise CertificateError(f"checkpoint {name} must be {size} bytes")
        if not isinstance(signers, bytes):
            raise CertificateError("checkpoint signers is a bitmap")
        return cls(height, block_hash, state_root, signers, aggregate)

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @classmethod
    def decode(cls, data: bytes) -> CheckpointCertificate:
        try:
            return cls.from_fields(codec.decode(data))
        except codec.CodecError as exc:
            raise CertificateError(f"checkpoint certificate: {exc}") from None

    def verify(self, chain_id: str, validators: ValidatorSet, *, protocol: str = "bft") -> None:
        """Raise :class:`CertificateError` unless a quorum of ``validators`` signed this checkpoint.

        The quorum is 2f + 1 for a BFT shard and a majority for a Raft shard.
        """
        from ledger import bls

        indexes = bitmap_indexes(self.signers, validators.n)
        needed = validators.bft_quorum if protocol == "bft" else validators.majority
        if len(indexes) < needed:
            raise CertificateError(f"checkpoint has {len(indexes)} signers; {needed} are needed")
        keys = [validators.validators[i].bls_key for i in indexes]
        message = checkpoint_message(chain_id, self.height, self.block_hash, self.state_root)
        if not bls.fast_aggregate_verify(keys, message, self.aggregate):
            raise CertificateError("checkpoint aggregate signature does not verify")
