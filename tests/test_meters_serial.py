"""Modbus RTU on serial lines: simulator and gateway on two ends of a null-modem link.

The link is two pseudo-terminals whose master ends this test joins with a relay in the
event loop: the simulator opens one slave (``/dev/pts/N``) and the gateway the other,
each through pyserial exactly as it would open ``/dev/ttyUSB0``. The relay can damage
frames in transit (one byte flipped: the CRC must catch it) or cut the line.

The simulator runs on a hand-moved clock where values are checked, so the test knows
each meter's true counters at the instant of every read (as in test_meters_maps).
"""

import asyncio
import json
import math
import os
import pty
import random
import struct
import termios
import tty
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest

from ledger.log import get_logger
from meters.config import MeterSettings, load_config, load_meter_keys, parse_endpoint
from meters.errors import ConfigError, DecodeError, DeviceError
from meters.fakenode import FakeNode
from meters.gateway import QUEUE_FILE, Gateway
from meters.maps import load_map
from meters.modbus import EndpointPool, quiet_pymodbus
from meters.poller import Device, Poller
from meters.readings import Flag, Limits, PeriodClock
from meters.simulator import ManualClock, Simulator, load_sim_config
from meters.status import Metrics
from meters.testbed import audit_meter, gateway_toml, make_meter_keys

T_START = 1_767_225_600 + 11 * 3600  # 2026-01-01 12:00 local: the sun is up
EXAMPLES = Path(__file__).resolve().parent.parent / "meters" / "examples"
LINE = "baudrate=115200&stopbits=2"  # pseudo-terminals refuse parity bits; real lines take parity=E


def run(coro, timeout=60):
    quiet_pymodbus()
    return asyncio.run(asyncio.wait_for(coro, timeout))


class NullModem:
    """Two pseudo-terminals joined like two devices on a null-modem cable.

    ``meter_side`` and ``gateway_side`` are the slave paths the two programs open.
    ``damage`` is the probability that a chunk in transit gets one byte flipped (drawn
    from a seeded generator); ``silent`` drops everything, as a cut cable would.
    ``traffic`` records every chunk delivered: ("request" | "answer", bytes).
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.meter_master, self.meter_slave = pty.openpty()
        self.gateway_master, self.gateway_slave = pty.openpty()
        for fd in (self.meter_slave, self.gateway_slave):
            tty.setraw(fd)  # no echo, no newline translation, until pyserial sets the line up itself
        for fd in (self.meter_master, self.gateway_master):
            os.set_blocking(fd, False)
        self.meter_side = os.ttyname(self.meter_slave)
        self.gateway_side = os.ttyname(self.gateway_slave)
        self.damage = 0.0
        self.silent = False
        self.damaged = 0
        self.traffic: list[tuple[str, bytes]] = []
        self._rng = random.Random(seed)

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        loop.add_reader(self.gateway_master, self._relay, self.gateway_master, self.meter_master, "request")
        loop.add_reader(self.meter_master, self._relay, self.meter_master, self.gateway_master, "answer")
        return self

    async def __aexit__(self, *exc):
        loop = asyncio.get_running_loop()
        for fd in (self.meter_master, self.gateway_master):
            loop.remove_reader(fd)
        for fd in (self.meter_master, self.gateway_master, self.meter_slave, self.gateway_slave):
            os.close(fd)

    def _relay(self, source: int, target: int, direction: str) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, OSError):
            return
        if self.silent or not data:
            return
        if self.damage and self._rng.random() < self.damage:
            at = self._rng.randrange(len(data))
            data = data[:at] + bytes([data[at] ^ self._rng.randrange(1, 256)]) + data[at + 1:]
            self.damaged += 1
        self.traffic.append((direction, data))
        os.write(target, data)

    def exchanges(self) -> list[tuple[str, bytes]]:
        """The traffic with the chunks of one frame (consecutive, same direction) joined."""
        out: list[tuple[str, bytes]] = []
        for direction, data in self.traffic:
            if out and out[-1][0] == direction:
                out[-1] = (direction, out[-1][1] + data)
            else:
                out.append((direction, data))
        return out


def bus_groups(device: str) -> list[dict]:
    """SDM630 meters at units 1..3 and SunSpec meters at units 4..5, all on one bus."""
    bus = f"rtu://{device}?{LINE}"
    return [
        {"endpoint": bus, "unit_ids": [1, 3], "map": "sdm630", "profile": "solar", "peak_w": 9_000,
         "initial_kwh": [10, 60_000]},
        {"endpoint": bus, "unit_ids": [4, 5], "map": "sunspec", "profile": "wind", "peak_w": 150_000,
         "initial_kwh": [100, 90_000], "sunspec_base": 40000, "wh_sf": 1, "extra_models": [[120, 26]]},
    ]


def float32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def check_exact(measurement, truth, map_name: str) -> None:
    """The decoded counters and power are what the meter's registers hold, to the Wh."""
    if map_name == "sdm630":
        assert measurement.import_wh == round(Fraction(float32(truth.import_j / 3_600_000)) * 1000)
        assert measurement.export_wh == round(Fraction(float32(truth.export_j / 3_600_000)) * 1000)
        assert measurement.power_w == truth.power_w
    else:  # sunspec, TotWh_SF = 1, W_SF = 1
        assert measurement.import_wh == math.floor(truth.import_wh / 10) * 10
        assert measurement.export_wh == math.floor(truth.export_wh / 10) * 10
        assert measurement.power_w == round(truth.power_w / 10) * 10


