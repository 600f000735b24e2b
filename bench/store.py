"""Benchmark of the store applying blocks of transfers, durably.

    python -m bench.store [--accounts 100000] [--blocks 30] [--dir DIR]

Each block holds 1,000 transfers; a transfer writes two balances (sender and receiver,
realistic encoded sizes), indexes its transaction id with a receipt, and the block's
encoded bytes (~250 bytes per transaction) and certificate are stored. Each block is
prepared (state root computed) and applied in one write transaction with sync on.
Prints one JSON line: ``blocks_per_s``, ``tx_per_s`` and the mean ``prepare_ms`` /
``commit_ms`` per block, each block prepared then applied (serially); and
``tx_per_s_pipelined``: the same workload (``--blocks`` more blocks) with block N
committed by ``ledger.store.Committer`` while block N + 1 is prepared, as the node runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time

from ledger import codec
from ledger.statekeys import state_key
from ledger.store import Committer, Store

TX_PER_BLOCK = 1_000
TX_BYTES = 250  # an encoded signed transfer: addresses, amount, nonce, Ed25519 signature


def _balance_key(address: bytes) -> bytes:
    return state_key("fiat_token", "balance", [address])


def run(accounts: int, blocks: int, directory: str | None, seed: int) -> dict:
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="bench-store-", dir=directory)
    try:
        store = Store.open(os.path.join(tmp, "store"), "bench/store", map_size=32 << 30)
        addresses = [rng.randbytes(20) for _ in range(accounts)]
        balances = dict.fromkeys(addresses, 10**12)
        genesis = {_balance_key(a): codec.encode([b, 0]) for a, b in balances.items()}
        store.apply_block(0, bytes(32), b"genesis", None, store.prepare_state(genesis))

        def make_block(height: int) -> tuple[dict[bytes, bytes], list, bytes]:
            writes: dict[bytes, bytes] = {}
            entries = []
            for _ in range(TX_PER_BLOCK):
                sender, receiver = rng.sample(addresses, 2)
                amount = rng.randrange(1, 10**6)
                balances[sender] -= amount
                balances[receiver] += amount
                writes[_balance_key(sender)] = codec.encode([balances[sender], height])
                writes[_balance_key(receiver)] = codec.encode([balances[receiver], height])
                receipt = codec.encode([0, 21_000, [["transfer", sender, receiver, amount]]])
                entries.append((rng.randbytes(32), receipt))
            return writes, entries, rng.randbytes(TX_BYTES * TX_PER_BLOCK)

        prep_s = commit_s = 0.0
        for height in range(1, blocks + 1):
            writes, entries, block = make_block(height)
            t0 = time.perf_counter()
            prepared = store.prepare_state(writes)
            t1 = time.perf_counter()
            store.apply_block(
                height, rng.randbytes(32), block, rng.randbytes(200), prepared, entries
            )
            t2 = time.perf_counter()
            prep_s += t1 - t0
            commit_s += t2 - t1
        later = [make_block(h) for h in range(blocks + 1, 2 * blocks + 1)]
        with Committer(store) as committer:
            t0 = time.perf_counter()
            parent = done = None
            for height, (writes, entries, block) in enumerate(later, blocks + 1):
                prepared = store.prepare_state(writes, parent=parent)
                if done is not None:
                    done.result()
                done = committer.apply_block(
                    height, rng.randbytes(32), block, rng.randbytes(200), prepared, entries
                )
                parent = prepared
            done.result()
            pipelined_s = time.perf_counter() - t0
        store.close()
        total = prep_s + commit_s
        return {
            "blocks_per_s": round(blocks / total, 2),
            "tx_per_s": round(blocks * TX_PER_BLOCK / total),
            "prepare_ms": round(prep_s / blocks * 1000, 1),
            "commit_ms": round(commit_s / blocks * 1000, 1),
            "tx_per_s_pipelined": round(blocks * TX_PER_BLOCK / pipelined_s),
            "accounts": accounts,
            "tx_per_block": TX_PER_BLOCK,
            "sync": True,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--dir", default=None, help="where to create the temporary store")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.accounts, args.blocks, args.dir, args.seed)))


if __name__ == "__main__":
    main()
