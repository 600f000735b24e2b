"""``python -m bench.rss``: node memory after a million committed transactions.

    .venv/bin/python -m bench.rss --transactions 1000000 --rate 1200

The node issue's target: RSS <= 300 MB per node after 1,000,000 transactions. Starts the
devnet of ``bench.throughput`` (BFT n=4 by default, LMDB with sync on, a token crediting
``--accounts`` accounts) and offers signed transfers at a fixed ``--rate`` in windows of
``--window`` seconds until ``--transactions`` are committed, reading every node's
resident set (``VmRSS``) and peak (``VmHWM``) from ``/proc`` after each window, so a
leak shows as a rising line rather than one figure at the end.

Prints one JSON line::

    {"transactions", "node_rss_mb", "node_peak_rss_mb", "rss_by_window_mb", "rate", "seconds", ...}

where ``node_rss_mb`` and ``node_peak_rss_mb`` are the largest over the nodes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import Bench

__all__ = ["main"]


def _status_mb(pid: int, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _run(bench: Bench, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    started = time.monotonic()
    committed = 0
    by_window: list[list[float]] = []
    await bench.up()
    try:
        while committed < args.transactions:
            probe = await bench.probe(args.rate, window_s=args.window)
            committed += probe.committed
            rss = [round(_status_mb(pid, "VmRSS"), 1) for pid in bench.node_pids()]
            by_window.append([committed, max(rss, default=0.0)])
            print(f"  {committed:>9} committed, node RSS {rss} MB", file=sys.stderr, flush=True)
            if not probe.drained:
                raise RuntimeError(f"the shard did not keep up with {args.rate}/s; choose a lower --rate")
        pids = bench.node_pids()
        rss = [_status_mb(pid, "VmRSS") for pid in pids]
        peak = [_status_mb(pid, "VmHWM") for pid in pids]
    finally:
        await bench.down()
    return {
        "transactions": committed,
        "node_rss_mb": round(max(rss, default=0.0)),
        "node_peak_rss_mb": round(max(peak, default=0.0)),
        "rss_by_window_mb": by_window,
        "rate": args.rate,
        "protocol": args.protocol,
        "validators": args.validators,
        "seconds": round(time.monotonic() - started),
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1200, help="transfers offered per second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window (RSS is read after each)")
    parser.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    parser.add_argument("--validators", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.validators is None:
        args.validators = 4 if args.protocol == "bft" else 3
    # What bench.throughput's Bench reads besides the above.
    args.grace, args.drain, args.param, args.rate_search = 10.0, 120.0, [], False
    root = Path(tempfile.mkdtemp(prefix="gridledger-rss-"))
    bench = Bench(args, root)
    try:
        result = asyncio.run(_run(bench, args))
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
