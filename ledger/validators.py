"""The validator set of a shard: who votes, with which keys, and how many make a quorum.

A validator is a grid operator's node: an Ed25519 node key (it signs votes, commit
certificates and the peer handshake) and a BLS key registered with its proof of
possession (it signs checkpoints, which aggregate into one signature). The set is
ordered: a validator's index is its position, used by certificates' signer lists and
bitmaps. The hash of the set is in every block header, so a light client knows which
set certified a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ledger import codec
from ledger.crypto import PUBLIC_KEY_LEN, tagged_hash

__all__ = ["Validator", "ValidatorSet", "ValidatorSetError"]

BLS_PUBLIC_KEY_LEN = 48
BLS_POP_LEN = 96


class ValidatorSetError(ValueError):
    """A validator set is malformed (duplicate keys, wrong key sizes, bad proof of possession)."""


@dataclass(frozen=True, slots=True)
class Validator:
    node_key: bytes  # Ed25519 public key, 32 bytes
    bls_key: bytes  # BLS12-381 G1 public key, 48 bytes
    bls_pop: bytes  # proof of possession of bls_key, 96 bytes
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.node_key) != PUBLIC_KEY_LEN:
            raise ValidatorSetError(f"validator {self.name!r}: node key must be {PUBLIC_KEY_LEN} bytes")
        if len(self.bls_key) != BLS_PUBLIC_KEY_LEN:
            raise ValidatorSetError(f"validator {self.name!r}: BLS key must be {BLS_PUBLIC_KEY_LEN} bytes")
        if len(self.bls_pop) != BLS_POP_LEN:
            raise ValidatorSetError(f"validator {self.name!r}: BLS proof of possession must be {BLS_POP_LEN} bytes")

    def to_fields(self) -> list:
        return [self.node_key, self.bls_key, self.bls_pop, self.name]

    @classmethod
    def from_fields(cls, fields: list) -> Validator:
        if not isinstance(fields, list) or len(fields) != 4:
            raise ValidatorSetError("a validator is [node_key, bls_key, bls_pop, name]")
        node_key, bls_key, bls_pop, name = fields
        if not (isinstance(node_key, bytes) and isinstance(bls_key, bytes) and isinstance(bls_pop, bytes) and isinstance(name, str)):
            raise ValidatorSetError("a validator is [bytes, bytes, bytes, str]")
        return cls(node_key, bls_key, bls_pop, name)


@dataclass(frozen=True)
class ValidatorSet:
    validators: tuple[Validator, ...]

    def __post_init__(self) -> None:
        if not self.validators:
            raise ValidatorSetError("a validator set needs at least one validator")
        keys = [v.node_key for v in self.validators]
        if len(set(keys)) != len(keys):
            raise ValidatorSetError("a node key appears twice in the validator set")
        bls_keys = [v.bls_key for v in self.validators]
        if len(set(bls_keys)) != len(bls_keys):
            raise ValidatorSetError("a BLS key appears twice in the validator set")

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        """Byzantine faults tolerated: n = 3f + 1 (more validators than 3f + 1 add no tolerance)."""
        return (self.n - 1) // 3

    @property
    def bft_quorum(self) -> int:
        """2f + 1 distinct validators when n = 3f + 1; in general n - f, so two quorums share an honest one."""
        return self.n - self.f

    @property
    def majority(self) -> int:
        """Raft's quorum: more than half."""
        return self.n // 2 + 1

    @cached_property
    def _index(self) -> dict[bytes, int]:
        return {v.node_key: i for i, v in enumerate(self.validators)}

    def index_of(self, node_key: bytes) -> int | None:
        return self._index.get(node_key)

    def __contains__(self, node_key: object) -> bool:
        return node_key in self._index

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(self.validators)

    def to_fields(self) -> list:
        return [v.to_fields() for v in self.validators]

    @classmethod
    def from_fields(cls, fields: list) -> ValidatorSet:
        if not isinstance(fields, list):
            raise ValidatorSetError("a validator set is a list of validators")
        return cls(tuple(Validator.from_fields(f) for f in fields))

    @cached_property
    def hash(self) -> bytes:
        return tagged_hash(b"gridledger/validator-set", codec.encode(self.to_fields()))

    def verify_proofs_of_possession(self) -> None:
        """Raise :class:`ValidatorSetError` unless every BLS key carries a valid proof of possession."""
        from ledger import bls

        for v in self.validators:
            if not bls.pop_verify(v.bls_key, v.bls_pop):
                raise ValidatorSetError(f"validator {v.name or v.node_key.hex()[:16]}: BLS proof of possession does not verify")

    def with_change(self, *, add: Validator | None = None, remove: bytes | None = None) -> ValidatorSet:
        """A new set with one validator added and/or one removed (by node key); order is kept."""
        validators = [v for v in self.validators if v.node_key != remove]
        if remove is not None and len(validators) == self.n:
            raise ValidatorSetError("the validator to remove is not in the set")
        if add is not None:
            validators.append(add)
        return ValidatorSet(tuple(validators))

