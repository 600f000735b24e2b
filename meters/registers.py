"""Modbus register words <-> numbers, and exact conversion to integer units.

A Modbus register is a 16-bit word sent big-endian. Values wider than one register
span consecutive registers; devices disagree on which word comes first, so every
multi-register value has a *word order*: ``big`` (most significant word first, the
Modbus convention, used by Eastron SDM and SunSpec) or ``little`` (least significant
word first, common on PLCs and some meters). Bytes inside a word are always
big-endian.

Numbers leave this module either as Python ints or as Python floats holding a decoded
IEEE value exactly; :func:`exact` turns either into a :class:`fractions.Fraction`
without rounding, so scaling (``* 0.01``, ``kWh -> Wh``) is exact and rounding to an
integer happens once, at the end, in :func:`to_int_units`. Non-finite floats raise
:class:`~meters.errors.DecodeError` there: NaN from a device is never a measurement.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from meters.errors import ConfigError, DecodeError

__all__ = [
    "DataType",
    "WORD_ORDERS",
    "decode",
    "encode",
    "exact",
    "parse_scale",
    "to_int_units",
]

WORD_ORDERS = ("big", "little")


class DataType(enum.Enum):
    """Register data types: (name, struct code, registers, counter modulus or None).

    ``acc32``/``acc64`` are SunSpec accumulators: unsigned counters that roll over to
    zero; the plain unsigned types roll over the same way when used as counters.
    ``sunssf`` is a SunSpec scale factor (int16 power of ten). The name is part of the
    value so that types with the same layout stay distinct members.
    """

    INT16 = ("int16", "h", 1, None)
    UINT16 = ("uint16", "H", 1, 1 << 16)
    SUNSSF = ("sunssf", "h", 1, None)
    INT32 = ("int32", "i", 2, None)
    UINT32 = ("uint32", "I", 2, 1 << 32)
    ACC32 = ("acc32", "I", 2, 1 << 32)
    INT64 = ("int64", "q", 4, None)
    UINT64 = ("uint64", "Q", 4, 1 << 64)
    ACC64 = ("acc64", "Q", 4, 1 << 64)
    FLOAT32 = ("float32", "f", 2, None)
    FLOAT64 = ("float64", "d", 4, None)

    @property
    def code(self) -> str:
        return self.value[1]

    @property
    def words(self) -> int:
        return self.value[2]

    @property
    def modulus(self) -> int | None:
        """Where a counter of this type wraps to zero, in raw units (None: it does not wrap)."""
        return self.value[3]

    @property
    def is_float(self) -> bool:
        return self.code in ("f", "d")

    @classmethod
    def parse(cls, name: str) -> DataType:
        try:
            return cls[str(name).upper()]
        except KeyError:
            allowed = ", ".join(t.name.lower() for t in cls)
            raise ConfigError(f"unknown register data type {name!r}; allowed: {allowed}") from None


def _check_order(word_order: str) -> None:
    if word_order not in WORD_ORDERS:
        raise ConfigError(f"word order must be 'big' or 'little', not {word_order!r}")


def decode(words: Sequence[int], dtype: DataType, word_order: str = "big") -> int | float:
    """The value held by ``words`` (exactly ``dtype.words`` registers)."""
    _check_order(word_order)
    if len(words) != dtype.words:
        raise DecodeError("short_read", f"{dtype.name.lower()} needs {dtype.words} registers, got {len(words)}")
    ordered = words if word_order == "big" else list(reversed(words))
    raw = b"".join(int(w).to_bytes(2, "big") for w in ordered)
    return struct.unpack(">" + dtype.code, raw)[0]


def encode(value: int | float, dtype: DataType, word_order: str = "big") -> list[int]:
    """The registers a device holding ``value`` as ``dtype`` sends (inverse of :func:`decode`)."""
    _check_order(word_order)
    raw = struct.pack(">" + dtype.code, value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def exact(value: int | float) -> Fraction:
    """``value`` as an exact fraction; NaN or infinity raise :class:`DecodeError` (``not_finite``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError("not_finite", f"the device sent a non-finite value ({value!r})")
    return Fraction(value)


def parse_scale(text: str | int | float) -> Fraction:
    """A scale written in a map file (``"0.01"``, ``10``, ``"1e-3"``) as an exact fraction.

    Floats written in TOML are read through their shortest decimal form, so ``0.1``
    means one tenth, not the nearest binary float.
    """
    if isinstance(text, bool):
        raise ConfigError("scale must be a number, e.g. 0.01 or \"0.01\"")
    try:
        scale = Fraction(Decimal(repr(text) if isinstance(text, float) else str(text)))
    except (InvalidOperation, ValueError):
        raise ConfigError(f"scale {text!r} is not a number; write it like 0.01 or \"1e-3\"") from None
    if scale <= 0:
        raise ConfigError(f"scale must be positive, got {text!r}")
    return scale


def to_int_units(value: Fraction) -> int:
    """Round an exact value to the nearest integer unit (ties to even)."""
    return round(value)
