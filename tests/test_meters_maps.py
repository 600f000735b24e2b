"""Register maps against the simulator over real Modbus TCP on loopback.

The simulator runs on a hand-moved clock, so the test knows the meter's true state
(its integer joule counters) at the instant of every read and checks the gateway's
decoding against values computed here, independently of the map code.
"""

import asyncio
import math
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from meters.config import MeterSettings, parse_endpoint
from meters.errors import ConfigError, DecodeError, DeviceError
from meters.maps import load_map
from meters.maps.custom import parse_custom_map
from meters.modbus import EndpointPool, quiet_pymodbus
from meters.poller import Device
from meters.readings import Limits
from meters.simulator import ManualClock, Simulator
from meters.testbed import free_port

T_START = 1_767_225_600 + 11 * 3600  # 2026-01-01 12:00 local: the sun is up


def run(coro):
    quiet_pymodbus()
    return asyncio.run(asyncio.wait_for(coro, 60))


def device(port, unit, map_spec, *, kind="tcp", base_dir="."):
    endpoint = parse_endpoint(f"{kind}://127.0.0.1:{port}")
    pool = EndpointPool(endpoint, connections=1, timeout_s=1.0)
    settings = MeterSettings(f"m{port}-{unit}", endpoint, unit, map_spec, "export", 10**9, Path("unused"))
    return Device(settings, load_map(map_spec, base_dir), pool, Limits(10**9))


def float32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_sdm630_map_decodes_simulator_values_exactly():
    async def body():
        port = free_port()
        clock = ManualClock(T_START)
        sim = Simulator({"simulator": {"seed": 11}, "meters": [
            {"ports": port, "unit_ids": [1, 4], "map": "sdm630", "profile": "solar", "peak_w": 9_000,
             "initial_kwh": [10, 60_000]},
            {"ports": port, "unit_ids": [5, 6], "map": "sdm630", "profile": "wind", "peak_w": 2_000_000,
             "initial_kwh": [4_000_000, 9_000_000]},  # GWh counters: float32 steps of 0.5 kWh
        ]}, clock=clock)
        await sim.start()
        try:
            checked = 0
            for step in (0, 907, 3_600, 86_400 + 13):
                clock.advance(step)
                for unit in range(1, 7):
                    dev = device(port, unit, "sdm630")
                    got = await dev.measure()
                    dev.pool.close()
                    truth = sim.meter(port, unit).values_at(clock.now())
                    imp = float32(truth.import_j / 3_600_000)
                    exp = float32(truth.export_j / 3_600_000)
                    assert got.import_wh == round(Fraction(imp) * 1000)
                    assert got.export_wh == round(Fraction(exp) * 1000)
                    assert got.power_w == truth.power_w
                    # the decoded counter is within one float32 step of the true energy
                    _, e = math.frexp(exp)
                    assert abs(got.export_wh - truth.export_wh) <= Fraction(2) ** (e - 24) * 1000 + 1
                    checked += 1
            assert checked == 24
        finally:
            await sim.stop()

    run(body())


@pytest.mark.parametrize("base,wh_sf,extra", [(40000, 0, []), (50000, 1, [[120, 26], [160, 48]]), (0, -1, [[11, 13]])])
def test_sunspec_203_map_walks_model_chain_and_applies_scale_factors(base, wh_sf, extra):
    async def body():
        port = free_port()
        clock = ManualClock(T_START)
        sim = Simulator({"simulator": {"seed": 5}, "meters": [
            {"ports": port, "unit_ids": [1, 3], "map": "sunspec", "profile": "wind", "peak_w": 150_000,
             "initial_kwh": [100, 90_000], "sunspec_base": base, "wh_sf": wh_sf, "extra_models": extra},
        ]}, clock=clock)
        await sim.start()
        try:
            for step in (0, 1_234, 7_200):
                clock.advance(step)
                for unit in (1, 2, 3):
                    dev = device(port, unit, "sunspec")
                    got = await dev.measure()
                    dev.pool.close()
                    layout = dev.layout
                    assert layout.base == base and layout.model_id == 203
                    assert layout.address == base + 2 + 68 + sum(2 + length for _, length in extra)
                    truth = sim.meter(port, unit).values_at(clock.now())
                    scale = Fraction(10) ** wh_sf
                    assert got.import_wh == round(math.floor(truth.import_wh / scale) * scale)
                    assert got.export_wh == round(math.floor(truth.export_wh / scale) * scale)
                    assert got.power_w == round(truth.power_w / 10) * 10  # W_SF = 1 above 32.767 kW
                    assert got.export_modulus_wh == round((1 << 32) * scale)
        finally:
            await sim.stop()

    run(body())


def test_sunspec_discovery_without_marker_is_a_decode_error():
    async def body():
        port = free_port()
        sim = Simulator({"meters": [{"ports": port, "unit_ids": 1, "map": "sdm630"}]}, clock=ManualClock(T_START))
        await sim.start()
        try:
            dev = device(port, 1, "sunspec")
            with pytest.raises(DecodeError) as err:
                await dev.measure()
            assert err.value.reason == "no_sunspec_marker"
            dev.pool.close()
        finally:
            await sim.stop()

    run(body())


