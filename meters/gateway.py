"""``gridledger meter gateway --config meters.toml``: poll meters, store, sign, submit.

The gateway wires four parts around one durable queue (``meters.queue``):

    Poller ──samples──> accounting (meters.readings) ──states + readings──> queue (one commit)
                                                                              │
    node <──signed transactions── Submitter <──────────────────────────────────┘

and serves ``/healthz``, ``/status`` and ``/metrics`` (``meters.status``). All database
work runs in one worker thread so a slow fsync never stalls polling. If the database
cannot be written the gateway stops (exit 1) rather than run on without durability;
on restart it resumes from what was committed, re-deriving the rest from the meters'
cumulative counters.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from ledger.crypto import PrivateKey
from ledger.log import configure, get_logger
from meters.config import GatewayConfig, load_config, load_meter_keys
from meters.errors import ConfigError
from meters.maps import CustomMap, load_map
from meters.modbus import EndpointPool, quiet_pymodbus
from meters.nodeapi import NodeClient
from meters.poller import Device, Poller, Update
from meters.queue import ReadingStore
from meters.readings import Limits, PeriodClock
from meters.status import Metrics, make_app
from meters.submit import SubmitSettings, Submitter

__all__ = ["Gateway", "main"]

QUEUE_FILE = "queue.sqlite3"


class Gateway:
    """One gateway process: its devices, its queue, its submitter and its status server."""

    def __init__(self, config: GatewayConfig, keys: dict[str, PrivateKey], *, log=None) -> None:
        self.config = config
        self.log = log or get_logger(component="meter-gateway", shard=config.chain.shard)
        self.metrics = Metrics()
        g, c = config.gateway, config.chain
        self.clock = PeriodClock(c.genesis_time, c.period_seconds)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meters-db")
        self.store = ReadingStore(g.data_dir / QUEUE_FILE)
        self.pools: dict = {}
        self.devices: list[Device] = []
        for meter in config.meters:
            meter_map = load_map(meter.map, config.base_dir)
            if isinstance(meter_map, CustomMap):
                quantity = f"{meter.channel}_energy"
                if not any(p.quantity == quantity for p in meter_map.layout.points):
                    raise ConfigError(f"meter {meter.name}: map {meter.map} has no {quantity} for channel {meter.channel!r}")
            if meter.endpoint not in self.pools:
                self.pools[meter.endpoint] = EndpointPool(
                    meter.endpoint, connections=g.connections_per_endpoint, timeout_s=g.read_timeout_s
                )
            limits = Limits(meter.rated_power_w, g.rated_tolerance_pct, g.estimate_gap_ms, int(1000 * g.counter_update_s))
            self.devices.append(Device(meter, meter_map, self.pools[meter.endpoint], limits))
        missing = [m.name for m in config.meters if m.name not in keys]
        if missing:
            raise ConfigError(f"no key loaded for meters {missing[:5]}")
        self.node = NodeClient(c.node_url, max_connections=c.max_concurrent_submits)
        self.submitter = Submitter(
            store=self.store,
            db=self.db,
            node=self.node,
            keys={m.name: keys[m.name] for m in config.meters},
            settings=SubmitSettings(
                chain_id=c.shard,
                batch_max=c.batch_max,
                gas_limit=c.gas_limit,
                expiry_blocks=c.expiry_blocks,
                wait_ms=c.wait_commit_ms,
                park_ms=c.park_s * 1000,
                concurrency=c.max_concurrent_submits,
            ),
            metrics=self.metrics,
            log=self.log,
        )
        self.poller: Poller | None = None
        self.status_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._store_failed = False

    async def db(self, fn, *args):
        """Run a store method in the database thread."""
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _record(self, updates: list[Update]) -> None:
        try:
            await self.db(self.store.record, updates)  # durable before anything is submitted
        except BaseException:
            # In-memory states are now ahead of the store: never persist them (see close).
            self._store_failed = True
            raise
        readings = [r for _, _, rs in updates for r in rs]
        self.metrics.inc("readings_produced_total", len(readings))
        self.submitter.add(readings)

    async def start(self) -> None:
        g = self.config.gateway
        states = await self.db(self.store.load_states)
        await self.submitter.load()
        self.poller = Poller(
            self.devices,
            clock=self.clock,
            interval_s=g.poll_interval_s,
            retries=g.read_retries,
            retry_backoff_s=g.retry_backoff_s,
            backoff_max_s=g.device_backoff_max_s,
            down_after=g.down_after,
            states=states,
            on_cycle=self._record,
            metrics=self.metrics,
            log=self.log,
        )
        if g.status_listen:
            host, _, port = g.status_listen.rpartition(":")
            self._runner = web.AppRunner(make_app(self.snapshot, self.gauges, self.metrics), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, host or "127.0.0.1", int(port))
            await site.start()
            self.status_port = self._runner.addresses[0][1]
        self.log.info("meter gateway started", meters=len(self.devices), endpoints=len(self.pools),
                      pending=self.submitter.pending(), status_port=self.status_port)

    async def run(self) -> None:
        """Poll and submit until :meth:`request_stop`; raises if a part fails."""
        tasks = [
            asyncio.create_task(self.poller.run(self._stop), name="poller"),
            asyncio.create_task(self.submitter.run(self._stop), name="submitter"),
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        self._stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failures:
            self.log.error("gateway stopping after a failure", error=repr(failures[0]))
            raise failures[0]

    def request_stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Persist the accounting states and release everything (after :meth:`run`)."""
        if self.poller is not None and self.poller.states and not self._store_failed:
            try:
                await self.db(self.store.record, [(name, state, []) for name, state in self.poller.states.items()])
            except Exception as exc:  # the last committed states remain valid
                self.log.error("could not persist accounting states at shutdown", error=repr(exc))
        if self._runner is not None:
            await self._runner.cleanup()
        await self.node.close()
        for pool in self.pools.values():
            pool.close()
        await self.db(self.store.close)
        self._db_thread.shutdown(wait=True)
        self.log.info("meter gateway stopped")

    # ------------------------------------------------------------ status

    def snapshot(self) -> dict:
        devices = [d.status() for d in self.devices]
        down = sum(1 for d in devices if d["state"] == "down")
        failing = sum(1 for d in devices if d["state"] == "failing")
        lat = sorted(self.submitter.latencies_ms)

        def pct(p: float) -> int | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return {
            "status": "ok",
            "devices": len(devices),
            "devices_down": down,
            "devices_failing": failing,
            "node_up": self.submitter.node_up,
            "node_error": self.submitter.node_error,
            "queue": self.submitter.counts(),
            "poll": {
                "interval_s": self.config.gateway.poll_interval_s,
                "cycles": self.poller.cycles if self.poller else 0,
                "last_cycle_s": round(self.poller.last_cycle_s, 4) if self.poller else None,
            },
            "submit_latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "count": len(lat)},
            "counters": {name: self.metrics.value(name) for name in sorted(self.metrics.counters)},
            "device_status": devices,
        }

    def gauges(self) -> dict:
        counts = self.submitter.counts()
        return {
            "readings_queued": counts["queued"],
            "readings_in_flight": counts["in_flight"],
            "readings_parked": counts["parked"],
            "devices_down": sum(1 for d in self.devices if d.health.state == "down"),
            "device_up": {(("meter", d.name),): int(d.health.state == "up") for d in self.devices},
            "node_up": int(self.submitter.node_up),
            "poll_cycle_seconds": self.poller.last_cycle_s if self.poller else 0,
        }


async def serve(config: GatewayConfig, keys: dict[str, PrivateKey]) -> int:
    gateway = Gateway(config, keys)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    await gateway.start()
    try:
        await gateway.run()
    finally:
        await gateway.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridledger meter gateway",
        description="Poll smart meters over Modbus, turn their counters into signed readings per "
        "elementary period, store them durably and submit them to a gridledger node.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the gateway's TOML configuration")
    parser.add_argument("--dev", action="store_true", help="development mode: accept plaintext meter keys")
    parser.add_argument("--check", action="store_true", help="check the configuration and open every key, then exit")
    parser.add_argument("--log", choices=("json", "console"), help="log format (default: console on a terminal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 stopped cleanly, 1 a runtime failure, 2 a configuration error."""
    args = build_parser().parse_args(argv)
    configure(args.log)
    quiet_pymodbus()
    log = get_logger(component="meter-gateway")
    try:
        config = load_config(args.config)
        keys = load_meter_keys(config, dev=args.dev)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"ok: {len(config.meters)} meters, keys opened, queue at {config.gateway.data_dir / QUEUE_FILE}")
        return 0
    try:
        return asyncio.run(serve(config, keys))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        log.error("meter gateway failed", error=repr(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
