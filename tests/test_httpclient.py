"""The HTTP client SDK against the real API server: every endpoint, and reads it can verify.

The server and its fake node (a real store with real blocks and commit certificates)
come from ``tests/test_api.py``. A node that lies is a :class:`LyingStore` in front of
the real one: whatever it changes, the client must raise ``ProofError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from test_api import (
    ALICE,
    BIG,
    BOB,
    CHAIN,
    NODE_KEYS,
    OUTSIDER,
    VALIDATORS,
    FakeNode,
    balance_key,
    run,
    seeded_node,
    serving,
    sign_commit,
    transfer,
)

from ledger import codec
from ledger.block import Block
from ledger.client import ProofError, verify_read
from ledger.crypto import PrivateKey, tagged_hash
from ledger.httpclient import ApiError, Client, SyncClient
from ledger.validators import ValidatorSet
from node.api import ApiServer
from node.tls import api_server_context, make_node_certificate

BOB_BALANCE = 125_00 + BIG + 5


@pytest.fixture
def node(tmp_path):
    n = seeded_node(tmp_path / "store")
    yield n
    n.store.close()


@asynccontextmanager
async def producing(node: FakeNode, every_s: float = 0.02):
    """A block producer: commits whatever waits in the mempool, every ``every_s``."""

    async def loop():
        while True:
            await asyncio.sleep(every_s)
            node.commit_pending()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- submitting


def test_submit_and_wait_answers_once_committed_with_the_receipt(node):
    async def body():
        async with serving(node) as (_, client), producing(node):
            result = await client.submit(transfer(ALICE, 3, 700), wait=True, timeout_s=5)
            assert result.committed and result.ok and result.height == 3 and result.index == 0
            assert result.receipt.events[0].name == "transfer" and dict(result.receipt.events[0].fields)["amount"] == 700
            assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE + 700

    run(body())


def test_submit_without_wait_is_pending_until_a_block_commits_it(node):
    async def body():
        async with serving(node) as (_, client):
            tx = transfer(ALICE, 3, 1)
            result = await client.submit(tx)
            assert result.status == "pending" and result.tx_id == tx.tx_id and result.receipt is None
            assert (await client.tx(tx.tx_id)).status == "pending"
            node.commit_pending()
            again = await client.tx(tx.tx_id)
            assert again.committed and again.height == 3 and again.receipt.ok
            # resubmitting a committed transaction answers its receipt instead of a nonce error
            resubmitted = await client.submit(tx)
            assert resubmitted.committed and resubmitted.receipt == again.receipt
            assert (await client.tx(bytes(32))).status == "unknown"

    run(body())


def test_wait_that_times_out_answers_pending(node):
    async def body():
        async with serving(node) as (_, client):
            result = await client.submit(transfer(ALICE, 3, 1), wait=True, timeout_s=0.05)
            assert result.status == "pending"

    run(body())


def test_a_refused_submission_raises_api_error_with_the_mempool_code(node):
    async def body():
        async with serving(node) as (_, client):
            with pytest.raises(ApiError) as err:
                await client.submit(transfer(ALICE, 0, 1))
            assert (err.value.status, err.value.code) == (400, "bad_nonce")
            assert "next nonce is 3" in err.value.message
            assert err.value.body["tx_id"] == transfer(ALICE, 0, 1).tx_id.hex()
            with pytest.raises(ApiError) as err:
                await client.submit(b"\x93\x01\x02\x03")
            assert err.value.code == "malformed"

    run(body())


def test_submit_many_answers_each_item_in_order(node):
    async def body():
        async with serving(node) as (_, client), producing(node):
            batch = [
                transfer(ALICE, 3, 10),
                b"not a transaction",
                transfer(ALICE, 4, 20, chain_id="ch/bern"),
                transfer(ALICE, 4, 30),
                transfer(ALICE, 3, 10),  # the same transaction twice
            ]
            results = await client.submit_many(batch, wait=True, timeout_s=5)
            assert [r.status for r in results] == ["committed", "rejected", "rejected", "committed", "committed"]
            assert results[1].error[0] == "malformed" and results[1].tx_id is None
            assert results[2].error[0] == "wrong_chain" and results[2].tx_id == batch[2].tx_id
            assert results[0].tx_id == results[4].tx_id and results[3].receipt.ok
            pending = await client.submit_many([transfer(ALICE, 5, 1), transfer(ALICE, 0, 1)])
            assert [r.status for r in pending] == ["pending", "rejected"] and pending[1].error[0] == "bad_nonce"

    run(body())


def test_next_nonce_counts_transactions_still_waiting(node):
    async def body():
        async with serving(node) as (_, client):
            assert await client.next_nonce(ALICE.address) == 3
            await client.submit(transfer(ALICE, 3, 1))
            await client.submit(transfer(ALICE, 4, 1))
            assert await client.next_nonce(str(ALICE.address)) == 5
            account = await client.account(ALICE.address.raw)
            assert account == {"address": str(ALICE.address), "nonce": 3, "pending_nonce": 5, "roles": ["producer"]}
            assert await client.next_nonce(PrivateKey(bytes([99]) * 32).address) == 0

    run(body())


# ---------------------------------------------------------------- blocks


def test_blocks_by_height_and_latest_verify_against_the_validator_set(node):
    async def body():
        async with serving(node) as (_, client):
            latest = await client.block("latest", verify_with=VALIDATORS)
            assert latest.height == 2 and latest.block.txs[0] == transfer(ALICE, 2, 5)
            first = await client.block(1)
            assert first.tx_ids == (transfer(ALICE, 0, 125_00).tx_id, transfer(ALICE, 1, BIG).tx_id)
            assert first.block is None and first.certificate.height == 1 and first.certificate.digest == first.header.hash
            assert first.json["header"]["hash"] == first.header.hash.hex()
            raw = await client.block(0, raw=True)
            assert raw.block.header == raw.header and raw.block.txs == ()
            with pytest.raises(ApiError) as err:
                await client.block(7)
            assert (err.value.status, err.value.code) == (404, "not_found")

    run(body())


def lying(lie):
    """A middleware that rewrites the JSON answers of the real server, as a lying node would."""

    @web.middleware
    async def middleware(request, handler):
        response = await handler(request)
        if response.status == 200 and response.content_type == "application/json":
            doc = json.loads(response.body)
            lie(request, doc)
            response.body = json.dumps(doc).encode()
        return response

    return middleware


@asynccontextmanager
async def lying_node(node, lie):
    server = ApiServer(node)
    server.app.middlewares.append(lying(lie))
    port = await server.start()
    try:
        async with Client(f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client
    finally:
        await server.stop()


def _cert(store, height, **kw):
    return sign_commit(height, Block.decode(store.block(height)).hash, **kw).encode().hex()


def _bad_signature(store, height):
    cert = codec.decode(store.certificate(height))
    cert[4][1][1] = bytes(64)
    return codec.encode(cert).hex()


def _header_hex(store, height):
    return Block.decode(store.block(height)).header.encode().hex()


def _set(**fields):
    """A lie about a state answer: each field's new value, computed from (store, height of the read)."""

    def lie(store):
        def rewrite(request, doc):
            if "proof" in doc:
                for name, make in fields.items():
                    doc[name] = make(store, doc["height"])
        return rewrite

    return lie


