"""SunSpec meters (model 203, wye-connect three phase; 201, 202, 204 share its layout).

SunSpec devices keep a chain of models in holding registers (function 03). The chain
starts with the marker ``SunS`` (0x5375 0x6E53) at base address 40000, 0 or 50000;
each model is ``[ID, L, L registers of data]`` and the chain ends with ID 0xFFFF.
Discovery reads the marker, walks the chain header by header, and remembers where the
meter model starts; each poll then reads that model in one request (2 + 105 registers)
and checks its header again, so a device whose chain changed is re-discovered instead
of being misread.

Values are scaled integers: ``value = raw * 10 ** SF`` with a scale factor register
(``sunssf``, int16 in -10..10) per group. Energy counters are ``acc32`` accumulators
of Wh that wrap at 2**32 raw units. "Not implemented" markers (0x8000 for int16 and
sunssf) are refused, never read as numbers. An acc32 of 0 also means "not
accumulated" in SunSpec, but it is a new meter's true value too: it is read as zero,
and a counter that falls back to zero is caught by validation as a reset or a glitch.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from meters.errors import DecodeError, DeviceError
from meters.maps.base import Layout, Measurement, ReadBlock, ReadFn
from meters.registers import DataType, decode, to_int_units

__all__ = ["BASES", "MARKER", "METER_MODELS", "MODEL_203", "SUNSPEC", "SunSpecLayout", "SunSpecMap"]

MARKER = (0x5375, 0x6E53)  # "SunS"
BASES = (40000, 0, 50000)  # where the SunSpec spec allows the marker, most common first
END_ID = 0xFFFF
METER_MODELS = (201, 202, 203, 204)  # identical register layout, different wiring
MODEL_LENGTH = 105
# A chain is a handful of models on real devices; the bound stops a walk over garbage.
MAX_MODELS = 64
NOT_IMPLEMENTED_INT16 = 0x8000

# Offsets from the model's first register (its ID), from the SunSpec model 203 definition.
MODEL_203 = {
    "ID": 0,
    "L": 1,
    "A": 2,
    "A_SF": 6,
    "PhV": 7,
    "PhVphA": 8,
    "PhVphB": 9,
    "PhVphC": 10,
    "V_SF": 15,
    "Hz": 16,
    "Hz_SF": 17,
    "W": 18,
    "WphA": 19,
    "WphB": 20,
    "WphC": 21,
    "W_SF": 22,
    "PF": 33,
    "PF_SF": 37,
    "TotWhExp": 38,
    "TotWhImp": 46,
    "TotWh_SF": 54,
    "Evt": 105,
}


def scale_factor(words: Sequence[int], offset: int, name: str) -> int:
    raw = words[offset]
    if raw == NOT_IMPLEMENTED_INT16:
        raise DecodeError("not_implemented", f"SunSpec scale factor {name} is not implemented (0x8000)")
    sf = decode([raw], DataType.SUNSSF)
    if not -10 <= sf <= 10:
        raise DecodeError("bad_scale_factor", f"SunSpec scale factor {name} is {sf}; the standard allows -10..10")
    return sf


class SunSpecLayout:
    """Model 2xx found at ``address``: one read of the whole model per poll."""

    def __init__(self, address: int, model_id: int, base: int) -> None:
        self.address = address
        self.model_id = model_id
        self.base = base
        self.blocks = (ReadBlock(3, address, 2 + MODEL_LENGTH),)

    def decode(self, responses: Sequence[Sequence[int]]) -> Measurement:
        if len(responses) != 1 or len(responses[0]) != 2 + MODEL_LENGTH:
            raise DecodeError("short_read", f"SunSpec model {self.model_id} needs {2 + MODEL_LENGTH} registers")
        words = responses[0]
        if words[0] != self.model_id or words[1] != MODEL_LENGTH:
            raise DecodeError(
                "layout_changed",
                f"expected SunSpec model {self.model_id} (L={MODEL_LENGTH}) at {self.address}, "
                f"found ID {words[0]} L {words[1]}; the device will be rediscovered",
            )
        wh_scale = Fraction(10) ** scale_factor(words, MODEL_203["TotWh_SF"], "TotWh_SF")
        exp_at, imp_at = MODEL_203["TotWhExp"], MODEL_203["TotWhImp"]
        exported = decode(words[exp_at : exp_at + 2], DataType.ACC32)
        imported = decode(words[imp_at : imp_at + 2], DataType.ACC32)
        power = None
        if words[MODEL_203["W"]] != NOT_IMPLEMENTED_INT16:
            w_scale = Fraction(10) ** scale_factor(words, MODEL_203["W_SF"], "W_SF")
            power = to_int_units(decode([words[MODEL_203["W"]]], DataType.INT16) * w_scale)
        modulus = to_int_units(DataType.ACC32.modulus * wh_scale)
        return Measurement(
            import_wh=to_int_units(imported * wh_scale),
            export_wh=to_int_units(exported * wh_scale),
            power_w=power,
            import_modulus_wh=modulus,
            export_modulus_wh=modulus,
            resolution_wh=max(1, to_int_units(wh_scale)),
        )


class SunSpecMap:
    """Finds the SunSpec marker, walks the model chain, and decodes the meter model."""

    name = "sunspec"

    def __init__(self, models: Sequence[int] = METER_MODELS, bases: Sequence[int] = BASES) -> None:
        self.models = tuple(models)
        self.bases = tuple(bases)

    async def _find_base(self, read: ReadFn) -> int:
        for base in self.bases:
            try:
                words = await read(3, base, 2)
            except DeviceError as exc:
                if exc.kind == "exception":  # illegal address: no marker here
                    continue
                raise
            if tuple(words) == MARKER:
                return base
        raise DecodeError("no_sunspec_marker", f"no SunS marker at holding registers {', '.join(map(str, self.bases))}")

    async def discover(self, read: ReadFn) -> Layout:
        base = await self._find_base(read)
        address = base + 2
        seen: list[int] = []
        for _ in range(MAX_MODELS):
            model_id, length = await read(3, address, 2)
            if model_id == END_ID:
                break
            seen.append(model_id)
            if model_id in self.models:
                if length != MODEL_LENGTH:
                    raise DecodeError("bad_model_length", f"SunSpec model {model_id} has L={length}; expected {MODEL_LENGTH}")
                return SunSpecLayout(address, model_id, base)
            address += 2 + length
            if address > 0xFFFF:
                break
        wanted = "/".join(map(str, self.models))
        raise DecodeError("no_meter_model", f"SunSpec chain at {base} holds models {seen}; none is a meter model {wanted}")


SUNSPEC = SunSpecMap()
