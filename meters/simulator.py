"""``gridledger meter simulate --config sim.toml``: Modbus servers full of simulated meters.

Meters answer on Modbus TCP ports or on serial lines (RTU). On TCP: one pymodbus server
per port, one device per Modbus unit id (1..247 per port; use several ports for more
meters: 1,000 meters are 5 ports x 200 unit ids). On a serial line: one bus per device,
its meters at unit ids 1..247, answering RTU frames exactly as on TCP (same register
maps, same faults); point it at one end of a null-modem link (two USB RS-485 adapters
wired A-A, B-B, or ``socat pty,raw,echo=0,link=/tmp/ttyMETERS pty,raw,echo=0,link=/tmp/ttyGATEWAY``)
and the gateway at the other. Like a real RTU device a simulated bus stays silent for
unit ids it does not hold (another device may own them), drops frames that fail their
CRC, and starts a new frame after a silence on the line (3.5 characters, at least 20 ms),
so one damaged request does not garble the next.

Each device is a :class:`~meters.simmeter.SimulatedMeter` rendered on every read, so
values follow the simulated clock; everything is deterministic from the seed, the
port number or device path, and that clock. ::

    [simulator]
    host = "127.0.0.1"
    seed = 7
    speed = 1.0                  # simulated seconds per wall-clock second
    start_time = 0               # simulated unix time at start (0: now)
    step_s = 1                   # integration step of the counters
    framer = "socket"            # TCP ports: "socket" (Modbus TCP) or "rtu" (RTU frames over TCP)
    control_listen = "127.0.0.1:9480"   # HTTP: GET /meters, POST/DELETE /faults ("" disables)

    [[meters]]
    ports = [15020, 15021]       # inclusive range
    unit_ids = [1, 200]          # inclusive range
    map = "sdm630"               # sdm630, sunspec, or a custom .toml map
    profile = "solar"            # solar, wind, household, constant
    peak_w = 8000                # peak (solar, household), rating (wind), power (constant, signed)
    initial_kwh = [500, 20000]   # each counter starts at a seeded value in this range
    sunspec_base = 40000         # sunspec: marker address (0, 40000 or 50000)
    wh_sf = 0                    # sunspec: TotWh_SF
    extra_models = [[120, 26]]   # sunspec: filler models before 203, [id, length]

    [[meters]]                   # a serial bus instead of ports (the gateway's rtu:// syntax)
    endpoint = "rtu:///dev/ttyUSB1?baudrate=9600&parity=N&stopbits=1"
    unit_ids = [1, 5]
    map = "sunspec"

    [[fault]]
    port = 15020                 # or device = "/dev/ttyUSB1" for a meter on a serial bus
    unit_id = 3
    kind = "no_answer"           # no_answer, garbage, nan, reset
    at_s = 60                    # simulated seconds after the start
    duration_s = 30              # (not for reset)

Several ``[[meters]]`` groups may share a bus (e.g. SDM630 and SunSpec meters on one
RS-485 line); they must then give the same line settings.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

from aiohttp import web
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meters.config import Endpoint, parse_endpoint
from meters.errors import ConfigError
from meters.maps import CustomMap, load_map
from meters.modbus import TermiosError, frame_gap_s, quiet_pymodbus, serial_problem
from meters.profiles import make_profile, unit_noise
from meters.simmeter import FAULTS, SimulatedMeter

__all__ = ["ManualClock", "Simulator", "WallClock", "load_sim_config", "main"]


class WallClock:
    """Simulated time = ``start_time`` + wall time since start * ``speed``."""

    def __init__(self, speed: float = 1.0, start_time: float | None = None) -> None:
        self._wall0 = time.time()
        self._sim0 = self._wall0 if not start_time else float(start_time)
        self.speed = speed

    def now(self) -> float:
        return self._sim0 + (time.time() - self._wall0) * self.speed


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, t: float) -> None:
        self.t = float(t)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _range(doc: dict, key: str, where: str, low: int, high: int) -> range:
    value = doc.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(type(x) is int for x in value)
            and low <= value[0] <= value[1] <= high):
        raise ConfigError(f"{where}: {key} must be an inclusive range [first, last] within {low}..{high}")
    return range(value[0], value[1] + 1)


def load_sim_config(path: str | Path) -> dict:
    path = Path(path).resolve()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"simulator configuration {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"simulator configuration {path} cannot be read: {exc}") from None
    doc["_base_dir"] = path.parent
    return doc


_SIM_KEYS = {"host", "seed", "speed", "start_time", "step_s", "control_listen", "framer"}
_GROUP_KEYS = {"ports", "endpoint", "unit_ids", "map", "profile", "peak_w", "initial_kwh", "sunspec_base", "wh_sf",
               "extra_models"}
_FAULT_KEYS = {"port", "device", "unit_id", "kind", "at_s", "duration_s"}

Bus = int | str  # a TCP port number or a serial device path

# A simulated RTU device starts a new frame after this much silence at least: the
# standard 3.5 characters are under 2 ms at high baud rates, shorter than the
# scheduling jitter of a pseudo-terminal or a USB adapter.
RESYNC_MIN_S = 0.02


def _bus_number(bus: Bus) -> int:
    """The bus's part of each meter's seed: the port, or a stable number for a device path."""
    return bus if isinstance(bus, int) else zlib.crc32(bus.encode())


def _meter_order(item: tuple[tuple[Bus, int], SimulatedMeter]) -> tuple:
    (bus, unit), _ = item
    return (0, bus, "", unit) if isinstance(bus, int) else (1, 0, bus, unit)


async def _no_such_unit(function_code, start_address, address, count, registers, set_values):
    raise NoSuchIdException("no simulated meter at this unit id")


class _SerialBus(ModbusSerialServer):
    """Simulated meters on one serial line; like a real RTU device, frames requests by silence.

    pymodbus keeps unparsed bytes (the rest of a damaged frame) and would read the next
    request behind them; a device on a line discards a partial frame once the line has
    been quiet for a frame gap, so here a chunk arriving after ``gap_s`` of silence
    starts a fresh frame.
    """

    def __init__(self, devices: list[SimDevice], *, gap_s: float, **kwargs: Any) -> None:
        super().__init__(devices, **kwargs)
        self.gap_s = gap_s

    def callback_new_connection(self):
        handler = super().callback_new_connection()
        receive = handler.data_received
        last = 0.0

        def data_received(data: bytes) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last > self.gap_s:
                handler.recv_buffer = b""
            last = now
            receive(data)

        handler.data_received = data_received
        return handler


def _check_keys(doc: dict, where: str) -> None:
    for key, allowed, what in (("simulator", _SIM_KEYS, "[simulator]"), ("meters", _GROUP_KEYS, "[[meters]]"),
                               ("fault", _FAULT_KEYS, "[[fault]]")):
        tables = doc.get(key, {} if key == "simulator" else [])
        for table in tables if isinstance(tables, list) else [tables]:
            unknown = set(table) - allowed if isinstance(table, dict) else {"(not a table)"}
            if unknown:
                raise ConfigError(f"{where}: {what} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    unknown = set(doc) - {"simulator", "meters", "fault", "_base_dir"}
    if unknown:
        raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")


class Simulator:
    """All simulated meters and their servers; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, doc: dict, *, clock=None, base_dir: Path | None = None) -> None:
        _check_keys(doc, "simulator configuration")
        sim = doc.get("simulator", {})
        self.host = sim.get("host", "127.0.0.1")
        self.seed = int(sim.get("seed", 0))
        self.clock = clock or WallClock(float(sim.get("speed", 1.0)), sim.get("start_time") or None)
        self.control_listen = sim.get("control_listen", "")
        framer = sim.get("framer", "socket")
        if framer not in ("socket", "rtu"):
            raise ConfigError(f"simulator: framer must be \"socket\" or \"rtu\", not {framer!r}")
        self.framer = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        step_s = int(sim.get("step_s", 1))
        base_dir = base_dir or doc.get("_base_dir") or Path(".")
        start = int(self.clock.now())
        self.meters: dict[tuple[Bus, int], SimulatedMeter] = {}
        self.serial_lines: dict[str, Endpoint] = {}
        groups = doc.get("meters", [])
        if not groups:
            raise ConfigError("simulator: no [[meters]] groups configured")
        for g_index, group in enumerate(groups):
            where = f"simulator [[meters]] #{g_index + 1}"
            map_spec = group.get("map", "sdm630")
            map_kind: str | CustomMap = map_spec
            if map_spec not in ("sdm630", "sunspec"):
                loaded = load_map(map_spec, base_dir)
                if not isinstance(loaded, CustomMap):
                    raise ConfigError(f"{where}: map must be sdm630, sunspec or a .toml map")
                map_kind = loaded
            low, high = self._initial_range(group, where)
            for port in self._buses(group, where):
                for unit in _range(group, "unit_ids", where, 1, 247):
                    if (port, unit) in self.meters:
                        raise ConfigError(f"{where}: {self._where(port)} unit {unit} is configured twice")
                    mseed = (self.seed * 1_000_003 + _bus_number(port)) * 1_009 + unit
                    span = high - low
                    initial = [low + int(unit_noise(mseed, 20 + i, 0) * (span + 1)) if span else low for i in range(2)]
                    self.meters[(port, unit)] = SimulatedMeter(
                        port=port,
                        unit_id=unit,
                        map_kind=map_kind,
                        profile=make_profile(group.get("profile", "household"), group.get("peak_w", 5000), mseed),
                        initial_import_wh=initial[0],
                        initial_export_wh=initial[1],
                        start_t=start,
                        step_s=step_s,
                        seed=mseed,
                        sunspec_base=int(group.get("sunspec_base", 40000)),
                        wh_sf=int(group.get("wh_sf", 0)),
                        extra_models=tuple(tuple(m) for m in group.get("extra_models", ())),
                    )
        for fault in doc.get("fault", []):
            meter = self.meter(fault["device"] if "device" in fault else fault.get("port"), fault.get("unit_id"))
            meter.inject(fault.get("kind"), start + float(fault.get("at_s", 0)), float(fault.get("duration_s", 0)))
        self.servers: list[ModbusTcpServer | ModbusSerialServer] = []
        self.ports: list[int] = sorted({port for port, _ in self.meters if isinstance(port, int)})
        self.devices: list[str] = sorted(self.serial_lines)
        self._runner: web.AppRunner | None = None
        self.control_port: int | None = None

    def _buses(self, group: dict, where: str) -> list[Bus]:
        """The group's TCP ports, or its one serial device."""
        if ("ports" in group) == ("endpoint" in group):
            raise ConfigError(f"{where}: give either ports = [first, last] (Modbus TCP) or "
                              f"endpoint = \"rtu:///dev/ttyUSB1?baudrate=9600\" (a serial bus), not both")
        if "ports" in group:
            return list(_range(group, "ports", where, 1, 65535))
        try:
            endpoint = parse_endpoint(group["endpoint"])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if endpoint.kind != "rtu":
            raise ConfigError(f"{where}: endpoint names a serial bus (rtu://DEVICE?baudrate=...); serve Modbus "
                              f"TCP with ports = [first, last] and [simulator] framer")
        known = self.serial_lines.setdefault(endpoint.device, endpoint)
        if known != endpoint:
            raise ConfigError(f"{where}: {endpoint} and {known} are one bus; give every group on "
                              f"{endpoint.device} the same line settings")
        return [endpoint.device]

    @staticmethod
    def _where(bus: Bus) -> str:
        return f"port {bus}" if isinstance(bus, int) else f"serial device {bus}"

    @staticmethod
    def _initial_range(group: dict, where: str) -> tuple[int, int]:
        value = group.get("initial_kwh", [0, 0])
        if isinstance(value, int):
            value = [value, value]
        if not (isinstance(value, list) and len(value) == 2 and all(type(x) is int and x >= 0 for x in value)
                and value[0] <= value[1]):
            raise ConfigError(f"{where}: initial_kwh must be [low, high] in whole kWh")
        return value[0] * 1000, value[1] * 1000

    def meter(self, bus: Any, unit_id: Any) -> SimulatedMeter:
        """The meter at ``unit_id`` of ``bus``: a TCP port number or a serial device path."""
        try:
            return self.meters[(bus, unit_id)]
        except (KeyError, TypeError):
            raise ConfigError(f"no simulated meter at port or device {bus!r} unit {unit_id!r}") from None

    def inject(self, bus: Bus, unit_id: int, kind: str, duration_s: float = 0.0) -> None:
        """Start a fault now (simulated time) in the meter at ``unit_id`` of ``bus``."""
        self.meter(bus, unit_id).inject(kind, self.clock.now(), duration_s)

    async def _action(self, meter: SimulatedMeter, function_code: int, start_address: int, address: int,
                      count: int, registers: list[int], set_values) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS  # a meter's measurement registers are read-only
        now = self.clock.now()
        if "no_answer" in meter.active_faults(now):
            raise NoSuchIdException(f"simulated silence of {meter.name}")  # the server then stays silent
        if not meter.function_allowed(function_code):
            return ExcCodes.ILLEGAL_FUNCTION
        return meter.render(now, registers, start_address, address, count)

    def _sim_devices(self, bus: Bus) -> list[SimDevice]:
        return [
            SimDevice(
                id=unit,
                simdata=[SimData(meter.base, values=list(meter.static), datatype=DataType.REGISTERS)],
                action=functools.partial(self._action, meter),
            )
            for (b, unit), meter in sorted(self.meters.items(), key=_meter_order)
            if b == bus
        ]

    async def start(self) -> None:
        """Serve every port and serial bus (ConfigError if one cannot be opened), then the control API."""
        for port in self.ports:
            server = ModbusTcpServer(self._sim_devices(port), address=(self.host, port), framer=self.framer,
                                     ignore_missing_devices=True)
            await self._serve(server, f"{self.host}:{port}", "the port is in use or the address is not local")
        for device, line in self.serial_lines.items():
            # Unit 0 stands for every unit id the bus does not hold: it stays silent.
            silent = SimDevice(id=0, simdata=[SimData(0, count=65536, datatype=DataType.REGISTERS)],
                               action=_no_such_unit)
            server = _SerialBus(self._sim_devices(device) + [silent], gap_s=max(frame_gap_s(line), RESYNC_MIN_S),
                                port=device, framer=FramerType.RTU, baudrate=line.baudrate, bytesize=line.bytesize,
                                parity=line.parity, stopbits=line.stopbits, ignore_missing_devices=True)
            await self._serve(server, str(line), serial_problem(device))
        if self.control_listen:
            host, _, port = self.control_listen.rpartition(":")
            self._runner = web.AppRunner(self._control_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, host or "127.0.0.1", int(port))
            await site.start()
            self.control_port = self._runner.addresses[0][1]

    async def _serve(self, server: ModbusTcpServer | ModbusSerialServer, where: str, problem: str) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError:  # pymodbus: "Could not start listen"
            await self.stop()
            raise ConfigError(f"simulator: cannot serve meters on {where}: {problem}") from None
        except TermiosError as exc:  # e.g. a pseudo-terminal refuses parity
            await self.stop()
            raise ConfigError(f"simulator: {where}: the serial device refuses these line settings: {exc}") from None
        self.servers.append(server)

    async def stop(self) -> None:
        for server in self.servers:
            await server.shutdown()
        self.servers.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    def _control_app(self) -> web.Application:
        async def meters(request: web.Request) -> web.Response:
            now = self.clock.now()
            out = []
            for (bus, unit), m in sorted(self.meters.items(), key=_meter_order):
                v = m.values_at(now)
                out.append({"port" if isinstance(bus, int) else "device": bus, "unit_id": unit, "t": v.t,
                            "import_wh": int(v.import_wh),
                            "export_wh": int(v.export_wh), "power_w": v.power_w, "faults": sorted(m.active_faults(now))})
            return web.json_response(out)

        async def add_fault(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                bus = body["device"] if "device" in body else body["port"]
                self.inject(bus, body["unit_id"], body["kind"], float(body.get("duration_s", 0)))
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                return web.json_response({"error": {"code": "bad_fault", "message": f"{exc}; send "
                                          f"{{port or device, unit_id, kind: {'|'.join(FAULTS)}, duration_s}}"}},
                                         status=400)
            return web.json_response({"ok": True})

        async def clear_faults(request: web.Request) -> web.Response:
            for m in self.meters.values():
                m.clear_faults()
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/meters", meters)
        app.router.add_post("/faults", add_fault)
        app.router.add_delete("/faults", clear_faults)
        return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridledger meter simulate",
        description="Serve simulated smart meters (Eastron SDM630, SunSpec 203, custom maps) over Modbus TCP "
        "and serial lines (RTU), "
        "with solar, wind and household profiles and faults on demand, deterministic from a seed.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the simulator's TOML configuration")
    return parser


async def _serve(doc: dict) -> int:
    sim = Simulator(doc)
    await sim.start()
    where = ([f"{sim.host} ports {sim.ports[0]}..{sim.ports[-1]}"] if sim.ports else []) \
        + [f"serial {device}" for device in sim.devices]
    print(f"simulating {len(sim.meters)} meters on {', '.join(where)}"
          + (f"; control on port {sim.control_port}" if sim.control_port else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 stopped cleanly, 2 a configuration error."""
    args = build_parser().parse_args(argv)
    quiet_pymodbus()
    try:
        doc = load_sim_config(args.config)
        return asyncio.run(_serve(doc))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
