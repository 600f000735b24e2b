"""``gridledger relay --config relay.toml``: carry packets between neighbouring shards.

Any participant may run a relayer: it only moves certified packets (the destination
verifies every one with its light client of the source), so it needs no trust, only
an account that is a member of every destination shard (a delivery is a transaction
it signs). Several relayers may serve the same channels; each packet is handled once.

    # relay.toml
    key_file = "keys/relayer.json"      # an account key (gridledger keys new)
    password_env = "GRIDLEDGER_PASSWORD"
    dev = false                         # true: accept a plaintext development key
    poll_ms = 200                       # how often the shards' channel counters are read
    gas_limit = 10000000                # of each delivery transaction
    # channels = [["ch/zurich/oerlikon", "ch/zurich"], ...]
    #   the directed channels to serve; default: both directions of every
    #   parent-child pair among the shards below

    [http]                              # /healthz and /metrics (Prometheus)
    host = "127.0.0.1"
    port = 9400

    [shards."ch/zurich"]
    url = "http://10.0.0.2:8080"        # a node (validator or observer) of the shard, or
    # urls = ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]   several: the next when one is down
    genesis = "genesis/ch-zurich.json"  # its genesis: the validator set reads are verified with

Paths are relative to the config file. The process runs until SIGTERM or SIGINT and
survives node restarts (a round against an unreachable node fails, is counted, and is
retried, on the shard's next URL if it has several). It logs every delivery (JSON lines)
and serves ``/healthz`` (503 when its rounds stall) and ``/metrics``:
``gridledger_relay_packets_delivered_total{channel}``, ``..._deliveries_total``,
``..._duplicates_total`` (another relayer was first), ``..._refreshes_total`` (idle
bridges kept within their light-client horizon), ``..._failures_total{code}`` and
``..._rounds_total``. What it does each round: ``shards/relayer.py``.
Exit codes: 0 after a clean stop, 2 for a bad configuration or key file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RelayConfig", "RelayConfigError", "add_parser", "build_relayer", "serve_http"]


class RelayConfigError(ValueError):
    """A relay configuration is malformed; the message names the file and field."""


@dataclass(frozen=True)
class RelayConfig:
    key_file: str
    shards: dict[str, tuple[tuple[str, ...], str]]  # shard -> (node URLs, genesis path)
    channels: list[tuple[str, str]] = field(default_factory=list)
    password_env: str = "GRIDLEDGER_PASSWORD"
    dev: bool = False
    poll_ms: int = 200
    gas_limit: int = 10_000_000
    http_host: str = "127.0.0.1"
    http_port: int = 9400

    @classmethod
    def load(cls, path: str | Path) -> RelayConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise RelayConfigError(f"relay config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise RelayConfigError(f"relay config {path} is not valid TOML: {exc}") from None

        def fail(message: str) -> RelayConfigError:
            return RelayConfigError(f"{path}: {message}")

        known = {"key_file", "password_env", "dev", "poll_ms", "gas_limit", "channels", "http", "shards"}
        unknown = set(raw) - known
        if unknown:
            raise fail(f"unknown field(s) {sorted(unknown)}; known: {sorted(known)}")

        def rel(p: str) -> str:
            return p if os.path.isabs(p) else str(path.parent / p)

        key_file = raw.get("key_file")
        if not isinstance(key_file, str) or not key_file:
            raise fail("key_file is required: the relayer's account key (a member of every destination shard)")
        shards_raw = raw.get("shards")
        if not isinstance(shards_raw, dict) or len(shards_raw) < 2:
            raise fail('shards must list at least two shards: [shards."<id>"] url = "...", genesis = "..."')
        shards = {}
        for shard, entry in shards_raw.items():
            if not isinstance(entry, dict) or set(entry) - {"url", "urls", "genesis"}:
                raise fail(f'shards."{shard}" takes url (or urls) and genesis')
            if ("url" in entry) == ("urls" in entry):
                raise fail(f'shards."{shard}" needs url or urls (not both): the API of a node of the shard')
            urls, genesis = entry["urls"] if "urls" in entry else [entry["url"]], entry.get("genesis")
            if not isinstance(urls, list) or not urls or not all(
                isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls
            ):
                which = "urls must be a list of" if "urls" in entry else "url must be an"
                raise fail(f'shards."{shard}".{which} http(s):// URL of a node of the shard')
            if not isinstance(genesis, str) or not genesis:
                raise fail(f'shards."{shard}".genesis is required (its validator set verifies what the node serves)')
            shards[shard] = (tuple(urls), rel(genesis))
        channels = raw.get("channels", [])
        if not isinstance(channels, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(s, str) for s in c) for c in channels
        ):
            raise fail('channels must be a list of ["source", "destination"] pairs')
        for src, dst in channels:
            for shard in (src, dst):
                if shard not in shards:
                    raise fail(f"channels: {shard!r} is not among the shards listed")
        http = raw.get("http", {})
        if not isinstance(http, dict) or set(http) - {"host", "port"}:
            raise fail("http takes host and port")
        values: dict[str, Any] = {}
        for name, kind in (("password_env", str), ("dev", bool), ("poll_ms", int), ("gas_limit", int)):
            if name in raw:
                if type(raw[name]) is not kind:
                    raise fail(f"{name} must be {'text' if kind is str else 'true or false' if kind is bool else 'an integer'}")
                values[name] = raw[name]
        if values.get("poll_ms", 200) < 10:
            raise fail("poll_ms must be at least 10")
        port = http.get("port", 9400)
        if type(port) is not int or not 0 <= port <= 65535:
            raise fail("http.port must be a TCP port (0-65535)")
        host = http.get("host", "127.0.0.1")
        if not isinstance(host, str):
            raise fail("http.host must be text")
        return cls(rel(key_file), shards, [(s, d) for s, d in channels], http_host=host, http_port=port, **values)


def build_relayer(config: RelayConfig, *, password: str | None = None):
    """The :class:`shards.relayer.Relayer` a config describes (keys and genesis files loaded)."""
    from ledger.crypto import PrivateKey
    from ledger.genesis import Genesis, GenesisError
    from ledger.keystore import KeystoreError, load_key
    from shards.relayer import Channel, Relayer, ShardEndpoint, channels_between

    try:
        key_file = load_key(config.key_file, password if password is not None else os.environ.get(config.password_env),
                            allow_plaintext=config.dev)
    except KeystoreError as exc:
        raise RelayConfigError(str(exc)) from None
    key = PrivateKey(key_file.secret[:32])
    endpoints = {}
    for shard, (urls, genesis_path) in config.shards.items():
        try:
            genesis = Genesis.load(genesis_path)
        except GenesisError as exc:
            raise RelayConfigError(f"shard {shard}: {exc}") from None
        if genesis.chain_id != shard:
            raise RelayConfigError(f"shard {shard}: its genesis {genesis_path} is of {genesis.chain_id!r}")
        endpoints[shard] = ShardEndpoint(shard, urls, genesis.validators, genesis.protocol)
    channels = [Channel(s, d) for s, d in config.channels] or channels_between(list(endpoints))
    if not channels:
        raise RelayConfigError("no channel to serve: the shards listed include no parent-child pair")
    return Relayer(key, endpoints, channels, poll_s=config.poll_ms / 1000, gas_limit=config.gas_limit)


async def serve_http(relayer, host: str, port: int):
    """Serve ``/healthz`` and ``/metrics`` for ``relayer``; returns the aiohttp runner (and its port)."""
    import time

    from aiohttp import web

    from node.metrics import CONTENT_TYPE, Registry

    registry = Registry()
    rounds = registry.counter("gridledger_relay_rounds_total", "Polling rounds over every shard served.")
    packets = registry.counter("gridledger_relay_packets_delivered_total",
                               "Packets handled at their destination by this relayer's deliveries.", ("channel",))
    deliveries = registry.counter("gridledger_relay_deliveries_total", "Deliveries committed that handled packets.")
    duplicates = registry.counter("gridledger_relay_duplicates_total",
                                  "Deliveries another relayer had already made (refused as already delivered).")
    refreshes = registry.counter("gridledger_relay_refreshes_total",
                                 "Schedule-only deliveries keeping idle BFT bridges within their horizon.")
    failures = registry.counter("gridledger_relay_failures_total", "Rounds on a channel or shard that failed, by reason.",
                                ("code",))
    stats = relayer.stats

    async def metrics(request: web.Request) -> web.Response:
        # The relayer's counts only go up; copy them into the registry at each scrape.
        rounds.labels().value = stats.rounds
        deliveries.labels().value = stats.deliveries
        duplicates.labels().value = stats.duplicates
        refreshes.labels().value = stats.refreshes
        for channel in (str(c) for c in relayer.channels):
            packets.labels(channel).value = stats.per_channel[channel]
        for code, count in stats.failures.items():
            failures.labels(code).value = count
        return web.Response(body=registry.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        # Healthy while rounds keep running (a round is a few poll intervals at most).
        stale = time.time() - stats.last_round_at > max(30.0, 50 * relayer.poll_s)
        body = {"status": "stalled" if stale else "ok", "rounds": stats.rounds, "packets": stats.packets,
                "last_error": stats.last_error or None}
        return web.json_response(body, status=503 if stale else 200)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner, runner.addresses[0][1]


async def run(config: RelayConfig) -> int:
    from ledger.log import get_logger

    try:
        relayer = build_relayer(config)
    except RelayConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = get_logger(component="relayer")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner, port = await serve_http(relayer, config.http_host, config.http_port)
    except OSError as exc:
        await relayer.close()
        print(f"error: cannot serve /metrics on {config.http_host}:{config.http_port}: {exc}", file=sys.stderr)
        return 2
    log.info("relayer started", address=str(relayer.key.address), http_port=port,
             channels=[str(c) for c in relayer.channels])
    try:
        await relayer.run(stop)
    finally:
        await relayer.close()
        await runner.cleanup()
        log.info("relayer stopped", packets=relayer.stats.packets, deliveries=relayer.stats.deliveries)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    relay = sub.add_parser("relay", help="carry packets between neighbouring shards", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    relay.add_argument("--config", required=True, help="the relayer's TOML configuration")
    relay.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    try:
        config = RelayConfig.load(args.config)
    except RelayConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(config))
