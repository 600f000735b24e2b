"""Blocks and block headers.

A header commits to everything a light client, an observer or a neighbouring shard
needs to check a read without replaying the chain:

    [version, chain_id, height, prev_hash, tx_root, state_root, receipts_root,
     time, proposer, validator_set_hash]

``state_root`` is the root of the authenticated state *after* this block's
transactions, so the commit certificate of a block certifies its resulting state and a
proof read at that height verifies against a certified root. ``time`` is integer
seconds agreed by the validators (proposed by the leader, refused by the others when
earlier than the parent's or too far ahead of their clocks). ``validator_set_hash``
names the set that certifies this block.

The block hash is the tagged SHA-256 of the encoded header; the transaction root is
the RFC 6962 Merkle root over the full encodings of the transactions (signatures
included), the receipts root the same over the encoded receipts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ledger import codec
from ledger.crypto import PUBLIC_KEY_LEN, tagged_hash
from ledger.merkle import merkle_root
from ledger.tx import MAX_CHAIN_ID_LEN, MAX_HEIGHT, Transaction, TxError

__all__ = ["Block", "BlockError", "BlockHeader", "HEADER_VERSION", "MAX_BLOCK_SIZE", "NULL_DIGEST", "ZERO_HASH", "null_block"]

HEADER_VERSION = 1
ZERO_HASH = bytes(32)
# A block of 2,000 ordinary transactions is about 400 KB; 8 MiB leaves room for blocks
# of deployments while bounding what a peer can make us decode.
MAX_BLOCK_SIZE = 8 * 1024 * 1024
MAX_BLOCK_TXS = 20_000


# A BFT view change may fill a sequence gap with the null batch (no block was proposed
# for it). Its commit certificate signs this constant, which no block hash can equal
# (block hashes are tagged "gridledger/header"), and its block is derived from the
# parent and the validator set in force at its height by :func:`null_block`, so every
# replica and every client derives the same one.
NULL_DIGEST = tagged_hash(b"gridledger/null-batch", b"")


class BlockError(ValueError):
    """A block or header is malformed or does not fit its chain. ``code`` is a stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _hash32(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise BlockError("malformed", f"{what} must be 32 bytes")
    return value


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: str
    height: int
    prev_hash: bytes
    tx_root: bytes
    state_root: bytes
    receipts_root: bytes
    time: int
    proposer: bytes
    validator_set_hash: bytes

    def to_fields(self) -> list:
        return [
            HEADER_VERSION,
            self.chain_id,
            self.height,
            self.prev_hash,
            self.tx_root,
            self.state_root,
            self.receipts_root,
            self.time,
            self.proposer,
            self.validator_set_hash,
        ]

    @classmethod
    def from_fields(cls, fields: Any) -> BlockHeader:
        if type(fields) is not list or len(fields) != 10:
            raise BlockError("malformed", "a block header is an array of 10 fields")
        version, chain_id, height, prev_hash, tx_root, state_root, receipts_root, time, proposer, vset = fields
        if type(version) is not int or version != HEADER_VERSION:
            raise BlockError("malformed", f"unsupported header version {version!r}")
        if type(chain_id) is not str or not 0 < len(chain_id) <= MAX_CHAIN_ID_LEN:
            raise BlockError("malformed", "header chain id must be a shard id")
        if type(height) is not int or not 0 <= height <= MAX_HEIGHT:
            raise BlockError("malformed", "header height must be a non-negative integer")
        if type(time) is not int or time < 0:
            raise BlockError("malformed", "header time must be non-negative integer seconds")
        if type(proposer) is not bytes or len(proposer) not in (0, PUBLIC_KEY_LEN):
            raise BlockError("malformed", "header proposer must be a node key")
        return cls(
            chain_id,
            height,
            _hash32(prev_hash, "previous hash"),
            _hash32(tx_root, "transaction root"),
            _hash32(state_root, "state root"),
            _hash32(receipts_root, "receipts root"),
            time,
            proposer,
            _hash32(vset, "validator set hash"),
        )

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        try:
            return cls.from_fields(codec.decode(data))
        except codec.CodecError as exc:
            raise BlockError("malformed", f"block header: {exc}") from None

    @property
    def hash(self) -> bytes:
        return tagged_hash(b"gridledger/header", self.encode())


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    txs: tuple[Transaction, ...] = field(default_factory=tuple)

    @cached_property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @cached_property
    def tx_ids(self) -> list[bytes]:
        return [tx.tx_id for tx in self.txs]

    @cached_property
    def encoded_txs(self) -> list[bytes]:
        return [tx.encode() for tx in self.txs]

    def encode(self) -> bytes:
        return codec.encode([self.header.to_fields(), self.encoded_txs], max_depth=4)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        """Strictly decode a block and every transaction in it; raises :class:`BlockError`."""
        if len(data) > MAX_BLOCK_SIZE:
            raise BlockError("too_large", f"block is {len(data)} bytes; the limit is {MAX_BLOCK_SIZE}")
        try:
            fields = codec.decode(data, max_size=MAX_BLOCK_SIZE, max_depth=4)
        except codec.CodecError as exc:
            raise BlockError("malformed", f"block: {exc}") from None
        if type(fields) is not list or len(fields) != 2 or type(fields[1]) is not list:
            raise BlockError("malformed", "a block is [header, [transactions]]")
        header = BlockHeader.from_fields(fields[0])
        if len(fields[1]) > MAX_BLOCK_TXS:
            raise BlockError("too_large", f"block holds {len(fields[1])} transactions; the limit is {MAX_BLOCK_TXS}")
        txs = []
        for i, raw in enumerate(fields[1]):
            if type(raw) is not bytes:
                raise BlockError("malformed", f"transaction {i} is not an encoded transaction")
            try:
                txs.append(Transaction.decode(raw))
            except TxError as exc:
                raise BlockError("malformed", f"transaction {i}: {exc}") from None
        block = cls(header, tuple(txs))
        block.__dict__["encoded_txs"] = fields[1]
        return block

    def check_tx_root(self) -> None:
        if tx_root(self.encoded_txs) != self.header.tx_root:
            raise BlockError("bad_tx_root", "the header's transaction root does not match the transactions")


def tx_root(encoded_txs: list[bytes]) -> bytes:
    return merkle_root(encoded_txs)


def receipts_root(encoded_receipts: list[bytes]) -> bytes:
    return merkle_root(encoded_receipts)


def null_block(parent: BlockHeader, height: int, validator_set_hash: bytes) -> Block:
    """The block of a null batch at ``height``: the parent's state and time, no transactions.

    It names ``validator_set_hash``, the set in force at ``height`` (the one whose quorum
    certified the null batch), as every block does; at the first height of a new set that
    is not the parent's.
    """
    header = BlockHeader(
        parent.chain_id, height, parent.hash, merkle_root([]), parent.state_root, merkle_root([]),
        parent.time, b"", validator_set_hash,
    )
    return Block(header, ())
