"""Node configuration: one TOML file, every field documented, every field overridable from
the environment (``GRIDLEDGER_<SECTION>_<FIELD>``, e.g. ``GRIDLEDGER_API_PORT=8081``),
so the same image runs on a laptop devnet and in a container.

    # node.toml
    role = "validator"                 # or "observer"
    data_dir = "data/operator-1"       # the LMDB store and consensus records live here
    genesis = "genesis.json"
    key_file = "keys/operator-1.json"  # validator: Ed25519 node key + BLS key
    password_env = "GRIDLEDGER_PASSWORD"
    dev = false                        # development mode: plaintext keys, plain HTTP peers

    [api]
    host = "127.0.0.1"
    port = 8080
    tls = false                        # serve HTTPS (the node's certificate unless cert_file/key_file)
    max_request_bytes = 1048576

    [peer]
    host = "127.0.0.1"
    port = 9080
    tls = true                         # mutually authenticated TLS between validators
    peers = { "<node key hex>" = "wss://10.0.0.2:9080/peer/v1" }

    [follow]                           # observers: validators' public APIs to follow
    urls = ["http://127.0.0.1:8080"]   # validators also catch up from these
    sync_threshold = 1000              # blocks behind beyond which a state snapshot is installed (0: never)

    [store]
    map_size = 4294967296              # LMDB map size in bytes; grow it when the store says so

    [mempool]
    max_txs = 100000
    max_backlog = 20000                # clients are told "busy" while this many wait (relays still fill max_txs)
    max_bytes = 268435456              # and at most this many bytes of transactions (busy above max_backlog/max_txs of it)
    max_per_sender = 1000

    [log]
    mode = "json"                      # or "console"
    level = "info"

A bad file raises :class:`ConfigError` naming the field and what is allowed.

**Several shards in one process.** A grid operator that validates at several levels (a
distribution area and its local communities) runs one process with one config per shard:

    gridledger node run --config ch-zurich.toml --config ch-zurich-oerlikon.toml

Each file is a complete node config as above, for one shard: its own ``data_dir`` (store
and consensus records), genesis, key file, API port and peer port. :func:`load_many`
loads them all, prefixing every error with the file it comes from, and refuses two
files sharing a data directory or a port. Environment overrides apply to every file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ledger.tx import MAX_TX_SIZE

__all__ = ["ApiConfig", "ConfigError", "load_many", "FollowConfig", "LogConfig", "MempoolConfig", "NodeConfig", "PeerConfig", "StoreConfig"]


class ConfigError(ValueError):
    """A node configuration is malformed; the message names the field."""


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Serve HTTPS. Without cert_file/key_file the node's own certificate is used (its
    # Ed25519 node key; clients pin it); an operator may give a CA-issued certificate.
    tls: bool = False
    cert_file: str = ""
    key_file: str = ""
    max_request_bytes: int = 1 << 20


@dataclass(frozen=True)
class PeerConfig:
    host: str = "127.0.0.1"
    port: int = 9080
    tls: bool = True
    peers: dict[str, str] = field(default_factory=dict)  # node key hex -> URL
    max_frame_bytes: int = 16 << 20
    queue_len: int = 4096


@dataclass(frozen=True)
class FollowConfig:
    urls: list[str] = field(default_factory=list)
    poll_ms: int = 200
    # More than this many blocks behind its sources, a node installs a certified state
    # snapshot instead of replaying the blocks (node/sync.py); 0: always replay (an
    # observer that must serve the whole history of blocks sets 0).
    sync_threshold: int = 1000


@dataclass(frozen=True)
class StoreConfig:
    map_size: int = 4 << 30


@dataclass(frozen=True)
class MempoolConfig:
    max_txs: int = 100_000
    max_backlog: int = 20_000
    max_bytes: int = 256 << 20
    max_per_sender: int = 1000
    nonce_window: int = 1000


@dataclass(frozen=True)
class LogConfig:
    mode: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class NodeConfig:
    role: str = "validator"
    data_dir: str = "data"
    genesis: str = "genesis.json"
    key_file: str = ""
    password_env: str = "GRIDLEDGER_PASSWORD"
    dev: bool = False
    name: str = ""
    api: ApiConfig = field(default_factory=ApiConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    follow: FollowConfig = field(default_factory=FollowConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def load(cls, path: str | Path, environ: dict[str, str] | None = None) -> NodeConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"node config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"node config {path} is not valid TOML: {exc}") from None
        config = cls.from_dict(raw)
        config = config.with_environment(os.environ if environ is None else environ)
        base = path.parent
        # Relative paths are relative to the config file, so a devnet directory is relocatable.
        def rel(p: str) -> str:
            return p if not p or os.path.isabs(p) else str(base / p)
        config = replace(config, data_dir=rel(config.data_dir), genesis=rel(config.genesis), key_file=rel(config.key_file))
        config.check()
        return config

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NodeConfig:
        return _build(cls, raw, "")

    def with_environment(self, environ: dict[str, str] | os._Environ) -> NodeConfig:
        """Apply ``GRIDLEDGER_<FIELD>`` and ``GRIDLEDGER_<SECTION>_<FIELD>`` overrides."""
        updates: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "__dataclass_fields__"):
                sub: dict[str, Any] = {}
                for g in fields(value):
                    env = f"GRIDLEDGER_{f.name}_{g.name}".upper()
                    if env in environ:
                        sub[g.name] = _parse_env(environ[env], getattr(value, g.name), env)
                if sub:
                    updates[f.name] = replace(value, **sub)
            else:
                env = f"GRIDLEDGER_{f.name}".upper()
                if env in environ and env != "GRIDLEDGER_PASSWORD":
                    updates[f.name] = _parse_env(environ[env], value, env)
        return replace(self, **updates) if updates else self

    def check(self) -> None:
        if self.role not in ("validator", "observer"):
            raise ConfigError(f"role must be 'validator' or 'observer', not {self.role!r}")
        if self.role == "validator" and not self.key_file:
            raise ConfigError("key_file is required for a validator (its node key and BLS key)")
        if self.role == "observer" and not self.follow.urls:
            raise ConfigError("follow.urls is required for an observer (the validators' APIs to follow)")
        for name, port in (("api.port", self.api.port), ("peer.port", self.peer.port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a TCP port (0-65535), not {port}")
        for key in self.peer.peers:
            try:
                if len(bytes.fromhex(key)) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"peer.peers: {key!r} is not a 32-byte node key in hex") from None
        if self.log.mode not in ("json", "console"):
            raise ConfigError(f"log.mode must be 'json' or 'console', not {self.log.mode!r}")
        if self.api.tls and bool(self.api.cert_file) != bool(self.api.key_file):
            raise ConfigError("api.cert_file and api.key_file go together (or neither: the node's own certificate)")
        if self.api.tls and not self.api.cert_file and not self.key_file:
            raise ConfigError("api.tls needs a certificate: set api.cert_file/api.key_file, or key_file for the node's own")
        if self.store.map_size < 1 << 20:
            raise ConfigError("store.map_size must be at least 1 MiB")
        for name in ("max_txs", "max_backlog", "max_per_sender", "nonce_window"):
            if getattr(self.mempool, name) < 1:
                raise ConfigError(f"mempool.{name} must be at least 1")
        if self.mempool.max_bytes < MAX_TX_SIZE:
            raise ConfigError(f"mempool.max_bytes must be at least {MAX_TX_SIZE} (one transaction of the largest size)")
        if self.mempool.max_backlog > self.mempool.max_txs:
            raise ConfigError(f"mempool.max_backlog ({self.mempool.max_backlog}) cannot exceed mempool.max_txs "
                              f"({self.mempool.max_txs})")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(prefix + u for u in sorted(unknown))}; known: {sorted(known)}")
    default = cls()
    values: dict[str, Any] = {}
    for name, value in raw.items():
        current = getattr(default, name)
        where = prefix + name
        if hasattr(current, "__dataclass_fields__"):
            values[name] = _build(type(current), value, where + ".")
        else:
            values[name] = _typed(value, current, where)
    return cls(**values)


def _typed(value: Any, current: Any, where: str) -> Any:
    expected = type(current)
    if expected is bool:
        if type(value) is not bool:
            raise ConfigError(f"{where} must be true or false")
    elif expected is int:
        if type(value) is not int:
            raise ConfigError(f"{where} must be an integer")
    elif expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be text")
    elif expected is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of text")
    elif expected is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where} must be a table of text values")
    return value


def _parse_env(text: str, current: Any, env: str) -> Any:
    expected = type(current)
    if expected is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{env} must be true or false")
    if expected is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{env} must be an integer") from None
    if expected is list:
        return [part for part in text.split(",") if part]
    if expected is dict:
        pairs = [p.split("=", 1) for p in text.split(",") if p]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"{env} must be key=value pairs separated by commas")
        return dict(pairs)
    return text


def load_many(paths: list[str | Path], environ: dict[str, str] | None = None) -> list[NodeConfig]:
    """Load one config per shard for a multi-shard process (see the module docstring).

    Raises :class:`ConfigError` whose message starts with the offending file; two configs
    sharing a data directory, an API port or a peer port are refused, naming both files.
    """
    if not paths:
        raise ConfigError("at least one node config is needed (--config node.toml)")
    configs: list[NodeConfig] = []
    for path in paths:
        try:
            configs.append(NodeConfig.load(path, environ))
        except ConfigError as exc:
            text = str(exc)
            raise ConfigError(text if str(path) in text else f"{path}: {text}") from None
    if len(configs) > 1:
        seen: dict[tuple[str, Any], str] = {}
        for path, config in zip(paths, configs, strict=True):
            claims = [("data_dir", os.path.realpath(config.data_dir))]
            if config.api.port:
                claims.append(("api.port", (config.api.host, config.api.port)))
            if config.role == "validator" and config.peer.port:
                claims.append(("peer.port", (config.peer.host, config.peer.port)))
            for claim in claims:
                if claim in seen:
                    value = claim[1] if claim[0] == "data_dir" else claim[1][1]
                    raise ConfigError(f"{path}: {claim[0]} {value} is already used by {seen[claim]}; "
                                      "each shard of a process needs its own")
                seen[claim] = str(path)
    return configs
