"""The gateway as a real process, killed with SIGKILL at the worst moments, loses nothing.

The simulator and the FakeNode run in this test's event loop; the gateway is a
subprocess (``python -m meters.gateway``) with encrypted meter keys. It is killed:

1. after the node committed its transaction but before the answer reached it;
2. after it sent a transaction the node has not committed yet (it commits while the
   gateway is dead);
3. right after it sent a batch of several periods (blocks were held so that periods
   piled up), at a seeded random instant;

and restarted each time, then stopped with SIGTERM. The chain and the gateway's queue
must then account for every Wh of every meter once: periods contiguous, no period
twice, no duplicate submission refused by the chain, and the energy on chain plus
the energy still queued equal to what the meters' counters advanced.
"""

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from meters.fakenode import FakeNode
from meters.gateway import QUEUE_FILE
from meters.modbus import quiet_pymodbus
from meters.simulator import Simulator
from meters.testbed import audit_meter, free_port, gateway_toml, make_meter_keys

ROOT = Path(__file__).resolve().parent.parent
SEED = 20260101
PASSWORD = "correct horse battery staple"


async def wait_for(predicate, timeout=15.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def start_gateway(config: Path, log: Path):
    env = {**os.environ, "GRIDLEDGER_METER_PASSWORD": PASSWORD, "GRIDLEDGER_LOG": "json", "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meters.gateway", "--config", str(config),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
    )


async def sigkill(proc):
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


@pytest.mark.slow
def test_gateway_sigkill_mid_batch_loses_and_duplicates_nothing(tmp_path):
    quiet_pymodbus()
    rng = random.Random(SEED)

    async def body():
        port_a, port_b = free_port(), free_port()
        sim = Simulator({"simulator": {"seed": SEED}, "meters": [
            {"ports": port_a, "unit_ids": [1, 2], "map": "sdm630", "profile": "household", "peak_w": 9_000,
             "initial_kwh": [100, 5_000]},
            {"ports": port_b, "unit_ids": [1, 2], "map": "sunspec", "profile": "constant", "peak_w": -7_200,
             "initial_kwh": [10, 500]},
        ]})
        await sim.start()
        node = FakeNode("devnet", block_interval_s=0.05)
        await node.start()
        names = ["sdm-1", "sdm-2", "pv-1", "pv-2"]
        keys = make_meter_keys(tmp_path / "keys", names, password=PASSWORD)
        wires = [(port_a, 1, "sdm630", "import"), (port_a, 2, "sdm630", "import"),
                 (port_b, 1, "sunspec", "export"), (port_b, 2, "sunspec", "export")]
        meters = [{"name": n, "endpoint": f"tcp://127.0.0.1:{p}", "unit_id": u, "map": m, "channel": c,
                   "rated_power_w": 20_000, "keystore": f"keys/{n}.json"} for n, (p, u, m, c) in zip(names, wires, strict=True)]
        config = tmp_path / "gateway.toml"
        config.write_text(gateway_toml(data_dir="data", node_url=node.url, meters=meters, poll_interval_s=0.2,
                                       chain={"batch_max": 8, "wait_commit_ms": 1000}, keys={"dev_plaintext": False}))
        log = tmp_path / "gateway.log"

        def on_chain():
            return sum(len(node.readings_of(k.public_key.raw)) for k in keys.values())

        try:
            # 1. Committed, but the answer never reaches the gateway.
            proc = await start_gateway(config, log)
            await wait_for(lambda: on_chain() >= 8)
            node.hold_responses = True
            committed = on_chain()
            await wait_for(lambda: on_chain() > committed)
            await sigkill(proc)
            node.release_responses()

            # 2. Sent and pending when the gateway dies; committed while it is dead.
            proc = await start_gateway(config, log)
            await wait_for(lambda: on_chain() >= committed + 8)
            node.hold_blocks = True
            await wait_for(lambda: len(node.mempool) >= 2)
            await sigkill(proc)
            node.hold_blocks = False
            await wait_for(lambda: not node.mempool)

            # 3. Killed at a random instant right after sending a batch of several periods:
            # blocks are held for a while so that periods pile up behind pending transactions.
            node.hold_blocks = True
            proc = await start_gateway(config, log)
            await asyncio.sleep(3.0)
            seen = len(node.posted)
            node.hold_blocks = False
            await wait_for(lambda: any(n >= 2 for _, n in node.posted[seen:]))
            await asyncio.sleep(rng.uniform(0.0, 0.08))
            await sigkill(proc)

            # Last run: catch up, then a clean stop.
            proc = await start_gateway(config, log)
            before = on_chain()
            await wait_for(lambda: on_chain() >= before + 16)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await node.stop()
            await sim.stop()

        assert max(n for _, n in node.posted) >= 2, "no batch was ever sent"
        assert node.duplicate_refusals == 0, "the gateway sent a reading the chain already held"
        for name in names:
            chain, queued, _ = audit_meter(tmp_path / "data" / QUEUE_FILE, node, keys[name].public_key.raw, name)
            assert len(chain) >= 6

    asyncio.run(asyncio.wait_for(body(), 120))