STATE_LIES = {
    "a changed value": _set(value_hex=lambda s, h: codec.encode(10**9).hex()),
    "a present value claimed absent": _set(value_hex=lambda s, h: None),
    "the proof of another key": _set(proof=lambda s, h: s.prove(balance_key(ALICE.address)).proof.hex()),
    "a certificate with a bad signature": _set(certificate_hex=_bad_signature),
    "a certificate of too few validators": _set(certificate_hex=lambda s, h: _cert(s, h, signers=(0, 1))),
    "a certificate of outsiders": _set(certificate_hex=lambda s, h: _cert(s, h, keys=[OUTSIDER] * 4)),
    "the certificate of another block": _set(certificate_hex=lambda s, h: s.certificate(h - 1).hex()),
    "an older header with its certificate": _set(
        header_hex=lambda s, h: _header_hex(s, h - 1), certificate_hex=lambda s, h: s.certificate(h - 1).hex()),
    "a header of another chain": _set(header_hex=lambda s, h: dataclasses.replace(
        Block.decode(s.block(h)).header, chain_id="ch/bern").encode().hex()),
}


@pytest.mark.parametrize("lie", sorted(STATE_LIES))
def test_a_lying_node_makes_the_verified_state_read_raise_proof_error(node, lie):
    async def body():
        async with lying_node(node, STATE_LIES[lie](node.store)) as client:
            with pytest.raises(ProofError):
                await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS)
            assert await client.state("fiat", "balances", [BOB.address, "CHF"]) is not None  # unverified reads take it
        async with lying_node(node, lambda request, doc: None) as client:  # the control: no lie, it verifies
            assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE

    run(body())


