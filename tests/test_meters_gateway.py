"""The gateway end to end on loopback: simulator (Modbus TCP) -> gateway -> FakeNode (HTTP).

Elementary periods are one second and polls a fifth of that, so a few seconds cover
several periods. Every test ends with the accounting check of :func:`check_ledger`:
per meter, the periods on chain and still queued are disjoint and contiguous, and
their energy plus the open period's equals all the energy the gateway accounted.
"""

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from meters.config import load_config, load_meter_keys
from meters.fakenode import FakeNode
from meters.gateway import QUEUE_FILE, Gateway
from meters.modbus import quiet_pymodbus
from meters.queue import ReadingStore
from meters.readings import Flag
from meters.simulator import Simulator
from meters.testbed import audit_meter, free_port, gateway_toml, make_meter_keys


def run(coro, timeout=60):
    quiet_pymodbus()
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


class Bed:
    """Simulator, fake node and gateway in one event loop."""

    def __init__(self, tmp: Path, sim_groups, meters, *, gateway=None, chain=None, registered_names=None):
        self.tmp, self.sim_groups, self.meter_specs = tmp, sim_groups, meters
        self.gateway_opts, self.chain_opts, self.registered_names = gateway or {}, chain or {}, registered_names

    async def __aenter__(self):
        self.sim = Simulator({"simulator": {"seed": 1}, "meters": self.sim_groups})
        await self.sim.start()
        names = [m["name"] for m in self.meter_specs]
        self.keys = make_meter_keys(self.tmp / "keys", names)
        registered = None
        if self.registered_names is not None:
            registered = {self.keys[n].public_key.raw for n in self.registered_names}
        self.node = FakeNode("devnet", block_interval_s=0.05, registered=registered)
        await self.node.start()
        meters = [{"keystore": f"keys/{m['name']}.json", "rated_power_w": 50_000, **m} for m in self.meter_specs]
        text = gateway_toml(data_dir="data", node_url=self.node.url, meters=meters, poll_interval_s=0.2,
                            gateway=self.gateway_opts, chain=self.chain_opts)
        (self.tmp / "gateway.toml").write_text(text)
        config = load_config(self.tmp / "gateway.toml")
        self.gateway = Gateway(config, load_meter_keys(config))
        await self.gateway.start()
        self.task = asyncio.create_task(self.gateway.run())
        return self

    async def stop_gateway(self):
        self.gateway.request_stop()
        await self.task
        await self.gateway.close()

    async def __aexit__(self, *exc):
        if not self.task.done():
            await self.stop_gateway()
        await self.node.stop()
        await self.sim.stop()

    def chain(self, name):
        return self.node.readings_of(self.keys[name].public_key.raw)

    async def get(self, path):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.gateway.status_port}{path}") as resp:
                assert resp.status == 200
                return await resp.text()

    def device(self, name):
        return next(d for d in self.gateway.snapshot()["device_status"] if d["meter"] == name)


def check_ledger(bed: Bed, name: str, *, exact_counter: bool = True):
    return audit_meter(bed.tmp / "data" / QUEUE_FILE, bed.node, bed.keys[name].public_key.raw, name,
                       exact_counter=exact_counter)


def sdm(port, units, **kw):
    return {"ports": port, "unit_ids": units, "map": "sdm630", "initial_kwh": [100, 900], **kw}


