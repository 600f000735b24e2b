"""The cross-shard flow module inside real shards: executor, market contracts, store, certificates.

Five shards of ``genesis/three-levels.toml`` on the path oerlikon -> zurich -> ch -> bern ->
breitenrain, each a real :class:`node.chain.Chain` over its own LMDB store and its own
:class:`contracts.executor.Executor` running the native ``bridge`` module and the market
contracts from a genesis document with a ``topology`` section. Blocks carry real commit
certificates (BFT: 2f + 1 Ed25519 votes; Raft: the leader's signature). A Python relay
loop reads outbox entries with state proofs at the source's committed head and delivers
them with ``shards.relay.build_delivery``; the destination verifies them with its light
client of the source.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from contracts.executor import Executor
from contracts.runtime.engine import contract_address
from contracts.system.genesis import CurrencySpec, market_genesis
from ledger import codec
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind, PrivateKey, tagged_hash
from ledger.genesis import Genesis, GenesisError
from ledger.state import verify_proof
from ledger.statekeys import state_key
from ledger.store import Store
from ledger.tx import Transaction
from node.chain import Chain
from shards.errors import FlowRefused
from shards.flow import edge_fee
from shards.lightclient import Equivocation, LightClient, ScheduleProof
from shards.native import GAS, bridge_genesis_writes, check_genesis_topology
from shards.packets import Delivery, Packet
from shards.quote import quote_flow
from shards.records import CANCELLED, COMMITTED, REFUNDED, SETTLED, HopRecord
from shards.relay import build_delivery, plan_channel
from shards.sim.world import validator_keys
from shards.topology import Topology, bridge_address

TOPOLOGY_TEXT = (Path(__file__).resolve().parents[1] / "genesis" / "three-levels.toml").read_text()
TOPOLOGY = Topology.from_toml(TOPOLOGY_TEXT)
OERLIKON, ZURICH, CH, BERN, BREITENRAIN = PATH = (
    "ch/zurich/oerlikon", "ch/zurich", "ch", "ch/bern", "ch/bern/breitenrain",
)
T0 = TOPOLOGY.genesis_time
FIRST, LAST = 40, 43  # the flow's periods: start(40) is 10 h after genesis
ENERGY = 100_000  # Wh per period
PRICE = 7_000  # the consumer side's price, minor units
DEPOSIT = 1_000_000  # the consumer's money in oerlikon
GATE_LEAD = 900
TX_GAS = 9_000_000


def key(shard: str, name: str) -> PrivateKey:
    return PrivateKey(tagged_hash(b"gridledger/test-shards-native", f"{shard}:{name}".encode()))


def addr(shard: str, name: str) -> bytes:
    return key(shard, name).address.raw


def validator_entries(shard: str) -> list[dict]:
    return [
        {"name": v.name, "node_key": v.node_key.hex(), "bls_key": v.bls_key.hex(), "bls_pop": v.bls_pop.hex()}
        for v in (validator_keys(shard, i)[2] for i in range(TOPOLOGY.shard(shard).validators))
    ]


def genesis_document(shard: str, **changes) -> dict:
    """A shard's genesis: the market (one CHF issuer per shard), a consumer, a producer and
    a relayer, and the topology section with the neighbours' genesis validator sets."""
    spec = TOPOLOGY.shard(shard)
    market = market_genesis(
        addr(shard, "grid_operator"), addr(shard, "co2"), [CurrencySpec("CHF", addr(shard, "bank"))], T0,
        members=[(addr(shard, "consumer"), ["consumer"]), (addr(shard, "producer"), ["producer"]),
                 (addr(shard, "relayer"), ["trader"])],
        params={"rating_threshold": 0, "min_collateral": 0, "gate_closure_lead_s": GATE_LEAD},
    )
    doc = {
        "chain_id": shard,
        "genesis_time": T0,
        "protocol": spec.protocol,
        "params": {"period_seconds": TOPOLOGY.period_s, "checkpoint_interval": spec.checkpoint_interval},
        "validators": validator_entries(shard),
        **market,
        "topology": {
            "document": TOPOLOGY_TEXT,
            "neighbours": {n: validator_entries(n) for n in TOPOLOGY.neighbours(shard)},
        },
    }
    doc.update(changes)
    return doc


@functools.cache
def genesis_of(shard: str) -> Genesis:
    return Genesis.from_document(genesis_document(shard))


_COMPILED: dict = {}
_BY_FILENAME: dict = {}


