"""The node's HTTP API server: documentation, error discipline, limits, metrics.

The server runs for real on loopback in front of a fake node (:class:`FakeNode`): a real
LMDB store holding real blocks with real commit certificates signed by four test
validators, a real mempool for admission, and a block producer the test drives.
``tests/test_httpclient.py`` uses the same harness through the client SDK.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import bls, codec
from ledger.block import ZERO_HASH, Block, BlockHeader, receipts_root, tx_root
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Address, Kind, PrivateKey
from ledger.httpclient import Client, encode_key_part
from ledger.statekeys import state_key
from ledger.store import Store
from ledger.tx import Event, Receipt, Transaction
from ledger.validators import Validator, ValidatorSet
from node import openapi
from node.api import ApiServer
from node.api_json import ApiError, parse_key_part, to_json
from node.mempool import REASONS, Mempool, TxRejected
from node.metrics import MetricError, NodeMetrics, Registry

CHAIN = "ch/zurich"
NODE_KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
ALICE = PrivateKey(bytes([42]) * 32)
BOB = PrivateKey(bytes([43]) * 32)
OUTSIDER = PrivateKey(bytes([44]) * 32)
BIG = (1 << 60) + 7  # far beyond 2**53: a float would round it


def _validator(i: int) -> Validator:
    sk = bls.keygen(bytes([i + 1]) * 32)
    return Validator(NODE_KEYS[i].public_key.raw, bls.sk_to_pk(sk), bls.pop_prove(sk), f"operator-{i}")


VALIDATORS = ValidatorSet(tuple(_validator(i) for i in range(4)))


def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sign_commit(height: int, digest: bytes, signers=(0, 1, 2), round_: int = 0, keys=NODE_KEYS) -> CommitCertificate:
    payload = commit_vote_payload(height, round_, digest)
    return CommitCertificate("bft", height, round_, digest, tuple((i, keys[i].sign(CHAIN, Kind.COMMIT, payload)) for i in signers))


def balance_key(address: Address) -> bytes:
    return state_key("fiat", "balances", [address.raw, "CHF"])


class FakeNode:
    """A :class:`node.api.NodeView` over a real store; blocks are committed when the test says so."""

    role = "validator"
    protocol = "bft"
    genesis_hash = bytes(range(32))

    def __init__(self, path: Path, *, members=None, max_txs: int = 1000) -> None:
        self.chain_id = CHAIN
        self.node_key = NODE_KEYS[0].public_key.raw
        self.validators = VALIDATORS
        self.store = Store.open(str(path), CHAIN, genesis_hash=self.genesis_hash, map_size=64 << 20)
        self.metrics = Registry()
        self.node_metrics = NodeMetrics.create(self.metrics)
        self.node_metrics.height.set_function(lambda: self.store.height)
        self.nonces: dict[bytes, int] = {}
        self.members = members  # None: everyone may submit
        self.mempool = Mempool(CHAIN, max_txs=max_txs, next_nonce=lambda s: self.nonces.get(s, 0), policy=self._policy)
        self.rejected: dict[bytes, tuple[str, str]] = {}
        self.event_log: list[tuple[int, int, bytes, Event]] = []
        self.is_ready = True
        self.fail_status = False
        self._waiters: dict[bytes, asyncio.Future] = {}
        self._new_events: asyncio.Event | None = None
        self.balances: dict[bytes, int] = {}

    def _policy(self, tx: Transaction) -> None:
        if self.members is not None and tx.sender not in self.members:
            raise TxRejected("not_member", "the sender is not an admitted participant of ch/zurich")

    # ---------------------------------------------------------- chain building

    def commit(self, txs=(), writes=None, receipts=None, *, certificate: CommitCertificate | bool = True) -> BlockHeader:
        """Apply one real block (state writes, receipts, certificate) to the store."""
        store = self.store
        height = 0 if store.height is None else store.height + 1
        prev = store.block_hash(height - 1) if height else ZERO_HASH
        writes = dict(writes or {})
        if receipts is None:
            receipts = []
            for tx in txs:
                to, amount = tx.args
                self.balances[to] = self.balances.get(to, 0) + amount
                writes[state_key("fiat", "balances", [to, "CHF"])] = codec.encode(self.balances[to])
                receipts.append(Receipt(True, 2100, (Event("fiat", "transfer", (("to", to), ("amount", amount))),), None, amount))
        prepared = store.prepare_state(writes)
        header = BlockHeader(
            CHAIN, height, prev, tx_root([t.encode() for t in txs]), prepared.root,
            receipts_root([r.encode() for r in receipts]), 1_700_000_000 + height, self.node_key, VALIDATORS.hash,
        )
        block = Block(header, tuple(txs))
        if certificate is True:
            certificate = sign_commit(height, header.hash)
        cert_raw = certificate.encode() if certificate else None
        store.apply_block(height, header.hash, block.encode(), cert_raw, prepared,
                          [(t.tx_id, r.encode()) for t, r in zip(txs, receipts, strict=True)])
        for index, (tx, receipt) in enumerate(zip(txs, receipts, strict=True)):
            self.nonces[tx.sender] = tx.nonce + 1
            for event in receipt.events:
                self.event_log.append((height, index, tx.tx_id, event))
            waiter = self._waiters.pop(tx.tx_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
        self.mempool.remove_committed([t.tx_id for t in txs], height)
        if self._new_events is not None:
            self._new_events.set()
        return header

    def commit_pending(self) -> BlockHeader | None:
        height = -1 if self.store.height is None else self.store.height
        entries = self.mempool.select(max_txs=1000, max_bytes=1 << 22, height=height + 1)
        if not entries:
            return None
        return self.commit([e.tx for e in entries])

    def reject(self, tx_id: bytes, code: str, message: str) -> None:
        self.rejected[tx_id] = (code, message)
        self.mempool.remove_committed([tx_id], self.store.height or 0)
        waiter = self._waiters.pop(tx_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    # ---------------------------------------------------------- NodeView

    async def submit(self, raw: bytes) -> bytes:
        height = -1 if self.store.height is None else self.store.height
        return self.mempool.add(raw, height).tx_id

    async def submit_many(self, raws):
        out = []
        for raw in raws:
            try:
                out.append(await self.submit(raw))
            except TxRejected as exc:
                out.append(exc)
        return out

    async def wait_for(self, tx_id: bytes, timeout_s: float) -> bool:
        if self.store.tx_location(tx_id) is not None:
            return True
        future = self._waiters.setdefault(tx_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False

    def tx_pending(self, tx_id: bytes) -> bool:
        return tx_id in self.mempool

    def tx_rejected(self, tx_id: bytes):
        return self.rejected.get(tx_id)

    def account(self, address: bytes) -> dict:
        for sender in list(self.nonces) + [e.sender for e in map(self.mempool.get, self.mempool.pending_ids()) if e]:
            if Address.from_public_key(sender).raw == address:
                nonce = self.nonces.get(sender, 0)
                waiting = sum(1 for i in self.mempool.pending_ids() if self.mempool.get(i).sender == sender)
                return {"nonce": nonce, "pending_nonce": nonce + waiting, "roles": ["producer"]}
        return {"nonce": 0, "pending_nonce": 0, "roles": []}

    async def events(self, contract, name, from_height):
        if self._new_events is None:
            self._new_events = asyncio.Event()
        start = (self.store.height or 0) + 1 if from_height is None else from_height
        i = 0
        while True:
            while i < len(self.event_log):
                item = self.event_log[i]
                i += 1
                height, _, _, event = item
                if height >= start and contract in (None, event.contract) and name in (None, event.name):
                    yield item
            self._new_events.clear()
            await self._new_events.wait()

    def status(self) -> dict:
        if self.fail_status:
            raise RuntimeError("status exploded")
        return {"height": self.store.height, "view": 3, "leader": NODE_KEYS[0].public_key.raw, "peers": 3,
                "mempool": len(self.mempool), "catching_up": False}

    def ready(self) -> bool:
        return self.is_ready

    def shards(self) -> list[dict]:
        return [{"shard": CHAIN, "height": self.store.height, "certified_height": self.store.height}]


def transfer(key: PrivateKey, nonce: int, amount: int, to: PrivateKey = BOB, chain_id: str = CHAIN, **kw) -> Transaction:
    return Transaction.create(key, chain_id=chain_id, nonce=nonce, contract="fiat", function="transfer",
                              args=[to.address.raw, amount], **kw)


def seeded_node(path: Path, **kw) -> FakeNode:
    """Three committed blocks: transfers from Alice to Bob, and a few odd values in state."""
    node = FakeNode(path, **kw)
    node.commit(writes={
        state_key("meters", "big", [b"\x01\x02", 7]): codec.encode([BIG, -BIG, (1 << 64) - 1, 5]),
        state_key("market_config", "params", []): codec.encode({"gate_closure_s": 3600, "currency": "CHF"}, allow_maps=True),
    })
    node.commit([transfer(ALICE, 0, 125_00), transfer(ALICE, 1, BIG)])
    node.commit([transfer(ALICE, 2, 5)])
    return node


@asynccontextmanager
async def serving(node: FakeNode, **options):
    server = ApiServer(node, **options)
    port = await server.start("127.0.0.1", 0)
    client = Client(f"http://127.0.0.1:{port}", timeout=5)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


@pytest.fixture
def node(tmp_path):
    n = seeded_node(tmp_path / "store")
    yield n
    n.store.close()


async def raw_request(session: aiohttp.ClientSession, method: str, url: str, **kw):
    async with session.request(method, url, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def assert_json_error(status: int, ctype: str, body: bytes, *, code: str | None = None) -> dict:
    assert 400 <= status < 600, status
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    doc = json.loads(body)
    assert set(doc["error"]) == {"code", "message"} and doc["error"]["message"]
    assert doc["error"]["code"] in openapi.ERRORS, doc
    assert openapi.ERRORS[doc["error"]["code"]][0] == status, (doc, status)
    if code is not None:
        assert doc["error"]["code"] == code, doc
    return doc


# ---------------------------------------------------------------- the document


def test_openapi_documents_every_route(node):
    async def body():
        async with serving(node) as (server, client):
            routes = {(r.method, r.resource.canonical) for r in server.app.router.routes()}
            documented = {(ep.method, ep.path) for ep in openapi.ENDPOINTS}
            assert routes == documented
            doc = await client.openapi()
            assert doc == json.loads(json.dumps(openapi.document()))
            served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
            assert served == documented | {(ep.method, ep.path) for ep in openapi.MODULE_ENDPOINTS}
            for ep in openapi.ENDPOINTS + openapi.MODULE_ENDPOINTS:
                op = doc["paths"][ep.path][ep.method.lower()]
                assert op["operationId"] == ep.operation and op["summary"] and op["description"]
                path_params = set(re.findall(r"{(\w+)}", ep.path))
                assert path_params == {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                for code in op["x-error-codes"]:
                    assert str(openapi.ERRORS[code][0]) in op["responses"], (ep.path, code)
            refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
            assert refs <= set(doc["components"]["schemas"])

    run(body())


def test_the_routes_node_modules_register_are_exactly_the_documented_module_endpoints():
    from aiohttp import web

    from node import api_handover, api_sync

    app = web.Application()

    class Holder:
        store = None
        chain_id = CHAIN

    api_sync.register(app, Holder())
    api_handover.register(app, Holder())
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert routes == {(ep.method, ep.path) for ep in openapi.MODULE_ENDPOINTS}


def test_every_error_code_the_server_and_mempool_use_is_documented():
    assert set(REASONS) <= set(openapi.ERRORS)
    root = Path(__file__).resolve().parent.parent / "node"
    used = set()
    for path in sorted(root.glob("api*.py")):
        source = path.read_text()
        used |= set(re.findall(r'api_error\(\s*"(\w+)"', source))
        used |= set(re.findall(r'ApiError\(\d+, "(\w+)"', source))
        used |= set(re.findall(r'"code": "(\w+)"', source))
        used |= set(re.findall(r'\d{3}: "(\w+)"', source))
    assert used, "the scan found no codes: the pattern is stale"
    assert used <= set(openapi.ERRORS), used - set(openapi.ERRORS)


# ---------------------------------------------------------------- hostile input


GARBAGE = [
    ("POST", "/v1/tx", {"data": b"\xff\xfe\x00garbage"}, "malformed"),
    ("POST", "/v1/tx", {"data": b"[" * 100_000}, "malformed"),
    ("POST", "/v1/tx", {"data": b'{"tx": NaN}'}, "malformed"),
    ("POST", "/v1/tx", {"data": b'{"tx": "' + b"9" * 5000 + b'"}'}, "malformed"),
    ("POST", "/v1/tx", {"json": {"tx": "abc"}}, "malformed"),
    ("POST", "/v1/tx", {"json": {"tx": "zz" * 10}}, "malformed"),
    ("POST", "/v1/tx", {"json": {"tx": 12}}, "malformed"),
    ("POST", "/v1/tx", {"json": {"tx": "00" * 200}}, "malformed"),
    ("POST", "/v1/tx", {"json": {"tx": "ab" * 300_000}}, "too_large"),
    ("POST", "/v1/tx", {"json": [1, 2]}, "bad_request"),
    ("POST", "/v1/tx", {"json": {"no": "tx"}}, "bad_request"),
    ("POST", "/v1/tx?wait=forever", {"json": {"tx": "00"}}, "bad_request"),
    ("POST", "/v1/tx?wait=commit&timeout_ms=-1", {"json": {"tx": "00"}}, "bad_request"),
    ("POST", "/v1/tx?wait=commit&timeout_ms=1e3", {"json": {"tx": "00"}}, "malformed"),
    ("POST", "/v1/tx?wait=commit&timeout_ms=99999999999999999999999", {"json": {"tx": "00"}}, "malformed"),
    ("POST", "/v1/tx", {"data": b"x" * (3 << 20)}, "too_large"),
    ("POST", "/v1/txs", {"json": {"txs": "00"}}, "bad_request"),
    ("POST", "/v1/txs", {"json": {"txs": ["00"] * 1001}}, "too_large"),
    ("GET", "/v1/tx/abc", {}, "malformed"),
    ("GET", "/v1/tx/" + "g" * 64, {}, "malformed"),
    ("GET", "/v1/tx/" + "00" * 33, {}, "malformed"),
    ("GET", "/v1/blocks/-1", {}, "bad_request"),
    ("GET", "/v1/blocks/1e3", {}, "malformed"),
    ("GET", "/v1/blocks/latest2", {}, "malformed"),
    ("GET", "/v1/blocks/%00", {}, "malformed"),
    ("GET", "/v1/blocks/%ff%fe", {}, "malformed"),
    ("GET", "/v1/blocks/" + "9" * 40, {}, "malformed"),
    ("GET", "/v1/blocks/9223372036854775808", {}, "bad_request"),
    ("GET", "/v1/blocks/99", {}, "not_found"),
    ("GET", "/v1/blocks/1?raw=maybe", {}, "bad_request"),
    ("GET", "/v1/state/fiat/balances?key=hex:zz", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=hex:abc", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=int:abc", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=int:-99999999999999999999", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=int:18446744073709551616", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=addr:grid1nope", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=bool:maybe", {}, "malformed"),
    ("GET", "/v1/state/fiat/balances?key=foo:bar", {}, "bad_request"),
    ("GET", "/v1/state/fiat/balances?" + "&".join(["key=1"] * 17), {}, "bad_request"),
    ("GET", "/v1/state/fiat/balances?key=" + "x" * 600, {}, "bad_request"),
    ("GET", "/v1/state/" + "c" * 65 + "/x", {}, "bad_request"),
    ("GET", "/v1/state/fiat/balances?proof=2", {}, "bad_request"),
    ("GET", "/v1/accounts/grid1qqqqqq", {}, "malformed"),
    ("GET", "/v1/accounts/%ff", {}, "malformed"),
    ("GET", "/v1/events?from_height=-5", {}, "bad_request"),
    ("GET", "/v1/events?from_height=x", {}, "malformed"),
    ("GET", "/v1/events?contract=" + "c" * 65, {}, "bad_request"),
    ("GET", "/v1/events?last_event_id=1-2", {}, "malformed"),
    ("GET", "/v1/nowhere", {}, "not_found"),
    ("GET", "/", {}, "not_found"),
    ("DELETE", "/v1/tx", {}, "method_not_allowed"),
    ("POST", "/v1/status", {}, "method_not_allowed"),
    ("PUT", "/v1/blocks/1", {"data": b"x"}, "method_not_allowed"),
]


def test_garbage_requests_get_json_errors_and_server_keeps_serving(node):
    async def body():
        async with serving(node, max_request_bytes=1 << 20) as (server, client):
            base = client.base_url
            async with aiohttp.ClientSession() as session:
                for method, path, kw, code in GARBAGE:
                    status, ctype, raw = await raw_request(session, method, base + path, **kw)
                    try:
                        assert_json_error(status, ctype, raw, code=code)
                    except AssertionError as exc:
                        raise AssertionError(f"{method} {path}: {exc}") from None
                rng = random.Random(7)
                paths = ["/v1/tx", "/v1/txs", "/v1/blocks/1", "/v1/state/fiat/balances", "/v1/accounts/x", "/v1/status"]
                for _ in range(60):
                    junk = rng.randbytes(rng.randrange(0, 4096))
                    status, ctype, raw = await raw_request(session, "POST", base + rng.choice(paths), data=junk)
                    assert_json_error(status, ctype, raw)
                # an unknown contract is not an error: its value is proven absent
                status, _, raw = await raw_request(session, "GET", base + "/v1/state/nosuchcontract/x?key=int:-1")
                assert status == 200 and json.loads(raw)["found"] is False
                assert await client.health()
                assert (await client.status())["height"] == 2

    run(body())


def test_request_body_over_the_limit_or_too_slow_is_refused_whether_or_not_its_length_is_announced(node):
    async def chunks():
        for _ in range(64):
            yield b"a" * 4096

    async def trickle():
        for _ in range(50):
            yield b" "
            await asyncio.sleep(0.05)

    async def body():
        async with serving(node, max_request_bytes=64 << 10, body_timeout_s=0.3) as (_, client):
            async with aiohttp.ClientSession() as session:
                status, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", data=b"{" + b" " * (65 << 10))
                assert_json_error(status, ctype, raw, code="too_large")
                status, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", data=chunks())
                assert_json_error(status, ctype, raw, code="too_large")
                status, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/txs", data=trickle())
                assert_json_error(status, ctype, raw, code="timeout")
            assert await client.health()

    run(body())


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def exception(self, event: str, **kw) -> None:
        self.events.append((event, kw))

    warning = exception


def test_a_failing_handler_answers_internal_json_and_the_server_keeps_serving(node):
    log = RecordingLog()

    async def body():
        async with serving(node, logger=log) as (_, client):
            node.fail_status = True
            async with aiohttp.ClientSession() as session:
                status, ctype, raw = await raw_request(session, "GET", client.base_url + "/v1/status")
            assert_json_error(status, ctype, raw, code="internal")
            assert "status exploded" not in raw.decode()  # internals stay in the log
            assert log.events == [("api_handler_failed", {"operation": "get_status", "path": "/v1/status"})]
            node.fail_status = False
            assert (await client.status())["height"] == 2
            text = await client.metrics()
            assert 'gridledger_api_requests_total{operation="get_status",status="500"} 1' in text

    run(body())


def test_submit_refusals_carry_the_mempool_code_and_its_http_status(tmp_path):
    node = seeded_node(tmp_path / "s", members={ALICE.public_key.raw, BOB.public_key.raw}, max_txs=1)
    cases = [
        (transfer(ALICE, 3, 1, chain_id="ch/bern"), "wrong_chain", 400),
        (transfer(ALICE, 0, 1), "bad_nonce", 400),
        (transfer(OUTSIDER, 0, 1), "not_member", 403),
        (transfer(ALICE, 3, 1, gas_limit=1 << 36), "gas_limit", 400),
    ]

    async def body():
        async with serving(node) as (_, client):
            async with aiohttp.ClientSession() as session:
                for tx, code, status in cases:
                    got, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", json={"tx": tx.encode().hex()})
                    doc = assert_json_error(got, ctype, raw, code=code)
                    assert got == status and doc["tx_id"] == tx.tx_id.hex() and doc["status"] == "rejected"
                forged = bytearray(transfer(ALICE, 3, 1).encode())
                forged[-1] ^= 1
                got, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", json={"tx": forged.hex()})
                assert_json_error(got, ctype, raw, code="bad_signature")
                first = transfer(ALICE, 3, 1)
                got, _, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", json={"tx": first.encode().hex()})
                assert got == 202 and json.loads(raw)["status"] == "pending"
                # the same transaction again is answered, not refused: retries are safe
                got, _, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", json={"tx": first.encode().hex()})
                assert got == 202 and json.loads(raw) == {"tx_id": first.tx_id.hex(), "status": "pending"}
                got, ctype, raw = await raw_request(session, "POST", client.base_url + "/v1/tx", json={"tx": transfer(BOB, 0, 1).encode().hex()})
                assert_json_error(got, ctype, raw, code="mempool_full")
            assert 'gridledger_api_requests_total{operation="submit_tx",status="429"} 1' in await client.metrics()

    try:
        run(body())
    finally:
        node.store.close()


def test_a_transaction_rejected_while_waiting_answers_its_rejection(node):
    tx = transfer(ALICE, 3, 1, expiry=3)

    async def body():
        async with serving(node) as (_, client):
            async def drop_it():
                await asyncio.sleep(0.05)
                node.reject(tx.tx_id, "expired", "transaction expired at height 3")

            dropper = asyncio.create_task(drop_it())
            async with aiohttp.ClientSession() as session:
                status, ctype, raw = await raw_request(
                    session, "POST", client.base_url + "/v1/tx?wait=commit&timeout_ms=5000", json={"tx": tx.encode().hex()})
            await dropper
            doc = assert_json_error(status, ctype, raw, code="expired")
            assert doc["status"] == "rejected" and doc["tx_id"] == tx.tx_id.hex()
            result = await client.tx(tx.tx_id)
            assert result.status == "rejected" and result.error[0] == "expired"

    run(body())


# ---------------------------------------------------------------- JSON


def test_large_integers_survive_json(node):
    assert to_json((1 << 53) - 1) == (1 << 53) - 1
    assert to_json(1 << 53) == str(1 << 53)
    assert to_json(-(1 << 53)) == str(-(1 << 53))
    assert to_json(True) is True

    async def body():
        async with serving(node) as (_, client):
            _, doc = await client.request("GET", "/v1/state/meters/big", params=[("key", "hex:0102"), ("key", "int:7")])
            assert doc["value"] == [str(BIG), str(-BIG), str((1 << 64) - 1), 5]
            assert codec.decode(bytes.fromhex(doc["value_hex"])) == [BIG, -BIG, (1 << 64) - 1, 5]
            assert await client.state("meters", "big", [b"\x01\x02", 7]) == [BIG, -BIG, (1 << 64) - 1, 5]
            # a receipt and an event carrying an amount above 2**53
            tx_id = transfer(ALICE, 1, BIG).tx_id
            result = await client.tx(tx_id)
            assert result.json["receipt"]["result"] == str(BIG)
            assert result.json["receipt"]["events"][0]["fields"]["amount"] == str(BIG)
            assert result.receipt.result == BIG and dict(result.receipt.events[0].fields)["amount"] == BIG
            # the balance is proven exactly, through the client's own decoding
            assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == 125_00 + BIG + 5
            # integer inputs may be decimal strings in JSON and query alike
            assert (await client.block("2")).height == 2

    run(body())


part = st.one_of(
    st.binary(max_size=24),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.booleans(),
    st.text(max_size=24),
    st.binary(min_size=20, max_size=20).map(Address),
)


@given(st.lists(part, max_size=6))
@settings(max_examples=300, deadline=None)
def test_key_parts_read_back_exactly_what_the_client_sent(parts):
    sent = [p.raw if isinstance(p, Address) else p for p in parts]
    read = [parse_key_part(encode_key_part(p)) for p in parts]
    assert read == sent and [type(x) for x in read] == [type(x) for x in sent]
    assert state_key("c", "n", read) == state_key("c", "n", sent)


def test_key_parts_without_a_type_prefix_are_text_and_unknown_prefixes_are_refused():
    assert parse_key_part("CHF") == "CHF"
    assert parse_key_part("ch/zurich") == "ch/zurich"
    assert parse_key_part("Price:42") == "Price:42"  # not a lowercase word prefix
    assert parse_key_part("str:int:5") == "int:5"
    assert parse_key_part("int:-5") == -5
    with pytest.raises(ApiError) as err:
        parse_key_part("u8:5")
    assert err.value.code == "bad_request" and "str:" in err.value.message


# ---------------------------------------------------------------- operating


def test_readyz_follows_the_node_and_healthz_does_not(node):
    async def body():
        async with serving(node) as (_, client):
            assert await client.ready() and await client.health()
            node.is_ready = False
            assert not await client.ready()
            assert await client.health()
            async with aiohttp.ClientSession() as session:
                status, ctype, raw = await raw_request(session, "GET", client.base_url + "/readyz")
            assert_json_error(status, ctype, raw, code="not_ready")

    run(body())


def test_metrics_are_served_in_prometheus_text_format(node):
    async def body():
        async with serving(node) as (_, client):
            node.node_metrics.committed_txs.inc(3)
            node.node_metrics.rejected_txs.labels(code="bad_nonce").inc()
            await client.status()
            async with aiohttp.ClientSession() as session:
                async with session.get(client.base_url + "/metrics") as resp:
                    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = await resp.text()
            assert "# TYPE gridledger_height gauge\ngridledger_height 2\n" in text
            assert "gridledger_committed_txs_total 3\n" in text
            assert 'gridledger_rejected_txs_total{code="bad_nonce"} 1\n' in text
            assert 'gridledger_api_requests_total{operation="get_status",status="200"} 1\n' in text
            assert 'gridledger_api_request_seconds_bucket{operation="get_status",le="+Inf"} 1\n' in text
            for line in text.splitlines():
                assert line.startswith("#") or re.fullmatch(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+', line), line

    run(body())


def test_metric_registry_renders_each_type_and_escapes_label_values():
    clock = [100.0]
    r = Registry()
    c = r.counter("t_requests_total", "Requests.\nTwo lines", ("path",))
    c.labels(path='a"b\\c\nd').inc(2)
    g = r.gauge("t_temp", "A gauge.")
    g.set(1.5)
    g.dec(0.5)
    h = r.histogram("t_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    rate = r.rate("t_tps", "Rate.", window_s=10)
    rate._clock = lambda: clock[0]
    rate._started = 90.0
    rate.add(50)
    clock[0] = 105.0
    rate.add(50)
    text = r.render()
    assert '# HELP t_requests_total Requests.\\nTwo lines\n' in text
    assert 't_requests_total{path="a\\"b\\\\c\\nd"} 2\n' in text
    assert "t_temp 1.0\n" in text
    assert 't_seconds_bucket{le="0.1"} 2\nt_seconds_bucket{le="1.0"} 3\nt_seconds_bucket{le="+Inf"} 4\n' in text
    assert "t_seconds_sum 3.65\nt_seconds_count 4\n" in text
    assert "t_tps 10.0\n" in text  # 100 events over the 10 s window
    clock[0] = 200.0
    assert rate.value() == 0
    with pytest.raises(MetricError):
        c.labels(path="x").inc(-1)
    with pytest.raises(MetricError):
        r.counter("bad name", "x")
    with pytest.raises(MetricError):
        r.gauge("t_requests_total", "redeclared as another type")
    assert r.counter("t_requests_total", "same shape", ("path",)) is c
    with pytest.raises(MetricError):
        c.inc()  # labelled metric used without labels


def test_event_streams_are_limited_and_released(node):
    async def body():
        async with serving(node, max_event_streams=1) as (server, client):
            first = client.events(from_height=0)
            record = await anext(first)
            assert record.height == 1
            async with aiohttp.ClientSession() as session:
                status, ctype, raw = await raw_request(session, "GET", client.base_url + "/v1/events")
            assert_json_error(status, ctype, raw, code="busy")
            await first.aclose()
            for _ in range(100):
                if not server._streams:
                    break
                await asyncio.sleep(0.01)
            second = client.events(from_height=2)
            assert (await anext(second)).height == 2
            await second.aclose()

    run(body())


def test_stopping_the_server_ends_open_event_streams(node):
    async def body():
        server = ApiServer(node)
        port = await server.start()
        client = Client(f"http://127.0.0.1:{port}")
        stream = client.events(from_height=0)
        await anext(stream)
        await server.stop()
        # the stream ends cleanly (end of body), not by a dropped connection
        rest = [record async for record in stream]
        assert len(rest) <= 3
        await client.close()

    run(body())
