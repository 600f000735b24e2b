"""Transactions and receipts.

A transaction is a signed call of one contract function by one participant:

    [version, chain_id, sender, nonce, contract, function, args, gas_limit, expiry, signature]

``sender`` is the Ed25519 public key (32 bytes) of the signer: a producer, a bank, a
smart meter... Its address is derived from it. ``expiry`` is the last block height at
which the transaction may be included, so a transaction held back by a partition does
not land days later. The signature covers every other field, domain-separated by the
chain id (the shard) and the kind ``tx``; the transaction id is the hash of the
signed body, so it is known before signing and is the same for every relayer.

Validation failures raise :class:`TxError` with a stable reason code (the codes the
HTTP API returns: ``malformed``, ``bad_signature``, ``wrong_chain``, ``expired``,
``gas_limit``, ``too_large``) and a message a user can act on.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ledger import codec
from ledger.crypto import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    Address,
    Kind,
    PrivateKey,
    tagged_hash,
    verify_signature,
)

__all__ = [
    "Event",
    "MAX_GAS_LIMIT",
    "MAX_TX_SIZE",
    "Receipt",
    "Transaction",
    "TxError",
    "TX_VERSION",
]

TX_VERSION = 1

# A deployment carries a contract's source, the largest thing a transaction holds;
# 128 KiB is several times the biggest system contract and keeps a block of a few
# thousand ordinary transactions well inside the block size limit.
MAX_TX_SIZE = 128 * 1024
# Contract and function names are identifiers; chain ids are shard paths.
MAX_NAME_LEN = 64
MAX_CHAIN_ID_LEN = 128
# Gas is a count of metered operations; a block's gas limit bounds execution time.
MAX_GAS_LIMIT = 1 << 40
MAX_NONCE = (1 << 63) - 1
MAX_HEIGHT = (1 << 63) - 1

# A signed transaction's encoding is the fixarray header of its 10 fields, the 9 body
# fields, and the signature as msgpack bin8 (0xc4, length 64). Canonical encoding makes
# the body's encoding a slice of it: fixarray(9) + the same 9 fields.
_TX_HEADER = 0x9A
_BODY_HEADER = b"\x99"
_SIGNATURE_TAIL = 2 + SIGNATURE_LEN

# Decoded transactions by their encoding, for as long as something holds them (the
# mempool does until they commit). A node decodes the same transaction when a client
# or a peer submits it and again in every block that carries it; this way the second
# decode, and the transaction id and signed body it computed, cost a dictionary lookup.
# Sharing is safe: a Transaction is immutable and its encoding determines it.
_DECODED: weakref.WeakValueDictionary[bytes, Transaction] = weakref.WeakValueDictionary()


class TxError(ValueError):
    """A transaction is malformed or invalid. ``code`` is a stable snake_case reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _name(value: Any, what: str, limit: int) -> str:
    if type(value) is not str or not value or len(value) > limit:
        raise TxError("malformed", f"{what} must be non-empty text of at most {limit} characters")
    return value


