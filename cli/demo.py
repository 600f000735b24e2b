"""``gridledger demo``: one day of the energy market, on a local devnet of real nodes.

Four grid operators start the validators of one shard (BFT, pinned TLS between
them) and a regulator starts an observer. Then the market plays MARKET.md section 13
over the public API (``cli.market_story``): the grid operator admits producers, a
trader and consumers and registers their meters; a bank issues tokenised Swiss francs;
energy tokens are emitted, split, merged and traded; gate closure freezes them; the
meters sign readings that deviate in all four directions; the grid operator
reconciles, charges grid fees and runs settlement, in which one consumer cannot pay
and defaults. Every movement of money is printed: who paid whom, and why. The
regulator reads the final balances from its own observer and verifies each one
without trusting any validator. Then the leading validator is killed: the others
change view and keep committing, and the killed one catches up when it returns.

Everything runs as real processes on loopback under a temporary directory (or
``--dir``), and is stopped at the end (``--keep`` leaves it running). Time is real:
the elementary period is ``--period`` seconds (default 4), so the story takes about
a minute.

Then the grid at three levels (``cli.shards_story``): the seven shards of
``genesis/three-levels.toml`` start as their own chains, with a relayer carrying packets
between neighbours and the regulator's observer of every shard. A consumer in Oerlikon
buys a producer's energy in Breitenrain across five shards and four bridges: the quote,
the flow locked, reserved and committed hop by hop, a purchase over a bridge's capacity
refused, the meters' readings reconciled in each shard, each level's grid fee collected
at settlement, and every figure read back and verified from the observers. About two
minutes more; ``--part market`` or ``--part tree`` tells one half only. The tree runs
the topology's own validator counts (24 validators in 4 processes);
``--tree-validators N`` gives every shard N instead (1 is lighter on a small machine).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from cli.devnet import Devnet
from cli.devnet_shards import ShardDevnet
from cli.market_story import (
    ACCOUNTS,
    CURRENCY,
    LABELS,
    MarketStory,
    StoryError,
    chf,
    create_market_devnet,
)
from cli.shards_story import TreeStory, create_demo_tree
from cli.tree_client import TreeError
from ledger.client import ProofError
from ledger.genesis import Genesis
from ledger.httpclient import ApiError, SyncClient
from shards.errors import BridgeError

# MARKET.md section 13's final balances; the demo's keys sort like the names, so it must end with them.
DOCUMENTED = {
    "grid_operator": 51_975, "bank": 16, "co2_authority": 99, "solar": 4_066, "wind": 3_806,
    "trader": 2_757, "consumer1": 17_162, "consumer2": 119, "settlement_account": 0,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the demo story on a local devnet", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--dir", help="devnet directory (default: a temporary one, removed at the end)")
    demo.add_argument("--keep", action="store_true", help="leave the devnet running at the end")
    demo.add_argument("--period", type=int, default=4, help="elementary period in seconds (default 4)")
    demo.add_argument("--part", choices=("all", "market", "tree"), default="all",
                      help="market: the one-shard market day; tree: the three-level tree; all: both (default)")
    demo.add_argument("--tree-validators", type=int, default=0,
                      help="validators per shard of the tree (default 0: the topology's own counts, 26 in all)")
    demo.set_defaults(func=cmd_demo)


def say(text: str = "") -> None:
    print(text, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gridledger-demo-"))
    if (root / "tree" / "devnet.json").exists():
        ShardDevnet.load(root / "tree").stop()
    if (root / "devnet.json").exists():
        Devnet.load(root).stop()
    if (root / "devnet.json").exists() or (root / "tree" / "devnet.json").exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    section = 1
    if args.part in ("all", "market"):
        rc, section = _market(root, args)
        if rc != 0:
            return rc
    if args.part in ("all", "tree"):
        rc = _tree(root, args, section)
        if rc != 0:
            return rc
    say(f"\nThe demo took {time.monotonic() - started:.0f} s.")
    if args.keep:
        say(f"Everything keeps running in {root}: `gridledger devnet status --dir {root}`"
            + (f" and `--dir {root / 'tree'}`" if args.part == "all" else ""))
    elif not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _market(root: Path, args: argparse.Namespace) -> tuple[int, int]:
    """The one-shard market day and the leader's crash; returns (exit code, next section)."""
    say("gridledger demo: one day of the energy market on a shard of the Swiss grid, run by four grid operators\n")
    net = create_market_devnet(root, period_s=args.period, validators=4, observers=1, protocol="bft",
                               chain_id="ch/demo", documented_order=True)
    genesis = Genesis.load(root / "genesis.json")
    try:
        return 0, _story(net, genesis)
    except (ApiError, StoryError, SystemExit) as exc:
        say(f"\nthe demo stopped: {exc}")
        say(f"node logs are in {root}/nodes/*/node.log")
        return 1, 0
    finally:
        if not args.keep:
            net.stop()


