"""``gridledger demo``: the story gridledger can tell today, on a local devnet.

Four grid operators start the validators of one shard (BFT, pinned TLS between
them) and a regulator starts an observer. A bank issues tokenised Swiss francs, a
household pays a solar producer, the regulator reads the balances from its own
observer and verifies each one (certificate, header, state proof) without trusting
any validator. Then the leading validator is killed: the others change view and keep
committing, and the killed one catches up when it returns.

Everything runs as real processes on loopback under a temporary directory (or
``--dir``), and is stopped at the end (``--keep`` leaves it running).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from cli.devnet import Devnet
from ledger.client import Account, verify_read
from ledger.genesis import Genesis
from ledger.httpclient import ApiError, SyncClient

# The franc token the demo's bank issues: 1 CHF = 100 minor units (Rappen).
CHF_TOKEN = '''
"""Tokenised Swiss francs, issued 1:1 against deposits by one bank."""

balances = Map(default=0)
issuer = Value(default=None)
supply = Value(default=0)

Minted = Event("to", "amount", "deposit_ref", indexed=["to"])
Transfer = Event("sender", "to", "amount", "memo", indexed=["sender", "to"])


@constructor
def setup(bank: Address):
    issuer.set(bank)


@export
def mint(to: Address, amount: int, deposit_ref: str):
    require(ctx.sender == issuer.get(), "only the issuing bank mints francs")
    require(amount > 0, "amount must be positive")
    balances[to] += amount
    supply.set(supply.get() + amount)
    Minted.emit(to=to, amount=amount, deposit_ref=deposit_ref)


@export
def transfer(to: Address, amount: int, memo: str):
    require(amount > 0, "amount must be positive")
    require(balances[ctx.sender] >= amount, "insufficient balance")
    balances[ctx.sender] -= amount
    balances[to] += amount
    Transfer.emit(sender=ctx.sender, to=to, amount=amount, memo=memo)
'''

PARTICIPANTS = {
    "grid-operator": ["grid_operator", "deployer"],
    "bank": ["bank"],
    "solar-farm": ["producer"],
    "household": ["consumer"],
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the demo story on a local devnet", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--dir", help="devnet directory (default: a temporary one, removed at the end)")
    demo.add_argument("--keep", action="store_true", help="leave the devnet running at the end")
    demo.set_defaults(func=cmd_demo)


def say(text: str = "") -> None:
    print(text, flush=True)


def chf(minor: int) -> str:
    return f"CHF {minor // 100:,}.{minor % 100:02d}"


def cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gridledger-demo-"))
    if (root / "devnet.json").exists():
        Devnet.load(root).stop()
        shutil.rmtree(root)
    say("gridledger demo: one shard of the Swiss grid, run by four grid operators\n")
    net = Devnet.create(root, validators=4, observers=1, protocol="bft", chain_id="ch/demo", accounts=PARTICIPANTS)
    genesis = Genesis.load(root / "genesis.json")
    try:
        return _story(net, genesis, keep=args.keep)
    except (ApiError, SystemExit) as exc:
        say(f"\nthe demo stopped: {exc}")
        say(f"node logs are in {root}/nodes/*/node.log")
        return 1
    finally:
        if not args.keep:
            net.stop()
            if not args.dir:
                shutil.rmtree(root, ignore_errors=True)


def _story(net: Devnet, genesis: Genesis, *, keep: bool) -> int:
    vset = genesis.validators
    say(f"1. Keys and genesis ({net.root})")
    for v in vset:
        say(f"   validator {v.name}: node key {v.node_key.hex()[:16]}..., BLS key with proof of possession")
    vset.verify_proofs_of_possession()
    say(f"   every BLS proof of possession verifies; a quorum is {vset.bft_quorum} of {vset.n} (tolerates {vset.f} faulty)")
    keys = {name: net.account_key(name) for name in PARTICIPANTS}
    for name, key in keys.items():
        say(f"   participant {name:<14} {key.address}  roles: {', '.join(PARTICIPANTS[name])}")

    say("\n2. The validators start and connect over mutually authenticated TLS; the regulator's observer follows")
    net.start()
    net.wait_ready()
    validator = net.validators()[0]
    observer = net.observers()[0]
    say(f"   {len(net.validators())} validators and 1 observer are up (shard {genesis.chain_id})")

    accounts = {name: Account(key, chain_id=genesis.chain_id) for name, key in keys.items()}
    with SyncClient(validator.url) as node:
        def send(who: str, contract: str, function: str, fn_args: list, what: str):
            started = time.perf_counter()
            result = node.submit(accounts[who].call(contract, function, fn_args), wait=True, timeout_s=20)
            ms = (time.perf_counter() - started) * 1000
            if result.status != "committed" or not result.receipt.ok:
                error = result.receipt.error if result.receipt else result.error
                raise SystemExit(f"{what} was not committed: {result.status} {error}")
            say(f"   {what}: committed at height {result.height} in {ms:.0f} ms")
            return result

        say("\n3. The grid operator deploys the franc token; the bank is its issuer")
        send("grid-operator", "system", "deploy", ["chf", CHF_TOKEN, [keys["bank"].address.raw]], "deploy contract chf")
        say("\n4. Money moves, every transaction signed by its owner's key")
        send("bank", "chf", "mint", [keys["household"].address.raw, 250_00, "deposit 2026-11-25/0042"],
             f"bank issues {chf(250_00)} to the household against a deposit")
        send("household", "chf", "transfer", [keys["solar-farm"].address.raw, 42_50, "November solar energy"],
             f"household pays the solar farm {chf(42_50)}")
        refused = node.submit(accounts["solar-farm"].call("chf", "mint", [keys["solar-farm"].address.raw, 1_000_00, "forged"]),
                              wait=True, timeout_s=20)
        say(f"   the solar farm tries to mint francs itself: refused by the contract ({refused.receipt.error[1]!r}); "
            "nothing changed but its nonce")

    say("\n5. The regulator reads balances from its own observer and verifies each one")
    time.sleep(0.5)
    with SyncClient(observer.url) as reg:
        for name in ("household", "solar-farm", "bank"):
            read = reg.read_state("chf", "balances", [keys[name].address.raw])
            value = verify_read(read, vset)
            signers = len(read.certificate.signatures)
            kind = "proof" if value is not None else "proof of absence"
            say(f"   {name:<11} {chf(value or 0):>12}   proven at height {read.header.height}: "
                f"state root {read.header.state_root.hex()[:16]}..., {len(read.proof)}-byte {kind}, "
                f"certificate signed by {signers} validators: verified")
        supply = reg.state("chf", "supply", [], verify_with=vset)
        say(f"   francs in circulation: {chf(supply)} (equal to the bank's deposits)")

    say("\n6. A validator fails: the leader is killed")
    leader = _leader(net)
    before = _height(net, observer)
    net.kill(leader.name, signal.SIGKILL)
    say(f"   {leader.name} (the leader) was killed with SIGKILL at height {before}")
    with SyncClient(net.validators()[(net.validators().index(leader) + 1) % 4].url) as node:
        result = node.submit(accounts["household"].call("chf", "transfer", [keys["solar-farm"].address.raw, 7_25, "balancing"]),
                             wait=True, timeout_s=30)
    new_leader = _leader(net)
    say(f"   the other three changed view; {new_leader.name if new_leader else 'a new leader'} leads, "
        f"and a payment of {chf(7_25)} committed at height {result.height}")
    net.start([leader.name])
    net.wait_ready(names=[leader.name])
    deadline = time.time() + 30
    while time.time() < deadline and _height(net, leader) < result.height:
        time.sleep(0.2)
    say(f"   {leader.name} restarted from its store and consensus records and caught up to height {_height(net, leader)}")

    say("\n7. Every node holds the same chain")
    heights = {n.name: _height(net, n) for n in net.nodes}
    common = min(heights.values())
    roots = set()
    for n in net.nodes:
        with SyncClient(n.url) as c:
            roots.add(c.block(common).header.state_root)
    say(f"   at height {common} all {len(net.nodes)} nodes have the state root {roots.pop().hex()[:16]}..."
        if len(roots) == 1 else f"   DIVERGENCE at height {common}: {len(roots)} different roots")
    if keep:
        say(f"\nThe devnet keeps running in {net.root}: `gridledger devnet status --dir {net.root}`")
    else:
        say("\nStopping the devnet.")
    return 0


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
