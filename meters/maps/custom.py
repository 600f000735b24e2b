"""Custom register maps in TOML, for meters without a built-in map.

A map names up to three points, ``import_energy``, ``export_energy`` (at least one
of the two) and ``power``, each with where it lives and how to read it::

    name = "plant-meter-x"           # shown in status and logs
    max_registers_per_read = 125     # optional; the device's limit per request
    max_gap = 0                      # optional; undefined registers one read may span

    [import_energy]
    address = 0x0100                 # register address as sent on the wire (0-based)
    function = "holding"             # "holding" (03) or "input" (04), or 3 / 4
    type = "uint32"                  # int16 uint16 int32 uint32 acc32 int64 uint64 acc64 float32 float64
    word_order = "little"            # "big" (high word first, default) or "little"
    scale = "0.01"                   # raw * scale is in `unit`; exact decimal
    unit = "kWh"                     # Wh kWh MWh for energy; W kW MW for power
    rollover = 100000000             # optional: raw value where the counter wraps

Addresses are 0-based wire addresses: a datasheet's "register 40101" or "30001" is
address 100 or 0.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from meters.errors import ConfigError
from meters.maps.base import MAX_READ_REGISTERS, QUANTITIES, Layout, Point, PointLayout, ReadFn
from meters.registers import WORD_ORDERS, DataType, parse_scale

__all__ = ["CustomMap", "load_custom_map", "parse_custom_map"]

_FUNCTIONS = {"holding": 3, "input": 4, 3: 3, 4: 4}
_POINT_KEYS = {"address", "function", "type", "word_order", "scale", "unit", "rollover"}
_TOP_KEYS = {"name", "max_registers_per_read", "max_gap", *QUANTITIES}


class CustomMap:
    """A fixed-address map read from TOML."""

    def __init__(self, name: str, layout: PointLayout) -> None:
        self.name = name
        self._layout = layout

    @property
    def layout(self) -> PointLayout:
        return self._layout

    async def discover(self, read: ReadFn) -> Layout:
        return self._layout


def _int(doc: dict, key: str, where: str, *, low: int, high: int, default: Any = None) -> int:
    value = doc.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{where}: {key} must be an integer in {low}..{high}, got {value!r}")
    return value


def _point(quantity: str, doc: Any, where: str) -> Point:
    where = f"{where} [{quantity}]"
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table with address, function, type, unit")
    unknown = set(doc) - _POINT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_POINT_KEYS)}")
    function = doc.get("function")
    if function not in _FUNCTIONS or type(function) is bool:
        raise ConfigError(f"{where}: function must be \"holding\" (3) or \"input\" (4), got {function!r}")
    try:
        dtype = DataType.parse(doc.get("type", ""))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    word_order = doc.get("word_order", "big")
    if word_order not in WORD_ORDERS:
        raise ConfigError(f"{where}: word_order must be \"big\" or \"little\", got {word_order!r}")
    if "unit" not in doc:
        raise ConfigError(f"{where}: unit is required ({', '.join(QUANTITIES[quantity])})")
    rollover = doc.get("rollover")
    if rollover is not None and (type(rollover) is not int or rollover <= 0):
        raise ConfigError(f"{where}: rollover must be a positive integer (raw units), got {rollover!r}")
    try:
        return Point(
            quantity,
            _FUNCTIONS[function],
            _int(doc, "address", where, low=0, high=0xFFFF),
            dtype,
            word_order,
            parse_scale(doc.get("scale", 1)),
            doc["unit"],
            rollover,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_custom_map(doc: dict, where: str = "register map") -> CustomMap:
    """Build a map from a parsed TOML document; raises ConfigError naming the field."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = doc.get("name", Path(where).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name must be non-empty text")
    points = [_point(q, doc[q], where) for q in QUANTITIES if q in doc]
    max_registers = _int(doc, "max_registers_per_read", where, low=1, high=MAX_READ_REGISTERS, default=MAX_READ_REGISTERS)
    max_gap = _int(doc, "max_gap", where, low=0, high=MAX_READ_REGISTERS, default=0)
    for point in points:
        if point.dtype.words > max_registers:
            raise ConfigError(f"{where}: {point.quantity} needs {point.dtype.words} registers; max_registers_per_read is {max_registers}")
    try:
        return CustomMap(name, PointLayout(points, max_registers=max_registers, max_gap=max_gap))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_custom_map(path: str | Path) -> CustomMap:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"register map {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"register map {path} cannot be read: {exc}") from None
    return parse_custom_map(doc, str(path))
