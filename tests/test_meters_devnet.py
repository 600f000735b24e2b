"""The meters issue's acceptance: simulator and gateway processes against a real devnet.

A BFT devnet (4 validators and an observer) runs the market. The grid operator
registers three meters with ``meters.register_meter`` and their owners attest them;
a fourth meter is wired to the gateway but never registered. Then the two meter
commands run as processes, exactly as ``gridledger meter simulate`` and
``gridledger meter gateway`` start them (``meters.simulator.main`` and
``meters.gateway.main``): the simulator serves SDM630 and SunSpec meters over Modbus
TCP, the gateway polls them, signs each period's reading with the meter's own key (the
registered key) and submits ``meters.submit_readings`` to a validator.

After the gateway stops (SIGTERM), every figure is read from the OBSERVER and verified
against the genesis validators (certificate, header, state proof): each registered
meter has a reading for every period from its first to its last closed one, on chain
or still queued, never both; the energy on chain plus queued plus open is exactly what
the meter's counter advanced; and the unregistered meter has nothing on chain (proven
absent), its readings parked by the gateway with the node's ``not_member`` refusal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nodeproc import logs, wait_ready

from cli.devnet import Devnet
from ledger.client import Account, verify_read
from ledger.genesis import Genesis
from ledger.httpclient import SyncClient
from meters.gateway import QUEUE_FILE
from meters.queue import ReadingStore
from meters.testbed import free_port, gateway_toml, make_meter_keys, toml_text

ROOT = Path(__file__).resolve().parent.parent
PERIOD_S = 2
SEED = 20260214
pytestmark = pytest.mark.slow

# name -> (port group, unit id, map, channel, kind, owner, category)
METERS = {
    "house-1": ("a", 1, "sdm630", "import", "consumption", "household", "other"),
    "house-2": ("a", 2, "sdm630", "import", "consumption", "household", "other"),
    "pv-1": ("b", 1, "sunspec", "export", "production", "pv-owner", "solar"),
    "rogue": ("a", 3, "sdm630", "import", None, None, None),  # wired but never registered
}
POWER_W = {"a": 18_000, "b": 36_000}  # the simulator's constant power per port group
REGISTERED = [n for n, m in METERS.items() if m[4] is not None]
MIN_PERIODS = 4  # closed periods on chain per registered meter before the gateway stops


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRIDLEDGER_LOG": "json", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -signal.SIGKILL
    return proc.returncode


def _wait(predicate, timeout_s: float, what: str, procs: dict[str, subprocess.Popen], poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout_s:.0f} s"
        time.sleep(poll_s)


def test_meter_simulator_and_gateway_put_registered_readings_on_chain_verifiable_from_the_observer(tmp_path):
    accounts = {"operator": ["grid_operator"], "bank": ["bank"], "pv-owner": ["producer"], "household": ["consumer"]}
    net = Devnet.create(tmp_path / "net", validators=4, observers=1, protocol="bft", chain_id="ch/meters",
                        accounts=accounts, params={"period_seconds": PERIOD_S})
    genesis = Genesis.load(net.root / "genesis.json")
    procs: dict[str, subprocess.Popen] = {}
    sim_log, gw_log = tmp_path / "simulator.log", tmp_path / "gateway.log"
    try:
        net.start()
        wait_ready(net)
        validator, observer = net.validators()[1], net.observers()[0]
        keys = make_meter_keys(tmp_path / "keys", list(METERS))
        addr = {n: k.address.raw for n, k in keys.items()}

        # -- the grid operator registers three meters; their owners attest them
        owners = {n: Account(net.account_key(n), chain_id=net.chain_id) for n in accounts}
        with SyncClient(validator.url, timeout=30.0) as node:
            def commit(txs):
                results = node.submit_many(txs, wait=True, timeout_s=30.0)
                assert all(r.ok for r in results), [(r.status, r.error, r.receipt and r.receipt.error) for r in results]

            commit([owners["operator"].call("meters", "register_meter", [
                addr[n], owners[METERS[n][5]].address.raw, METERS[n][4], METERS[n][6], f"loc:{n}", 100_000, 0])
                for n in REGISTERED])
            commit([owners[METERS[n][5]].call("meters", "attest_meter", [addr[n]]) for n in REGISTERED])

        # -- the two meter commands, as processes
        ports = {"a": free_port(), "b": free_port()}
        sim_config = tmp_path / "sim.toml"
        sim_config.write_text(toml_text({
            "simulator": {"host": "127.0.0.1", "seed": SEED, "control_listen": ""},
            "meters": [
                {"ports": [ports["a"], ports["a"]], "unit_ids": [1, 3], "map": "sdm630", "profile": "constant",
                 "peak_w": POWER_W["a"], "initial_kwh": [100, 5_000]},
                {"ports": [ports["b"], ports["b"]], "unit_ids": [1, 1], "map": "sunspec", "profile": "constant",
                 "peak_w": -POWER_W["b"], "initial_kwh": [10, 500]},
            ],
        }))
        gw_config = tmp_path / "gateway.toml"
        gw_config.write_text(gateway_toml(
            data_dir="gateway-data", node_url=validator.url, shard=net.chain_id, genesis_time=genesis.genesis_time,
            period_seconds=PERIOD_S, poll_interval_s=0.25, chain={"wait_commit_ms": 3000},
            meters=[{"name": n, "endpoint": f"tcp://127.0.0.1:{ports[m[0]]}", "unit_id": m[1], "map": m[2],
                     "channel": m[3], "rated_power_w": 50_000, "keystore": f"keys/{n}.json"} for n, m in METERS.items()],
        ))
        procs["simulator"] = _spawn(["-m", "meters.simulator", "--config", str(sim_config)], sim_log)
        _wait(lambda: "simulating" in sim_log.read_text(), 30, "the simulator serving", procs)
        procs["gateway"] = _spawn(["-m", "meters.gateway", "--config", str(gw_config), "--dev", "--log", "json"], gw_log)

        # -- readings of the registered meters commit
        with SyncClient(observer.url, timeout=30.0) as obs:
            def on_chain(name: str, first: int, last: int) -> dict[int, list]:
                found = {}
                for period in range(first, last + 1):
                    value = obs.state("meters", "reading", [addr[name], period])
                    if value is not None:
                        found[period] = value
                return found

            now_period = lambda: (int(time.time()) - genesis.genesis_time) // PERIOD_S  # noqa: E731
            start_period = now_period()

            def enough():
                return all(len(on_chain(n, start_period, now_period())) >= MIN_PERIODS for n in REGISTERED)

            _wait(enough, 60, f"{MIN_PERIODS} periods of every registered meter on chain", procs, poll_s=0.5)
            assert _stop(procs.pop("gateway")) == 0, "the gateway did not stop cleanly on SIGTERM"
            assert _stop(procs.pop("simulator")) == 0
            # anything the gateway sent before it stopped has committed by now; the observer follows
            time.sleep(2 * PERIOD_S)
            with SyncClient(validator.url) as node:
                target = int(node.status()["height"])
            _wait(lambda: int(obs.status()["height"]) >= target, 30, "the observer caught up", {})

            # -- the books: chain (verified) + queue + open == what each counter advanced
            store = ReadingStore(tmp_path / "gateway-data" / QUEUE_FILE)
            try:
                states = store.load_states()
                pending, _ = store.load_pending()
            finally:
                store.close()
            for name in METERS:
                state = states[name]
                first = (state.first_ms // 1000 - genesis.genesis_time) // PERIOD_S
                chain = {}
                for period in range(first - 1, state.open_period + 2):
                    read = obs.read_state("meters", "reading", [addr[name], period])
                    value = verify_read(read, genesis.validators)  # raises unless certificate, header, proof hold
                    if value is not None:
                        chain[period] = value
                queued = {s.reading.period: s for s in pending if s.reading.meter == name}
                if name == "rogue":
                    assert chain == {}, "an unregistered meter's reading is on chain"
                    assert any("not_member" in (s.last_error or "") for s in queued.values()), queued
                    continue
                assert len(chain) >= MIN_PERIODS
                for period, s in list(queued.items()):
                    if period in chain:  # sent just before the stop: on chain through that very transaction
                        with SyncClient(validator.url) as node:
                            assert s.tx_id is not None and node.tx(s.tx_id).committed, (name, period)
                        assert chain[period][0] == s.reading.energy_wh
                        del queued[period]
                periods = sorted(set(chain) | set(queued))
                assert periods == list(range(first, state.open_period)), (name, periods, first, state.open_period)
                for original, corrections, flags in chain.values():
                    assert corrections == [] and 0 <= flags <= 15 and original >= 0
                energy = sum(v[0] for v in chain.values()) + sum(s.reading.energy_wh for s in queued.values())
                assert energy + state.open_wh + state.refused_wh == state.accounted_wh
                assert state.accounted_wh == state.last_wh - state.first_wh > 0, name
                # constant power: every full period carries power x period (within the counter's 1 Wh resolution)
                full = [v[0] for p, v in chain.items() if p != first and not v[2]]
                want = POWER_W[METERS[name][0]] * PERIOD_S // 3600
                assert full and all(abs(e - want) <= 1 for e in full), (name, want, full)
    except BaseException:
        for path in (sim_log, gw_log):
            if path.exists():
                print(f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        print(logs(net))
        raise
    finally:
        for proc in procs.values():
            _stop(proc, 5.0)
        net.stop(timeout_s=5.0)
