"""Canonical msgpack: the one encoding under every hash and signature in gridledger.

A value has exactly one encoding. Everything a validator hashes or signs, and
everything a peer, a client or a relayer hands us, goes through this module, so the
rules are strict and stated once:

* Allowed types: ``int`` (msgpack's range, -2**63 .. 2**64-1), ``bytes``, ``str``,
  ``bool``, ``None`` and arrays (``list``; tuples encode as arrays and decode as
  lists). Maps appear only where a caller asks for them (``allow_maps=True``), and
  then only with ``str`` keys in sorted order, without duplicates.
* Never floats (amounts, energy and time are integers in gridledger) and never
  extension types.
* The encoding is the shortest msgpack form of each item. A decoder accepts an input
  only when re-encoding the decoded value reproduces it byte for byte, so there is no
  second spelling of a signed object (no malleable transaction ids, no two hashes for
  one block).
* Decoding refuses trailing bytes and inputs beyond named size and depth limits.

Every refusal raises :class:`CodecError` with a message saying what was wrong.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = [
    "CodecError",
    "MAX_DEPTH",
    "MAX_SIZE",
    "decode",
    "encode",
]

# A single signed object (transaction, vote, certificate) fits comfortably in 1 MiB;
# larger things (blocks, snapshots) pass their own, explicit limit. An unbounded
# default would let one request pin the decoder's memory.
MAX_SIZE = 1 << 20

# The deepest signed object gridledger defines is a block holding transactions whose
# contract arguments nest a few levels. 32 leaves room for contract data while keeping
# the validating walk far from Python's recursion limit.
MAX_DEPTH = 32

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1

_SCALARS = frozenset({int, str, bytes, bool, type(None)})


class CodecError(ValueError):
    """An input is not the canonical encoding of an allowed value, or a value cannot be encoded."""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"extension type {code} is not allowed in canonical encoding")


def _check(value: Any, depth: int, max_depth: int, allow_maps: bool) -> None:
    """Walk a decoded or to-be-encoded value and refuse anything outside the allowed types."""
    t = type(value)
    if t in _SCALARS:
        if t is int and not (_INT_MIN <= value <= _INT_MAX):
            raise CodecError(f"integer {value} is outside the encodable range -2**63 .. 2**64-1")
        return
    if t is list or t is tuple:
        if depth >= max_depth:
            raise CodecError(f"nesting deeper than {max_depth} levels")
        for item in value:
            ti = type(item)
            if ti is int:
                if not (_INT_MIN <= item <= _INT_MAX):
                    raise CodecError(f"integer {item} is outside the encodable range -2**63 .. 2**64-1")
            elif ti not in _SCALARS:
                _check(item, depth + 1, max_depth, allow_maps)
        return
    if t is dict:
        if not allow_maps:
            raise CodecError("maps are not allowed here; signed objects are arrays with a fixed field order")
        if depth >= max_depth:
            raise CodecError(f"nesting deeper than {max_depth} levels")
        for key, item in value.items():
            if type(key) is not str:
                raise CodecError(f"map keys must be str, got {_type_name(key)}")
            _check(item, depth + 1, max_depth, allow_maps)
        return
    if t is float:
        raise CodecError("floats are not allowed; use integers (Wh, minor currency units, seconds)")
    raise CodecError(f"type {_type_name(value)} cannot be encoded canonically")


def _sorted_maps(value: Any) -> Any:
    t = type(value)
    if t is dict:
        return {k: _sorted_maps(value[k]) for k in sorted(value)}
    if t is list or t is tuple:
        return [_sorted_maps(v) for v in value]
    return value


def encode(value: Any, *, allow_maps: bool = False, max_depth: int = MAX_DEPTH) -> bytes:
    """Return the canonical encoding of ``value``.

    Raises :class:`CodecError` for floats, unsupported types, integers outside
    msgpack's range, maps when ``allow_maps`` is false, non-str map keys, and nesting
    deeper than ``max_depth``.
    """
    _check(value, 0, max_depth, allow_maps)
    if allow_maps:
        value = _sorted_maps(value)
    return msgpack.packb(value, use_bin_type=True)


def _no_duplicate_keys(pairs: list[tuple[Any, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise CodecError("map has duplicate keys")
    return result


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
    allow_maps: bool = False,
) -> Any:
    """Decode a canonical encoding, refusing anything else.

    Raises :class:`CodecError` when ``data`` is larger than ``max_size``, malformed or
    truncated, followed by trailing bytes, not canonical (re-encoding differs), or
    contains floats, extension types, maps (unless ``allow_maps``), non-str or unsorted
    or duplicate map keys, invalid UTF-8, or nesting deeper than ``max_depth``.
    """
    if not isinstance(data, bytes):
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        else:
            raise CodecError(f"expected bytes to decode, got {_type_name(data)}")
    size = len(data)
    if size == 0:
        raise CodecError("empty input: expected one encoded value")
    if size > max_size:
        raise CodecError(f"encoding is {size} bytes; the limit here is {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
            object_pairs_hook=_no_duplicate_keys,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError(f"{len(exc.extra)} trailing bytes after the encoded value") from None
    except UnicodeDecodeError:
        raise CodecError("a string is not valid UTF-8") from None
    except ValueError as exc:
        # msgpack reports truncation, stack overflow and unsupported keys as ValueError
        # subclasses; the message names the problem.
        raise CodecError(f"malformed msgpack: {exc}") from None
    except Exception as exc:  # msgpack.FormatError and friends
        raise CodecError(f"malformed msgpack: {exc}") from None
    _check(value, 0, max_depth, allow_maps)
    again = msgpack.packb(_sorted_maps(value) if allow_maps else value, use_bin_type=True)
    if again != data:
        at = _first_difference(again, data)
        raise CodecError(
            f"non-canonical encoding at byte {at}: every value must use its shortest form"
            + (" and maps their sorted keys" if allow_maps else "")
        )
    return value