def executor() -> Executor:
    """A fresh executor per shard; compiled contracts are shared (they are immutable)."""
    ex = Executor()
    ex.runtime.compiled = _COMPILED
    ex.runtime.by_filename = _BY_FILENAME
    return ex


class Shard:
    """One shard: a real chain, its store, and validators that certify every block."""

    def __init__(self, shard: str, root: Path, clock: list[int]) -> None:
        self.id = shard
        self.genesis = genesis_of(shard)
        self.store = Store.open(str(root / shard.replace("/", "_")), shard, genesis_hash=self.genesis.hash)
        self.chain = Chain(self.genesis, self.store, executor(), clock=lambda: clock[0])
        self.chain.ensure_genesis()
        self.clock = clock
        self.certificates: dict[int, CommitCertificate] = {}
        self.receipts: list = []

    # ------------------------------------------------------------------ blocks

    def certify(self, height: int, digest: bytes) -> CommitCertificate:
        n = TOPOLOGY.shard(self.id).validators
        payload = commit_vote_payload(height, 0 if self.genesis.protocol == "bft" else 1, digest)
        if self.genesis.protocol == "bft":
            signers = range(self.genesis.validators.bft_quorum)
            kind, round_ = Kind.COMMIT, 0
        else:
            signers = [height % n]  # the leader of the term
            kind, round_ = Kind.RAFT_COMMIT, 1
        sigs = tuple((i, validator_keys(self.id, i)[0].sign(self.id, kind, payload)) for i in signers)
        return CommitCertificate(self.genesis.protocol, height, round_, digest, sigs)

    def block(self, txs: list[Transaction]) -> list:
        self.clock[0] += 1
        height = self.chain.height + 1
        proposer = validator_keys(self.id, height % TOPOLOGY.shard(self.id).validators)[2].node_key
        encoded, executed = self.chain.build(txs, proposer)
        certificate = self.certify(height, executed.block.hash)
        self.chain.commit(height, encoded, certificate)
        self.certificates[height] = certificate
        self.receipts.extend(executed.receipts)
        return executed.receipts

    def tx(self, name: str, contract: str, function: str, *args):
        signer = key(self.id, name)
        nonce = self.value("accounts", "nonce", [signer.address.raw]) or 0
        tx = Transaction.create(signer, chain_id=self.id, nonce=nonce, contract=contract, function=function,
                                args=list(args), gas_limit=TX_GAS)
        return self.block([tx])[0]

    def ok(self, name: str, contract: str, function: str, *args):
        receipt = self.tx(name, contract, function, *args)
        assert receipt.ok, f"{self.id}: {name} {contract}.{function} failed: {receipt.error}"
        return receipt.result

    # ------------------------------------------------------------------ reads

    def value(self, contract: str, name: str, parts: list):
        raw = self.store.get(state_key(contract, name, parts))
        return None if raw is None else codec.decode(raw, max_size=len(raw))

    def proven(self, contract: str, name: str, parts: list) -> tuple[bytes | None, bytes]:
        """(value, proof) at the committed head, checked against the head's state root."""
        proven = self.store.prove(state_key(contract, name, parts))
        head = self.chain.head_header()
        assert proven.height == head.height and proven.state_root == head.state_root
        assert verify_proof(head.state_root, proven.key, proven.value, proven.proof)
        return proven.value, proven.proof

    def view(self, contract: str, function: str, *args):
        with self.store.reader() as reader:
            return self.chain.executor.query(reader, self.chain._context(self.chain.head_header()), contract, function, list(args))

    def balance(self, account: bytes) -> int:
        return self.view("fiat", "balance_of", "CHF", account)

    def record(self, flow_id: bytes) -> HopRecord | None:
        fields = self.value("bridge", "flow", [flow_id])
        return None if fields is None else HopRecord.from_fields(fields)

    def bridge_state(self) -> dict[bytes, bytes]:
        prefix = state_key("bridge", "")[:-2]
        return {k: v for k, v in self.store.iter_state() if k.startswith(prefix)}