def test_a_block_with_forged_certificate_or_transactions_raises_proof_error(node):
    store = node.store

    def forged_certificate(request, doc):
        doc["certificate_hex"] = _cert(store, 1, signers=(3,))

    def dropped_transaction(request, doc):
        block = Block.decode(store.block(1))
        doc["block_hex"] = codec.encode([block.header.to_fields(), block.encoded_txs[:1]], max_depth=4).hex()

    async def body():
        for lie in (forged_certificate, dropped_transaction):
            async with lying_node(node, lie) as client:
                assert (await client.block(1, raw=True)).height == 1  # unverified reads take it
                with pytest.raises(ProofError):
                    await client.block(1, verify_with=VALIDATORS)

    run(body())


# ---------------------------------------------------------------- state


def test_state_read_with_proof_verifies_against_certified_root(node):
    async def body():
        async with serving(node) as (_, client):
            assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE
            assert await client.state("fiat", "balances", [BOB.address.raw, "CHF"]) == BOB_BALANCE
            # absence is proven too
            assert await client.state("fiat", "balances", [ALICE.address, "CHF"], verify_with=VALIDATORS) is None
            assert await client.state("market_config", "params", verify_with=VALIDATORS) == {"gate_closure_s": 3600, "currency": "CHF"}
            read = await client.read_state("meters", "big", [b"\x01\x02", 7])
            assert read.header.height == 2 and read.certificate.height == 2
            assert verify_read(read, VALIDATORS) == [BIG, -BIG, (1 << 64) - 1, 5]
            # a relayer forwards the read; anyone holding the validator set checks it alone
            other = ValidatorSet(VALIDATORS.validators[:3])
            with pytest.raises(ProofError):
                verify_read(read, other)
            # the shard asked for is checked: keys reused on another shard prove nothing here
            assert verify_read(read, VALIDATORS, chain_id=CHAIN) == [BIG, -BIG, (1 << 64) - 1, 5]
            with pytest.raises(ProofError, match="not of 'ch/elsewhere'"):
                verify_read(read, VALIDATORS, chain_id="ch/elsewhere")

    run(body())


def test_a_read_above_an_uncertified_block_is_refused_until_certified(node):
    node.commit([transfer(ALICE, 3, 1)], certificate=False)

    async def body():
        async with serving(node) as (_, client):
            assert await client.state("fiat", "balances", [BOB.address, "CHF"]) == BOB_BALANCE + 1
            with pytest.raises(ApiError) as err:
                await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS)
            assert (err.value.status, err.value.code) == (503, "not_certified")
            node.store.put_certificate(3, bytes.fromhex(_cert(node.store, 3)))
            assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE + 1

    run(body())


def test_a_proof_at_a_null_batch_height_comes_with_the_certified_parent_of_the_same_root(node):
    # A BFT view change may commit the null batch: certified over a constant digest, not
    # over its derived header, and leaving the state as it was.
    null_digest = tagged_hash(b"gridledger/null-batch", b"")
    node.commit(certificate=sign_commit(3, null_digest))

    async def body():
        async with serving(node) as (_, client):
            read = await client.read_state("fiat", "balances", [BOB.address, "CHF"])
            assert read.header.height == 2 and read.certificate.height == 2
            assert verify_read(read, VALIDATORS) == BOB_BALANCE
            node.commit([transfer(ALICE, 3, 1)], certificate=sign_commit(4, null_digest))  # state changed: no cover
            with pytest.raises(ApiError) as err:
                await client.read_state("fiat", "balances", [BOB.address, "CHF"])
            assert err.value.code == "not_certified"

    run(body())


def test_an_empty_store_answers_not_ready_for_proofs_and_not_found_for_blocks(tmp_path):
    node = FakeNode(tmp_path / "empty")

    async def body():
        async with serving(node) as (_, client):
            assert await client.state("fiat", "balances", [BOB.address]) is None
            with pytest.raises(ApiError) as err:
                await client.state("fiat", "balances", [BOB.address], verify_with=VALIDATORS)
            assert err.value.code == "not_ready"
            with pytest.raises(ApiError) as err:
                await client.block("latest")
            assert err.value.code == "not_found"

    try:
        run(body())
    finally:
        node.store.close()


