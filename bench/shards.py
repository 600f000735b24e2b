"""``python -m bench.shards``: cross-shard flows over five shards on a devnet of real processes.

    .venv/bin/python -m bench.shards                 # 1 validator per shard, 12 flows
    .venv/bin/python -m bench.shards --full          # genesis/three-levels.toml as written (24 validators)

Starts the topology devnet (``cli.devnet_shards``: every shard its own chain, one process
per operator index, one relayer), lets a producer in ``ch/bern/breitenrain`` emit tokens
and offer their consumer sides, and has a consumer in ``ch/zurich/oerlikon`` buy them
(``bridge.open_flow``): each flow crosses oerlikon -> zurich -> ch -> bern -> breitenrain and
its result comes back, eight deliveries in all. A flow **commits** when the origin's hop
record is ``committed`` (the consumer holds its token, the unused budget is back); its
latency runs from the submission of ``open_flow`` to the origin's commit, as the consumer
sees it. First ``--flows`` flows one after another (p50, p99), then the same number
opened at once (flows per second from the first submission to the last commit).

Prints one JSON line::

    {"hops", "flow_commit_p50_ms", "flow_commit_p99_ms", "flows_per_s", "flows", "validators_per_shard", ...}

:class:`cli.tree_client.TreeClient` is the consortium's view of the tree it drives.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from cli.devnet_shards import ShardDevnet
from cli.tree_client import DESTINATION, ORIGIN, TreeClient, TreeError, create_tree

__all__ = ["main"]


async def _bench(net: ShardDevnet, flows: int, energy_wh: int) -> dict:
    async with TreeClient(net) as tree:
        period = tree.period_now() + 6  # beyond gate closure (one hour ahead at 15-minute periods)
        price = 100
        await asyncio.gather(tree.rate(ORIGIN, "consumer"), tree.rate(DESTINATION, "producer"))
        await tree.fund(ORIGIN, "consumer", 10**9)
        tokens = await tree.offer_tokens("producer", DESTINATION, 2 * flows, energy_wh, period, price)
        quote = await tree.quote(ORIGIN, DESTINATION, energy_wh, period, period)
        budget = quote.total_fee

        async def flow(token: int) -> float:
            started = time.perf_counter()
            deadline = int(time.time()) + 600
            opened = await tree.open_flow("consumer", ORIGIN, DESTINATION, token, price, energy_wh, period, budget, deadline)
            flow_id = opened.receipt.result
            record = await tree.wait_flow(ORIGIN, flow_id, ("committed", "refunded"), timeout_s=120)
            if record.phase != "committed":
                raise TreeError(f"flow {flow_id.hex()[:12]} was refused: {record.reason}")
            return time.perf_counter() - started

        sequential = [await flow(t) for t in tokens[:flows]]
        started = time.perf_counter()
        await asyncio.gather(*(flow(t) for t in tokens[flows:]))
        elapsed = time.perf_counter() - started
    sequential.sort()
    return {
        "hops": len(quote.path),
        "flow_commit_p50_ms": round(1000 * sequential[len(sequential) // 2]),
        "flow_commit_p99_ms": round(1000 * sequential[min(len(sequential) - 1, int(0.99 * len(sequential)))]),
        "flows_per_s": round(flows / elapsed, 2),
        "flows": flows,
        "deliveries_per_flow": 2 * (len(quote.path) - 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=12, help="flows one after another, then as many at once")
    parser.add_argument("--full", action="store_true", help="the topology's own validator counts (24 validators)")
    parser.add_argument("--energy", type=int, default=1000, help="Wh per flow")
    parser.add_argument("--keep", help="keep the devnet in this directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gridledger-shards-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "net"
        net = create_tree(root, validators=None if args.full else 1)
        try:
            net.start()
            net.wait_ready(timeout_s=180)
            figures = asyncio.run(_bench(net, args.flows, args.energy))
        finally:
            net.stop()
    figures["validators_per_shard"] = "topology" if args.full else 1
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