class Network:
    """The five shards of the path and a relayer that can be stopped."""

    def __init__(self, root: Path) -> None:
        self.clock = [T0 + 100]
        self.shards = {s: Shard(s, root, self.clock) for s in PATH}
        self.stopped: set[tuple[str, str]] = set()

    def __getitem__(self, shard: str) -> Shard:
        return self.shards[shard]

    def close(self) -> None:
        for shard in self.shards.values():
            shard.store.close()

    def delivery(self, src: str, dst: str) -> Delivery | None:
        """What a relayer delivers next on ``src -> dst``: packets proven at src's committed head."""
        source, target = self.shards[src], self.shards[dst]
        next_send = source.value("bridge", "send_seq", [dst]) or 0
        next_recv = target.value("bridge", "recv_seq", [src]) or 0
        if next_recv >= next_send:
            return None
        client = LightClient.from_fields(target.value("bridge", "client", [src]))
        head = source.chain.head_header()
        plan = plan_channel(client, [], head.height, next_recv, next_send, max_items=8)
        schedule = [ScheduleProof(e, *source.proven("validators", "epoch", [e])) for e in plan.schedule_epochs]
        items = []
        for seq in plan.seqs:
            value, proof = source.proven("bridge", "outbox", [dst, seq])
            items.append((Packet.from_fields(codec.decode(value)), proof))
        return build_delivery(src, dst, head, source.certificates[head.height], schedule, items)

    def relay_once(self, src: str, dst: str):
        delivery = self.delivery(src, dst)
        if delivery is None:
            return None
        receipt = self.shards[dst].tx("relayer", "bridge", "deliver", delivery.encode())
        assert receipt.ok, f"delivery {src}->{dst} refused: {receipt.error}"
        return receipt

    def pump(self) -> int:
        """Relay on every channel of the path until nothing moves; returns the deliveries made."""
        made = 0
        while True:
            moved = 0
            for a, b in zip(PATH, PATH[1:], strict=False):
                for src, dst in ((a, b), (b, a)):
                    if (src, dst) not in self.stopped and self.relay_once(src, dst) is not None:
                        moved += 1
            if not moved:
                return made
            made += moved

    # ------------------------------------------------------------------ money

    def accounts(self, shard: str) -> list[bytes]:
        names = ("grid_operator", "co2", "bank", "consumer", "producer", "relayer")
        return [addr(shard, n) for n in names] + [contract_address("bridge")] + self.bridges(shard)

    @staticmethod
    def bridges(shard: str) -> list[bytes]:
        return [bridge_address(shard, n) for n in TOPOLOGY.neighbours(shard)]

    def outside_bridges(self) -> int:
        """Money outside bridge accounts over the five shards; each shard's supply is checked
        to be exactly the sum of its accounts' balances, bridge accounts included."""
        total = 0
        for shard in PATH:
            s = self.shards[shard]
            balances = {a: s.balance(a) for a in self.accounts(shard)}
            assert sum(balances.values()) == s.view("fiat", "supply_of", "CHF"), f"{shard}: supply != sum of balances"
            total += sum(v for a, v in balances.items() if a not in self.bridges(shard))
        return total

    # ------------------------------------------------------------------ the purchase

    def quote(self, energy_wh: int = ENERGY):
        """The consumer's quote from each path shard's link and reserved entries, read with proofs."""

        def read_link(parent: str, child: str):
            value, _ = self.shards[parent].proven("bridge", "link", [child])
            return None if value is None else tuple(codec.decode(value))

        def read_reserved(parent: str, child: str, period: int) -> int:
            value, _ = self.shards[parent].proven("bridge", "reserved", [child, period])
            return 0 if value is None else codec.decode(value)

        return quote_flow(TOPOLOGY, OERLIKON, BREITENRAIN, energy_wh=energy_wh, first_period=FIRST, last_period=LAST,
                          read_link=read_link, read_reserved=read_reserved)

    def offer(self, energy_wh: int = ENERGY, price: int = PRICE) -> int:
        dest = self.shards[BREITENRAIN]
        serial = dest.ok("producer", "energy_tokens", "emit", FIRST, LAST, energy_wh, "solar", 40, 0, "CHF")
        dest.ok("producer", "energy_tokens", "offer_side", serial, "consumer", price, "CHF")
        return serial

    def open_flow(self, serial: int, fee_budget: int, energy_wh: int = ENERGY, price: int = PRICE):
        origin = self.shards[OERLIKON]
        return origin.tx("consumer", "bridge", "open_flow", BREITENRAIN, serial, price, "CHF", energy_wh, FIRST, LAST,
                         fee_budget, self.clock[0] + 600)


@pytest.fixture
def net(tmp_path):
    network = Network(tmp_path)
    network[OERLIKON].ok("bank", "fiat", "mint", "CHF", addr(OERLIKON, "consumer"), DEPOSIT, b"d" * 32)
    yield network
    network.close()