def _tree(root: Path, args: argparse.Namespace, section: int) -> int:
    """The three-level tree: a purchase across five shards, delivered, reconciled, settled
    and read back by the regulator."""
    validators = None if args.tree_validators == 0 else args.tree_validators
    if args.part == "tree":
        say("gridledger demo: the energy market across the three levels of the Swiss grid, one chain per shard")
    say(f"\n{section}. The grid at three levels: every shard of genesis/three-levels.toml starts as its own chain")
    net = create_demo_tree(root / "tree", validators=validators)
    try:
        began = time.monotonic()
        net.start()
        net.wait_ready(timeout_s=300)
        nodes = net.nodes
        say(f"   {sum(n.role == 'validator' for n in nodes)} validators and {sum(n.role == 'observer' for n in nodes)} "
            f"observers of {len(net.shards)} shards in {len(net.processes)} processes are up after "
            f"{time.monotonic() - began:.0f} s ({net.root})")
        asyncio.run(TreeStory(net, say=say, first_section=section + 1).run())
        return 0
    except (ApiError, StoryError, TreeError, BridgeError, ProofError, SystemExit) as exc:
        say(f"\nthe demo stopped: {exc}")
        say(f"process logs are in {net.root}/processes/*/process.log")
        return 1
    finally:
        if not args.keep:
            net.stop()


def _story(net: Devnet, genesis: Genesis) -> int:
    vset = genesis.validators
    say(f"1. Keys and genesis ({net.root})")
    for v in vset:
        say(f"   validator {v.name}: node key {v.node_key.hex()[:16]}..., BLS key with proof of possession")
    vset.verify_proofs_of_possession()
    say(f"   every BLS proof of possession verifies; a quorum is {vset.bft_quorum} of {vset.n} (tolerates {vset.f} faulty)")
    for name, roles in ACCOUNTS.items():
        role = ", ".join(roles) if roles else ("admitted by the grid operator" if not name.startswith("meter_")
                                               else "registered by the grid operator")
        say(f"   {LABELS[name]:<20} {net.account_key(name).address}  {role}")
    say(f"   genesis deploys the market's system contracts; the bank's {CURRENCY} carry a 10 bp issuer fee")

    say("\n2. The validators start and connect over mutually authenticated TLS; the regulator's observer follows")
    net.start()
    net.wait_ready()
    say(f"   {len(net.validators())} validators and 1 observer are up (shard {genesis.chain_id})")

    with MarketStory(net, say=say, first_section=3) as story:
        balances = story.run()
        same = all(balances[n] == v for n, v in DOCUMENTED.items())
        say("   these are MARKET.md section 13's figures, to the unit" if same
            else "   WARNING: these differ from MARKET.md section 13's figures")

        story.heading("A validator fails: the leader is killed")
        leader = _leader(net)
        before = _height(net, net.observers()[0])
        net.kill(leader.name, signal.SIGKILL)
        say(f"   {leader.name} (the leader) was killed with SIGKILL at height {before}")
        other = net.validators()[(net.validators().index(leader) + 1) % len(net.validators())]
        with SyncClient(other.url, timeout=40.0) as node:
            payment = story.accounts["consumer1"].call("fiat", "transfer", [CURRENCY, story.address["solar"].raw, 1_00])
            result = node.submit(payment, wait=True, timeout_s=30)
        if not result.ok:
            raise StoryError(f"the payment after the crash was not committed: {result.status} {result.error}")
        new_leader = _leader(net)
        say(f"   the others changed view; {new_leader.name if new_leader else 'a new leader'} leads, "
            f"and consumer 1 paid the solar producer {chf(1_00)} at height {result.height}")
        net.start([leader.name])
        net.wait_ready(names=[leader.name])
        deadline = time.time() + 30
        while time.time() < deadline and _height(net, leader) < result.height:
            time.sleep(0.2)
        say(f"   {leader.name} restarted from its store and consensus records and caught up to height {_height(net, leader)}")

        story.heading("Every node holds the same chain")
        heights = {n.name: _height(net, n) for n in net.nodes}
        common = min(heights.values())
        roots = set()
        for n in net.nodes:
            with SyncClient(n.url) as c:
                roots.add(c.block(common).header.state_root)
        say(f"   at height {common} all {len(net.nodes)} nodes have the state root {roots.pop().hex()[:16]}..."
            if len(roots) == 1 else f"   DIVERGENCE at height {common}: {len(roots)} different roots")
        return story.section


def _height(net: Devnet, node) -> int:
    for row in net.status():
        if row["name"] == node.name:
            return int(row.get("height") or 0)
    return 0


def _leader(net: Devnet):
    for row in net.status():
        if row.get("is_leader"):
            return net.node(row["name"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="gridledger demo")
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["demo"] + sys.argv[1:])
    sys.exit(args.func(args))
