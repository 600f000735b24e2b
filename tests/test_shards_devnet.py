"""Cross-shard flows through real processes: the three-level tree as a devnet.

Every shard of ``genesis/three-levels.toml`` runs as its own chain (one node process per
operator index serving all its shards, a relayer process carrying the packets), with the
market deployed in each. Over the public HTTP API only, a consumer in
``ch/zurich/oerlikon`` buys the consumer side of a token a producer in
``ch/bern/breitenrain`` offers (five shards, four bridges):

1. the flow commits on every hop, and at settlement each level's grid operator collects
   exactly its bridges' fees and the producer the price;
2. a second purchase over a bridge's capacity is refused by the quote (verified reads of
   every path shard's ``link`` and ``reserved``) before anything is locked;
3. a third purchase whose relayer dies after carrying the reserve one hop is refunded on
   every hop once its deadline has passed and a relayer runs again.

Every figure is read with a proof and verified against the shard's genesis validators.

Short form (``make test``, about a minute): one validator per shard, a 10-second
elementary period, no observers. Full form, the topology's own validator counts (24
validators in 4 processes), an observer per shard and two relayers::

    GRIDLEDGER_SHARDS_DEVNET_FULL=1 .venv/bin/pytest tests/test_shards_devnet.py
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from cli.tree_client import DESTINATION, ORIGIN, TreeClient, create_tree
from ledger.httpclient import ApiError, Client
from shards.errors import FlowRefused
from shards.flow import edge_fee
from shards.relayer import Channel, Relayer, ShardEndpoint

pytestmark = pytest.mark.slow

FULL = bool(os.environ.get("GRIDLEDGER_SHARDS_DEVNET_FULL"))
PERIOD_S = 10
# The market's gate closes one period before delivery: tokens must be emitted and their
# sides sold before it.
MARKET = {"gate_closure_lead_s": PERIOD_S, "postpone_s": PERIOD_S}
PATH = ("ch/zurich/oerlikon", "ch/zurich", "ch", "ch/bern", "ch/bern/breitenrain")
ENERGY_1, ENERGY_2, ENERGY_3 = 100_000, 350_000, 50_000
PRICE = 5_000


async def _wait_until(t: float) -> None:
    while time.time() < t:
        await asyncio.sleep(min(0.2, max(0.0, t - time.time())))


async def _story(net) -> dict:
    out: dict = {}
    async with TreeClient(net) as tree:
        topology = tree.topology
        # The first period whose gate closes at least 35 s from now: the flows below
        # have that long to reach the destination; settlement follows when it begins.
        period = (int(time.time()) + 35 + PERIOD_S - topology.genesis_time) // PERIOD_S + 1
        start = tree.period_start(period)
        out["start"] = start
        await asyncio.gather(tree.rate(ORIGIN, "consumer"), tree.rate(DESTINATION, "producer"))
        await tree.fund(ORIGIN, "consumer", 10_000_000)
        [token_1] = await tree.offer_tokens("producer", DESTINATION, 1, ENERGY_1, period, PRICE)
        [token_3] = await tree.offer_tokens("producer", DESTINATION, 1, ENERGY_3, period, PRICE)
        operators = {s: tree.address(tree.operator(s)) for s in PATH}

        async def balances() -> dict:
            values = {s: await tree.balance(s, operators[s]) for s in PATH}
            values["consumer"] = await tree.balance(ORIGIN, "consumer")
            values["producer"] = await tree.balance(DESTINATION, "producer")
            return values

        out["before"] = await balances()

        # 1. A purchase across five shards.
        quote_1 = await tree.quote(ORIGIN, DESTINATION, ENERGY_1, period, period)
        out["quote_1"] = quote_1
        opened = await tree.open_flow("consumer", ORIGIN, DESTINATION, token_1, PRICE, ENERGY_1, period,
                                      quote_1.total_fee, start)
        flow_1 = opened.receipt.result
        await tree.wait_flow(ORIGIN, flow_1, ("committed", "refunded"), timeout_s=60)
        out["flow_1_committed"] = {s: await tree.flow(s, flow_1) for s in PATH}
        out["after_commit"] = await balances()

        # 2. Over a bridge's capacity: the quote refuses before anything is locked.
        next_flow = await tree.read(ORIGIN, "bridge", "next_flow", [])
        try:
            await tree.quote(ORIGIN, DESTINATION, ENERGY_2, period, period)
            out["quote_2"] = None
        except FlowRefused as exc:
            out["quote_2"] = exc
        out["after_quote_2"] = (await tree.read(ORIGIN, "bridge", "next_flow", []), next_flow,
                                await tree.balance(ORIGIN, "consumer"))

        # 3. The relayer dies after carrying the reserve one hop.
        relayers = [p.name for p in net.processes if p.kind == "relayer"]
        for name in relayers:
            net.kill(name)
        quote_3 = await tree.quote(ORIGIN, DESTINATION, ENERGY_3, period, period)
        deadline = int(time.time()) + 8
        before_3 = await tree.balance(ORIGIN, "consumer")
        opened = await tree.open_flow("consumer", ORIGIN, DESTINATION, token_3, PRICE, ENERGY_3, period,
                                      quote_3.total_fee, deadline)
        flow_3 = opened.receipt.result
        out["flow_3_locked"] = (before_3, await tree.balance(ORIGIN, "consumer"), quote_3.total_fee)
        endpoints = {s: ShardEndpoint(s, net.url(s), tree.genesis[s].validators, tree.genesis[s].protocol) for s in PATH}
        one_hop = Relayer(tree.keys["relayer-0"], endpoints, [Channel(PATH[0], PATH[1])])
        try:
            out["one_hop_packets"] = await one_hop.relay_channel(Channel(PATH[0], PATH[1]))
        finally:
            await one_hop.close()
        out["flow_3_midway"] = {s: await tree.flow(s, flow_3) for s in PATH}
        await _wait_until(deadline + 2)
        net.start(relayers)
        await tree.wait_flow(ORIGIN, flow_3, ("refunded", "committed"), timeout_s=60)
        out["flow_3_final"] = {s: await tree.flow(s, flow_3) for s in PATH}
        out["after_refund"] = await tree.balance(ORIGIN, "consumer")

        # Settlement of the first flow once its period begins: each level collects its fee.
        await _wait_until(start + 1)
        for _ in range(20):
            settled = await tree.call("consumer", ORIGIN, "bridge", "settle", flow_1, expect_ok=False)
            if settled.ok or settled.receipt.error[0] != "not_due":
                break
            await asyncio.sleep(0.5)
        out["settle"] = settled
        await tree.wait_flow(DESTINATION, flow_1, ("settled",), timeout_s=60)
        out["flow_1_settled"] = {s: await tree.flow(s, flow_1) for s in PATH}
        out["after_settle"] = await balances()
        # Every shard node serves hand-over bundles (none yet: no validator set changed).
        async with Client(net.url(ORIGIN)) as c:
            try:
                await c.request("GET", "/v1/shards/handover/1")
                out["handover_1"] = None
            except ApiError as exc:
                out["handover_1"] = exc
    return out


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "net"
    net = create_tree(root, validators=None if FULL else 1, observers=FULL, period_s=PERIOD_S, market_params=MARKET,
                      relayers=2 if FULL else 1)
    try:
        net.start()
        net.wait_ready(timeout_s=240 if FULL else 120)
        yield asyncio.run(_story(net))
    except BaseException:
        for process in net.processes:
            path = net.log_file(process)
            if path.exists():
                print(f"--- {process.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        raise
    finally:
        net.stop()


def fees(energy: int) -> dict[str, int]:
    """Each level's fee for a flow along PATH: the edge's parent charges it (three-levels.toml)."""
    return {"ch/zurich/oerlikon": 0, "ch/zurich": edge_fee(energy, 5), "ch": 2 * edge_fee(energy, 3),
            "ch/bern": edge_fee(energy, 4), "ch/bern/breitenrain": 0}


def test_a_flow_across_five_shards_commits_on_every_hop(story):
    records = story["flow_1_committed"]
    assert [records[s].phase for s in PATH] == ["committed"] * 5
    assert story["quote_1"].path == PATH
    assert {h.shard: h.fee for h in story["quote_1"].hops} == fees(ENERGY_1)
    # The consumer paid the price and the fees (the whole budget: no level charged less).
    assert story["before"]["consumer"] - story["after_commit"]["consumer"] == PRICE + sum(fees(ENERGY_1).values())


def test_every_shard_node_serves_hand_over_bundles_and_says_why_one_is_missing(story):
    missing = story["handover_1"]
    assert missing is not None and missing.code == "not_found"
    assert "no validator epoch 1 is recorded yet" in missing.message


def test_settlement_pays_each_level_its_own_grid_fee_and_the_producer_the_price(story):
    assert story["settle"].ok, story["settle"].receipt.error
    assert [story["flow_1_settled"][s].phase for s in PATH] == ["settled"] * 5
    before, after = story["before"], story["after_settle"]
    for shard, fee in fees(ENERGY_1).items():
        assert after[shard] - before[shard] == fee, shard
    assert after["producer"] - before["producer"] == PRICE


def test_a_purchase_over_a_bridge_capacity_is_refused_by_the_quote_before_anything_is_locked(story):
    refusal = story["quote_2"]
    assert isinstance(refusal, FlowRefused) and refusal.code == "capacity_exceeded"
    # Oerlikon's bridge: 400,000 Wh per period, 100,000 already reserved by the first flow.
    assert "ch/zurich -> ch/zurich/oerlikon has 300000 Wh left" in refusal.message
    next_flow_after, next_flow_before, consumer = story["after_quote_2"]
    assert next_flow_after == next_flow_before
    assert consumer == story["after_commit"]["consumer"]


def test_a_flow_whose_relayer_dies_midway_is_refunded_on_every_hop_after_its_deadline(story):
    before, locked, budget = story["flow_3_locked"]
    assert before - locked == PRICE + budget
    assert story["one_hop_packets"] == 1
    midway = story["flow_3_midway"]
    assert midway[PATH[0]].phase == "locked" and midway[PATH[1]].phase == "reserved"
    assert all(midway[s] is None for s in PATH[2:])
    final = story["flow_3_final"]
    # The next hop refused the reserve after the deadline; the refund went back hop by hop.
    assert [final[s].phase for s in PATH[:3]] == ["refunded"] * 3
    assert final[PATH[2]].reason.startswith("timeout")
    assert all(final[s] is None for s in PATH[3:])
    assert all(final[s].held == 0 for s in PATH[:3])
    assert story["after_refund"] == before


TWO_SHARDS = """
genesis_time = 1767225600
period_s = 900

