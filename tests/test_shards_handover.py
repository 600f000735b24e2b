"""Hand-over bundles: bridges survive a validator-set change of a neighbour.

Two neighbouring shards of ``genesis/three-levels.toml``, ``ch/zurich`` (BFT, checkpoint
interval 16) and its child ``ch/zurich/oerlikon`` (Raft), each a real
:class:`node.chain.Chain` over its own LMDB store with the market contracts and the
native bridge module (the harness of ``tests/test_shards_native.py``), certified by the
validator set in force at each height. Each chain has a :class:`node.handover.HandoverKeeper`
on its commits. A consumer in oerlikon buys an offer in zurich: the reserve goes up,
the result comes down. One of the shards changes its validator set (``system.reconfigure``,
adding a validator) before its packet is relayed; the neighbour's light client must be
taught the change by the bundle before it accepts anything the new set certifies.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from test_shards_native import (
    DEPOSIT,
    ENERGY,
    FIRST,
    LAST,
    PRICE,
    T0,
    TOPOLOGY,
    Shard,
    addr,
    genesis_document,
    key,
)

from cli.validators import approve, make_proposal, reconfigure_tx
from consensus.bft.schedule import effective_after
from ledger import codec
from ledger.block import NULL_DIGEST, null_block
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind
from ledger.genesis import Genesis
from ledger.httpclient import Client
from ledger.statekeys import state_key
from ledger.store import Store
from ledger.tx import Transaction
from ledger.validators import ValidatorSet
from node import api_handover
from node.chain import Chain
from node.handover import HandoverKeeper
from shards.flow import edge_fee
from shards.lightclient import LightClient, ScheduleProof, validator_epoch_key
from shards.packets import Packet
from shards.records import COMMITTED
from shards.relay import Handover, SourceEpoch, build_delivery, plan_channel
from shards.relayer import (
    Channel,
    Relayer,
    RelayError,
    ShardEndpoint,
    decode_handover,
    encode_handover,
)
from shards.sim.world import validator_keys

ZURICH, OERLIKON = "ch/zurich", "ch/zurich/oerlikon"
K = TOPOLOGY.shard(ZURICH).checkpoint_interval
# Every validator key a test may need: the genesis sets and the validators the changes add.
KEYS = {validator_keys(s, i)[2].node_key: validator_keys(s, i)[0] for s in (ZURICH, OERLIKON) for i in range(6)}


class HShard(Shard):
    """A shard whose blocks are certified by the validator set in force at their height."""

    def certify(self, height: int, digest: bytes) -> CommitCertificate:
        validators = self.chain.validators_at(height)
        bft = self.genesis.protocol == "bft"
        payload = commit_vote_payload(height, 0 if bft else 1, digest)
        signers = range(validators.bft_quorum) if bft else [height % validators.n]
        kind = Kind.COMMIT if bft else Kind.RAFT_COMMIT
        sigs = tuple((i, KEYS[validators.validators[i].node_key].sign(self.id, kind, payload)) for i in signers)
        return CommitCertificate(self.genesis.protocol, height, 0 if bft else 1, digest, sigs)

    def signed(self, name: str, contract: str, function: str, *args) -> Transaction:
        signer = key(self.id, name)
        nonce = self.value("accounts", "nonce", [signer.address.raw]) or 0
        return Transaction.create(signer, chain_id=self.id, nonce=nonce, contract=contract, function=function,
                                  args=list(args), gas_limit=9_000_000)

    def empty_blocks_until(self, height: int) -> None:
        while self.chain.height < height:
            self.block([])

    def reconfigure(self) -> tuple[int, int]:
        """Add the next validator (approved by every current one); returns (epoch, effective_after)."""
        latest = self.chain.latest_epoch
        added = validator_keys(self.id, latest.validators.n)[2]
        new = ValidatorSet(latest.validators.validators + (added,))
        proposal = make_proposal(self.id, latest.number + 1, latest.validators, new)
        for v in latest.validators:
            approve(proposal, KEYS[v.node_key])
        sender = key(self.id, "grid_operator")
        tx = reconfigure_tx(proposal, sender, self.value("accounts", "nonce", [sender.address.raw]) or 0)
        [receipt] = self.block([tx])
        assert receipt.ok, receipt.error
        return tuple(receipt.result)


class Pair:
    """zurich and oerlikon, each with its hand-over keeper."""

    def __init__(self, root) -> None:
        self.root = root
        self.clock = [T0 + 100]
        self.shards = {s: HShard(s, root, self.clock) for s in (ZURICH, OERLIKON)}
        self.keepers = {s: HandoverKeeper.attach(sh.chain) for s, sh in self.shards.items()}

    def __getitem__(self, shard: str) -> HShard:
        return self.shards[shard]

    def close(self) -> None:
        for shard in self.shards.values():
            shard.store.close()

    def client(self, src: str, dst: str) -> LightClient:
        return LightClient.from_fields(self[dst].value("bridge", "client", [src]))

    def source_epochs(self, src: str) -> list[SourceEpoch]:
        latest = self[src].value("validators", "current", []) or 0
        return [SourceEpoch(e, self[src].value("validators", "epoch", [e])[0]) for e in range(1, latest + 1)]

    def packets(self, src: str, dst: str, *, ignore_handover: bool = False):
        """A delivery of the waiting packets proven at src's head, with the schedule proofs a
        relayer attaches (from the client's latest epoch on), and the plan it followed."""
        source, target = self[src], self[dst]
        client = self.client(src, dst)
        head = source.chain.head_header()
        next_recv = target.value("bridge", "recv_seq", [src]) or 0
        next_send = source.value("bridge", "send_seq", [dst]) or 0
        plan = plan_channel(client, self.source_epochs(src), head.height, next_recv, next_send)
        latest = source.value("validators", "current", []) or 0
        epochs = range(client.latest.number + 1, latest + 2) if ignore_handover else plan.schedule_epochs
        schedule = [ScheduleProof(e, *source.proven("validators", "epoch", [e])) for e in epochs]
        items = []
        for seq in range(next_recv, next_send):
            value, proof = source.proven("bridge", "outbox", [dst, seq])
            items.append((Packet.from_fields(codec.decode(value)), proof))
        return plan, build_delivery(src, dst, head, source.certificates[head.height], schedule, items)

    def handover(self, src: str, dst: str, epoch: int):
        bundle = self.keepers[src].get(epoch)
        assert bundle is not None, f"{src} kept no bundle of epoch {epoch}"
        return build_delivery(src, dst, bundle.header, bundle.certificate, bundle.schedule, ())

    def deliver(self, dst: str, delivery):
        return self[dst].tx("relayer", "bridge", "deliver", delivery.encode())

    def open_flow(self) -> bytes:
        """A consumer in oerlikon buys a zurich offer; returns the flow id (the reserve waits in oerlikon's outbox)."""
        zurich, oerlikon = self[ZURICH], self[OERLIKON]
        serial = zurich.ok("producer", "energy_tokens", "emit", FIRST, LAST, ENERGY, "solar", 40, 0, "CHF")
        zurich.ok("producer", "energy_tokens", "offer_side", serial, "consumer", PRICE, "CHF")
        fee = edge_fee(ENERGY * (LAST - FIRST + 1), TOPOLOGY.bridge(OERLIKON).fee_per_kwh)
        return oerlikon.ok("consumer", "bridge", "open_flow", ZURICH, serial, PRICE, "CHF", ENERGY, FIRST, LAST,
                           fee + 1_000, self.clock[0] + 600)


@pytest.fixture
def pair(tmp_path):
    net = Pair(tmp_path)
    net[OERLIKON].ok("bank", "fiat", "mint", "CHF", addr(OERLIKON, "consumer"), DEPOSIT, b"d" * 32)
    yield net
    net.close()


def bridge_state(shard: HShard) -> dict[bytes, bytes]:
    prefix = state_key("bridge", "")[:-2]
    return {k: v for k, v in shard.store.iter_state() if k.startswith(prefix)}


def zurich_changes_and_answers(pair: Pair) -> tuple[bytes, int]:
    """zurich adds a validator, the new set comes in force, then zurich handles a reserve
    and its result waits in its outbox, proven at a head the new set certifies."""
    zurich = pair[ZURICH]
    epoch, after = zurich.reconfigure()
    assert (epoch, after) == (1, effective_after(zurich.chain.height, K))
    zurich.empty_blocks_until(after + 2)
    assert zurich.chain.head_header().validator_set_hash == zurich.chain.latest_epoch.validators.hash
    flow_id = pair.open_flow()
    _, reserve = pair.packets(OERLIKON, ZURICH)
    assert pair.deliver(ZURICH, reserve).ok  # oerlikon's set did not change: accepted as before
    assert zurich.record(flow_id).phase == COMMITTED
    return flow_id, after


# ====================================================================== keeping


def test_the_keeper_builds_the_bundle_when_the_hand_over_height_is_the_head(pair):
    zurich = pair[ZURICH]
    keeper = pair.keepers[ZURICH]
    epoch, after = zurich.reconfigure()
    zurich.empty_blocks_until(after - 1)
    assert keeper.get(epoch) is None and keeper.epochs() == []
    zurich.empty_blocks_until(after)
    bundle = keeper.get(epoch)
    assert bundle.epoch == 1 and bundle.header == zurich.chain.head_header()
    assert bundle.certificate == zurich.certificates[after]
    # the record of epoch 1, then the proof that epoch 2's is absent
    assert [(p.epoch, p.value is None) for p in bundle.schedule] == [(1, False), (2, True)]
    assert bundle.schedule[0].value == zurich.store.get(validator_epoch_key(1))
    # The header is the last one the old set certifies, and a client that knows epoch 0
    # accepts it and learns epoch 1.
    client = pair.client(ZURICH, OERLIKON)
    assert bundle.header.validator_set_hash == client.latest.validators.hash
    client.accept(bundle.header, bundle.certificate, bundle.schedule)
    assert client.latest.number == 1 and client.latest.after == after
    assert decode_handover(encode_handover(bundle)) == bundle
    zurich.empty_blocks_until(after + 3)
    assert keeper.epochs() == [1] and keeper.get(1) == bundle  # kept, not rebuilt


def test_a_raft_bundle_is_built_at_the_height_of_the_change_itself(pair):
    oerlikon = pair[OERLIKON]
    epoch, after = oerlikon.reconfigure()
    assert after == oerlikon.chain.height  # Raft: in force right after its own block
    bundle = pair.keepers[OERLIKON].get(epoch)
    assert bundle.header.height == after and bundle.header.validator_set_hash == oerlikon.genesis.validators.hash
    assert [(p.epoch, p.value is None) for p in bundle.schedule] == [(1, False), (2, True)]
    # a second change right after: its bundle proves epoch 2 only
    epoch2, after2 = oerlikon.reconfigure()
    assert (epoch2, after2) == (2, after + 1)
    second = pair.keepers[OERLIKON].get(2)
    assert [(p.epoch, p.value is None) for p in second.schedule] == [(2, False), (3, True)]
    assert pair.keepers[OERLIKON].get(1) == bundle


def test_a_shard_without_topology_keeps_no_bundles(tmp_path):
    doc = genesis_document(ZURICH)
    del doc["topology"]
    genesis = Genesis.from_document(doc)
    store = Store.open(str(tmp_path / "s"), ZURICH, genesis_hash=genesis.hash)
    try:
        from test_shards_native import executor

        chain = Chain(genesis, store, executor())
        chain.ensure_genesis()
        assert HandoverKeeper.attach(chain) is None and chain.on_commit == []
        assert not os.path.exists(os.path.join(store.path, "handover"))
    finally:
        store.close()


def test_the_keeper_survives_a_restart_and_still_serves_the_bundle(pair, tmp_path):
    zurich = pair[ZURICH]
    _, after = zurich.reconfigure()
    zurich.empty_blocks_until(after + 1)
    served = pair.keepers[ZURICH].encoded(1)
    path = zurich.store.path
    zurich.store.close()
    store = Store.open(path, ZURICH, genesis_hash=zurich.genesis.hash)
    try:
        reopened = HandoverKeeper(store)
        reopened.catch_up()  # the head is past the hand-over height: nothing to build, nothing lost
        assert reopened.encoded(1) == served and reopened.epochs() == [1]
        body = asyncio.run(_get(SimpleNamespace(chain_id=ZURICH, handovers=reopened), "/v1/shards/handover/1"))
        assert body[0] == 200 and bytes.fromhex(body[1]["bundle_hex"]) == served and body[1]["height"] == after
    finally:
        store.close()
        zurich.store = Store.open(path, ZURICH, genesis_hash=zurich.genesis.hash)  # for the fixture's close


def test_a_crash_between_the_hand_over_block_and_its_bundle_is_repaired_at_start(pair):
    zurich = pair[ZURICH]
    _, after = zurich.reconfigure()
    zurich.empty_blocks_until(after)
    keeper = pair.keepers[ZURICH]
    kept = keeper.encoded(1)
    os.remove(keeper._path(1))  # the node died after the block's commit, before the file
    assert keeper.get(1) is None
    restarted = HandoverKeeper(zurich.store)
    restarted.catch_up()
    assert restarted.encoded(1) == kept


def test_a_certificate_stored_after_its_block_completes_the_pending_bundle(pair):
    zurich = pair[ZURICH]
    keeper = pair.keepers[ZURICH]
    _, after = zurich.reconfigure()
    zurich.empty_blocks_until(after - 1)
    # The hand-over block (which changes the state, so no block below proves it) commits
    # with a certificate that does not commit its header yet.
    zurich.clock[0] += 1
    proposer = zurich.chain.validators_at(after).validators[0].node_key
    mint = zurich.signed("bank", "fiat", "mint", "CHF", addr(ZURICH, "consumer"), 5, b"m" * 32)
    encoded, executed = zurich.chain.build([mint], proposer)
    assert executed.receipts[0].ok and executed.prepared.root != zurich.chain.head_header().state_root
    placeholder = CommitCertificate("bft", after, 0, b"\x00" * 32, ())
    zurich.chain.commit(after, encoded, placeholder)
    assert keeper.get(1) is None
    assert "waits for the commit certificate" in keeper.why_missing(1)
    certificate = zurich.certify(after, executed.block.hash)
    zurich.store.put_certificate(after, certificate.encode())
    zurich.certificates[after] = certificate
    zurich.block([])  # the next commit attaches it; the proofs were made at the right head
    bundle = keeper.get(1)
    assert bundle.header.height == after and bundle.certificate == certificate
    client = pair.client(ZURICH, OERLIKON)
    client.accept(bundle.header, bundle.certificate, bundle.schedule)
    assert client.latest.number == 1


def test_at_a_null_batch_head_the_bundle_is_certified_by_the_block_below(pair):
    zurich = pair[ZURICH]
    _, after = zurich.reconfigure()
    zurich.empty_blocks_until(after - 1)
    below = zurich.chain.head_header()
    null = null_block(below, after, zurich.chain.validators_at(after).hash)
    validators = zurich.chain.validators_at(after)
    payload = commit_vote_payload(after, 0, NULL_DIGEST)
    sigs = tuple((i, KEYS[validators.validators[i].node_key].sign(ZURICH, Kind.COMMIT, payload))
                 for i in range(validators.bft_quorum))
    zurich.chain.commit(after, b"", CommitCertificate("bft", after, 0, NULL_DIGEST, sigs))
    assert zurich.chain.head_header() == null.header
    bundle = pair.keepers[ZURICH].get(1)
    assert bundle.header == below and bundle.certificate == zurich.certificates[below.height]
    client = pair.client(ZURICH, OERLIKON)
    client.accept(bundle.header, bundle.certificate, bundle.schedule)
    assert client.latest.number == 1


# ====================================================================== the destination


def test_packets_under_a_new_bft_set_are_refused_until_the_bundle_is_delivered(pair):
    flow_id, after = zurich_changes_and_answers(pair)
    oerlikon = pair[OERLIKON]
    plan, naive = pair.packets(ZURICH, OERLIKON, ignore_handover=True)
    assert plan.handover_epoch == 1  # what a relayer's plan says
    before = bridge_state(oerlikon)
    refused = pair.deliver(OERLIKON, naive)
    assert refused.error[0] == "unknown_validator_set"
    assert bridge_state(oerlikon) == before
    assert oerlikon.record(flow_id).phase == "locked"
    # the bundle teaches the change; then the same packets go through
    assert pair.deliver(OERLIKON, pair.handover(ZURICH, OERLIKON, 1)).ok
    client = pair.client(ZURICH, OERLIKON)
    assert client.latest.number == 1 and client.known_through == after
    plan, delivery = pair.packets(ZURICH, OERLIKON)
    assert plan.handover_epoch is None and plan.schedule_epochs == (2,)
    assert pair.deliver(OERLIKON, delivery).ok
    assert oerlikon.record(flow_id).phase == COMMITTED
    assert pair.deliver(OERLIKON, pair.handover(ZURICH, OERLIKON, 1)).error[0] == "schedule_mismatch"


def test_packets_under_a_new_raft_set_are_refused_until_the_bundle_is_delivered(pair):
    oerlikon, zurich = pair[OERLIKON], pair[ZURICH]
    epoch, after = oerlikon.reconfigure()
    flow_id = pair.open_flow()  # the reserve is proven at a head the new set certifies
    assert oerlikon.chain.height > after
    plan, naive = pair.packets(OERLIKON, ZURICH, ignore_handover=True)
    assert plan.handover_epoch == 1
    before = bridge_state(zurich)
    assert pair.deliver(ZURICH, naive).error[0] == "unknown_validator_set"
    assert bridge_state(zurich) == before and zurich.record(flow_id) is None
    assert pair.deliver(ZURICH, pair.handover(OERLIKON, ZURICH, epoch)).ok
    _, delivery = pair.packets(OERLIKON, ZURICH)
    assert pair.deliver(ZURICH, delivery).ok
    assert zurich.record(flow_id).phase == COMMITTED
    # and back down: zurich's result reaches oerlikon (zurich's set never changed)
    _, result = pair.packets(ZURICH, OERLIKON)
    assert pair.deliver(OERLIKON, result).ok
    assert oerlikon.record(flow_id).phase == COMMITTED


def _tampered_bundles(pair: Pair) -> dict[str, object]:
    """Forged or wrong bundles of zurich's epoch 1, as deliveries to oerlikon."""
    zurich = pair[ZURICH]
    good = pair.keepers[ZURICH].get(1)
    record, proof = good.schedule[0].value, good.schedule[0].proof
    after, fields = codec.decode(record)
    forged_record = codec.encode([after - K, fields])  # claims the change took effect earlier
    other = validator_keys(ZURICH, 5)[2]
    foreign_set = codec.encode([after, ValidatorSet((other,)).to_fields()])
    cert = good.certificate
    forged_cert = CommitCertificate(cert.protocol, cert.height, cert.round, cert.digest,
                                    tuple((i, bytes(64)) for i, _ in cert.signatures))
    head = zurich.chain.head_header()
    at_head = [ScheduleProof(e, *zurich.proven("validators", "epoch", [e])) for e in (1, 2)]

    def delivery(header, certificate, schedule):
        return build_delivery(ZURICH, OERLIKON, header, certificate, schedule, ())

    return {
        "record altered": delivery(good.header, cert, (ScheduleProof(1, forged_record, proof), good.schedule[1])),
        "another set": delivery(good.header, cert, (ScheduleProof(1, foreign_set, proof), good.schedule[1])),
        "certificate forged": delivery(good.header, forged_cert, good.schedule),
        "epoch 2 proven first": delivery(good.header, cert, (ScheduleProof(2, None, good.schedule[1].proof),)),
        "absence proof only": delivery(good.header, cert, (good.schedule[1],)),
        "made at the head (new set)": delivery(head, zurich.certificates[head.height], at_head),
    }


def test_a_forged_or_wrong_epoch_bundle_is_refused_and_changes_nothing(pair):
    flow_id, _ = zurich_changes_and_answers(pair)
    oerlikon = pair[OERLIKON]
    before = bridge_state(oerlikon)
    codes = {name: pair.deliver(OERLIKON, d).error[0] for name, d in _tampered_bundles(pair).items()}
    assert codes == {
        "record altered": "bad_schedule_proof",
        "another set": "bad_schedule_proof",
        "certificate forged": "bad_certificate",
        "epoch 2 proven first": "schedule_mismatch",
        "absence proof only": "schedule_mismatch",
        "made at the head (new set)": "unknown_validator_set",
    }
    assert bridge_state(oerlikon) == before
    assert pair.deliver(OERLIKON, pair.handover(ZURICH, OERLIKON, 1)).ok  # the genuine one still goes through


# ====================================================================== serving


async def _get(node, path: str) -> tuple[int, dict]:
    app = web.Application()
    api_handover.register(app, node)
    server = TestServer(app)
    await server.start_server()
    client = Client(str(server.make_url("")))
    try:
        async with client._http().get(client.base_url + path) as resp:
            return resp.status, await resp.json()
    finally:
        await client.close()
        await server.close()


def test_the_api_serves_kept_bundles_and_says_why_one_is_missing(pair):
    zurich = pair[ZURICH]
    node = SimpleNamespace(chain_id=ZURICH, handovers=pair.keepers[ZURICH])

    def get(path):
        return asyncio.run(_get(node, path))

    status, body = get("/v1/shards/handover/1")
    assert status == 404 and body["error"]["code"] == "not_found" and "latest is 0" in body["error"]["message"]
    _, after = zurich.reconfigure()
    status, body = get("/v1/shards/handover/1")
    assert status == 404 and f"takes effect after height {after}" in body["error"]["message"]
    zurich.empty_blocks_until(after)
    status, body = get("/v1/shards/handover/1")
    assert status == 200 and body["shard"] == ZURICH and body["epoch"] == 1 and body["height"] == after
    assert decode_handover(bytes.fromhex(body["bundle_hex"])) == pair.keepers[ZURICH].get(1)
    assert get("/v1/shards/handover/x")[1]["error"]["code"] == "malformed"
    assert get("/v1/shards/handover/0")[1]["error"]["code"] == "bad_request"
    os.remove(pair.keepers[ZURICH]._path(1))  # a node that was not at that height as its head
    status, body = get("/v1/shards/handover/1")
    assert status == 404 and "could not be built at height" in body["error"]["message"]
    zurich.block([])
    status, body = get("/v1/shards/handover/1")
    assert status == 404 and "ask another node" in body["error"]["message"]
    status, body = asyncio.run(_get(SimpleNamespace(chain_id=ZURICH, handovers=None), "/v1/shards/handover/1"))
    assert status == 404 and "no topology" in body["error"]["message"]


# ====================================================================== the relayer


class HarnessNode(Client):
    """A node API in the test process: proofs, nonces and commits from an :class:`HShard`;
    hand-over bundles from the real routes (``node.api_handover``) at ``bundle_url``."""

    def __init__(self, shard: HShard, url: str, bundle_url: str | None = None) -> None:
        super().__init__(url)
        self.shard = shard
        self.bundle_url = bundle_url

    async def request(self, method, path, *, params=None, json_body=None, timeout=None):
        shard = self.shard
        if path.startswith("/v1/shards/handover/"):
            other = Client(self.bundle_url)
            try:
                return await other.request(method, path, params=params, json_body=json_body, timeout=timeout)
            finally:
                await other.close()
        if path == "/v1/state/proofs":
            head = shard.chain.head_header()
            values = []
            for text in json_body["keys"]:
                proven = shard.store.prove(bytes.fromhex(text))
                values.append({"key_hex": text, "value_hex": None if proven.value is None else proven.value.hex(),
                               "proof": proven.proof.hex()})
            return 200, {"header_hex": head.encode().hex(), "certificate_hex": shard.certificates[head.height].encode().hex(),
                         "values": values}
        if path.startswith("/v1/accounts/"):
            address = key(shard.id, "relayer").address.raw
            return 200, {"nonce": shard.value("accounts", "nonce", [address]) or 0}
        if path == "/v1/tx":
            tx = Transaction.decode(bytes.fromhex(json_body["tx"]))
            [receipt] = shard.block([tx])
            return 200, {"status": "committed", "tx_id": tx.tx_id.hex(), "height": shard.chain.height, "index": 0,
                         "receipt_hex": receipt.encode().hex()}
        raise AssertionError(f"unexpected request {method} {path}")


async def _serve_bundles(node) -> TestServer:
    app = web.Application()
    api_handover.register(app, node)
    server = TestServer(app)
    await server.start_server()
    return server


def _relayer(pair: Pair, urls: dict[str, tuple[str, ...]], nodes: dict[str, HarnessNode]) -> Relayer:
    endpoints = {s: ShardEndpoint(s, urls[s], pair[s].genesis.validators, pair[s].genesis.protocol) for s in urls}
    return Relayer(key(OERLIKON, "relayer"), endpoints, [Channel(ZURICH, OERLIKON)],
                   client_factory=lambda url: nodes[url])


def test_the_relayer_fetches_verifies_and_delivers_the_bundle_then_the_packets(pair):
    flow_id, _ = zurich_changes_and_answers(pair)

    async def body():
        honest = await _serve_bundles(SimpleNamespace(chain_id=ZURICH, handovers=pair.keepers[ZURICH]))
        try:
            nodes = {"http://z": HarnessNode(pair[ZURICH], "http://z", str(honest.make_url(""))),
                     "http://o": HarnessNode(pair[OERLIKON], "http://o")}
            relayer = _relayer(pair, {ZURICH: ("http://z",), OERLIKON: ("http://o",)}, nodes)
            moved = await relayer.relay_channel(Channel(ZURICH, OERLIKON))
            return moved, relayer.stats
        finally:
            await honest.close()

    moved, stats = asyncio.run(body())
    assert moved == 1 and stats.handovers == 1 and stats.packets == 1
    assert pair.client(ZURICH, OERLIKON).latest.number == 1
    assert pair[OERLIKON].record(flow_id).phase == COMMITTED


def test_the_relayer_submits_no_bundle_a_lying_node_serves_and_turns_to_another_node(pair):
    flow_id, _ = zurich_changes_and_answers(pair)
    oerlikon = pair[OERLIKON]
    height = oerlikon.chain.height
    keeper = pair.keepers[ZURICH]
    forged = _tampered_bundles(pair)["record altered"]
    lying_keeper = SimpleNamespace(get=lambda e: Handover(e, forged.header, forged.certificate, forged.schedule),
                                   why_missing=lambda e: "")

    async def body(urls):
        lying = await _serve_bundles(SimpleNamespace(chain_id=ZURICH, handovers=lying_keeper))
        honest = await _serve_bundles(SimpleNamespace(chain_id=ZURICH, handovers=keeper))
        try:
            nodes = {"http://z1": HarnessNode(pair[ZURICH], "http://z1", str(lying.make_url(""))),
                     "http://z2": HarnessNode(pair[ZURICH], "http://z2", str(honest.make_url(""))),
                     "http://o": HarnessNode(oerlikon, "http://o")}
            relayer = _relayer(pair, {ZURICH: urls, OERLIKON: ("http://o",)}, nodes)
            try:
                return await relayer.relay_channel(Channel(ZURICH, OERLIKON)), relayer.stats
            except RelayError as exc:
                return exc, relayer.stats
        finally:
            await lying.close()
            await honest.close()

    # Only the lying node: nothing is submitted, the error says why.
    error, stats = asyncio.run(body(("http://z1",)))
    assert isinstance(error, RelayError) and error.code == "handover_unavailable"
    assert "bad_schedule_proof" in error.message and stats.handovers == 0
    assert oerlikon.chain.height == height  # no transaction was submitted
    moved, stats = asyncio.run(body(("http://z1", "http://z2")))
    assert moved == 1 and stats.handovers == 1
    assert oerlikon.record(flow_id).phase == COMMITTED