def _uint(value: Any, what: str, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise TxError("malformed", f"{what} must be an integer between 0 and {limit}")
    return value


@dataclass(frozen=True)
class Transaction:
    chain_id: str
    sender: bytes
    nonce: int
    contract: str
    function: str
    args: tuple
    gas_limit: int
    expiry: int
    signature: bytes = b""

    # ------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        key: PrivateKey,
        *,
        chain_id: str,
        nonce: int,
        contract: str,
        function: str,
        args: list | tuple = (),
        gas_limit: int = 1_000_000,
        expiry: int = MAX_HEIGHT,
    ) -> Transaction:
        """Build and sign a transaction offline (the client SDK's entry point)."""
        unsigned = cls(chain_id, key.public_key.raw, nonce, contract, function, tuple(args), gas_limit, expiry)
        unsigned.check_fields()
        signature = key.sign(chain_id, Kind.TX, unsigned.body_bytes)
        return cls(chain_id, key.public_key.raw, nonce, contract, function, tuple(args), gas_limit, expiry, signature)

    def check_fields(self) -> None:
        """Raise :class:`TxError` unless every field has an allowed type and range."""
        _name(self.chain_id, "chain id", MAX_CHAIN_ID_LEN)
        if type(self.sender) is not bytes or len(self.sender) != PUBLIC_KEY_LEN:
            raise TxError("malformed", f"sender must be a {PUBLIC_KEY_LEN}-byte Ed25519 public key")
        _uint(self.nonce, "nonce", MAX_NONCE)
        _name(self.contract, "contract", MAX_NAME_LEN)
        _name(self.function, "function", MAX_NAME_LEN)
        if type(self.args) is not tuple:
            raise TxError("malformed", "args must be a list")
        if type(self.gas_limit) is not int or not 1 <= self.gas_limit <= MAX_GAS_LIMIT:
            raise TxError("gas_limit", f"gas limit must be between 1 and {MAX_GAS_LIMIT}")
        _uint(self.expiry, "expiry height", MAX_HEIGHT)
        if type(self.signature) is not bytes or len(self.signature) not in (0, SIGNATURE_LEN):
            raise TxError("malformed", f"signature must be {SIGNATURE_LEN} bytes")

    # ------------------------------------------------------------ encoding

    def _body_fields(self) -> list:
        return [
            TX_VERSION,
            self.chain_id,
            self.sender,
            self.nonce,
            self.contract,
            self.function,
            list(self.args),
            self.gas_limit,
            self.expiry,
        ]

    @cached_property
    def body_bytes(self) -> bytes:
        """The canonical encoding of everything the signature covers."""
        try:
            return codec.encode(self._body_fields())
        except codec.CodecError as exc:
            raise TxError("malformed", f"transaction cannot be encoded: {exc}") from None

    @cached_property
    def tx_id(self) -> bytes:
        """32-byte id: the hash of the signed body (independent of the signature bytes)."""
        return tagged_hash(b"gridledger/tx", self.body_bytes)

    def encode(self) -> bytes:
        # Kept once computed (or decoded): a block's proposer hashes, encodes and
        # gossips the same transaction several times.
        encoded = self.__dict__.get("_encoded")
        if encoded is not None:
            return encoded
        if len(self.signature) != SIGNATURE_LEN:
            raise TxError("bad_signature", "transaction is not signed")
        encoded = codec.encode(self._body_fields() + [self.signature])
        self.__dict__["_encoded"] = encoded
        return encoded

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        """Strictly decode a transaction; raises :class:`TxError` (``too_large`` or ``malformed``)."""
        if len(data) > MAX_TX_SIZE:
            raise TxError("too_large", f"transaction is {len(data)} bytes; the limit is {MAX_TX_SIZE}")
        cacheable = cls is Transaction and type(data) is bytes
        if cacheable:
            known = _DECODED.get(data)
            if known is not None:
                return known
        try:
            fields = codec.decode(data, max_size=MAX_TX_SIZE)
        except codec.CodecError as exc:
            raise TxError("malformed", str(exc)) from None
        tx = cls.from_fields(fields)
        if type(data) is not bytes:
            data = bytes(data)
        # ``data`` is canonical (the codec re-encoded it), so it is this transaction's
        # encoding, and its signed body is a slice of it: no re-encoding for the id.
        tx.__dict__["_encoded"] = data
        if data[0] == _TX_HEADER and data[-_SIGNATURE_TAIL:-SIGNATURE_LEN] == b"\xc4\x40":
            tx.__dict__["body_bytes"] = _BODY_HEADER + data[1:-_SIGNATURE_TAIL]
        if cacheable:
            _DECODED[data] = tx
        return tx

    @classmethod
    def from_fields(cls, fields: Any) -> Transaction:
        if type(fields) is not list or len(fields) != 10:
            raise TxError("malformed", "a transaction is an array of 10 fields")
        if fields[0] != TX_VERSION or type(fields[0]) is not int:
            raise TxError("malformed", f"unsupported transaction version {fields[0]!r}; this node speaks {TX_VERSION}")
        _, chain_id, sender, nonce, contract, function, args, gas_limit, expiry, signature = fields
        if type(args) is not list:
            raise TxError("malformed", "args must be a list")
        tx = cls(chain_id, sender, nonce, contract, function, tuple(args), gas_limit, expiry, signature)
        tx.check_fields()
        if len(signature) != SIGNATURE_LEN:
            raise TxError("bad_signature", "transaction is not signed")
        return tx

    # ------------------------------------------------------------ checks

    @cached_property
    def sender_address(self) -> Address:
        return Address.from_public_key(self.sender)

    def signature_ok(self) -> bool:
        return verify_signature(self.sender, self.chain_id, Kind.TX, self.body_bytes, self.signature)

    def verify(self, chain_id: str, height: int | None = None) -> None:
        """Raise :class:`TxError` unless this transaction is for ``chain_id``, unexpired, and correctly signed."""
        if self.chain_id != chain_id:
            raise TxError("wrong_chain", f"transaction is for shard {self.chain_id!r}; this is {chain_id!r}")
        if height is not None and height > self.expiry:
            raise TxError("expired", f"transaction expired at height {self.expiry}; the chain is at {height}")
        if not self.signature_ok():
            raise TxError("bad_signature", f"signature does not verify for sender {self.sender.hex()}")