def phases(net: Network, flow_id: bytes) -> list[str | None]:
    return [None if net[s].record(flow_id) is None else net[s].record(flow_id).phase for s in PATH]


def level_fees(energy_wh: int = ENERGY) -> dict[str, int]:
    """Each level's fee for the flow: the parent of each edge charges its bridge's fee."""
    total = energy_wh * (LAST - FIRST + 1)
    fees = dict.fromkeys(PATH, 0)
    for parent, child in TOPOLOGY.edges(PATH):
        fees[parent] += edge_fee(total, TOPOLOGY.bridge(child).fee_per_kwh)
    return fees


def reserved(net: Network, parent: str, child: str) -> list[int]:
    return [net[parent].value("bridge", "reserved", [child, p]) or 0 for p in range(FIRST, LAST + 1)]


# ====================================================================== the purchase


def test_consumer_in_oerlikon_buys_a_breitenrain_offer_through_five_shards(net):
    serial = net.offer()
    quote = net.quote()
    fees = level_fees()
    assert quote.path == PATH and quote.total_fee == sum(fees.values()) and quote.total_fee > 0
    money_before = net.outside_bridges()
    budget = quote.total_fee + 500  # more than needed: the unused budget comes back
    receipt = net.open_flow(serial, budget)
    assert receipt.ok, receipt.error
    flow_id = receipt.result
    consumer = addr(OERLIKON, "consumer")
    assert net[OERLIKON].balance(consumer) == DEPOSIT - PRICE - budget
    assert net.pump() > 0
    assert phases(net, flow_id) == [COMMITTED] * 5
    # the consumer paid exactly the price and the fees; the unused budget is back
    assert net[OERLIKON].balance(consumer) == DEPOSIT - PRICE - quote.total_fee
    # one token per shard: hop tokens with bridge sides, and the sold side at the destination;
    # each carries the sold token's category and CO2, so the consumer's shard charges its CO2 fee
    for index, shard in enumerate(PATH):
        record = net[shard].record(flow_id)
        token = net[shard].view("energy_tokens", "token", record.token_ref)
        assert token["status"] == "open" and token["energy_wh"] == ENERGY
        assert (token["category"], token["co2_mg"]) == ("solar", ENERGY * 40)
        if index < 4:
            assert token["purpose"] == "bridge"
            assert token["producer"]["owner"] == bridge_address(shard, PATH[index + 1])
            assert token["producer"]["point_kind"] == "bridge"
            want = consumer if index == 0 else bridge_address(shard, PATH[index - 1])
            assert token["consumer"]["owner"] == want
        else:
            assert token["serial"] == serial and token["purpose"] == "market"
            assert token["consumer"] == {"owner": bridge_address(BREITENRAIN, BERN), "point": bridge_address(BREITENRAIN, BERN),
                                         "price": None, "currency": None, "point_kind": "bridge"}
    # capacity reserved on every bridge, by the edge's parent
    for parent, child in TOPOLOGY.edges(PATH):
        assert reserved(net, parent, child) == [ENERGY] * 4
    # the consumer's position counts its side; bridge accounts hold no position
    assert net[OERLIKON].view("energy_tokens", "net_position", consumer, FIRST) == ENERGY
    assert net[ZURICH].view("energy_tokens", "point_position", FIRST, bridge_address(ZURICH, CH)) == 0
    assert net.outside_bridges() == money_before  # nothing in flight once the channels are idle
    # settlement when delivery begins: each level's fee to its grid operator, the price to the seller
    assert net[OERLIKON].tx("relayer", "bridge", "settle", flow_id).error[0] == "not_due"
    go_before = {s: net[s].balance(addr(s, "grid_operator")) for s in PATH}
    seller_before = net[BREITENRAIN].balance(addr(BREITENRAIN, "producer"))
    net.clock[0] = TOPOLOGY.period_start(FIRST)
    net[OERLIKON].ok("relayer", "bridge", "settle", flow_id)
    net.pump()
    assert phases(net, flow_id) == [SETTLED] * 5
    for shard in PATH:
        assert net[shard].balance(addr(shard, "grid_operator")) - go_before[shard] == fees[shard]
        assert net[shard].balance(contract_address("bridge")) == 0  # every escrow is empty
    assert net[BREITENRAIN].balance(addr(BREITENRAIN, "producer")) - seller_before == PRICE
    assert net.outside_bridges() == money_before
    for parent, child in TOPOLOGY.edges(PATH):  # delivery uses the capacity
        assert reserved(net, parent, child) == [ENERGY] * 4