def bus_devices(device: str, *, timeout_s: float) -> tuple[EndpointPool, list[Device]]:
    """The gateway's side: one pool for the bus (as the gateway builds it), one Device per unit."""
    endpoint = parse_endpoint(f"rtu://{device}?{LINE}")
    pool = EndpointPool(endpoint, connections=4, timeout_s=timeout_s)
    devices = []
    for unit in range(1, 6):
        map_name = "sdm630" if unit <= 3 else "sunspec"
        settings = MeterSettings(f"u{unit}", endpoint, unit, map_name, "export", 10**9, Path("unused"))
        devices.append(Device(settings, load_map(map_name, "."), pool, Limits(10**9)))
    return pool, devices


def test_sdm630_and_sunspec_maps_decode_simulator_values_exactly_over_rtu():
    async def body():
        async with NullModem() as modem:
            clock = ManualClock(T_START)
            sim = Simulator({"simulator": {"seed": 11}, "meters": bus_groups(modem.meter_side)}, clock=clock)
            await sim.start()
            # Integrating a day of a meter's profile on one read takes the simulator most of a second.
            pool, devices = bus_devices(modem.gateway_side, timeout_s=3.0)
            try:
                assert len(pool.links) == 1  # one client per bus, whatever connections_per_endpoint says
                for step in (0, 907, 3_600, 86_400 + 13):
                    clock.advance(step)
                    # All five read at once, as the poller does; the bus takes them one at a time.
                    got = await asyncio.gather(*(d.measure() for d in devices))
                    for dev, measurement in zip(devices, got, strict=True):
                        truth = sim.meter(modem.meter_side, dev.settings.unit_id).values_at(clock.now())
                        check_exact(measurement, truth, dev.map.name)
                assert devices[3].layout.address == 40000 + 2 + 68 + 28  # the SunSpec chain walked over RTU
                # Strictly one request at a time: requests and answers alternate, each answer from the unit asked.
                frames = modem.exchanges()
                assert [d for d, _ in frames] == ["request", "answer"] * (len(frames) // 2)
                assert all(q[0] == a[0] for (_, q), (_, a) in zip(frames[::2], frames[1::2], strict=True))
                assert len(frames) // 2 == 4 * 5 + 2 * 4  # one read per meter and step, SunSpec discovery
                pool.close()  # the gateway holds a serial line exclusively: release it for a quicker client
                pool, devices = bus_devices(modem.gateway_side, timeout_s=0.2)

                # A unit id nobody holds stays silent on a bus (another device may own it).
                with pytest.raises(DeviceError) as err:
                    await pool.read(9, 3, 40000, 2)
                assert err.value.kind == "timeout"
                # The simulator's faults work on a bus as on TCP.
                sim.inject(modem.meter_side, 2, "no_answer", 60)
                sim.inject(modem.meter_side, 4, "nan", 60)
                with pytest.raises(DeviceError, match="no answer"):
                    await devices[1].measure()
                with pytest.raises(DecodeError):
                    await devices[3].measure()
                truth = sim.meter(modem.meter_side, 1).values_at(clock.now())
                check_exact(await devices[0].measure(), truth, "sdm630")
            finally:
                pool.close()
                await sim.stop()

    run(body())


def test_damaged_frames_are_retried_and_never_decode_to_a_wrong_value():
    async def body():
        async with NullModem(seed=2024) as modem:
            clock = ManualClock(T_START)
            sim = Simulator({"simulator": {"seed": 5}, "meters": bus_groups(modem.meter_side)}, clock=clock)
            await sim.start()
            pool, devices = bus_devices(modem.gateway_side, timeout_s=0.2)
            accepted: list[tuple[int, str]] = []  # (cycle, meter) of every measurement the poller got
            recovered = 0
            errors_before: dict[str, int] = {}

            def checked(dev: Device):
                measure = dev.measure

                async def measure_and_check():
                    nonlocal recovered
                    measurement = await measure()
                    truth = sim.meter(modem.meter_side, dev.settings.unit_id).values_at(clock.now())
                    check_exact(measurement, truth, dev.map.name)  # never a wrong value
                    accepted.append((poller.cycles, dev.name))
                    recovered += dev.health.errors > errors_before[dev.name]
                    return measurement

                return measure_and_check

            for dev in devices:
                dev.measure = checked(dev)

            async def on_cycle(updates):
                pass

            metrics = Metrics()
            poller = Poller(devices, clock=PeriodClock(0, 900), interval_s=0.05, retries=4,
                            retry_backoff_s=0.01, backoff_max_s=0.05, down_after=100, states={},
                            on_cycle=on_cycle, metrics=metrics, log=get_logger(component="test-serial"))
            try:
                modem.damage = 0.15
                cycles = 10
                for _ in range(cycles):
                    errors_before.update({d.name: d.health.errors for d in devices})
                    await poller.cycle()
                    clock.advance(60)
                    await asyncio.sleep(0.06)  # past any device back-off
                assert modem.damaged >= 10
                status = [d.status() for d in devices]
                timeouts = metrics.value("device_errors_total", kind="timeout")
                assert sum(s["errors"] for s in status) >= 5 and timeouts >= 5
                assert any("no answer" in (s["last_error"] or "") for s in status)
                assert recovered >= 3  # reads that failed, were retried and then succeeded
                assert len(accepted) >= 0.8 * cycles * len(devices)
                assert metrics.value("readings_refused_total") == 0

                # The line is clean again: every meter answers and shows up.
                modem.damage = 0.0
                errors_before.update({d.name: d.health.errors for d in devices})
                await poller.cycle()
                assert all(d.health.state == "up" for d in devices)
                assert {name for c, name in accepted if c == cycles} == {d.name for d in devices}
            finally:
                pool.close()
                await sim.stop()

    run(body())


async def wait_for(predicate, timeout=15.0, step=0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def test_silent_line_shows_the_meters_down_and_loses_nothing(tmp_path):
    """The whole gateway, configured from its TOML file, polling a bus whose cable is cut."""

    async def body():
        async with NullModem() as modem:
            sim_doc = {"simulator": {"seed": 9}, "meters": [
                {"endpoint": f"rtu://{modem.meter_side}?{LINE}", "unit_ids": [1, 2], "map": "sdm630",
                 "profile": "constant", "peak_w": 3_600, "initial_kwh": [100, 900]}]}
            sim = Simulator(sim_doc)
            await sim.start()
            node = FakeNode("devnet", block_interval_s=0.05)
            await node.start()
            names = ["m1", "m2"]
            keys = make_meter_keys(tmp_path / "keys", names)
            meters = [{"name": n, "endpoint": f"rtu://{modem.gateway_side}?{LINE}", "unit_id": u, "map": "sdm630",
                       "channel": "import", "rated_power_w": 50_000, "keystore": f"keys/{n}.json"}
                      for u, n in enumerate(names, 1)]
            (tmp_path / "gateway.toml").write_text(gateway_toml(
                data_dir="data", node_url=node.url, meters=meters, poll_interval_s=0.2,
                gateway={"read_timeout_s": 0.2, "down_after": 2, "device_backoff_max_s": 0.5}))
            config = load_config(tmp_path / "gateway.toml")
            gateway = Gateway(config, load_meter_keys(config))
            await gateway.start()
            task = asyncio.create_task(gateway.run())

            def state(name):
                return next(d for d in gateway.snapshot()["device_status"] if d["meter"] == name)["state"]

            def chain(name):
                return node.readings_of(keys[name].public_key.raw)

            async def get(path):
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{gateway.status_port}{path}") as resp:
                        return await resp.text()

            try:
                assert len(gateway.pools) == 1 and len(next(iter(gateway.pools.values())).links) == 1
                await wait_for(lambda: all(len(chain(n)) >= 2 for n in names))
                modem.silent = True
                await wait_for(lambda: all(state(n) == "down" for n in names))
                status = json.loads(await get("/status"))
                assert status["devices_down"] == 2
                for d in status["device_status"]:
                    assert d["consecutive_failures"] >= 2 and "no answer" in d["last_error"]
                metrics = await get("/metrics")
                assert 'gridledger_meter_device_up{meter="m1"} 0' in metrics
                assert 'gridledger_meter_device_up{meter="m2"} 0' in metrics
                assert 'gridledger_meter_device_errors_total{kind="timeout"}' in metrics

                modem.silent = False
                await wait_for(lambda: all(state(n) == "up" for n in names))
                counts = {n: len(chain(n)) for n in names}
                await wait_for(lambda: all(len(chain(n)) > counts[n] + 1 for n in names))
            finally:
                gateway.request_stop()
                await task
                await gateway.close()
                await node.stop()
                await sim.stop()
            for n in names:
                on_chain, _, _ = audit_meter(tmp_path / "data" / QUEUE_FILE, node, keys[n].public_key.raw, n)
                assert any(f & Flag.ESTIMATED for _, f in on_chain.values())  # the silent stretch

    run(body())


def test_serial_line_settings_are_checked(tmp_path):
    meter = {"name": "m1", "endpoint": "rtu:///dev/ttyUSB0?baudrate=9600", "unit_id": 1, "map": "sdm630",
             "rated_power_w": 1000, "keystore": "keys/m1.json"}
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml(data_dir="d", node_url="http://x", meters=[
        meter, {**meter, "name": "m2", "unit_id": 2, "endpoint": "rtu:///dev/ttyUSB0?baudrate=19200"}]))
    with pytest.raises(ConfigError, match="same line settings"):
        load_config(path)
    for text, message in [("rtu:///dev/ttyUSB0?baud=19200", r"unknown line settings \['baud'\]"),
                          ("rtu:///dev/ttyUSB0?bytesize=7", "8 data bits"),
                          ("rtu:///dev/ttyUSB0?stopbits=3", "stopbits must be 1 or 2"),
                          ("rtu://ttyUSB0", "absolute path")]:
        with pytest.raises(ConfigError, match=message):
            parse_endpoint(text)
    for group, message in [
        ({"ports": 1502, "endpoint": "rtu:///dev/ttyUSB1"}, "not both"),
        ({"endpoint": "tcp://127.0.0.1:1502"}, "serial bus"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Simulator({"meters": [{"unit_ids": 1, **group}]}, clock=ManualClock(0))
    with pytest.raises(ConfigError, match="same line settings"):
        Simulator({"meters": [{"endpoint": "rtu:///dev/ttyUSB1?baudrate=9600", "unit_ids": 1},
                              {"endpoint": "rtu:///dev/ttyUSB1?baudrate=19200", "unit_ids": 2}]}, clock=ManualClock(0))


def test_a_missing_serial_device_is_a_clear_error_on_both_sides():
    missing = "/dev/gridledger-no-such-tty"

    async def body():
        sim = Simulator({"meters": [{"endpoint": f"rtu://{missing}", "unit_ids": 1}]}, clock=ManualClock(0))
        with pytest.raises(ConfigError, match="does not exist"):
            await sim.start()
        pool = EndpointPool(parse_endpoint(f"rtu://{missing}?baudrate=9600"), connections=1, timeout_s=0.2)
        with pytest.raises(DeviceError, match="does not exist") as err:
            await pool.read(1, 4, 0, 2)
        assert err.value.kind == "connection"
        pool.close()

    run(body())


def test_line_settings_a_device_refuses_are_reported_and_the_port_released():
    async def body():
        async with NullModem() as modem:
            try:
                import serial

                serial.serial_for_url(modem.gateway_side, parity="E", timeout=0).close()
                pytest.skip("this kernel's pseudo-terminals accept parity bits")
            except serial.SerialException:
                pass
            except termios.error:
                pass
            pool = EndpointPool(parse_endpoint(f"rtu://{modem.gateway_side}?parity=E"), connections=1, timeout_s=0.2)
            for _ in range(2):  # the second attempt is refused the same way: the port was not left locked
                with pytest.raises(DeviceError, match="refuses these line settings") as err:
                    await pool.links[0].read(1, 4, 0, 2)
                assert err.value.kind == "connection"
            pool.close()
            sim = Simulator({"meters": [{"endpoint": f"rtu://{modem.meter_side}?parity=E", "unit_ids": 1}]},
                            clock=ManualClock(0))
            with pytest.raises(ConfigError, match="refuses these line settings"):
                await sim.start()

    run(body())


def test_serial_examples_parse():
    sim = Simulator(load_sim_config(EXAMPLES / "sim-serial.toml"), clock=ManualClock(T_START))
    assert sim.devices == ["/tmp/ttyMETERS"] and len(sim.meters) == 4
    config = load_config(EXAMPLES / "meters-serial.toml")
    assert {m.endpoint.device for m in config.meters} == {"/tmp/ttyGATEWAY"}
    assert len(config.meters) == 4
