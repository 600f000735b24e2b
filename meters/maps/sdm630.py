"""Eastron SDM630 (Modbus v2): three-phase meter, values as input registers (function 04).

Every value is an IEEE-754 float32 in two registers, high word first. The gateway reads
one block, 0x0034..0x004B, holding total system power (W, 0x0034), total import
(kWh, 0x0048) and total export (kWh, 0x004A); the registers between are defined on the
device (VA, VAr, power factor, frequency), so one request of 24 registers replaces
three.

Precision: a float32 keeps 24 significant bits, so a kWh counter's step grows with its
value: about 1 Wh near 10 MWh, 8 Wh near 100 MWh, 62.5 Wh near 1 GWh. The gateway
converts the *cumulative* value exactly (``Fraction(float32) * 1000``) and rounds it
once to integer Wh; a period's energy is the difference of two such cumulative values.
The rounding remainder therefore stays inside the cumulative counter instead of being
dropped each period: over any number of periods the sum of the readings equals the
difference of the first and last counter values, so errors never drift, and each
reading is off by at most one counter step.
"""

from __future__ import annotations

from meters.maps.base import Layout, Point, PointLayout, ReadFn
from meters.registers import DataType

__all__ = ["REGISTERS", "SDM630", "Sdm630Map"]

# The register addresses of the values the simulator renders (Eastron SDM630 Modbus
# protocol, input registers, each a float32 over two registers).
REGISTERS = {
    "voltage_l1": 0x0000,
    "voltage_l2": 0x0002,
    "voltage_l3": 0x0004,
    "current_l1": 0x0006,
    "current_l2": 0x0008,
    "current_l3": 0x000A,
    "power_l1": 0x000C,
    "power_l2": 0x000E,
    "power_l3": 0x0010,
    "total_power": 0x0034,
    "total_va": 0x0038,
    "total_var": 0x003C,
    "total_pf": 0x003E,
    "frequency": 0x0046,
    "import_kwh": 0x0048,
    "export_kwh": 0x004A,
    "import_kvarh": 0x004C,
    "export_kvarh": 0x004E,
}
# The input-register range the device defines (0x0000..0x0057 in our simulator).
REGISTER_SPAN = 0x0058

POINTS = (
    Point("power", 4, REGISTERS["total_power"], DataType.FLOAT32, "big", unit="W"),
    Point("import_energy", 4, REGISTERS["import_kwh"], DataType.FLOAT32, "big", unit="kWh"),
    Point("export_energy", 4, REGISTERS["export_kwh"], DataType.FLOAT32, "big", unit="kWh"),
)


class Sdm630Map:
    """The built-in SDM630 map; its layout is fixed, so discovery reads nothing."""

    name = "sdm630"

    def __init__(self) -> None:
        # 0x0034..0x004B is defined on the device, so the three points share one read.
        self._layout = PointLayout(POINTS, max_gap=REGISTERS["import_kwh"] - REGISTERS["total_power"])

    async def discover(self, read: ReadFn) -> Layout:
        return self._layout


SDM630 = Sdm630Map()
