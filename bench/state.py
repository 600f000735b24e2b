"""Benchmark of the authenticated state as the store keeps it.

    python -m bench.state --keys 1000000 [--dir DIR] [--blocks 10] [--blocks-1k 30]

Builds a state of ``--keys`` keys in a fresh LMDB store (setup, not timed), then times
blocks of random writes, each prepared (root computed) and applied in one durable
write transaction exactly as the node does it (``Store.prepare_state`` +
``Store.apply_block``, sync on). Half of each block's writes change existing keys, half
insert new ones. Prints one JSON line:

* ``updates_per_s``: writes per second in blocks of 10,000 (prepare + commit);
* ``updates_per_s_1k``: the same in blocks of 1,000;
* ``prepare_ms`` / ``commit_ms``: mean time per 10,000-write block spent computing the
  new root (CPU) and committing it to LMDB (I/O, fsync), to show where the time goes;
* ``proof_bytes``: the larger of the mean and the median encoded proof size over
  members and non-members (``proof_bytes_p99`` too);
* ``proof_verify_us``: mean time of ``verify_proof`` on an encoded proof (decode included).

The store lives in a temporary directory under ``--dir`` (default: the system temporary
directory, i.e. a real disk here, not tmpfs) and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time

from ledger.state import verify_proof
from ledger.statekeys import state_key
from ledger.store import Store

SETUP_BLOCK = 100_000


def _key(rng: random.Random) -> bytes:
    # A realistic contract storage key: a balance of a 20-byte address.
    return state_key("energy_token", "balance", [rng.randbytes(20)])


def _value(rng: random.Random) -> bytes:
    return rng.randbytes(64)


class _Chain:
    """Applies blocks of writes to a store, as the node's block pipeline would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.height = -1

    def apply(self, writes: dict[bytes, bytes | None]) -> tuple[float, float]:
        t0 = time.perf_counter()
        prepared = self.store.prepare_state(writes)
        t1 = time.perf_counter()
        self.height += 1
        block = self.height.to_bytes(8, "big") * 32
        self.store.apply_block(self.height, bytes(32), block, b"certificate", prepared)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1


def run(n_keys: int, directory: str | None, blocks: int, blocks_1k: int, seed: int) -> dict:
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="bench-state-", dir=directory)
    try:
        store = Store.open(os.path.join(tmp, "store"), "bench/state", map_size=64 << 30)
        chain = _Chain(store)
        keys: list[bytes] = []
        t0 = time.perf_counter()
        while len(keys) < n_keys:
            batch = {_key(rng): _value(rng) for _ in range(min(SETUP_BLOCK, n_keys - len(keys)))}
            keys.extend(batch)
            chain.apply(batch)
        setup_s = time.perf_counter() - t0
        # The node's heap is long-lived: keep the setup's objects out of the collector's way.
        gc.collect()
        gc.freeze()

        def timed(size: int, count: int) -> tuple[float, float, float]:
            prep = commit = 0.0
            for _ in range(count):
                writes = {rng.choice(keys): _value(rng) for _ in range(size // 2)}
                while len(writes) < size:
                    k = _key(rng)
                    writes[k] = _value(rng)
                    keys.append(k)
                p, c = chain.apply(writes)
                prep += p
                commit += c
            return count * size / (prep + commit), prep / count, commit / count

        ups, prep_s, commit_s = timed(10_000, blocks)
        ups_1k, _, _ = timed(1_000, blocks_1k)

        members = rng.sample(keys, 300)
        absent = [_key(rng) for _ in range(100)]
        reads = [store.prove(k) for k in members + absent]
        sizes = sorted(len(r.proof) for r in reads)
        for r in reads:
            assert verify_proof(r.state_root, r.key, r.value, r.proof)
        rounds = 5
        t0 = time.perf_counter()
        for _ in range(rounds):
            for r in reads:
                verify_proof(r.state_root, r.key, r.value, r.proof)
        verify_us = (time.perf_counter() - t0) / (rounds * len(reads)) * 1e6
        store.close()
        return {
            "keys": n_keys,
            "updates_per_s": round(ups),
            "updates_per_s_1k": round(ups_1k),
            "prepare_ms": round(prep_s * 1000, 1),
            "commit_ms": round(commit_s * 1000, 1),
            "proof_bytes": round(max(statistics.mean(sizes), statistics.median(sizes))),
            "proof_bytes_p99": sizes[int(len(sizes) * 0.99) - 1],
            "proof_verify_us": round(verify_us, 1),
            "setup_s": round(setup_s, 1),
            "sync": True,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where to create the temporary store")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks of 10,000 writes")
    parser.add_argument("--blocks-1k", type=int, default=30, help="timed blocks of 1,000 writes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.keys, args.dir, args.blocks, args.blocks_1k, args.seed)))


if __name__ == "__main__":
    main()
