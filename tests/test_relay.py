"""``gridledger relay``: configuration, and the relayer against real node processes.

A two-shard tree (``ch`` and its child ``ch/zurich``, one validator each, served by one
node process, checkpoints every 4 blocks so that light-client horizons come soon) with the market deployed: a consumer in ``ch/zurich`` buys from a producer
in ``ch``, so each flow sends a reserve up and a result down. The relayers are the
devnet's ``gridledger relay`` process and, where a test must control the timing,
:class:`shards.relayer.Relayer` objects in the test process.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from nodeproc import TamperingProxy

from cli.devnet_shards import ShardDevnet
from cli.relay import RelayConfig, RelayConfigError
from cli.tree_client import TreeClient
from ledger.statekeys import state_key
from shards.lightclient import LightClient
from shards.relayer import (
    Channel,
    Relayer,
    RelayError,
    ShardEndpoint,
    channels_between,
    read_proven,
)

pytestmark = pytest.mark.slow

TOPOLOGY = """
genesis_time = 1767225600
period_s = 900

[shards."ch"]
protocol = "bft"
checkpoint_interval = 4
validators = 1

[shards."ch/zurich"]
protocol = "bft"
checkpoint_interval = 4
validators = 1

[bridges."ch/zurich"]
capacity_wh = 1000000
fee_per_kwh = 3
"""
UP, DOWN = Channel("ch/zurich", "ch"), Channel("ch", "ch/zurich")
ENERGY, PRICE = 1_000, 100


# ---------------------------------------------------------------------- configuration


def test_channels_between_pairs_every_parent_and_child_both_ways():
    got = channels_between(["ch", "ch/zurich", "ch/bern", "ch/zurich/oerlikon", "ch/bern/bethlehem/x"])
    assert sorted(got) == sorted([UP, DOWN, Channel("ch/bern", "ch"), Channel("ch", "ch/bern"),
                                  Channel("ch/zurich/oerlikon", "ch/zurich"), Channel("ch/zurich", "ch/zurich/oerlikon")])


@pytest.mark.parametrize("text, message", [
    ('key_file = "k.json"\n[shards."ch"]\nurl = "http://a"\ngenesis = "g"\n', "shards must list at least two shards"),
    ('[shards."ch"]\nurl = "http://a"\ngenesis = "g"\n[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n',
     "key_file is required"),
    ('key_file = "k"\n[shards."ch"]\nurl = "ftp://a"\ngenesis = "g"\n[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n',
     'shards."ch".url must be an http'),
    ('key_file = "k"\npoll_ms = "fast"\n[shards."ch"]\nurl = "http://a"\ngenesis = "g"\n'
     '[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n', "poll_ms must be an integer"),
    ('key_file = "k"\nchannels = [["ch", "ch/bern"]]\n[shards."ch"]\nurl = "http://a"\ngenesis = "g"\n'
     '[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n', "channels: 'ch/bern' is not among the shards listed"),
    ('key_file = "k"\nspeed = 1\n', "unknown field(s) ['speed']"),
    ('key_file = "k"\n[shards."ch"]\nurls = []\ngenesis = "g"\n[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n',
     'shards."ch".urls must be a list of http'),
    ('key_file = "k"\n[shards."ch"]\nurl = "http://a"\nurls = ["http://a"]\ngenesis = "g"\n'
     '[shards."ch/z"]\nurl = "http://b"\ngenesis = "g"\n', 'shards."ch" needs url or urls (not both)'),
])
def test_a_bad_relay_config_names_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(RelayConfigError) as caught:
        RelayConfig.load(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_relay_config_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('key_file = "keys/r.json"\n[http]\nport = 0\n[shards."ch"]\nurl = "http://a:1"\ngenesis = "g/ch.json"\n'
                    '[shards."ch/z"]\nurl = "https://b:2"\ngenesis = "/abs/z.json"\n')
    config = RelayConfig.load(path)
    assert config.key_file == str(tmp_path / "keys/r.json") and config.http_port == 0
    assert config.shards == {"ch": (("http://a:1",), str(tmp_path / "g/ch.json")), "ch/z": (("https://b:2",), "/abs/z.json")}


# ---------------------------------------------------------------------- against real nodes


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("relay")
    (root / "topology.toml").write_text(TOPOLOGY)
    net = ShardDevnet.create(root / "net", root / "topology.toml", observers=False, relayers=2,
                             story={"consumer": {"ch/zurich": ["consumer"]}, "producer": {"ch": ["producer"]}})
    try:
        net.start([p.name for p in net.processes if p.kind == "node"])
        net.wait_ready(timeout_s=120)

        async def setup() -> None:
            async with TreeClient(net) as client:
                await asyncio.gather(client.rate("ch/zurich", "consumer"), client.rate("ch", "producer"))
                await client.fund("ch/zurich", "consumer", 10**8)

        asyncio.run(setup())
        yield net
    except BaseException:
        for process in net.processes:
            path = net.log_file(process)
            if path.exists():
                print(f"--- {process.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        raise
    finally:
        net.stop()


def _endpoints(net: ShardDevnet, client: TreeClient, urls: dict[str, str] | None = None) -> dict[str, ShardEndpoint]:
    return {s: ShardEndpoint(s, (urls or {}).get(s, net.url(s)), client.genesis[s].validators, client.genesis[s].protocol)
            for s in net.shards}


async def _open_flow(client: TreeClient) -> bytes:
    period = client.period_now() + 6
    [token] = await client.offer_tokens("producer", "ch", 1, ENERGY, period, PRICE)
    quote = await client.quote("ch/zurich", "ch", ENERGY, period, period)
    opened = await client.open_flow("consumer", "ch/zurich", "ch", token, PRICE, ENERGY, period, quote.total_fee,
                                    int(time.time()) + 600)
    return opened.receipt.result


async def _counter(client: TreeClient, shard: str, name: str, neighbour: str) -> int:
    return await client.read(shard, "bridge", name, [neighbour]) or 0


def test_two_relayers_racing_on_one_channel_deliver_each_packet_once(tree):
    async def run() -> None:
        async with TreeClient(tree) as client:
            flow_id = await _open_flow(client)
            endpoints = _endpoints(tree, client)
            first = Relayer(client.keys["relayer-0"], endpoints, [UP, DOWN])
            second = Relayer(client.keys["relayer-1"], endpoints, [UP, DOWN])
            try:
                handled = await _counter(client, "ch", "recv_seq", "ch/zurich")
                sent = await _counter(client, "ch/zurich", "send_seq", "ch")
                assert sent == handled + 1
                # Both build the same delivery from the same state, then both submit it.
                built = [await first.prepare(UP), await second.prepare(UP)]
                assert built[0].encode() == built[1].encode() and len(built[0].items) == 1
                a, b = await asyncio.gather(first.submit(UP, built[0]), second.submit(UP, built[1]))
                assert sorted([a, b]) == [0, 1]
                assert first.stats.duplicates + second.stats.duplicates == 1
                assert await _counter(client, "ch", "recv_seq", "ch/zurich") == sent
                # A third try finds nothing to do; the result then comes back down, raced again.
                assert await first.relay_channel(UP) == 0
                deadline = time.monotonic() + 30
                while (record := await client.flow("ch/zurich", flow_id)).phase != "committed":
                    assert time.monotonic() < deadline, record.phase
                    await asyncio.gather(first.round(), second.round())
                sent_up = await _counter(client, "ch/zurich", "send_seq", "ch")
                sent_down = await _counter(client, "ch", "send_seq", "ch/zurich")
                assert await _counter(client, "ch", "recv_seq", "ch/zurich") == sent_up
                assert await _counter(client, "ch/zurich", "recv_seq", "ch") == sent_down
                assert (await client.flow("ch", flow_id)).phase == "committed"
                # Every packet sent during the test was handled exactly once, by one of the two.
                assert first.stats.packets + second.stats.packets == 2
                assert not first.stats.failures and not second.stats.failures
            finally:
                await first.close()
                await second.close()

    asyncio.run(run())


def test_the_relayer_submits_nothing_that_a_lying_node_serves(tree):
    def tamper(path: str, body: dict):
        if not path.startswith("/v1/state/proofs"):
            return None
        for item in body["values"]:
            if item["found"] and len(item["value_hex"]) > 20:  # a packet: flip one byte of its text
                raw = bytearray.fromhex(item["value_hex"])
                raw[-1] ^= 1
                item["value_hex"] = raw.hex()
                return body
        return None

    async def run() -> None:
        async with TreeClient(tree) as client:
            await _open_flow(client)
            with TamperingProxy([tree.url("ch/zurich")], tamper) as proxy:
                relayer = Relayer(client.keys["relayer-0"], _endpoints(tree, client, {"ch/zurich": proxy.url}), [UP])
                nonce = await client.clients["ch"].next_nonce(client.keys["relayer-0"].address)
                handled = await _counter(client, "ch", "recv_seq", "ch/zurich")
                try:
                    with pytest.raises(RelayError) as caught:
                        await relayer.relay_channel(UP)
                finally:
                    await relayer.close()
                assert caught.value.code == "bad_proof" and proxy.tampered >= 1
            assert await client.clients["ch"].next_nonce(client.keys["relayer-0"].address) == nonce
            assert await _counter(client, "ch", "recv_seq", "ch/zurich") == handled
            # An honest relayer then carries the same packet.
            honest = Relayer(client.keys["relayer-0"], _endpoints(tree, client), [UP])
            try:
                assert await honest.relay_channel(UP) == 1
            finally:
                await honest.close()

    asyncio.run(run())


def _http_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(port: int, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_relayer_process_survives_a_node_restart_and_reports_health_and_metrics(tree):
    relayer = tree.process("relayer-0")
    tree.start(["relayer-0"])
    try:
        tree.wait_ready(timeout_s=60, names=["relayer-0"])
        status, body = _http_json(f"http://127.0.0.1:{relayer.http_port}/healthz")
        assert status == 200 and body["status"] == "ok"
        tree.kill("validator-0")
        time.sleep(1.5)
        assert _metric(relayer.http_port, "gridledger_relay_failures_total", 'code="unavailable"') > 0
        assert _http_json(f"http://127.0.0.1:{relayer.http_port}/healthz")[0] == 200  # still running its rounds
        tree.start(["validator-0"])
        tree.wait_ready(timeout_s=60, names=["validator-0"])
        before = _metric(relayer.http_port, "gridledger_relay_packets_delivered_total")

        async def run() -> str:
            async with TreeClient(tree) as client:
                flow_id = await _open_flow(client)
                return (await client.wait_flow("ch/zurich", flow_id, ("committed", "refunded"), timeout_s=60)).phase

        assert asyncio.run(run()) == "committed"
        assert _metric(relayer.http_port, "gridledger_relay_packets_delivered_total") >= before + 2
        assert _metric(relayer.http_port, "gridledger_relay_packets_delivered_total", 'channel="ch/zurich -> ch"') >= 1
        log = Path(tree.log_file(relayer)).read_text()
        assert '"delivered"' in log and "relay round failed" in log
    finally:
        tree.kill("relayer-0")


def test_state_proofs_of_several_keys_share_one_certified_header(tree):
    async def run() -> None:
        async with TreeClient(tree) as client:
            keys = [state_key("bridge", "send_seq", ["ch"]), state_key("bridge", "client", ["ch"]),
                    state_key("bridge", "outbox", ["ch", 10**6])]
            genesis = client.genesis["ch/zurich"]
            state = await read_proven(client.clients["ch/zurich"], "ch/zurich", keys, genesis.validators, genesis.protocol)
            assert state.header.chain_id == "ch/zurich" and state.certificate.height == state.header.height
            assert state.value(keys[1]) is not None and state.value(keys[2]) is None
            with pytest.raises(RelayError, match="wrong_shard"):
                await read_proven(client.clients["ch/zurich"], "ch", keys)

    asyncio.run(run())


def test_a_shard_of_a_tree_lists_the_topology_on_v1_shards(tree):
    async def run() -> list[dict]:
        async with TreeClient(tree) as client:
            return await client.clients["ch/zurich"].shards()

    shards = {s["shard"]: s for s in asyncio.run(run())}
    assert set(shards) == {"ch", "ch/zurich"}
    assert shards["ch/zurich"]["relation"] == "self" and shards["ch/zurich"]["height"] >= 1
    assert shards["ch"]["relation"] == "parent" and shards["ch"]["height"] is None and shards["ch"]["parent"] is None
    assert shards["ch/zurich"]["parent"] == "ch"


def test_a_relayer_must_be_a_member_of_the_destination_shard(tree):
    from ledger.crypto import PrivateKey

    async def run() -> None:
        async with TreeClient(tree) as client:
            await _open_flow(client)
            stranger = Relayer(PrivateKey.generate(), _endpoints(tree, client), [UP])
            handled = await _counter(client, "ch", "recv_seq", "ch/zurich")
            try:
                with pytest.raises(RelayError) as caught:
                    await stranger.relay_channel(UP)
            finally:
                await stranger.close()
            assert caught.value.code == "not_member"
            assert await _counter(client, "ch", "recv_seq", "ch/zurich") == handled
            member = Relayer(client.keys["relayer-1"], _endpoints(tree, client), [UP])
            try:
                assert await member.relay_channel(UP) == 1
            finally:
                await member.close()

    asyncio.run(run())


def test_a_relayer_turns_to_the_next_node_of_a_shard_when_one_does_not_answer(tree):
    from cli.devnet import _free_port

    dead = f"http://127.0.0.1:{_free_port()}"

    async def run() -> None:
        async with TreeClient(tree) as client:
            await _open_flow(client)
            endpoints = _endpoints(tree, client)
            endpoints["ch"] = ShardEndpoint("ch", (dead, tree.url("ch")), endpoints["ch"].validators, "bft")
            relayer = Relayer(client.keys["relayer-0"], endpoints, [UP])
            try:
                with pytest.raises(RelayError) as caught:
                    await relayer.relay_channel(UP)
                assert caught.value.code == "unavailable"
                assert relayer.client("ch").base_url == tree.url("ch")
                assert await relayer.relay_channel(UP) == 1
            finally:
                await relayer.close()

    asyncio.run(run())


def _client_of(value) -> LightClient:
    return LightClient.from_fields(value)


def test_an_idle_bft_bridge_is_refreshed_with_a_schedule_only_delivery(tree):
    async def run() -> None:
        async with TreeClient(tree) as client:
            relayer = Relayer(client.keys["relayer-0"], _endpoints(tree, client), [DOWN])
            try:
                handled = await _counter(client, "ch/zurich", "recv_seq", "ch")
                before = _client_of(await client.read("ch/zurich", "bridge", "client", ["ch"]))
                assert await relayer.refresh_channel(DOWN)  # no head given: refresh now
                after = _client_of(await client.read("ch/zurich", "bridge", "client", ["ch"]))
                head = (await client.clients["ch"].status())["height"]
            finally:
                await relayer.close()
            assert relayer.stats.refreshes == 1 and relayer.stats.packets == 0
            assert after.known_through > before.known_through and after.horizon() > head
            assert await _counter(client, "ch/zurich", "recv_seq", "ch") == handled

    asyncio.run(run())


def test_the_relayer_process_keeps_idle_bridges_within_their_horizon(tree):
    relayer = tree.process("relayer-1")
    tree.start(["relayer-1"])
    try:
        tree.wait_ready(timeout_s=60, names=["relayer-1"])
        # Idle: no packets; the sources' heads pass several checkpoint intervals (4 blocks).
        time.sleep(25)

        async def check() -> None:
            async with TreeClient(tree) as client:
                for src, dst in (("ch", "ch/zurich"), ("ch/zurich", "ch")):
                    known = _client_of(await client.read(dst, "bridge", "client", [src]))
                    head = (await client.clients[src].status())["height"]
                    assert head > 20 and head <= known.horizon(), (src, dst, head, known.horizon())

        asyncio.run(check())
        assert _metric(relayer.http_port, "gridledger_relay_refreshes_total") >= 2
    finally:
        tree.kill("relayer-1")


def test_a_delivery_that_runs_out_of_gas_is_split_until_its_packets_fit(tree):
    async def run() -> None:
        async with TreeClient(tree) as client:
            endpoints = _endpoints(tree, client)
            measure = Relayer(client.keys["relayer-0"], endpoints, [UP, DOWN])
            tight = None

            async def deliver(count: int) -> int:
                """Deliver the next ``count`` packets up in one transaction; its gas."""
                handled = await _counter(client, "ch", "recv_seq", "ch/zurich")
                # (A poll that saw fewer packets than the source holds plans within what it read.)
                delivery = await measure.prepare(UP, sent=handled + count)
                assert len(delivery.items) == count
                account = await measure._account("ch")
                tx = account.call("bridge", "deliver", [delivery.encode()], gas_limit=measure.gas_limit)
                result = await measure.client("ch").submit(tx, wait=True, timeout_s=30)
                assert result.receipt.ok, result.receipt.error
                return result.receipt.gas_used

            try:
                for _ in range(5):
                    await _open_flow(client)
                one, two = await deliver(1), await deliver(2)
                per_packet = two - one
                assert per_packet > 0
                # A relayer whose gas limit fits one such packet but not two.
                tight = Relayer(client.keys["relayer-1"], endpoints, [UP], gas_limit=one + per_packet // 2)
                handled = await _counter(client, "ch", "recv_seq", "ch/zurich")
                with pytest.raises(RelayError) as refused:
                    await tight.relay_channel(UP)  # the two packets left, in one delivery
                assert refused.value.code == "out_of_gas"
                assert await _counter(client, "ch", "recv_seq", "ch/zurich") == handled
                assert await tight.relay_channel(UP) == 1  # then one at a time
                assert await tight.relay_channel(UP) == 1
                assert await _counter(client, "ch", "recv_seq", "ch/zurich") == handled + 2
                while await measure.round():  # the answers go back down: the bridge is idle again
                    pass
            finally:
                await measure.close()
                if tight is not None:
                    await tight.close()

    asyncio.run(run())