[shards."ch"]
protocol = "bft"
checkpoint_interval = 16
validators = 1

[shards."ch/zurich"]
protocol = "raft"
checkpoint_interval = 16
validators = 1

[bridges."ch/zurich"]
capacity_wh = 1000000
fee_per_kwh = 3
"""


def test_devnet_up_with_a_topology_shows_every_shard_in_status_and_down_stops_every_process(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from cli.devnet import _alive
    from cli.devnet_shards import ShardDevnet

    topology = tmp_path / "two.toml"
    topology.write_text(TWO_SHARDS)
    root = tmp_path / "net"

    def gridledger(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "cli.main", "devnet", *args, "--dir", str(root)], capture_output=True,
                              text=True, timeout=180, cwd=Path(__file__).resolve().parent.parent)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    try:
        up = gridledger("up", "--topology", str(topology))
        assert "devnet of 2 shards is up" in up.stdout
        net = ShardDevnet.load(root)
        assert sorted(p.name for p in net.processes) == ["observers", "relayer-0", "validator-0"]
        deadline = time.monotonic() + 60
        while True:
            rows = json.loads(gridledger("status", "--json").stdout)
            heights = {(r["shard"], r["role"]): r.get("height") for r in rows if r["role"] != "relayer"}
            if all(h is not None and h >= 1 for h in heights.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert set(heights) == {("ch", "validator"), ("ch", "observer"), ("ch/zurich", "validator"),
                                ("ch/zurich", "observer")}
        assert all(h is not None and h >= 1 for h in heights.values()), heights
        text = gridledger("status").stdout
        assert "ch/zurich" in text and "height" in text and "relayer" in text
        assert '"relayer started"' in gridledger("logs", "relayer-0", "--lines", "100000").stdout
    finally:
        gridledger("down", check=False)
    assert not any(p.pid is not None and _alive(p.pid) for p in ShardDevnet.load(root).processes)
    # `up` again restarts the same tree with its data.
    try:
        gridledger("up")
        assert ShardDevnet.load(root).shard_heights()["ch"] >= 1
    finally:
        gridledger("down", check=False)
