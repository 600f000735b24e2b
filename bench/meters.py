"""One gateway polling 1,000 simulated meters: ``python -m bench.meters``.

Three processes on loopback: the meter simulator (5 ports x 200 Modbus unit ids, SDM630
and SunSpec 203 maps, solar, wind and household profiles), the gateway, and the
FakeNode test double standing in for the node (the real node does not exist yet:
``submit_p99_ms`` is measured against it). The elementary period equals the poll
interval, so every poll also produces, signs, stores and submits one reading per meter.

After the first complete poll cycle the bench reads the gateway's ``/metrics`` in the
quiet middle of two polls, waits ``--cycles`` whole intervals and reads them again, so
the window holds exactly that many polls. Prints one JSON line::

    {"meters", "poll_interval_s", "reads_per_s", "submit_p99_ms", "cpu_pct"}

``reads_per_s`` is successful meter reads per second over the window; the target is
``meters / poll_interval_s`` (every meter read every poll). ``cpu_pct`` is the gateway
process's CPU time over the window (100 = one core). Diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from meters.testbed import free_port, gateway_toml, make_meter_keys, toml_text

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-meter-password"
PER_PORT = 200


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            get(url)
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.meters", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=15.0, help="poll interval and elementary period, seconds")
    parser.add_argument("--cycles", type=int, default=4, help="whole poll intervals in the measured window")
    parser.add_argument("--connections", type=int, default=1, help="Modbus TCP connections per simulator port")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (keys, queue, logs)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-meters-"))
    ports = [free_port() for _ in range(math.ceil(args.meters / PER_PORT))]
    node_port, status_port = free_port(), free_port()
    maps = ["sdm630", "sdm630", "sdm630", "sunspec", "sunspec"]
    profiles = [("household", 7000), ("solar", 9000), ("household", 5000), ("solar", 12000), ("wind", 30000)]
    groups, meters = [], []
    for i, port in enumerate(ports):
        count = min(PER_PORT, args.meters - i * PER_PORT)
        kind, (profile, peak) = maps[i % len(maps)], profiles[i % len(profiles)]
        groups.append({"ports": [port, port], "unit_ids": [1, count], "map": kind, "profile": profile,
                       "peak_w": peak, "initial_kwh": [100, 40_000]})
        for unit in range(1, count + 1):
            name = f"m{port}-{unit}"
            meters.append({"name": name, "endpoint": f"tcp://127.0.0.1:{port}", "unit_id": unit, "map": kind,
                           "channel": "export" if profile != "household" else "import", "rated_power_w": 2 * peak,
                           "keystore": f"keys/{name}.json"})
    started = time.time()
    make_meter_keys(tmp / "keys", [m["name"] for m in meters], password=PASSWORD, strength="test")
    (tmp / "sim.toml").write_text(toml_text({"simulator": {"seed": 42}, "meters": groups}))
    interval = args.interval
    (tmp / "gateway.toml").write_text(gateway_toml(
        data_dir="data", node_url=f"http://127.0.0.1:{node_port}", meters=meters, poll_interval_s=interval,
        period_seconds=max(1, int(interval)),
        gateway={"status_listen": f"127.0.0.1:{status_port}", "read_timeout_s": 1.0, "read_retries": 2,
                 "retry_backoff_s": 0.2, "connections_per_endpoint": args.connections},
        chain={"wait_commit_ms": 5000, "max_concurrent_submits": 64}, keys={"dev_plaintext": False},
    ))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRIDLEDGER_METER_PASSWORD": PASSWORD, "GRIDLEDGER_LOG": "json",
           "GRIDLEDGER_LOG_LEVEL": "warning"}
    log = (tmp / "processes.log").open("ab")
    procs = [
        subprocess.Popen([sys.executable, "-m", "meters.fakenode", "--listen", f"127.0.0.1:{node_port}",
                          "--block-interval-ms", "100"], env=env, cwd=ROOT, stdout=log, stderr=log),
        subprocess.Popen([sys.executable, "-m", "meters.simulator", "--config", str(tmp / "sim.toml")],
                         env=env, cwd=ROOT, stdout=log, stderr=log),
    ]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen([sys.executable, "-m", "meters.gateway", "--config", str(tmp / "gateway.toml")],
                                      env=env, cwd=ROOT, stdout=log, stderr=log))
        status_url = f"http://127.0.0.1:{status_port}"
        wait_http(status_url + "/healthz", 60)
        while json.loads(get(status_url + "/status"))["poll"]["cycles"] < 1:
            time.sleep(0.2)
        # Start in the quiet middle between two polls; the window then holds whole polls.
        now = time.time()
        t0 = math.floor(now / interval) * interval + interval * 1.5
        time.sleep(t0 - now)
        first, t_first = get(status_url + "/metrics"), time.time()
        time.sleep(t0 + args.cycles * interval - time.time())
        last, t_last = get(status_url + "/metrics"), time.time()
        status = json.loads(get(status_url + "/status"))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    span = t_last - t_first
    reads = metric(last, "gridledger_meter_readings_read_total") - metric(first, "gridledger_meter_readings_read_total")
    cpu = metric(last, "process_cpu_seconds_total") - metric(first, "process_cpu_seconds_total")
    print(json.dumps({k: status[k] for k in ("devices_down", "queue", "poll", "submit_latency_ms", "counters")}),
          f"total {time.time() - started:.0f}s" + (f", logs in {tmp}" if args.keep else ""), file=sys.stderr)
    if not args.keep:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "meters": args.meters,
        "poll_interval_s": interval,
        "reads_per_s": round(reads / span, 2),
        "submit_p99_ms": status["submit_latency_ms"]["p99"],
        "cpu_pct": round(100 * cpu / span, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