# ---------------------------------------------------------------- status and friends


def test_status_shards_and_validators_describe_the_node(node):
    async def body():
        async with serving(node) as (_, client):
            status = await client.status()
            assert status == {
                "shard": CHAIN, "role": "validator", "protocol": "bft", "node_key": NODE_KEYS[0].public_key.raw.hex(),
                "genesis_hash": bytes(range(32)).hex(), "height": 2, "view": 3, "leader": NODE_KEYS[0].public_key.raw.hex(),
                "peers": 3, "mempool": 0, "catching_up": False,
            }
            assert await client.shards() == [{"shard": CHAIN, "height": 2, "certified_height": 2}]
            vset = await client.validators()
            assert vset == VALIDATORS and vset.hash == VALIDATORS.hash
            assert "gridledger_height 2" in await client.metrics()
            assert (await client.openapi())["openapi"].startswith("3.")

    run(body())


def test_an_unreachable_node_raises_unavailable():
    async def body():
        server = ApiServer(FakeNodeStub())
        port = await server.start()
        await server.stop()
        async with Client(f"http://127.0.0.1:{port}", timeout=2) as client:
            with pytest.raises(ApiError) as err:
                await client.status()
            assert (err.value.status, err.value.code) == (0, "unavailable")
            assert not await client.health()

    run(body())


class FakeNodeStub:
    """Just enough of a node to build a server that is then stopped."""

    def __init__(self) -> None:
        from node.metrics import Registry

        self.metrics = Registry()
        self.chain_id = CHAIN


def test_the_client_speaks_https_to_a_pinned_node_certificate_and_refuses_others(node):
    cert_pem, key_pem = make_node_certificate(NODE_KEYS[0], "operator-0")
    pinned = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pinned.check_hostname = False  # the certificate names a validator, not a host
    pinned.load_verify_locations(cadata=cert_pem.decode())

    async def body():
        server = ApiServer(node)
        port = await server.start(ssl_context=api_server_context(cert_pem, key_pem))
        try:
            async with Client(f"https://127.0.0.1:{port}", ssl=pinned) as client:
                assert await client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE
            async with Client(f"https://127.0.0.1:{port}") as client:  # system trust: unknown certificate
                with pytest.raises(ApiError) as err:
                    await client.status()
                assert err.value.code == "unavailable" and "certificate" in err.value.message.lower()
        finally:
            await server.stop()

    run(body())


# ---------------------------------------------------------------- events


def test_events_stream_past_then_live_and_resume_after_the_last_id(node):
    async def body():
        async with serving(node) as (_, client):
            stream = client.events("fiat", "transfer", from_height=0)
            past = [await anext(stream) for _ in range(3)]
            assert [(r.height, r.tx_index) for r in past] == [(1, 0), (1, 1), (2, 0)]
            assert dict(past[1].event.fields)["amount"] == BIG and past[1].tx_id == transfer(ALICE, 1, BIG).tx_id
            node.commit([transfer(ALICE, 3, 9)])
            live = await anext(stream)
            assert (live.height, dict(live.event.fields)["amount"]) == (3, 9)
            await stream.aclose()
            resumed = client.events("fiat", "transfer", last_event_id=past[1].id)
            assert [(await anext(resumed)).id for _ in range(2)] == [past[2].id, live.id]
            await resumed.aclose()
            nothing = client.events("fiat", "no_such_event", from_height=0)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(nothing), 0.2)
            await nothing.aclose()

    run(body())


# ---------------------------------------------------------------- scripts


def test_sync_client_serves_scripts_and_the_command_line(node):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ApiServer(node)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)

    async def produce():
        while True:
            await asyncio.sleep(0.02)
            node.commit_pending()

    producer = asyncio.run_coroutine_threadsafe(produce(), loop)
    try:
        with SyncClient(f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.status()["height"] == 2
            result = client.submit(transfer(ALICE, 3, 1), wait=True, timeout_s=5)
            assert result.committed and result.ok
            assert client.state("fiat", "balances", [BOB.address, "CHF"], verify_with=VALIDATORS) == BOB_BALANCE + 1
            assert client.next_nonce(ALICE.address) == 4
            events = client.events("fiat", from_height=3)
            assert next(events).height == 3
            events.close()
            status, doc = client.request("GET", "/v1/tx/" + result.tx_id.hex())
            assert status == 200 and doc["status"] == "committed"  # the API's JSON, unchanged
    finally:
        producer.cancel()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
