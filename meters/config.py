"""The gateway's configuration file (TOML) and the meters' keys.

::

    [gateway]
    data_dir = "var/gateway"            # the durable queue lives here
    status_listen = "127.0.0.1:9470"    # /healthz /status /metrics ("" to disable)
    poll_interval_s = 15
    read_timeout_s = 1.0                # per Modbus request
    read_retries = 2                    # within one poll, with back-off
    retry_backoff_s = 0.2               # first retry delay; doubles
    device_backoff_max_s = 300          # a silent device is polled at most this rarely
    down_after = 3                      # failed polls before a device shows "down"
    connections_per_endpoint = 1        # Modbus TCP connections per host:port
    rated_tolerance_pct = 120           # readings above rated power * time * this are refused
    estimate_gap_s = 0                  # sampling gap above which energy is ESTIMATED (0: 2 polls)
    counter_update_s = 1.0              # how often devices refresh their counter registers

    [chain]
    node_url = "http://127.0.0.1:8700"
    shard = "ch/zurich/oerlikon"        # the chain id readings are signed for
    genesis_time = 1767225600           # unix seconds: period 0 starts here
    period_seconds = 900                # elementary period
    batch_max = 96                      # periods per transaction
    gas_limit = 1000000
    expiry_blocks = 0                   # transactions expire this many blocks ahead (0: never)
    wait_commit_ms = 2000
    park_s = 300                        # retry readings the node refused after this long
    max_concurrent_submits = 32

    [keys]
    password_env = "GRIDLEDGER_METER_PASSWORD"   # or password_file = "..."
    dev_plaintext = false               # accept plaintext development keys (never in production)

    [[meter]]
    name = "pv-roof-17"
    endpoint = "tcp://10.0.0.17:502"    # or rtu+tcp://host:port, or rtu:///dev/ttyUSB0?baudrate=9600
    unit_id = 1
    map = "sdm630"                      # sdm630, sunspec, or a .toml map file
    channel = "export"                  # which counter the readings report: import or export
    rated_power_w = 10000
    keystore = "keys/pv-roof-17.json"   # one key per meter (gridledger keys new --role meter)

    [[meter_group]]                     # many meters behind one endpoint
    name = "house-{unit}"               # {unit}, {port} and {host} are filled in
    endpoint = "tcp://10.0.0.40:502"
    unit_ids = [1, 32]                  # inclusive range
    map = "sunspec"
    channel = "import"
    rated_power_w = 25000
    keystore = "keys/{name}.json"

Relative paths are relative to the configuration file.

Endpoints:

- ``tcp://host:port``: Modbus TCP (port 502 by default).
- ``rtu+tcp://host:port``: RTU frames over TCP, as serial device servers forward them.
- ``rtu://DEVICE?baudrate=9600&parity=N&stopbits=1``: an RS-485 (or RS-232) line on a
  local serial port, e.g. ``rtu:///dev/ttyUSB0?baudrate=9600&parity=E`` or a stable
  ``/dev/serial/by-id/...`` path. Unit ids 1..247. RTU frames are 8 data bits; parity
  ``N``, ``E`` or ``O``; 1 or 2 stop bits (the Modbus serial line specification asks
  for 2 stop bits without parity, but many meters ship with ``8N1``: match the
  meters). Every meter on one device shares one bus, so they must all name the same
  line settings; the gateway then keeps one client per bus and sends one request at a
  time on it. ``read_timeout_s`` is the meter's turnaround: the time a maximum-size
  frame takes on the wire at the line's baud rate is added to it.
"""

from __future__ import annotations

import os
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ledger.crypto import PrivateKey
from ledger.keystore import KeystoreError, load_key
from meters.errors import ConfigError

