"""State sync: snapshots served in pages from one read snapshot, fetched, verified, installed.

Real LMDB stores, real HTTP on loopback (aiohttp servers on ephemeral ports), real
Ed25519 commit certificates. A source that lies (forged page, dropped key, bad
certificate) must leave the syncing store exactly as it was.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random

import pytest
from aiohttp import web
from nodeproc import (
    api,
    check_alive,
    deploy_token,
    heights,
    logs,
    status,
    wait_for,
    wait_height,
    wait_ready,
)

from cli.devnet import Devnet
from ledger import codec
from ledger.block import Block, BlockHeader
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.client import Account
from ledger.crypto import Kind, PrivateKey
from ledger.httpclient import ApiError, Client
from ledger.merkle import EMPTY_ROOT
from ledger.store import Store, StoreError
from ledger.validators import Validator, ValidatorSet
from node.api_sync import SyncLimits, register
from node.sync import StateSync, SyncError

CHAIN = "ch/sync"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
VALIDATORS = ValidatorSet(tuple(
    Validator(k.public_key.raw, bytes([i + 1]) * 48, bytes(96), f"v{i}") for i, k in enumerate(KEYS)
))
STRANGERS = [PrivateKey(bytes([50 + i]) * 32) for i in range(4)]


def certify(block: Block, keys=KEYS[:3], chain_id: str = CHAIN) -> CommitCertificate:
    """A BFT commit certificate of ``keys`` (validator indexes by position in KEYS, or 0.. for strangers)."""
    payload = commit_vote_payload(block.height, 0, block.hash)
    sigs = tuple((i, k.sign(chain_id, Kind.COMMIT, payload)) for i, k in enumerate(keys))
    return CommitCertificate("bft", block.height, 0, block.hash, sigs)


class Chainlet:
    """A store with certified blocks of arbitrary state writes (what a validator's store holds)."""

    def __init__(self, path, *, cert_keys=KEYS[:3]) -> None:
        self.store = Store.open(str(path), CHAIN, map_size=1 << 30)
        self.cert_keys = cert_keys
        self.prev = bytes(32)
        self.model: dict[bytes, bytes] = {}

    def commit(self, writes: dict[bytes, bytes | None]) -> Block:
        store = self.store
        height = 0 if store.height is None else store.height + 1
        prepared = store.prepare_state(writes)
        header = BlockHeader(CHAIN, height, self.prev, EMPTY_ROOT, prepared.root, EMPTY_ROOT, 1_767_225_600 + height,
                             KEYS[0].public_key.raw, VALIDATORS.hash)
        block = Block(header, ())
        cert = None if height == 0 else certify(block, self.cert_keys).encode()
        store.apply_block(height, block.hash, block.encode(), cert, prepared)
        self.prev = block.hash
        for k, v in writes.items():
            if v is None:
                self.model.pop(k, None)
            else:
                self.model[k] = v
        return block

    def close(self) -> None:
        self.store.close()


def filled(path, keys: int, *, blocks: int = 3, seed: int = 1, **kw) -> Chainlet:
    rng = random.Random(seed)
    c = Chainlet(path, **kw)
    c.commit({b"genesis": b"g"})
    per = keys // blocks
    for b in range(blocks):
        c.commit({b"key/%d" % i: rng.randbytes(rng.randint(1, 60)) for i in range(b * per, (b + 1) * per)})
    return c


class _Node:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.chain_id = CHAIN


@contextlib.asynccontextmanager
async def serving(store: Store, *, limits: SyncLimits | None = None, middlewares=()):
    app = web.Application(middlewares=list(middlewares))
    server = register(app, _Node(store), limits=limits)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield url, server
    finally:
        await runner.cleanup()


def tamper_pages(change):
    """A middleware that rewrites every page's items with ``change(items) -> items``."""

    @web.middleware
    async def middleware(request, handler):
        response = await handler(request)
        if request.method != "GET" or response.status != 200:
            return response
        doc = json.loads(response.body)
        items = codec.decode(base64.b64decode(doc["items_base64"]), max_size=1 << 30)
        doc["items_base64"] = base64.b64encode(codec.encode(change(items))).decode()
        return web.json_response(doc)

    return middleware


def dies_after(pages: int):
    """A middleware under which the source drops every connection after ``pages`` pages."""
    served = [0]

    @web.middleware
    async def middleware(request, handler):
        if request.method == "GET":
            served[0] += 1
            if served[0] > pages:
                request.transport.abort()
                raise ConnectionResetError("the source died")
        if served[0] > pages:
            request.transport.abort()
            raise ConnectionResetError("the source died")
        return await handler(request)

    return middleware


def snapshot_of(store: Store) -> tuple:
    return store.head(), store.base_height, dict(store.iter_state())


async def sync(urls, target: Store, **kw):
    min_height = kw.pop("min_height", 0)
    s = StateSync(urls, target, CHAIN, VALIDATORS, page_bytes=kw.pop("page_bytes", 8 << 10), **kw)
    try:
        return await s.sync(min_height)
    finally:
        await s.close()


@pytest.fixture
def source(tmp_path):
    c = filled(tmp_path / "source", 3000)
    yield c
    c.close()


@pytest.fixture
def target(tmp_path):
    c = Chainlet(tmp_path / "target")
    c.commit({b"genesis": b"g"})
    yield c
    c.close()


# ---------------------------------------------------------------- serving


def test_a_session_serves_the_state_of_its_height_while_blocks_commit(source):
    async def body():
        async with serving(source.store) as (url, _), Client(url) as client:
            _, opened = await client.request("POST", "/v1/sync/snapshots")
            height, root, state = source.store.height, source.store.state_root, dict(source.model)
            assert opened["height"] == height and opened["state_root"] == root.hex()
            items, cursor, pages = [], "", 0
            while cursor is not None:
                # Blocks commit between the pages: the session must not see them.
                source.commit({b"key/%d" % pages: b"changed", b"new/%d" % pages: b"n", b"key/%d" % (pages + 1000): None})
                _, page = await client.request("GET", f"/v1/sync/snapshots/{opened['session']}",
                                               params={"from": cursor, "max_bytes": "4096"})
                assert page["height"] == height
                items += codec.decode(base64.b64decode(page["items_base64"]), max_size=1 << 20)
                cursor, pages = page["next"], pages + 1
            assert pages > 5
            assert {k: v for k, v in items} == state
            assert len(items) == len(state)
            assert source.store.height == height + pages and source.store.state_root != root

    asyncio.run(body())


def test_pages_stay_within_max_bytes_and_a_long_value_travels_alone(source):
    source.commit({b"long": bytes(20_000)})

    async def body():
        async with serving(source.store) as (url, _), Client(url) as client:
            _, opened = await client.request("POST", "/v1/sync/snapshots")
            cursor, sizes = "", []
            while cursor is not None:
                _, page = await client.request("GET", f"/v1/sync/snapshots/{opened['session']}",
                                               params={"from": cursor, "max_bytes": "4096"})
                items = codec.decode(base64.b64decode(page["items_base64"]), max_size=1 << 20)
                assert page["count"] == len(items) and page["bytes"] == len(base64.b64decode(page["items_base64"]))
                if any(k == b"long" for k, _ in items):
                    assert len(items) == 1
                else:
                    sizes.append(page["bytes"])
                cursor = page["next"]
            assert max(sizes) <= 4096
            for bad, code in (("100", "bad_request"), (str(64 << 20), "bad_request"), ("x", "malformed")):
                with pytest.raises(ApiError) as info:
                    await client.request("GET", f"/v1/sync/snapshots/{opened['session']}", params={"max_bytes": bad})
                assert (info.value.status, info.value.code) == (400, code)
                assert "max_bytes" in info.value.message
            with pytest.raises(ApiError) as info:
                await client.request("GET", f"/v1/sync/snapshots/{opened['session']}", params={"from": "zz"})
            assert info.value.code == "malformed" and "tree position" in info.value.message

    asyncio.run(body())


def test_sessions_expire_and_release_their_snapshot(source):
    limits = SyncLimits(idle_s=0.3, max_age_s=5.0)

    async def body():
        async with serving(source.store, limits=limits) as (url, server), Client(url) as client:
            _, opened = await client.request("POST", "/v1/sync/snapshots")
            assert server.open_sessions == 1
            await client.request("GET", f"/v1/sync/snapshots/{opened['session']}")  # a page keeps it alive
            await asyncio.sleep(0.2)
            await client.request("GET", f"/v1/sync/snapshots/{opened['session']}")
            await asyncio.sleep(0.6)
            assert server.open_sessions == 0  # the timer ended it without any request
            with pytest.raises(ApiError) as info:
                await client.request("GET", f"/v1/sync/snapshots/{opened['session']}")
            assert (info.value.status, info.value.code) == (404, "not_found")
            assert "expired" in info.value.message and "open a new one" in info.value.message

    asyncio.run(body())


def test_a_session_ends_at_its_maximum_age_however_busy(source):
    limits = SyncLimits(idle_s=5.0, max_age_s=0.4)

    async def body():
        async with serving(source.store, limits=limits) as (url, server), Client(url) as client:
            _, opened = await client.request("POST", "/v1/sync/snapshots")
            with pytest.raises(ApiError) as info:
                for _ in range(100):
                    await client.request("GET", f"/v1/sync/snapshots/{opened['session']}", params={"max_bytes": "4096"})
                    await asyncio.sleep(0.05)
            assert "expired" in info.value.message
            assert server.open_sessions == 0

    asyncio.run(body())


def test_open_sessions_are_capped_and_closing_one_frees_a_place(source):
    async def body():
        async with serving(source.store, limits=SyncLimits(max_sessions=2)) as (url, server), Client(url) as client:
            first = (await client.request("POST", "/v1/sync/snapshots"))[1]["session"]
            await client.request("POST", "/v1/sync/snapshots")
            with pytest.raises(ApiError) as info:
                await client.request("POST", "/v1/sync/snapshots")
            assert (info.value.status, info.value.code) == (503, "busy") and "limit is 2" in info.value.message
            _, closed = await client.request("DELETE", f"/v1/sync/snapshots/{first}")
            assert closed == {"session": first, "closed": True}
            await client.request("POST", "/v1/sync/snapshots")
            with pytest.raises(ApiError) as info:
                await client.request("GET", f"/v1/sync/snapshots/{first}")
            assert info.value.code == "not_found" and "closed" in info.value.message
            with pytest.raises(ApiError) as info:
                await client.request("GET", "/v1/sync/snapshots/" + "ab" * 16)
            assert info.value.code == "not_found" and "no sync session" in info.value.message
            with pytest.raises(ApiError) as info:
                await client.request("GET", "/v1/sync/snapshots/nonsense")
            assert info.value.code == "malformed"
            assert server.open_sessions == 2

    asyncio.run(body())


def test_a_head_without_a_certificate_is_not_offered(tmp_path):
    c = Chainlet(tmp_path / "g")
    c.commit({b"genesis": b"g"})  # height 0: genesis has no certificate

    async def body():
        async with serving(c.store) as (url, server), Client(url) as client:
            with pytest.raises(ApiError) as info:
                await client.request("POST", "/v1/sync/snapshots")
            assert (info.value.status, info.value.code) == (503, "not_certified")
            assert server.open_sessions == 0

    try:
        asyncio.run(body())
    finally:
        c.close()


# ---------------------------------------------------------------- fetching and installing


def test_sync_installs_the_certified_state_and_blocks_apply_on_top(source, target):
    async def body():
        async with serving(source.store) as (url, server):
            result = await sync([url], target.store)
            assert server.open_sessions == 0  # the client closed its session
            return result

    result = asyncio.run(body())
    assert result.height == source.store.height and result.keys == len(source.model)
    assert result.pages > 1 and result.restarts == 0 and result.refused == 0
    assert target.store.head() == source.store.head()
    assert dict(target.store.iter_state()) == source.model
    assert target.store.base_height == result.height
    assert target.store.block(result.height) == source.store.block(result.height)
    assert target.store.certificate(result.height) == source.store.certificate(result.height)
    assert not target.store.holds_block(result.height - 1)
    # It continues from there: the next block applies on the installed state, to the same root.
    target.prev = source.prev
    target.model = dict(source.model)
    nxt = source.commit({b"key/1": b"after"})
    mine = target.commit({b"key/1": b"after"})
    assert mine.header.state_root == nxt.header.state_root


def _forge_value(items):
    items[len(items) // 2][1] = b"forged"
    return items


def _drop_one(items):
    return items[:-1] if len(items) > 1 else items


@pytest.mark.parametrize("forgery", [_forge_value, _drop_one], ids=["forged_value", "dropped_key"])
def test_a_forged_page_is_refused_and_the_store_is_unchanged(source, target, forgery):
    before = snapshot_of(target.store)

    async def body():
        async with serving(source.store, middlewares=[tamper_pages(forgery)]) as (liar, _):
            with pytest.raises(SyncError, match="not the expected"):
                await sync([liar], target.store)
            assert snapshot_of(target.store) == before
            # With an honest source beside it, the sync completes from the honest one.
            async with serving(source.store) as (honest, _):
                return await sync([liar, honest], target.store)

    result = asyncio.run(body())
    assert result.refused == 1 and liar_absent(result)
    assert target.store.head() == source.store.head()
    assert dict(target.store.iter_state()) == source.model


def liar_absent(result) -> bool:
    return len(result.sources) == 1


@pytest.mark.parametrize("signers", [STRANGERS[:3], KEYS[:2]], ids=["non_validators", "short_of_quorum"])
def test_a_snapshot_without_a_valid_commit_certificate_is_refused(tmp_path, target, signers):
    liar = filled(tmp_path / "liar", 500, cert_keys=signers)
    before = snapshot_of(target.store)

    async def body():
        async with serving(liar.store) as (url, server):
            with pytest.raises(SyncError, match="not certified"):
                await sync([url], target.store)
            assert server.open_sessions == 0
            assert server.served_pages == 0  # refused before any page was asked for

    try:
        asyncio.run(body())
    finally:
        liar.close()
    assert snapshot_of(target.store) == before


def test_a_snapshot_of_another_shard_is_refused(tmp_path, target):
    other = Chainlet(tmp_path / "other")
    # The same validators sign, but for another chain id: the signatures do not verify here.
    other.cert_keys = KEYS[:3]
    other.commit({b"genesis": b"g"})
    block = other.commit({b"k": b"v"})
    other.store.put_certificate(block.height, certify(block, chain_id="ch/other").encode())
    before = snapshot_of(target.store)

    async def body():
        async with serving(other.store) as (url, _):
            with pytest.raises(SyncError, match="does not verify"):
                await sync([url], target.store)

    try:
        asyncio.run(body())
    finally:
        other.close()
    assert snapshot_of(target.store) == before


def test_sync_resumes_at_another_source_after_one_dies_mid_transfer(source, target):
    async def body():
        # Two validators at the same head serve the same snapshot (same store here).
        async with serving(source.store, middlewares=[dies_after(4)]) as (dying, _), \
                serving(source.store) as (steady, steady_server):
            result = await sync([dying, steady], target.store)
            return result, steady_server.served_pages

    result, steady_pages = asyncio.run(body())
    assert result.restarts == 0 and len(result.sources) == 2
    assert steady_pages == result.pages - 4  # it served only what the dying source had not
    assert target.store.head() == source.store.head()
    assert dict(target.store.iter_state()) == source.model


def test_sync_starts_over_when_the_next_source_offers_another_height(tmp_path, source, target):
    ahead = filled(tmp_path / "ahead", 3000)
    ahead.commit({b"extra": b"x"})

    async def body():
        async with serving(source.store, middlewares=[dies_after(3)]) as (dying, _), \
                serving(ahead.store) as (other, _):
            return await sync([dying, other], target.store)

    try:
        result = asyncio.run(body())
        assert result.restarts == 1 and result.height == ahead.store.height
        assert target.store.head() == ahead.store.head()
        assert dict(target.store.iter_state()) == ahead.model
    finally:
        ahead.close()


def test_a_source_behind_the_needed_height_is_skipped(source, target):
    async def body():
        async with serving(source.store) as (url, _):
            with pytest.raises(SyncError, match="below the needed"):
                await sync([url], target.store, min_height=source.store.height + 5)

    asyncio.run(body())
    assert target.store.height == 0


def test_the_store_refuses_a_snapshot_that_would_move_it_back(target):
    target.commit({b"a": b"1"})
    with pytest.raises(StoreError, match="never moves the store back"):
        target.store.install_snapshot(1, bytes(32), b"b", None, [(b"a", b"1")], target.store.state_root)
    assert target.store.height == 1 and target.store.base_height is None


def test_a_reader_iterates_and_reads_blocks_of_its_own_snapshot(source):
    height, root = source.store.head()
    block = source.store.block(height)
    model = dict(source.model)
    with source.store.reader() as reader:
        source.commit({b"key/0": b"later", b"key/1": None})
        assert (reader.height, reader.state_root) == (height, root)
        assert reader.block(height) == block and reader.block(height + 1) is None
        assert dict(reader.iter_state()) == model


# ---------------------------------------------------------------- real node processes


@pytest.mark.slow
def test_devnet_validator_and_new_observer_sync_by_snapshot_then_follow_and_vote(tmp_path, monkeypatch):
    """A validator down for > its consensus window and a new observer both install a snapshot.

    Then: every node has the same state root at the same heights, the observer follows
    block by block, and with another validator stopped the shard still commits, which
    needs the synced validator's votes (3 of the 4).
    """
    # The node processes inherit it (Devnet.spawn copies the environment).
    monkeypatch.setenv("GRIDLEDGER_FOLLOW_SYNC_THRESHOLD", "20")
    holder, recipient = PrivateKey(bytes([7]) * 32), PrivateKey(bytes([8]) * 32)
    net = Devnet.create(tmp_path / "net", validators=4, observers=1, market=False)
    vals, observer = net.validators(), net.observers()[0]
    late = vals[3]
    try:
        net.start([v.name for v in vals])
        wait_ready(net, [v.name for v in vals])

        async def load_until(target_height: int, nodes) -> None:
            account = Account(holder, chain_id=net.chain_id)
            async with api(nodes[0], timeout=30.0) as c:
                account.next_nonce = await c.next_nonce(holder.address)
                while (await c.status())["height"] < target_height:
                    await c.submit_many([account.call("token", "transfer", [recipient.address.raw, 1])
                                         for _ in range(5)])
                    await asyncio.sleep(0.05)

        asyncio.run(deploy_token(net, [holder], amount=10_000_000))
        net.kill(late.name)
        start = min(h for h in asyncio.run(heights(vals[:3])).values())
        asyncio.run(load_until(start + 140, vals[:3]))  # beyond the 64-block window and the threshold

        net.start([late.name, observer.name])  # the observer's store is empty

        async def synced() -> None:
            for node in (late, observer):
                async def based(node=node):
                    st = await status(node)
                    return st and st.get("base_height") and st["height"] >= st["base_height"]
                await wait_for(based, 60, f"{node.name} installs a snapshot")
            st = await status(observer)
            assert st["state_sync"]["keys"] > 0 and st["base_height"] > start + 100
            st = await status(late)
            assert st["base_height"] > start + 64
            # History below the snapshot is not held here, and the answer says so.
            async with api(observer) as c:
                with pytest.raises(ApiError) as missing:
                    await c.block(start + 50)
            assert missing.value.code == "not_found" and "state snapshot" in missing.value.message

        asyncio.run(synced())
        check_alive(net)

        async def compare() -> None:
            top = max((await heights(vals[:3])).values()) + 5
            await load_until(top, vals[:3])
            await wait_height([*vals, observer], top, 60, "every node past the snapshot", net)
            roots = set()
            for node in [*vals, observer]:
                async with api(node) as c:
                    roots.add((await c.block(top)).header.state_root)
            assert len(roots) == 1
            # Stop validator-0: the remaining three (the synced one among them) must vote.
            net.kill(vals[0].name)
            before = (await status(vals[1]))["height"]
            await load_until(before + 10, [vals[1]])
            await wait_height([late, observer], before + 10, 60, "the synced nodes follow", net)
            async with api(late) as c:
                assert (await c.state("token", "balances", [recipient.address.raw], verify_with=net_validators())) > 0

        def net_validators():
            from ledger.genesis import Genesis

            return Genesis.load(net.root / "genesis.json").validators

        asyncio.run(compare())
        check_alive(net)
    except BaseException:
        print(logs(net, 40))
        raise
    finally:
        net.stop(timeout_s=5.0)