CUSTOM_MAP = """
name = "plant-meter-x"
max_registers_per_read = 16

[import_energy]
address = 0x0100
function = "holding"
type = "uint32"
word_order = "little"
scale = "0.01"
unit = "kWh"

[export_energy]
address = 0x0102
function = "holding"
type = "int64"
word_order = "big"
scale = 1
unit = "Wh"

[power]
address = 0x0200
function = "input"
type = "float32"
word_order = "little"
scale = 1
unit = "kW"
"""


def test_custom_toml_map_decodes(tmp_path):
    (tmp_path / "plant.toml").write_text(CUSTOM_MAP)

    async def body():
        port = free_port()
        # Registers written here by hand, not by the simulator, to check the map independently.
        imp_raw = 123_456_789  # 1,234,567.89 kWh as uint32 hundredths, low word first
        exp_raw = 9_876_543_210_123  # Wh, int64 big-endian
        power = struct.pack(">f", -12.5)  # kW, float32, low word first
        holding = [imp_raw & 0xFFFF, imp_raw >> 16] + [(exp_raw >> s) & 0xFFFF for s in (48, 32, 16, 0)]
        inputs = [int.from_bytes(power[2:], "big"), int.from_bytes(power[:2], "big")]
        dev_ctx = SimDevice(id=7, simdata=[SimData(0x0100, values=holding, datatype=SimType.REGISTERS),
                                           SimData(0x0200, values=inputs, datatype=SimType.REGISTERS)])
        server = ModbusTcpServer(dev_ctx, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        try:
            dev = device(port, 7, "plant.toml", base_dir=tmp_path)
            assert [(b.function, b.address, b.count) for b in dev.map.layout.blocks] == [(3, 0x100, 6), (4, 0x200, 2)]
            got = await dev.measure()
            assert got.import_wh == 1_234_567_890
            assert got.export_wh == exp_raw
            assert got.power_w == -12_500
            assert got.import_modulus_wh == (1 << 32) * 10
            dev.pool.close()
        finally:
            await server.shutdown()

    run(body())


def test_simulator_renders_a_custom_map_the_gateway_reads_back(tmp_path):
    (tmp_path / "plant.toml").write_text(CUSTOM_MAP)

    async def body():
        port = free_port()
        clock = ManualClock(T_START)
        sim = Simulator({"meters": [{"ports": port, "unit_ids": 2, "map": "plant.toml", "profile": "household",
                                     "peak_w": 7_000, "initial_kwh": 5_000}]}, clock=clock, base_dir=tmp_path)
        await sim.start()
        try:
            clock.advance(4_000)
            dev = device(port, 2, "plant.toml", base_dir=tmp_path)
            got = await dev.measure()
            dev.pool.close()
            truth = sim.meter(port, 2).values_at(clock.now())
            assert got.import_wh == math.floor(truth.import_wh / 10) * 10  # hundredths of kWh
            assert got.export_wh == math.floor(truth.export_wh)
        finally:
            await sim.stop()

    run(body())


def test_rtu_framing_over_tcp_reads_the_same_values():
    async def body():
        port = free_port()
        clock = ManualClock(T_START)
        sim = Simulator({"simulator": {"framer": "rtu"}, "meters": [
            {"ports": port, "unit_ids": 9, "map": "sdm630", "profile": "household", "initial_kwh": 42}]}, clock=clock)
        await sim.start()
        try:
            dev = device(port, 9, "sdm630", kind="rtu+tcp")
            got = await dev.measure()
            dev.pool.close()
            truth = sim.meter(port, 9).values_at(clock.now())
            assert got.import_wh == round(Fraction(float32(truth.import_j / 3_600_000)) * 1000)
        finally:
            await sim.stop()

    run(body())


@pytest.mark.parametrize("old,new,message", [
    ('type = "uint32"', 'type = "uint24"', "unknown register data type"),
    ('function = "holding"\ntype = "uint32"', 'function = "coil"\ntype = "uint32"', "function must be"),
    ('unit = "kWh"', 'unit = "J"', "unit must be one of"),
    ('scale = "0.01"', 'scale = "0.01"\nbogus = 1', "unknown keys"),
])
def test_custom_map_errors_name_the_field(old, new, message):
    import tomllib

    assert old in CUSTOM_MAP
    with pytest.raises(ConfigError, match=message) as err:
        parse_custom_map(tomllib.loads(CUSTOM_MAP.replace(old, new, 1)), "plant.toml")
    assert "plant.toml [import_energy]" in str(err.value)


def test_unreachable_endpoint_fails_fast_instead_of_timing_out_per_meter():
    async def body():
        pool = EndpointPool(parse_endpoint(f"tcp://127.0.0.1:{free_port()}"), connections=1, timeout_s=1.0)
        with pytest.raises(DeviceError) as first:
            await pool.read(1, 4, 0, 2)
        assert first.value.kind == "connection"

        async def must_not_connect():
            raise AssertionError("a read tried to connect to an endpoint known to be unreachable")

        pool.links[0]._connect = must_not_connect
        for unit in range(2, 50):
            with pytest.raises(DeviceError, match="unreachable"):
                await pool.read(unit, 4, 0, 2)
        pool.close()

    run(body())