__all__ = [
    "ChainSettings",
    "Endpoint",
    "GatewayConfig",
    "GatewaySettings",
    "KeySettings",
    "MeterSettings",
    "load_config",
    "load_meter_keys",
    "parse_endpoint",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where meters answer: Modbus TCP, RTU framing over TCP, or a serial line (RTU).

    For ``rtu`` the endpoint is one bus: its device path and line settings.
    """

    kind: str  # "tcp", "rtu+tcp" or "rtu"
    host: str = ""
    port: int = 0
    device: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __str__(self) -> str:
        if self.kind == "rtu":
            return f"rtu://{self.device}?baudrate={self.baudrate}&parity={self.parity}&stopbits={self.stopbits}"
        return f"{self.kind}://{self.host}:{self.port}"


_SERIAL_OPTIONS = {"baudrate", "parity", "stopbits", "bytesize"}


def parse_endpoint(text: str) -> Endpoint:
    """``tcp://host:port``, ``rtu+tcp://host:port`` or ``rtu://DEVICE?baudrate=...``; ConfigError if not."""
    if not isinstance(text, str):
        raise ConfigError(f"endpoint must be text like tcp://host:502, got {text!r}")
    parts = urlsplit(text)
    if parts.scheme in ("tcp", "rtu+tcp"):
        try:
            port = parts.port or 502
        except ValueError:
            raise ConfigError(f"endpoint {text!r}: the port must be a number 1..65535") from None
        if not parts.hostname:
            raise ConfigError(f"endpoint {text!r} has no host; write tcp://host:port")
        return Endpoint(parts.scheme, parts.hostname, port)
    if parts.scheme == "rtu":
        return _serial_endpoint(text, parts.netloc + parts.path, parts.query)
    raise ConfigError(f"endpoint {text!r}: the scheme must be tcp://, rtu+tcp:// or rtu://")


def _serial_endpoint(text: str, device: str, query_text: str) -> Endpoint:
    usage = "write rtu:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1"
    try:
        query = {k: v[-1] for k, v in parse_qs(query_text, strict_parsing=bool(query_text)).items()}
    except ValueError:
        raise ConfigError(f"endpoint {text!r}: cannot read the line settings; {usage}") from None
    unknown = set(query) - _SERIAL_OPTIONS
    if unknown:
        # A misspelt "baud=19200" must not silently leave the line at 9600.
        raise ConfigError(f"endpoint {text!r}: unknown line settings {sorted(unknown)}; allowed: {sorted(_SERIAL_OPTIONS)}")
    try:
        endpoint = Endpoint(
            "rtu",
            device=device,
            baudrate=int(query.get("baudrate", 9600)),
            parity=query.get("parity", "N").upper(),
            stopbits=int(query.get("stopbits", 1)),
            bytesize=int(query.get("bytesize", 8)),
        )
    except ValueError:
        raise ConfigError(f"endpoint {text!r}: baudrate, stopbits and bytesize are numbers; {usage}") from None
    if not endpoint.device.startswith("/"):
        raise ConfigError(f"endpoint {text!r}: the serial device must be an absolute path; {usage}")
    if not 50 <= endpoint.baudrate <= 4_000_000:
        raise ConfigError(f"endpoint {text!r}: baudrate {endpoint.baudrate} is outside 50..4000000")
    if endpoint.parity not in ("N", "E", "O"):
        raise ConfigError(f"endpoint {text!r}: parity must be N, E or O, not {endpoint.parity!r}")
    if endpoint.stopbits not in (1, 2):
        raise ConfigError(f"endpoint {text!r}: stopbits must be 1 or 2, not {endpoint.stopbits}")
    if endpoint.bytesize != 8:
        raise ConfigError(f"endpoint {text!r}: Modbus RTU frames are 8 data bits, not {endpoint.bytesize}")
    return endpoint


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    data_dir: Path
    status_listen: str = "127.0.0.1:9470"
    poll_interval_s: float = 15.0
    read_timeout_s: float = 1.0
    read_retries: int = 2
    retry_backoff_s: float = 0.2
    device_backoff_max_s: float = 300.0
    down_after: int = 3
    connections_per_endpoint: int = 1
    rated_tolerance_pct: int = 120
    estimate_gap_s: float = 0.0
    counter_update_s: float = 1.0

    @property
    def estimate_gap_ms(self) -> int:
        return int(1000 * (self.estimate_gap_s or 2 * self.poll_interval_s))


@dataclass(frozen=True, slots=True)
class ChainSettings:
    node_url: str
    shard: str
    genesis_time: int
    period_seconds: int
    batch_max: int = 96
    gas_limit: int = 1_000_000
    expiry_blocks: int = 0
    wait_commit_ms: int = 2000
    park_s: int = 300
    max_concurrent_submits: int = 32


@dataclass(frozen=True, slots=True)
class KeySettings:
    password_env: str = "GRIDLEDGER_METER_PASSWORD"
    password_file: Path | None = None
    dev_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class MeterSettings:
    name: str
    endpoint: Endpoint
    unit_id: int
    map: str
    channel: str
    rated_power_w: int
    keystore: Path
    password_env: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    gateway: GatewaySettings
    chain: ChainSettings
    keys: KeySettings
    meters: tuple[MeterSettings, ...]

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _section(doc: dict, name: str, where: str, allowed: set[str]) -> dict:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{where}: [{name}] has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return section


def _get(section: dict, key: str, kind: type | tuple, where: str, default: Any = ..., *, positive: bool = False) -> Any:
    if key not in section:
        if default is ...:
            raise ConfigError(f"{where}: {key} is required")
        return default
    value = section[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: {key} must be positive, got {value!r}")
    return value


def _path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


_METER_KEYS = {"name", "endpoint", "unit_id", "map", "channel", "rated_power_w", "keystore", "password_env", "password_file"}


def _meter(doc: dict, base: Path, where: str, fill: dict[str, Any] | None = None) -> MeterSettings:
    fill = fill or {}

    def text(key: str) -> str:
        value = _get(doc, key, str, where)
        try:
            return value.format(**fill) if fill else value
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"{where}: {key} {value!r} uses an unknown placeholder; use {{unit}}, {{port}}, {{host}}, {{name}}") from None

    name = text("name")
    fill = {**fill, "name": name}
    where = f"{where} ({name})"
    endpoint = parse_endpoint(doc.get("endpoint"))
    unit_id = fill.get("unit") if "unit" in fill else _get(doc, "unit_id", int, where)
    if not 0 <= unit_id <= 255 or (endpoint.kind != "tcp" and not 1 <= unit_id <= 247):
        raise ConfigError(f"{where}: unit_id {unit_id} is outside 1..247 (0..255 for Modbus TCP)")
    channel = _get(doc, "channel", str, where, "import")
    if channel not in ("import", "export"):
        raise ConfigError(f"{where}: channel must be \"import\" or \"export\", got {channel!r}")
    password_file = doc.get("password_file")
    return MeterSettings(
        name=name,
        endpoint=endpoint,
        unit_id=unit_id,
        map=_get(doc, "map", str, where),
        channel=channel,
        rated_power_w=_get(doc, "rated_power_w", int, where, positive=True),
        keystore=_path(base, text("keystore")),
        password_env=_get(doc, "password_env", str, where, None),
        password_file=_path(base, password_file) if isinstance(password_file, str) else None,
    )


def _meters(doc: dict, base: Path, where: str) -> tuple[MeterSettings, ...]:
    meters: list[MeterSettings] = []
    singles = doc.get("meter", [])
    groups = doc.get("meter_group", [])
    if not isinstance(singles, list) or not isinstance(groups, list):
        raise ConfigError(f"{where}: meters are [[meter]] and [[meter_group]] tables")
    for i, entry in enumerate(singles):
        if not isinstance(entry, dict) or set(entry) - _METER_KEYS:
            raise ConfigError(f"{where}: [[meter]] #{i + 1} must be a table with keys {sorted(_METER_KEYS)}")
        meters.append(_meter(entry, base, f"{where}: [[meter]] #{i + 1}"))
    for i, entry in enumerate(groups):
        label = f"{where}: [[meter_group]] #{i + 1}"
        allowed = (_METER_KEYS - {"unit_id"}) | {"unit_ids"}
        if not isinstance(entry, dict) or set(entry) - allowed:
            raise ConfigError(f"{label} must be a table with keys {sorted(allowed)}")
        ids = entry.get("unit_ids")
        if not (isinstance(ids, list) and len(ids) == 2 and all(type(x) is int for x in ids) and 0 <= ids[0] <= ids[1] <= 255):
            raise ConfigError(f"{label}: unit_ids must be an inclusive range [first, last] within 0..255")
        endpoint = parse_endpoint(entry.get("endpoint"))
        for unit in range(ids[0], ids[1] + 1):
            meters.append(_meter(entry, base, label, {"unit": unit, "port": endpoint.port, "host": endpoint.host}))
    if not meters:
        raise ConfigError(f"{where}: no meters configured; add [[meter]] or [[meter_group]] tables")
    names: set[str] = set()
    wires: set[tuple[Endpoint, int]] = set()
    for m in meters:
        if m.name in names:
            raise ConfigError(f"{where}: meter name {m.name!r} appears twice; names must be unique")
        if (m.endpoint, m.unit_id) in wires:
            raise ConfigError(f"{where}: two meters at {m.endpoint} unit {m.unit_id}")
        names.add(m.name)
        wires.add((m.endpoint, m.unit_id))
    _check_serial_buses(meters, where)
    return tuple(meters)


def _check_serial_buses(meters: list[MeterSettings], where: str) -> None:
    """Meters on one serial device share one bus: one set of line settings, unique unit ids."""
    buses: dict[str, Endpoint] = {}
    for m in meters:
        if m.endpoint.kind != "rtu":
            continue
        first = buses.setdefault(m.endpoint.device, m.endpoint)
        if first != m.endpoint:
            raise ConfigError(f"{where}: meter {m.name} names {m.endpoint} but another meter on the same bus names "
                              f"{first}; every meter on {m.endpoint.device} must use the same line settings")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check a gateway configuration; raises ConfigError naming the field."""
    path = Path(path).resolve()
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"configuration {path} cannot be read: {exc}") from None
    unknown = set(doc) - {"gateway", "chain", "keys", "meter", "meter_group"}
    if unknown:
        raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")
    base = path.parent
    g = _section(doc, "gateway", where, set(GatewaySettings.__slots__))
    num = (int, float)
    gateway = GatewaySettings(
        data_dir=_path(base, _get(g, "data_dir", str, f"{where} [gateway]")),
        status_listen=_get(g, "status_listen", str, where, "127.0.0.1:9470"),
        poll_interval_s=float(_get(g, "poll_interval_s", num, where, 15.0, positive=True)),
        read_timeout_s=float(_get(g, "read_timeout_s", num, where, 1.0, positive=True)),
        read_retries=_get(g, "read_retries", int, where, 2),
        retry_backoff_s=float(_get(g, "retry_backoff_s", num, where, 0.2, positive=True)),
        device_backoff_max_s=float(_get(g, "device_backoff_max_s", num, where, 300.0, positive=True)),
        down_after=_get(g, "down_after", int, where, 3, positive=True),
        connections_per_endpoint=_get(g, "connections_per_endpoint", int, where, 1, positive=True),
        rated_tolerance_pct=_get(g, "rated_tolerance_pct", int, where, 120, positive=True),
        estimate_gap_s=float(_get(g, "estimate_gap_s", num, where, 0.0)),
        counter_update_s=float(_get(g, "counter_update_s", num, where, 1.0)),
    )
    c = _section(doc, "chain", where, set(ChainSettings.__slots__))
    cw = f"{where} [chain]"
    chain = ChainSettings(
        node_url=_get(c, "node_url", str, cw),
        shard=_get(c, "shard", str, cw),
        genesis_time=_get(c, "genesis_time", int, cw),
        period_seconds=_get(c, "period_seconds", int, cw, positive=True),
        batch_max=_get(c, "batch_max", int, cw, 96, positive=True),
        gas_limit=_get(c, "gas_limit", int, cw, 1_000_000, positive=True),
        expiry_blocks=_get(c, "expiry_blocks", int, cw, 0),
        wait_commit_ms=_get(c, "wait_commit_ms", int, cw, 2000),
        park_s=_get(c, "park_s", int, cw, 300, positive=True),
        max_concurrent_submits=_get(c, "max_concurrent_submits", int, cw, 32, positive=True),
    )
    k = _section(doc, "keys", where, {"password_env", "password_file", "dev_plaintext"})
    password_file = _get(k, "password_file", str, where, "")
    keys = KeySettings(
        password_env=_get(k, "password_env", str, where, "GRIDLEDGER_METER_PASSWORD"),
        password_file=_path(base, password_file) if password_file else None,
        dev_plaintext=_get(k, "dev_plaintext", bool, where, False),
    )
    return GatewayConfig(path, gateway, chain, keys, _meters(doc, base, where))


def _password(meter: MeterSettings, keys: KeySettings) -> str | None:
    file = meter.password_file or keys.password_file
    if file is not None:
        try:
            return file.read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"meter {meter.name}: password file {file} cannot be read: {exc}") from None
    return os.environ.get(meter.password_env or keys.password_env)


def load_meter_keys(config: GatewayConfig, *, dev: bool = False, workers: int = 4) -> dict[str, PrivateKey]:
    """Open every meter's key file (in parallel: Argon2id is deliberately slow).

    Plaintext development keys are accepted only with ``dev`` or ``[keys] dev_plaintext``.
    """
    allow_plaintext = dev or config.keys.dev_plaintext

    def open_one(meter: MeterSettings) -> tuple[str, PrivateKey]:
        try:
            keyfile = load_key(meter.keystore, _password(meter, config.keys), allow_plaintext=allow_plaintext)
        except KeystoreError as exc:
            raise ConfigError(f"meter {meter.name}: {exc}") from None
        if keyfile.kind != "ed25519" or len(keyfile.secret) < 32:
            raise ConfigError(f"meter {meter.name}: keystore {meter.keystore} holds a {keyfile.kind} key; meters sign with ed25519")
        key = PrivateKey(keyfile.secret[:32])
        if key.public_key.raw != keyfile.public_key:
            raise ConfigError(f"meter {meter.name}: keystore {meter.keystore}: the public key does not match the sealed secret")
        return meter.name, key

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(open_one, config.meters))
