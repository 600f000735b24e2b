"""One simulated meter: a profile integrated into counters, rendered as Modbus registers.

Counters are integers in joules (W·s), integrated in steps of ``step_s`` simulated
seconds from the simulation's start, so a counter value depends only on the seed, the
start time and the simulated time asked for: integer arithmetic, no drift, no
dependence on when or how often the meter is read. Registers are rendered from the
counters on every read, exactly as the real device would hold them:

- SDM630: ``float32(joules / 3.6e6)`` kWh (the double quotient rounded to float32),
  power in W as float32, plus plausible voltages, currents and frequency.
- SunSpec 203: ``floor(Wh / 10**TotWh_SF) mod 2**32`` in acc32 registers, power
  ``round(W / 10**W_SF)`` in int16, behind the ``SunS`` marker, the common model 1 and
  optional filler models, ending with 0xFFFF.
- a custom TOML map: each point's raw value ``floor(value / scale)`` (counters) in its
  data type and word order.

Faults: ``no_answer`` (the device stays silent), ``garbage`` (seeded random words in
every register read), ``nan`` (NaN floats; SunSpec "not implemented" markers), and
``reset`` (both counters restart from zero now).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from pymodbus.constants import ExcCodes

from meters.errors import ConfigError
from meters.maps.base import POWER_UNITS, Point
from meters.maps.custom import CustomMap
from meters.maps.sdm630 import REGISTER_SPAN
from meters.maps.sdm630 import REGISTERS as SDM
from meters.maps.sunspec import MARKER, MODEL_203, MODEL_LENGTH
from meters.profiles import Profile, unit_noise
from meters.registers import DataType, encode

__all__ = ["FAULTS", "MeterValues", "SimulatedMeter"]

FAULTS = ("no_answer", "garbage", "nan", "reset")
NAN32 = [0x7FC0, 0x0000]
COMMON_MODEL_LENGTH = 66


@dataclass(frozen=True, slots=True)
class MeterValues:
    """The meter's true state at simulated second ``t``."""

    t: int
    import_j: int
    export_j: int
    power_w: int

    @property
    def import_wh(self) -> Fraction:
        return Fraction(self.import_j, 3600)

    @property
    def export_wh(self) -> Fraction:
        return Fraction(self.export_j, 3600)


