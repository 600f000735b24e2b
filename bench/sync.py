"""State sync vs block replay over loopback: time and bytes to reach a state of N keys.

    python -m bench.sync [--keys 100000] [--blocks 100]

History: ``--blocks`` certified blocks, each writing ``keys / blocks`` new keys (values
of 1..60 random bytes, like balances and records). Then, on a fresh store:

* **snapshot**: ``node.sync.StateSync`` from ``node.api_sync`` over HTTP on loopback
  (open a session, pages of 1 MiB, commit certificate checked, tree rebuilt, root checked,
  installed in one transaction);
* **replay**: every block fetched over HTTP on loopback with its certificate and its
  write set, the certificate checked (3 Ed25519 signatures), the writes prepared and
  applied block by block. This is a lower bound of real replay: a real node also checks
  every transaction's signature and executes its contract call (the write set here
  stands in for the transactions, at about their size).

Prints one JSON line: seconds and bytes of each, and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time

from aiohttp import web

from ledger import codec
from ledger.block import Block, BlockHeader
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind, PrivateKey
from ledger.httpclient import Client
from ledger.log import configure
from ledger.merkle import EMPTY_ROOT
from ledger.store import Store
from ledger.validators import Validator, ValidatorSet
from node.api_sync import register
from node.sync import StateSync

CHAIN = "ch/bench"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
VALIDATORS = ValidatorSet(tuple(Validator(k.public_key.raw, bytes([i + 1]) * 48, bytes(96), f"v{i}")
                                for i, k in enumerate(KEYS)))


def _cert(block: Block) -> CommitCertificate:
    payload = commit_vote_payload(block.height, 0, block.hash)
    return CommitCertificate("bft", block.height, 0, block.hash,
                             tuple((i, k.sign(CHAIN, Kind.COMMIT, payload)) for i, k in enumerate(KEYS[:3])))


def build_history(store: Store, keys: int, blocks: int) -> list[bytes]:
    """Commit the history; return each block's replay record: encode([block, certificate, writes])."""
    rng = random.Random(7)
    records = []
    prev = bytes(32)
    per = keys // blocks
    for height in range(blocks + 1):
        writes = {b"genesis": b"g"} if height == 0 else {
            b"balance/%08d" % i: rng.randbytes(rng.randint(1, 60)) for i in range((height - 1) * per, height * per)}
        prepared = store.prepare_state(writes)
        header = BlockHeader(CHAIN, height, prev, EMPTY_ROOT, prepared.root, EMPTY_ROOT, 1_767_225_600 + height,
                             KEYS[0].public_key.raw, VALIDATORS.hash)
        block = Block(header, ())
        cert = _cert(block).encode() if height else None
        store.apply_block(height, block.hash, block.encode(), cert, prepared)
        records.append(codec.encode([block.encode(), cert or b"", [[k, v] for k, v in sorted(writes.items())]]))
        prev = block.hash
    return records


class _Node:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.chain_id = CHAIN


async def run(keys: int, blocks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        source = Store.open(f"{tmp}/source", CHAIN, map_size=4 << 30)
        records = build_history(source, keys, blocks)
        app = web.Application()
        register(app, _Node(source))

        async def block_record(request: web.Request) -> web.Response:
            return web.Response(body=records[int(request.match_info["height"])])

        app.router.add_get("/bench/blocks/{height}", block_record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            # Snapshot sync onto a store at genesis.
            target = Store.open(f"{tmp}/snap", CHAIN, map_size=4 << 30)
            _apply_record(target, records[0], check=False)
            sync = StateSync([url], target, CHAIN, VALIDATORS)
            started = time.perf_counter()
            result = await sync.sync()
            snap_s = time.perf_counter() - started
            await sync.close()
            assert target.head() == source.head()
            target.close()

            # Block replay of the same history onto another store at genesis.
            replay = Store.open(f"{tmp}/replay", CHAIN, map_size=4 << 30)
            _apply_record(replay, records[0], check=False)
            replay_bytes = 0
            started = time.perf_counter()
            async with Client(url) as client:
                http = client._http()
                for height in range(1, blocks + 1):
                    async with http.get(f"{url}/bench/blocks/{height}") as resp:
                        raw = await resp.read()
                    replay_bytes += len(raw)
                    _apply_record(replay, raw, check=True)
            replay_s = time.perf_counter() - started
            assert replay.head() == source.head()
            replay.close()
        finally:
            await runner.cleanup()
            source.close()
    return {
        "bench": "sync",
        "keys": keys,
        "blocks": blocks,
        "snapshot_s": round(snap_s, 3),
        "snapshot_install_s": round(result.install_seconds, 3),
        "snapshot_pages": result.pages,
        "snapshot_payload_bytes": result.payload_bytes,
        "snapshot_wire_bytes": result.wire_bytes,
        "replay_s": round(replay_s, 3),
        "replay_bytes": replay_bytes,
        "replay_over_snapshot_time": round(replay_s / snap_s, 2),
        "snapshot_keys_per_s": int(keys / snap_s),
    }


def _apply_record(store: Store, raw: bytes, *, check: bool) -> None:
    block_raw, cert_raw, items = codec.decode(raw, max_size=len(raw), max_depth=4)
    block = Block.decode(block_raw)
    if check:
        CommitCertificate.decode(cert_raw).verify(CHAIN, VALIDATORS, height=block.height, digest=block.hash)
    prepared = store.prepare_state({k: v for k, v in items})
    if prepared.root != block.header.state_root:
        raise AssertionError("replayed writes do not give the block's state root")
    store.apply_block(block.height, block.hash, block_raw, cert_raw or None, prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=100)
    args = parser.parse_args()
    configure("json", "warning")  # the one line below is the output
    print(json.dumps(asyncio.run(run(args.keys, args.blocks))))


if __name__ == "__main__":
    main()
