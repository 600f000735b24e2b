"""What a register map is: how to read a meter and turn its registers into a measurement.

A map is discovered once per device (:meth:`MeterMap.discover`, which may read the
device, as SunSpec's model chain requires) and yields a :class:`Layout`: the read
requests to send every poll (:class:`ReadBlock`) and a pure :meth:`Layout.decode` from
their answers to a :class:`Measurement` in integer units. Decoding owns no socket, so
it is tested without one and shared by the gateway and the simulator's checks.

Fixed-address maps (Eastron SDM630, custom TOML maps) are lists of :class:`Point`
decoded by :class:`PointLayout`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from meters.errors import ConfigError, DecodeError
from meters.registers import DataType, decode, exact, to_int_units

__all__ = [
    "ENERGY_UNITS",
    "MAX_READ_REGISTERS",
    "POWER_UNITS",
    "QUANTITIES",
    "Layout",
    "Measurement",
    "MeterMap",
    "Point",
    "PointLayout",
    "ReadBlock",
    "ReadFn",
    "plan_blocks",
]

# Modbus limits one read to 125 registers (the PDU is at most 253 bytes).
MAX_READ_REGISTERS = 125
READ_FUNCTIONS = {3: "holding", 4: "input"}
ENERGY_UNITS = {"Wh": 1, "kWh": 1000, "MWh": 1_000_000}
POWER_UNITS = {"W": 1, "kW": 1000, "MW": 1_000_000}
QUANTITIES = {"import_energy": ENERGY_UNITS, "export_energy": ENERGY_UNITS, "power": POWER_UNITS}

ReadFn = Callable[[int, int, int], Awaitable[list[int]]]
"""``await read(function, address, count)`` -> registers; raises DeviceError."""


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request: function 3 (holding) or 4 (input), start address, count."""

    function: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """One poll of one meter, in integer units.

    Counters are cumulative Wh (``None`` when the map has no such counter); the moduli
    say where each counter wraps to zero (``None``: it does not), and ``resolution_wh``
    is the counter's quantisation step at this value (float32 kWh counters get coarse
    as they grow), which validation allows as slack.
    """

    import_wh: int | None
    export_wh: int | None
    power_w: int | None = None
    import_modulus_wh: int | None = None
    export_modulus_wh: int | None = None
    resolution_wh: int = 1

    def counter(self, channel: str) -> tuple[int | None, int | None]:
        """(cumulative Wh, modulus) of ``channel`` (``import`` or ``export``)."""
        if channel == "import":
            return self.import_wh, self.import_modulus_wh
        return self.export_wh, self.export_modulus_wh


class Layout(Protocol):
    blocks: tuple[ReadBlock, ...]

    def decode(self, responses: Sequence[Sequence[int]]) -> Measurement:
        """Registers answered for ``blocks`` (same order) -> measurement; raises DecodeError."""
        ...


class MeterMap(Protocol):
    name: str

    async def discover(self, read: ReadFn) -> Layout:
        """Find where the device keeps its values; raises DeviceError or DecodeError."""
        ...


