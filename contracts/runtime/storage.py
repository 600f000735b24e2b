"""Contract storage: overlays over the state reader, and the objects contracts use.

Every stored value lives under ``ledger.statekeys.state_key(contract, variable,
parts)`` and holds the canonical encoding (``ledger.codec``, maps allowed) of a plain
value. Reads fall through three layers: the transaction's writes, the block's
writes, and the state reader (the store), whose answers are cached for the block.
A failed transaction's layer is simply dropped, which reverts all its writes.

Contracts see storage through declarations bound by the loader:

* ``Map``: ``m[k]`` (``m[a, b]`` for several key parts), ``m[k] = v``, ``del m[k]``,
  ``k in m``. A key part is an int (64-bit), str or bytes of at most 256 bytes.
* ``Value``: ``v.get()``, ``v.set(x)``.

Writing a declaration's default deletes the key, so absent and default are the same
thing and state holds only what matters. A read of an absent key returns the
default (a fresh ``[]``/``{}`` each time). Values are ints in -2**63..2**64-1, str,
bytes, bool, None, lists (tuples are stored as lists) and dicts with str keys (read
back with sorted keys); a stored value is at most 64 KiB encoded. ``Fixed`` is not
stored directly: store its ``units`` at a scale the contract fixes.

The objects hold only underscore-named slots, so contract code (which cannot name
anything starting with ``_``) reaches nothing but the methods above.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded
from contracts.runtime.fixed import Fixed
from contracts.runtime.values import type_name
from ledger import codec
from ledger.tx import Event

__all__ = [
    "BlockState",
    "EventDecl",
    "MapDecl",
    "StateReader",
    "TxState",
    "ValueDecl",
    "decode_value",
    "encode_key_prefix",
]

_MISSING = object()
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_packb = msgpack.Packer(use_bin_type=True).pack


def decode_value(raw: bytes) -> Any:
    """Decode a stored value (written canonically by this runtime)."""
    return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)


class StateReader(Protocol):
    """What the store provides: the committed value of a key, or None."""

    def get(self, key: bytes) -> bytes | None: ...


class BlockState:
    """The writes of a block so far, over the state reader (whose reads are cached)."""

    __slots__ = ("reader", "writes", "cache")

    def __init__(self, reader: StateReader) -> None:
        self.reader = reader
        self.writes: dict[bytes, bytes | None] = {}
        self.cache: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        value = self.writes.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            value = self.reader.get(key)
            if value is not None and type(value) is not bytes:
                value = bytes(value)
            self.cache[key] = value
        return value  # type: ignore[return-value]


class TxState:
    """The writes of the running transaction, over the block's."""

    __slots__ = ("block", "writes", "write_bytes")

    def __init__(self, block: BlockState) -> None:
        self.block = block
        self.writes: dict[bytes, bytes | None] = {}
        self.write_bytes = 0

    def get(self, key: bytes) -> bytes | None:
        value = self.writes.get(key, _MISSING)
        if value is _MISSING:
            return self.block.get(key)
        return value  # type: ignore[return-value]


def encode_key_prefix(contract: str, name: str) -> bytes:
    """The canonical bytes of ``[contract, name`` (a 3-array), to which the parts array is appended."""
    return b"\x93" + _packb(contract) + _packb(name)


def _copy_default(default: object) -> object:
    t = type(default)
    if t is list or t is dict:
        return t()
    return default


class _Declaration:
    __slots__ = ("_rt", "_prefix", "_name", "_contract")

    def __iter__(self):
        raise ContractError(f"{self._name} cannot be iterated: storage is read by key; keep a list of keys in another Map or Value")

    def __len__(self) -> int:
        raise ContractError(f"{self._name} has no length: storage is read by key; keep a count in a Value")

    __hash__ = None  # type: ignore[assignment]