def test_counter_reset_is_flagged_not_negative(tmp_path):
    async def body():
        port = free_port()
        async with Bed(tmp_path, [sdm(port, 1, profile="constant", peak_w=7_200)],
                       [{"name": "house", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 1, "map": "sdm630"}]) as bed:
            await wait_for(lambda: len(bed.chain("house")) >= 2)
            bed.sim.inject(port, 1, "reset")
            before = max(bed.chain("house"))
            await wait_for(lambda: len([p for p in bed.chain("house") if p > before + 2]) >= 2)
            await bed.stop_gateway()
            chain, _, _ = check_ledger(bed, "house", exact_counter=False)
        assert all(e >= 0 for e, _ in chain.values())
        # The reset happened between two samples; the one or two periods they span say so.
        reset = [p for p, (e, f) in chain.items() if f & Flag.RESET]
        assert reset and reset == list(range(reset[0], reset[0] + len(reset))) and len(reset) <= 2
        assert all(e <= 7_200 * 12 // 10 // 3600 + 2 for p, (e, f) in chain.items() if p > reset[0])

    run(body())


def test_reading_above_rated_power_is_refused(tmp_path):
    async def body():
        port = free_port()
        meters = [
            {"name": "turbine", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 1, "map": "sdm630",
             "channel": "export", "rated_power_w": 5_000},
            {"name": "house", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 2, "map": "sdm630"},
        ]
        groups = [sdm(port, 1, profile="constant", peak_w=-40_000), sdm(port, 2, profile="constant", peak_w=3_600)]
        async with Bed(tmp_path, groups, meters) as bed:
            await wait_for(lambda: len(bed.chain("house")) >= 4)
            await bed.stop_gateway()
            assert bed.gateway.metrics.value("readings_refused_total", reason="above_rated_power") >= 3
            assert "above_rated_power" in bed.device("turbine")["last_refusal"]
            # 40 kW from a 5 kW meter never reaches the chain (at most a first, partial period does)
            assert all(e <= 5_000 * 2 * 12 // 10 // 3600 + 2 for e, _ in bed.chain("turbine").values())
            check_ledger(bed, "turbine", exact_counter=False)
            check_ledger(bed, "house")

    run(body())


def test_nan_from_device_is_refused(tmp_path):
    async def body():
        port, port2 = free_port(), free_port()
        groups = [sdm(port, 1, profile="constant", peak_w=3_600),
                  {"ports": port2, "unit_ids": 1, "map": "sunspec", "profile": "constant", "peak_w": 3_600,
                   "initial_kwh": 50}]
        meters = [{"name": "a", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 1, "map": "sdm630"},
                  {"name": "b", "endpoint": f"tcp://127.0.0.1:{port2}", "unit_id": 1, "map": "sunspec"}]
        async with Bed(tmp_path, groups, meters) as bed:
            await wait_for(lambda: len(bed.chain("a")) >= 1 and len(bed.chain("b")) >= 1)
            bed.sim.inject(port, 1, "nan", 1.0)
            bed.sim.inject(port2, 1, "nan", 1.0)
            await asyncio.sleep(1.2)
            await wait_for(lambda: len(bed.chain("a")) >= 4 and len(bed.chain("b")) >= 4)
            await bed.stop_gateway()
            assert bed.gateway.metrics.value("readings_refused_total", reason="not_finite") >= 3
            assert bed.gateway.metrics.value("readings_refused_total", reason="not_implemented") >= 3
            assert bed.device("a")["state"] == "up"  # it answered; the answer was refused
            for name in ("a", "b"):
                chain, _, _ = check_ledger(bed, name)
                assert all(0 <= e <= 3_600 * 12 // 10 * 2 // 3600 + 2 for e, _ in chain.values())

    run(body())


def test_device_that_stops_answering_shows_in_status(tmp_path):
    async def body():
        port = free_port()
        meters = [{"name": f"m{u}", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": u, "map": "sdm630"} for u in (1, 2)]
        async with Bed(tmp_path, [sdm(port, [1, 2], profile="household")], meters,
                       gateway={"down_after": 2, "device_backoff_max_s": 0.5}) as bed:
            await wait_for(lambda: bed.device("m1")["state"] == "up")
            bed.sim.inject(port, 1, "no_answer", 30)
            await wait_for(lambda: bed.device("m1")["state"] == "down")
            status = json.loads(await bed.get("/status"))
            m1 = next(d for d in status["device_status"] if d["meter"] == "m1")
            assert m1["consecutive_failures"] >= 2 and "no answer" in m1["last_error"]
            assert status["devices_down"] == 1
            assert json.loads(await bed.get("/healthz"))["devices_down"] == 1
            metrics = await bed.get("/metrics")
            assert 'gridledger_meter_device_up{meter="m1"} 0' in metrics
            assert 'gridledger_meter_device_up{meter="m2"} 1' in metrics
            assert "gridledger_meter_devices_down 1" in metrics
            assert 'gridledger_meter_device_errors_total{kind="timeout"}' in metrics
            assert bed.device("m2")["state"] == "up"
            for m in bed.sim.meters.values():
                m.clear_faults()
            await wait_for(lambda: bed.device("m1")["state"] == "up", timeout=5)
            n = len(bed.chain("m1"))
            await wait_for(lambda: len(bed.chain("m1")) > n + 1)
            await bed.stop_gateway()
            chain, _, _ = check_ledger(bed, "m1")
            assert any(f & Flag.ESTIMATED for _, f in chain.values())  # the silent stretch

    run(body())


@pytest.mark.slow
def test_node_outage_delays_but_loses_nothing(tmp_path):
    async def body():
        port, port2 = free_port(), free_port()
        groups = [sdm(port, [1, 2], profile="household", peak_w=6_000),
                  {"ports": port2, "unit_ids": 1, "map": "sunspec", "profile": "solar", "peak_w": 9_000, "initial_kwh": 5}]
        meters = [{"name": "h1", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 1, "map": "sdm630"},
                  {"name": "h2", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 2, "map": "sdm630"},
                  {"name": "pv", "endpoint": f"tcp://127.0.0.1:{port2}", "unit_id": 1, "map": "sunspec", "channel": "export"}]
        async with Bed(tmp_path, groups, meters, chain={"batch_max": 3}) as bed:
            await wait_for(lambda: all(len(bed.chain(m)) >= 1 for m in ("h1", "h2", "pv")))
            await bed.node.go_down()
            outage_height = bed.node.height
            await asyncio.sleep(3.0)
            snapshot = bed.gateway.snapshot()
            assert snapshot["node_up"] is False and snapshot["queue"]["queued"] >= 3
            await bed.node.come_up()
            await wait_for(lambda: bed.gateway.submitter.pending() == 0 and bed.gateway.snapshot()["node_up"], timeout=15)
            await bed.stop_gateway()
            for name in ("h1", "h2", "pv"):
                chain, queued, _ = check_ledger(bed, name)
                late = [p for p, (_, _, _, h) in bed.node.readings.items() if h > outage_height]
                assert late
            assert bed.gateway.metrics.value("readings_committed_total") == sum(len(bed.chain(m)) for m in ("h1", "h2", "pv"))

    run(body())


def test_readings_the_node_refuses_are_parked_not_lost(tmp_path):
    async def body():
        port = free_port()
        meters = [{"name": f"m{u}", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": u, "map": "sdm630"} for u in (1, 2)]
        async with Bed(tmp_path, [sdm(port, [1, 2], profile="household")], meters, registered_names=["m1"]) as bed:
            await wait_for(lambda: len(bed.chain("m1")) >= 3 and bed.gateway.submitter.counts()["parked"] >= 1)
            await bed.stop_gateway()
            _, queued, _ = check_ledger(bed, "m2")
            assert queued and bed.chain("m2") == {}
            assert bed.gateway.metrics.value("readings_parked_total") >= 1
        store = ReadingStore(tmp_path / "data" / QUEUE_FILE)
        pending, _ = store.load_pending()
        store.close()
        assert any(s.last_error and s.last_error.startswith("not_member") for s in pending)

    run(body())


def test_metrics_name_every_figure_the_issue_asks_for(tmp_path):
    async def body():
        port = free_port()
        meters = [{"name": "m", "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": 1, "map": "sdm630"}]
        async with Bed(tmp_path, [sdm(port, 1)], meters) as bed:
            await wait_for(lambda: len(bed.chain("m")) >= 1)
            text = await bed.get("/metrics")
        for name in ("readings_read_total", "readings_queued", "readings_submitted_total", "readings_committed_total",
                     "readings_refused_total", "device_errors_total", "submit_latency_seconds_bucket", "node_up"):
            assert f"gridledger_meter_{name}" in text, name

    run(body())