@dataclass(frozen=True, slots=True)
class Point:
    """One value at a fixed address: ``raw * scale`` is in ``unit``.

    ``rollover`` is the raw value at which a counter wraps to zero (defaults to the
    unsigned type's range; floats and signed types do not wrap).
    """

    quantity: str
    function: int
    address: int
    dtype: DataType
    word_order: str = "big"
    scale: Fraction = Fraction(1)
    unit: str = "Wh"
    rollover: int | None = None

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ConfigError(f"unknown quantity {self.quantity!r}; allowed: {', '.join(QUANTITIES)}")
        if self.function not in READ_FUNCTIONS:
            raise ConfigError(f"{self.quantity}: function must be 3 (holding) or 4 (input), not {self.function!r}")
        if not 0 <= self.address <= 0xFFFF - self.dtype.words + 1:
            raise ConfigError(f"{self.quantity}: address {self.address!r} is outside 0..65535")
        if self.unit not in QUANTITIES[self.quantity]:
            allowed = ", ".join(QUANTITIES[self.quantity])
            raise ConfigError(f"{self.quantity}: unit must be one of {allowed}, not {self.unit!r}")
        if self.dtype is DataType.SUNSSF:
            raise ConfigError(f"{self.quantity}: sunssf is a scale factor, not a value")

    @property
    def factor(self) -> Fraction:
        """Multiply a raw value by this to get Wh (or W)."""
        return self.scale * QUANTITIES[self.quantity][self.unit]

    @property
    def modulus(self) -> int | None:
        raw = self.rollover if self.rollover is not None else self.dtype.modulus
        return None if raw is None else to_int_units(raw * self.factor)

    def resolution(self, raw: int | float) -> int:
        """The quantisation step at ``raw`` in Wh (at least 1)."""
        if self.dtype.is_float:
            # float32 keeps 24 significant bits: one step is 2**(exponent - 24).
            _, exponent = math.frexp(float(raw))
            step = Fraction(2) ** (exponent - (24 if self.dtype is DataType.FLOAT32 else 53))
        else:
            step = Fraction(1)
        return max(1, math.ceil(step * self.factor))


def plan_blocks(spans: Sequence[tuple[int, int, int]], max_registers: int, max_gap: int = 0) -> tuple[ReadBlock, ...]:
    """Group (function, address, words) spans into as few reads as allowed.

    Spans of one function merge when the hole between them is at most ``max_gap``
    registers (reading undefined registers is refused by some devices, so 0 by
    default) and the read stays within ``max_registers``.
    """
    blocks: list[ReadBlock] = []
    for function, address, words in sorted(spans):
        if blocks:
            last = blocks[-1]
            end = last.address + last.count
            if last.function == function and address - end <= max_gap and address + words - last.address <= max_registers:
                blocks[-1] = ReadBlock(function, last.address, max(end, address + words) - last.address)
                continue
        blocks.append(ReadBlock(function, address, words))
    return tuple(blocks)


class PointLayout:
    """A fixed-address layout: each :class:`Point` decoded from the block holding it."""

    def __init__(self, points: Sequence[Point], *, max_registers: int = MAX_READ_REGISTERS, max_gap: int = 0) -> None:
        if not any(p.quantity in ("import_energy", "export_energy") for p in points):
            raise ConfigError("a register map needs import_energy or export_energy")
        self.points = tuple(points)
        self.blocks = plan_blocks([(p.function, p.address, p.dtype.words) for p in points], max_registers, max_gap)
        self._where: list[tuple[Point, int, int]] = []
        for point in self.points:
            for index, block in enumerate(self.blocks):
                if block.function == point.function and block.address <= point.address < block.address + block.count:
                    self._where.append((point, index, point.address - block.address))
                    break

    def decode(self, responses: Sequence[Sequence[int]]) -> Measurement:
        if len(responses) != len(self.blocks):
            raise DecodeError("short_read", f"expected {len(self.blocks)} register blocks, got {len(responses)}")
        values: dict[str, int] = {}
        moduli: dict[str, int | None] = {}
        resolution = 1
        for point, index, offset in self._where:
            words = responses[index][offset : offset + point.dtype.words]
            raw = decode(words, point.dtype, point.word_order)
            values[point.quantity] = to_int_units(exact(raw) * point.factor)
            if point.quantity != "power":
                moduli[point.quantity] = point.modulus
                resolution = max(resolution, point.resolution(raw))
        for quantity in ("import_energy", "export_energy"):
            if values.get(quantity, 0) < 0:
                raise DecodeError("negative_counter", f"{quantity} counter is negative ({values[quantity]} Wh)")
        return Measurement(
            import_wh=values.get("import_energy"),
            export_wh=values.get("export_energy"),
            power_w=values.get("power"),
            import_modulus_wh=moduli.get("import_energy"),
            export_modulus_wh=moduli.get("export_energy"),
            resolution_wh=resolution,
        )