def _text(value: str, words: int) -> list[int]:
    raw = value.encode()[: words * 2].ljust(words * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _sf_for(peak: int) -> int:
    """The smallest non-negative scale factor that fits ``peak`` in an int16."""
    sf = 0
    while abs(peak) / 10**sf > 32767:
        sf += 1
    return sf


class SimulatedMeter:
    """One meter at unit ``unit_id`` of ``port``: a TCP port number, or a serial device path."""

    def __init__(
        self,
        *,
        port: int | str,
        unit_id: int,
        map_kind: str | CustomMap,
        profile: Profile,
        initial_import_wh: int,
        initial_export_wh: int,
        start_t: int,
        step_s: int = 1,
        seed: int = 0,
        sunspec_base: int = 40000,
        wh_sf: int = 0,
        extra_models: tuple[tuple[int, int], ...] = (),
    ) -> None:
        if isinstance(map_kind, str) and map_kind not in ("sdm630", "sunspec"):
            raise ConfigError(f"simulated meters speak sdm630, sunspec or a custom .toml map, not {map_kind!r}")
        if not -10 <= wh_sf <= 10:
            raise ConfigError(f"wh_sf must be in -10..10 (SunSpec scale factor), got {wh_sf}")
        self.port = port
        self.unit_id = unit_id
        self.map_kind = map_kind
        self.profile = profile
        self.step_s = step_s
        self.seed = seed
        self._t = start_t - start_t % step_s
        self._import_j = initial_import_wh * 3600
        self._export_j = initial_export_wh * 3600
        self._power = profile.power_w(self._t)
        self._faults: list[tuple[str, float, float]] = []
        self._resets: list[float] = []
        self._garbage_count = 0
        self.sunspec_base = sunspec_base
        self.wh_sf = wh_sf
        self.w_sf = _sf_for(profile.peak_w)
        self.extra_models = tuple(extra_models)
        self.base, self.static = self._static_image()
        self.model_203_at = self._model_address()

    @property
    def name(self) -> str:
        """``port/unit`` on Modbus TCP, ``device:unit`` on a serial bus."""
        return f"{self.port}/{self.unit_id}" if isinstance(self.port, int) else f"{self.port}:{self.unit_id}"

    # ------------------------------------------------------------ physics

    def values_at(self, t: float) -> MeterValues:
        """Integrate up to simulated time ``t`` (never backwards) and return the state."""
        target = math.floor(t) - math.floor(t) % self.step_s
        while self._t < target:
            self._apply_resets(self._t)
            power = self.profile.power_w(self._t)
            if power > 0:
                self._import_j += power * self.step_s
            else:
                self._export_j -= power * self.step_s
            self._t += self.step_s
        self._apply_resets(self._t)
        self._power = self.profile.power_w(self._t)
        return MeterValues(self._t, self._import_j, self._export_j, self._power)

    def _apply_resets(self, t: int) -> None:
        while self._resets and self._resets[0] <= t:
            self._resets.pop(0)
            self._import_j = self._export_j = 0

    # ------------------------------------------------------------ faults

    def inject(self, kind: str, start: float, duration_s: float = 0.0) -> None:
        if kind not in FAULTS:
            raise ConfigError(f"unknown fault {kind!r}; allowed: {', '.join(FAULTS)}")
        if kind == "reset":
            self._resets.append(start)
            self._resets.sort()
        else:
            self._faults.append((kind, start, start + duration_s))

    def clear_faults(self) -> None:
        self._faults.clear()

    def active_faults(self, t: float) -> set[str]:
        return {kind for kind, start, end in self._faults if start <= t < end}

    # ------------------------------------------------------------ registers

    def _static_image(self) -> tuple[int, list[int]]:
        if self.map_kind == "sdm630":
            image = [0] * REGISTER_SPAN
            for name, value in (("voltage_l1", 230.0), ("voltage_l2", 230.0), ("voltage_l3", 230.0), ("frequency", 50.0)):
                image[SDM[name] : SDM[name] + 2] = encode(value, DataType.FLOAT32)
            return 0, image
        if self.map_kind == "sunspec":
            common = [1, COMMON_MODEL_LENGTH] + _text("gridledger", 16) + _text("sim-203", 16) + [0] * 8 \
                + _text("1.0", 8) + _text(f"SIM{str(self.port).rsplit('/', 1)[-1]}-{self.unit_id}", 16) + [self.unit_id, 0]
            image = list(MARKER) + common
            for model_id, length in self.extra_models:
                image += [model_id, length] + [0] * length
            model = [0] * (2 + MODEL_LENGTH)
            model[0], model[1] = 203, MODEL_LENGTH
            for name, sf in (("A_SF", -2), ("V_SF", -1), ("Hz_SF", -2), ("W_SF", self.w_sf), ("PF_SF", -2),
                             ("TotWh_SF", self.wh_sf)):
                model[MODEL_203[name]] = encode(sf, DataType.SUNSSF)[0]
            for name, value in (("PhV", 2300), ("PhVphA", 2300), ("PhVphB", 2300), ("PhVphC", 2300), ("Hz", 5000)):
                model[MODEL_203[name]] = value
            return self.sunspec_base, image + model + [0xFFFF, 0]
        points = self.map_kind.layout.points
        low = min(p.address for p in points)
        high = max(p.address + p.dtype.words for p in points)
        return low, [0] * (high - low)

    def _model_address(self) -> int | None:
        if self.map_kind != "sunspec":
            return None
        return self.sunspec_base + 2 + 2 + COMMON_MODEL_LENGTH + sum(2 + length for _, length in self.extra_models)

    def function_allowed(self, function: int) -> bool:
        if self.map_kind == "sdm630":
            return function == 4
        if self.map_kind == "sunspec":
            return function == 3
        return function in {p.function for p in self.map_kind.layout.points}

    def render(self, t: float, registers: list[int], start: int, address: int, count: int) -> ExcCodes | None:
        """Fill ``registers`` (the device's block beginning at ``start``) for a read at ``address``."""
        values = self.values_at(t)
        faults = self.active_faults(t)
        lo = address - start
        registers[lo : lo + count] = self.static[address - self.base : address - self.base + count]
        if self.map_kind == "sdm630":
            self._render_sdm630(values, registers, start, "nan" in faults)
        elif self.map_kind == "sunspec":
            self._render_sunspec(values, registers, start, "nan" in faults)
        else:
            self._render_custom(values, registers, start, "nan" in faults)
        if "garbage" in faults:
            for i in range(count):
                self._garbage_count += 1
                registers[lo + i] = int(unit_noise(self.seed, 9, self._garbage_count) * 65536)
        return None

    def _put(self, registers: list[int], start: int, address: int, words: list[int]) -> None:
        at = address - start
        if 0 <= at and at + len(words) <= len(registers):
            registers[at : at + len(words)] = words

    def _render_sdm630(self, v: MeterValues, regs: list[int], start: int, nan: bool) -> None:
        power = float(v.power_w)
        current = abs(power) / 3 / 230.0
        floats = {
            "current_l1": current, "current_l2": current, "current_l3": current,
            "power_l1": power / 3, "power_l2": power / 3, "power_l3": power / 3,
            "total_power": power, "total_va": abs(power) / 0.98, "total_pf": 0.98,
            "import_kwh": v.import_j / 3_600_000, "export_kwh": v.export_j / 3_600_000,
        }
        for name, value in floats.items():
            words = NAN32 if nan and name in ("total_power", "import_kwh", "export_kwh") else encode(value, DataType.FLOAT32)
            self._put(regs, start, SDM[name], words)

    def _render_sunspec(self, v: MeterValues, regs: list[int], start: int, nan: bool) -> None:
        at = self.model_203_at
        scale = Fraction(10) ** self.wh_sf
        exported = math.floor(v.export_wh / scale) % (1 << 32)
        imported = math.floor(v.import_wh / scale) % (1 << 32)
        power = max(-32767, min(32767, round(v.power_w / 10**self.w_sf)))
        amps = round(abs(v.power_w) / 230 * 100)  # A_SF = -2 (per phase sum of a 3-phase wye)
        self._put(regs, start, at + MODEL_203["A"], encode(min(amps, 32767), DataType.INT16))
        self._put(regs, start, at + MODEL_203["W"], [0x8000] if nan else encode(power, DataType.INT16))
        self._put(regs, start, at + MODEL_203["PF"], encode(98, DataType.INT16))
        self._put(regs, start, at + MODEL_203["TotWhExp"], encode(exported, DataType.ACC32))
        self._put(regs, start, at + MODEL_203["TotWhImp"], encode(imported, DataType.ACC32))
        if nan:
            self._put(regs, start, at + MODEL_203["TotWh_SF"], [0x8000])

    def _render_custom(self, v: MeterValues, regs: list[int], start: int, nan: bool) -> None:
        for point in self.map_kind.layout.points:
            self._put(regs, start, point.address, self._raw_words(point, v, nan))

    @staticmethod
    def _raw_words(point: Point, v: MeterValues, nan: bool) -> list[int]:
        if point.quantity == "power":
            value = Fraction(v.power_w) / POWER_UNITS[point.unit] / point.scale
        else:
            wh = v.import_wh if point.quantity == "import_energy" else v.export_wh
            value = wh / point.factor
        if point.dtype.is_float:
            return encode(float("nan") if nan else float(value), point.dtype, point.word_order)
        raw = round(value) if point.quantity == "power" else math.floor(value)
        modulus = point.rollover or point.dtype.modulus
        if modulus and point.quantity != "power":
            raw %= modulus
        return encode(raw, point.dtype, point.word_order)