@dataclass(frozen=True, slots=True)
class Event:
    """Something a contract announced: ``fields`` are (name, value) pairs in declaration order."""

    contract: str
    name: str
    fields: tuple[tuple[str, Any], ...]

    def to_fields(self) -> list:
        return [self.contract, self.name, [[k, v] for k, v in self.fields]]

    @classmethod
    def from_fields(cls, fields: Any) -> Event:
        if type(fields) is not list or len(fields) != 3 or type(fields[2]) is not list:
            raise TxError("malformed", "an event is [contract, name, [[field, value], ...]]")
        contract, name, pairs = fields
        if type(contract) is not str or type(name) is not str:
            raise TxError("malformed", "event contract and name are text")
        out = []
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise TxError("malformed", "an event field is [name, value]")
            out.append((pair[0], pair[1]))
        return cls(contract, name, tuple(out))

    def as_dict(self) -> dict:
        return {"contract": self.contract, "name": self.name, "fields": dict(self.fields)}


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of one transaction in a block.

    A failed transaction (``ok`` false) changed nothing but its sender's nonce and gas
    account; ``error`` is ``(code, message)`` saying why (``out_of_gas``,
    ``contract_error``, ``limit``, ``not_allowed``, ...).
    """

    ok: bool
    gas_used: int
    events: tuple[Event, ...] = ()
    error: tuple[str, str] | None = None
    result: Any = None

    def to_fields(self) -> list:
        return [
            self.ok,
            self.gas_used,
            [e.to_fields() for e in self.events],
            None if self.error is None else list(self.error),
            self.result,
        ]

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        try:
            fields = codec.decode(data)
        except codec.CodecError as exc:
            raise TxError("malformed", f"receipt: {exc}") from None
        if type(fields) is not list or len(fields) != 5:
            raise TxError("malformed", "a receipt is [ok, gas_used, events, error, result]")
        ok, gas_used, events, error, result = fields
        if type(ok) is not bool or type(gas_used) is not int or type(events) is not list:
            raise TxError("malformed", "receipt fields have the wrong types")
        if error is not None and (type(error) is not list or len(error) != 2):
            raise TxError("malformed", "receipt error is [code, message]")
        return cls(ok, gas_used, tuple(Event.from_fields(e) for e in events), None if error is None else (error[0], error[1]), result)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "gas_used": self.gas_used,
            "events": [e.as_dict() for e in self.events],
            "error": None if self.error is None else {"code": self.error[0], "message": self.error[1]},
            "result": self.result,
        }