class MapDecl(_Declaration):
    """A storage map: see the module docstring."""

    __slots__ = ("_default", "_parts")

    def __init__(self, rt: Any, contract: str, name: str, default: object, key_parts: int) -> None:
        self._rt = rt
        self._contract = contract
        self._name = name
        self._prefix = encode_key_prefix(contract, name)
        self._default = default
        self._parts = key_parts

    def _key(self, key: object) -> bytes:
        if self._parts == 1:
            return self._prefix + b"\x91" + _key_part(key, self._name)
        if type(key) is not tuple or len(key) != self._parts:
            raise ContractError(f"{self._name} takes {self._parts} key parts: {self._name}[a, b]")
        return self._prefix + bytes((0x90 | self._parts,)) + b"".join(_key_part(p, self._name) for p in key)

    def __getitem__(self, key: object) -> object:
        rt = self._rt
        k = self._key(key)
        charge = rt.charge
        charge(G.STORAGE_READ + len(k) * G.STORAGE_READ_BYTE)
        raw = rt.tx.get(k)
        if raw is None:
            return _copy_default(self._default)
        charge(len(raw) * G.STORAGE_READ_BYTE)
        return decode_value(raw)

    def __contains__(self, key: object) -> bool:
        rt = self._rt
        k = self._key(key)
        rt.charge(G.STORAGE_READ + len(k) * G.STORAGE_READ_BYTE)
        return rt.tx.get(k) is not None

    def __setitem__(self, key: object, value: object) -> None:
        rt = self._rt
        rt.write(self._key(key), value, self._default)

    def __delitem__(self, key: object) -> None:
        rt = self._rt
        rt.write(self._key(key), self._default, self._default)


class ValueDecl(_Declaration):
    """A single stored value: ``v.get()`` and ``v.set(x)``."""

    __slots__ = ("_default",)

    def __init__(self, rt: Any, contract: str, name: str, default: object) -> None:
        self._rt = rt
        self._contract = contract
        self._name = name
        self._prefix = encode_key_prefix(contract, name) + b"\x90"
        self._default = default

    def get(self) -> object:
        rt = self._rt
        k = self._prefix
        rt.charge(G.STORAGE_READ + len(k) * G.STORAGE_READ_BYTE)
        raw = rt.tx.get(k)
        if raw is None:
            return _copy_default(self._default)
        rt.charge(len(raw) * G.STORAGE_READ_BYTE)
        return decode_value(raw)

    def set(self, value: object) -> None:
        self._rt.write(self._prefix, value, self._default)


class EventDecl(_Declaration):
    """An event declaration: ``Transfer.emit(sender=..., amount=...)``."""

    __slots__ = ("_fields", "_indexed")

    def __init__(self, rt: Any, contract: str, name: str, fields: tuple[str, ...], indexed: tuple[str, ...]) -> None:
        self._rt = rt
        self._contract = contract
        self._name = name
        self._prefix = b""
        self._fields = fields
        self._indexed = indexed

    def emit(self, *args: object, **kwargs: object) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise ContractError(f"{self._name} has {len(fields)} fields: {', '.join(fields)}")
        values = dict(zip(fields, args, strict=False))
        for k, v in kwargs.items():
            if k not in fields:
                raise ContractError(f"{self._name} has no field {k}; its fields are {', '.join(fields)}")
            if k in values:
                raise ContractError(f"{self._name} field {k} given twice")
            values[k] = v
        missing = [f for f in fields if f not in values]
        if missing:
            raise ContractError(f"{self._name} needs {', '.join(missing)}")
        self._rt.emit(self._contract, self._name, fields, [values[f] for f in fields])


def _key_part(part: object, name: str) -> bytes:
    t = type(part)
    if t is bytes or t is str:
        raw = _packb(part)
        if len(raw) > G.MAX_KEY_PART_BYTES + 3:
            raise LimitExceeded(f"a key part of {name} is longer than {G.MAX_KEY_PART_BYTES} bytes")
        return raw
    if t is int:
        if not _INT_MIN <= part <= _INT_MAX:  # type: ignore[operator]
            raise ContractError(f"an integer key part of {name} must be in -2**63..2**64-1")
        return _packb(part)
    raise ContractError(f"a key part of {name} is an int, str or bytes, not {type_name(part)}")


def encode_value(value: object, walk: Any, *, allow_maps: bool, what: str) -> bytes:
    """Canonical bytes of a contract value, after a charged walk that bounds nesting."""
    t = type(value)
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise ContractError(f"cannot {what} the integer: storable integers are -2**63..2**64-1; split it or encode it as bytes")
        return _packb(value)
    if t is str or t is bytes or t is bool or value is None:
        return _packb(value)
    if t is Fixed:
        raise ContractError(f"cannot {what} a Fixed directly: use its .units at a scale you fix, and Fixed.from_units(units, scale)")
    walk(value)
    try:
        return codec.encode(value, allow_maps=allow_maps, max_depth=G.MAX_NESTING + 1)
    except codec.CodecError as exc:
        if not allow_maps and "maps are not allowed" in str(exc):
            raise ContractError(f"cannot {what} a dict here: receipts hold lists; return a list of [key, value] pairs") from None
        raise ContractError(f"cannot {what} this value: {exc}") from None


def event_record(contract: str, name: str, fields: tuple[str, ...], decoded: list) -> Event:
    return Event(contract, name, tuple(zip(fields, decoded, strict=True)))