def test_a_token_of_very_high_co2_crosses_like_any_other(net):
    # CO2 is not money: a token may hold more than 2**62 mg, and its result must still travel.
    dest = net[BREITENRAIN]
    g_per_kwh = (1 << 62) // ENERGY + 1
    serial = dest.ok("producer", "energy_tokens", "emit", FIRST, LAST, ENERGY, "coal", g_per_kwh, 0, "CHF")
    dest.ok("producer", "energy_tokens", "offer_side", serial, "consumer", PRICE, "CHF")
    flow_id = net.open_flow(serial, net.quote().total_fee).result
    net.pump()
    assert phases(net, flow_id) == [COMMITTED] * 5
    token = net[OERLIKON].view("energy_tokens", "token", net[OERLIKON].record(flow_id).token_ref)
    assert (token["category"], token["co2_mg"]) == ("coal", ENERGY * g_per_kwh) and token["co2_mg"] > 1 << 62


def test_flows_opened_side_by_side_cannot_together_exceed_the_consumers_position_limit(net):
    origin = net[OERLIKON]
    consumer = addr(OERLIKON, "consumer")
    origin.ok("grid_operator", "membership", "set_position_limit", consumer, ENERGY * 3 // 2)
    first, second = net.offer(), net.offer()
    budget = net.quote().total_fee

    def held() -> list[int]:
        return [origin.view("energy_tokens", "pending_flow_buys", consumer, p) for p in range(FIRST, LAST + 1)]

    flow_id = net.open_flow(first, budget).result
    assert held() == [ENERGY] * 4 and origin.view("energy_tokens", "net_position", consumer, FIRST) == 0
    balance = origin.balance(consumer)
    refused = net.open_flow(second, budget)  # before the first flow's answer: its energy is held
    assert not refused.ok and refused.error[0] == "position_limit_exceeded"
    assert origin.balance(consumer) == balance  # nothing locked
    net.pump()
    assert phases(net, flow_id) == [COMMITTED] * 5
    # the answer replaces the hold by the hop token's position
    assert held() == [0] * 4 and origin.view("energy_tokens", "net_position", consumer, FIRST) == ENERGY
    assert net.open_flow(second, budget).error[0] == "position_limit_exceeded"
    smaller = net.offer(energy_wh=ENERGY // 2)
    assert net.open_flow(smaller, net.quote(energy_wh=ENERGY // 2).total_fee, energy_wh=ENERGY // 2).ok


def test_a_refunded_flow_releases_its_hold_on_the_position_limit(net):
    origin = net[OERLIKON]
    consumer = addr(OERLIKON, "consumer")
    origin.ok("grid_operator", "membership", "set_position_limit", consumer, ENERGY)
    serial = net.offer()
    budget = net.quote().total_fee
    net[BERN].ok("grid_operator", "bridge", "register_bridge", BREITENRAIN, ENERGY - 1, 4)  # too small: refused there
    flow_id = net.open_flow(serial, budget).result
    net.pump()
    assert phases(net, flow_id) == [REFUNDED] * 4 + [None]
    assert [origin.view("energy_tokens", "pending_flow_buys", consumer, p) for p in range(FIRST, LAST + 1)] == [0] * 4
    net[BERN].ok("grid_operator", "bridge", "register_bridge", BREITENRAIN, 300_000, 4)
    again = net.open_flow(serial, budget)  # the whole limit is free again
    assert again.ok, again.error
    net.pump()
    assert phases(net, again.result) == [COMMITTED] * 5


def test_purchase_over_a_bridge_capacity_is_refused_by_the_quote_before_anything_is_locked(net):
    serial = net.offer()
    flow_id = net.open_flow(serial, net.quote().total_fee).result
    net.pump()
    assert phases(net, flow_id) == [COMMITTED] * 5
    # breitenrain's bridge holds 300,000 Wh per period; 100,000 are reserved by the first flow
    bigger = net.offer(energy_wh=250_000)
    with pytest.raises(FlowRefused) as refused:
        net.quote(energy_wh=250_000)
    assert refused.value.code == "capacity_exceeded"
    assert "ch/bern -> ch/bern/breitenrain has 200000 Wh left" in refused.value.message
    # the purchase is not made: nothing is locked, no packet is sent
    consumer = addr(OERLIKON, "consumer")
    balance, sent = net[OERLIKON].balance(consumer), net[OERLIKON].value("bridge", "send_seq", [ZURICH])
    assert bigger and net.quote(energy_wh=200_000).total_fee > 0  # what is left still fits
    assert net[OERLIKON].balance(consumer) == balance and net[OERLIKON].value("bridge", "send_seq", [ZURICH]) == sent


def test_a_hop_whose_bridge_filled_meanwhile_refuses_and_every_hop_is_refunded(net):
    """The quote reads state of a moment ago: the binding check is the hop's own."""
    serial = net.offer(energy_wh=250_000)
    budget = net.quote(energy_wh=250_000).total_fee
    net[BERN].ok("grid_operator", "bridge", "register_bridge", BREITENRAIN, 200_000, 4)  # capacity lowered
    consumer = addr(OERLIKON, "consumer")
    flow_id = net.open_flow(serial, budget, energy_wh=250_000).result
    net.pump()
    assert phases(net, flow_id) == [REFUNDED] * 4 + [None]
    assert net[OERLIKON].record(flow_id).reason.startswith("capacity_exceeded at ch/bern")
    assert net[OERLIKON].balance(consumer) == DEPOSIT
    for parent, child in TOPOLOGY.edges(PATH):
        assert reserved(net, parent, child) == [0] * 4


def test_a_flow_whose_relayer_stops_is_refunded_on_every_hop_after_the_deadline(net):
    serial = net.offer()
    money = net.outside_bridges()
    receipt = net.open_flow(serial, net.quote().total_fee)
    flow_id = receipt.result
    net.stopped.add((BERN, BREITENRAIN))  # the relayer stops before the destination
    net.pump()
    assert phases(net, flow_id) == ["locked", "reserved", "reserved", "reserved", None]
    assert reserved(net, BERN, BREITENRAIN) == [ENERGY] * 4
    deadline = HopRecord.from_fields(net[OERLIKON].value("bridge", "flow", [flow_id])).spec.deadline
    net.clock[0] = deadline  # the destination's block time reaches the deadline
    net.stopped.clear()
    net.pump()
    assert phases(net, flow_id) == [REFUNDED] * 5
    assert net[BREITENRAIN].record(flow_id).reason.startswith("timeout at ch/bern/breitenrain")
    assert net[OERLIKON].balance(addr(OERLIKON, "consumer")) == DEPOSIT
    for parent, child in TOPOLOGY.edges(PATH):
        assert reserved(net, parent, child) == [0] * 4
    token = net[BREITENRAIN].view("energy_tokens", "token", serial)
    assert token["consumer"]["owner"] == addr(BREITENRAIN, "producer") and token["consumer"]["price"] == PRICE
    assert net.outside_bridges() == money
    for shard in PATH:
        assert net[shard].balance(contract_address("bridge")) == 0


def test_redispatch_by_an_intermediate_grid_operator_cancels_the_whole_chain(net):
    serial = net.offer()
    money = net.outside_bridges()
    flow_id = net.open_flow(serial, net.quote().total_fee).result
    net.pump()
    tokens = {s: net[s].record(flow_id).token_ref for s in PATH}
    assert net[CH].tx("consumer", "bridge", "redispatch", flow_id).error[0] in ("not_grid_operator", "not_allowed")
    net[CH].ok("grid_operator", "bridge", "redispatch", flow_id)
    assert net[CH].tx("grid_operator", "bridge", "redispatch", flow_id).error[0] == "already_requested"
    net.pump()
    assert phases(net, flow_id) == [CANCELLED] * 5
    for shard in PATH[:4]:
        assert net[shard].view("energy_tokens", "token", tokens[shard])["status"] == "cancelled"
    side = net[BREITENRAIN].view("energy_tokens", "token", serial)["consumer"]
    assert side["owner"] == addr(BREITENRAIN, "producer") and side["price"] is None  # back, not for sale
    for parent, child in TOPOLOGY.edges(PATH):
        assert reserved(net, parent, child) == [0] * 4
    assert net[OERLIKON].balance(addr(OERLIKON, "consumer")) == DEPOSIT  # price and every fee back
    assert net[OERLIKON].view("energy_tokens", "net_position", addr(OERLIKON, "consumer"), FIRST) == 0
    assert net.outside_bridges() == money
    assert net[OERLIKON].tx("relayer", "bridge", "settle", flow_id).error[0] == "not_committed"


def test_forged_or_tampered_deliveries_are_refused_with_a_code_and_change_nothing(net):
    serial = net.offer()
    net.open_flow(serial, net.quote().total_fee)
    good = net.delivery(OERLIKON, ZURICH)
    zurich = net[ZURICH]
    before = zurich.bridge_state()
    packet, proof = good.items[0]
    body = packet.body_fields()
    richer = Packet.make(packet.src, packet.dst, packet.seq, packet.acked, packet.kind, packet.flow_id,
                         [body[0], body[1], body[2] + 1_000])
    forged_cert = CommitCertificate(good.certificate.protocol, good.certificate.height, good.certificate.round,
                                    good.certificate.digest,
                                    ((0, key(OERLIKON, "grid_operator").sign(OERLIKON, Kind.RAFT_COMMIT, b"x")),))
    cases = {
        "packet money raised": Delivery(good.src, good.dst, good.header, good.certificate, good.schedule, ((richer, proof),)),
        "certificate forged": Delivery(good.src, good.dst, good.header, forged_cert, good.schedule, good.items),
        "header of another height": Delivery(good.src, good.dst, net[OERLIKON].chain.header(1), good.certificate,
                                             good.schedule, good.items),
    }
    codes = {}
    for name, delivery in cases.items():
        receipt = zurich.tx("relayer", "bridge", "deliver", delivery.encode())
        assert not receipt.ok, name
        codes[name] = receipt.error[0]
    data = bytearray(good.encode())
    data[-40] ^= 1  # one bit of the last proof
    receipt = zurich.tx("relayer", "bridge", "deliver", bytes(data))
    codes["proof bit flipped"] = receipt.error[0]
    misrouted = net.delivery(OERLIKON, ZURICH)
    codes["for another shard"] = net[CH].tx("relayer", "bridge", "deliver", misrouted.encode()).error[0]
    assert codes == {
        "packet money raised": "bad_proof",  # the proof no longer matches the certified root
        "certificate forged": "bad_certificate",
        "header of another height": "bad_proof",
        "proof bit flipped": "bad_proof",
        "for another shard": "wrong_channel",
    }
    assert zurich.bridge_state() == before  # nothing changed on the bridge
    net.relay_once(OERLIKON, ZURICH)  # the genuine delivery still goes through, once
    assert zurich.tx("relayer", "bridge", "deliver", good.encode()).error[0] == "already_delivered"


# ====================================================================== refusals at the origin


def test_open_flow_refusals_carry_the_flow_code_and_lock_nothing(net):
    serial = net.offer()
    budget = net.quote().total_fee
    origin = net[OERLIKON]
    deadline = net.clock[0] + 600

    def code(name, *args):
        receipt = origin.tx(name, "bridge", "open_flow", *args)
        assert not receipt.ok
        return receipt.error[0]

    args = [BREITENRAIN, serial, PRICE, "CHF", ENERGY, FIRST, LAST]
    assert code("producer", *args, budget, deadline) == "role_missing"  # only consumers buy across shards
    assert code("consumer", *args, budget, deadline + 4000) == "bad_deadline"
    assert code("consumer", OERLIKON, *args[1:], budget, deadline) == "same_shard"
    poor = [BREITENRAIN, serial, DEPOSIT, "CHF", ENERGY, FIRST, LAST]
    assert code("consumer", *poor, budget, deadline) == "insufficient_funds"
    assert origin.tx("consumer", "bridge", "open_flow", "x").error[0] == "bad_args"
    assert origin.tx("consumer", "bridge", "nothing").error[0] == "not_found"
    assert origin.balance(addr(OERLIKON, "consumer")) == DEPOSIT
    assert origin.value("bridge", "send_seq", [ZURICH]) is None


def test_a_grid_operator_registers_bridges_of_its_children_only(net):
    zurich = net[ZURICH]
    zurich.ok("grid_operator", "bridge", "register_bridge", OERLIKON, 123_000, 9)
    assert zurich.value("bridge", "link", [OERLIKON]) == [123_000, 9]
    assert zurich.tx("grid_operator", "bridge", "register_bridge", CH, 1, 1).error[0] == "not_child"
    assert zurich.tx("relayer", "bridge", "register_bridge", OERLIKON, 1, 1).error[0] == "not_grid_operator"


# ====================================================================== genesis


def test_genesis_with_a_topology_installs_light_clients_and_registrations():
    writes = bridge_genesis_writes(genesis_of(BERN))
    decoded = {(codec.decode(k)[1], tuple(codec.decode(k)[2])): codec.decode(v) for k, v in writes.items()}
    assert decoded[("link", (BREITENRAIN,))] == [300_000, 4]
    clients = sorted(parts[0] for (name, parts) in decoded if name == "client")
    assert clients == sorted(TOPOLOGY.neighbours(BERN))
    assert check_genesis_topology(genesis_of(BERN)) == TOPOLOGY


@pytest.mark.parametrize(
    "change, words",
    [
        ({"genesis_time": T0 + 1}, "genesis_time"),
        ({"params": {"period_seconds": 600, "checkpoint_interval": 16}}, "period_s"),
        ({"protocol": "raft"}, "protocol"),
        ({"params": {"period_seconds": 900, "checkpoint_interval": 8}}, "checkpoint_interval"),
        ({"chain_id": "ch/ticino"}, "not a shard of the topology"),
    ],
)
def test_genesis_topology_must_agree_with_the_document(change, words):
    genesis = Genesis.from_document(genesis_document(BERN, **change))
    with pytest.raises(GenesisError, match=words):
        check_genesis_topology(genesis)


def test_genesis_topology_must_list_exactly_the_neighbours():
    doc = genesis_document(BERN)
    del doc["topology"]["neighbours"][CH]
    with pytest.raises(GenesisError, match="neighbours"):
        check_genesis_topology(Genesis.from_document(doc))
    doc = genesis_document(BERN)
    doc["topology"]["neighbours"][BERN] = validator_entries(BERN)
    with pytest.raises(GenesisError, match="itself"):
        Genesis.from_document(doc)
    for bad, words in (({"document": "x = ["}, "topology"), ({"document": TOPOLOGY_TEXT}, "exactly"),
                       ({"document": "", "neighbours": {}}, "TOML text")):
        doc = genesis_document(BERN)
        doc["topology"] = bad
        with pytest.raises(GenesisError, match=words):
            check_genesis_topology(Genesis.from_document(doc))


def test_the_genesis_hash_covers_the_topology():
    doc = genesis_document(BERN)
    doc["topology"]["document"] = TOPOLOGY_TEXT + "\n# changed\n"
    assert Genesis.from_document(doc).hash != genesis_of(BERN).hash


def test_a_shard_without_topology_has_no_bridge_module(tmp_path):
    doc = genesis_document(BERN)
    del doc["topology"]
    genesis = Genesis.from_document(doc)
    assert genesis.topology is None and check_genesis_topology(genesis) is None
    store = Store.open(str(tmp_path / "s"), BERN, genesis_hash=genesis.hash)
    try:
        chain = Chain(genesis, store, executor())
        chain.ensure_genesis()
        assert "bridge" not in chain.executor.natives
        assert store.get(state_key("bridge", "link", [BREITENRAIN])) is None
    finally:
        store.close()


def test_native_gas_is_a_fixed_cost_per_operation_plus_the_state_it_touches(net):
    serial = net.offer()
    first = net.open_flow(serial, net.quote().total_fee)
    assert first.gas_used > GAS["open_flow"]
    refused = net[OERLIKON].tx("consumer", "bridge", "settle", b"\x00" * 32)
    assert refused.error[0] == "unknown_flow" and refused.gas_used > GAS["settle"]


def test_equivocation_evidence_freezes_the_bridge_to_that_neighbour(net):
    serial = net.offer()
    net.open_flow(serial, net.quote().total_fee)
    oerlikon = net[OERLIKON]
    honest = oerlikon.chain.head_header()
    fields = honest.to_fields()
    fields[7] += 1  # another block at the same height (its time differs)
    forked = type(honest).from_fields(fields)
    evidence = Equivocation(OERLIKON, honest, oerlikon.certificates[honest.height], forked,
                            oerlikon.certify(forked.height, forked.hash))
    zurich = net[ZURICH]
    same = Equivocation(OERLIKON, honest, oerlikon.certificates[honest.height], honest, oerlikon.certificates[honest.height])
    assert zurich.tx("relayer", "bridge", "submit_evidence", OERLIKON, same.encode()).error[0] == "bad_evidence"
    assert zurich.tx("relayer", "bridge", "submit_evidence", CH, evidence.encode()).error[0] == "bad_evidence"
    zurich.ok("relayer", "bridge", "submit_evidence", OERLIKON, evidence.encode())
    assert zurich.value("bridge", "evidence", [OERLIKON])[0] == "equivocation"
    delivery = net.delivery(OERLIKON, ZURICH)
    assert zurich.tx("relayer", "bridge", "deliver", delivery.encode()).error[0] == "bridge_frozen"
