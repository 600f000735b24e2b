"""A store writer for the crash test: applies deterministic blocks until it is killed.

    python tests/store_crash_writer.py STORE_DIR SEED [REPO]

Prints each height once it is durable, one per line.

Block ``h``'s writes, transactions and metadata are a function of (SEED, h) only, so
the test that SIGKILLs this process can recompute exactly what the store must hold at
whatever height it finds after reopening. It runs as the node does: a committer thread
(``ledger.store.Committer``) commits block h while the main thread prepares block
h + 1 on top of it. Some values
are longer than the store keeps inside its tree chunks, and chunks grow and shrink
across the store's two record sizes, so every kind of record is written.
"""

from __future__ import annotations

import hashlib
import random
import sys

CHAIN_ID = "crash/test"
KEY_POOL = 3000


def block_writes(seed: int, height: int) -> dict[bytes, bytes | None]:
    rng = random.Random(f"{seed}/{height}")
    writes: dict[bytes, bytes | None] = {}
    for _ in range(rng.randrange(1, 300)):
        key = b"k%d" % rng.randrange(KEY_POOL)
        if rng.random() < 0.25:
            writes[key] = None
        elif rng.random() < 0.03:
            writes[key] = rng.randbytes(rng.randrange(1025, 3000))  # kept outside its chunk
        else:
            writes[key] = rng.randbytes(rng.randrange(1, 200))
    return writes


def block_txs(seed: int, height: int) -> list[tuple[bytes, bytes]]:
    n = random.Random(f"{seed}/{height}/txs").randrange(0, 20)
    return [
        (hashlib.sha256(b"%d/%d/%d" % (seed, height, i)).digest(), b"receipt %d" % i)
        for i in range(n)
    ]


def block_bytes(seed: int, height: int) -> bytes:
    return b"block %d/%d " % (seed, height) + bytes(random.Random(height).randrange(2000))


def block_hash(seed: int, height: int) -> bytes:
    return hashlib.sha256(block_bytes(seed, height)).digest()


def main() -> None:
    sys.path.insert(0, sys.argv[3] if len(sys.argv) > 3 else ".")
    from ledger.store import Committer, Store

    path, seed = sys.argv[1], int(sys.argv[2])
    store = Store.open(path, CHAIN_ID)
    height = store.height
    height = 0 if height is None else height + 1
    with Committer(store) as committer:
        parent = None
        done = None
        while True:
            # Block `height` is prepared on top of the previous one while it commits.
            prepared = store.prepare_state(block_writes(seed, height), parent=parent)
            if done is not None:
                done.result()
                print(height - 1, flush=True)  # durable: the test may kill us from now on
            done = committer.apply_block(
                height,
                block_hash(seed, height),
                block_bytes(seed, height),
                b"cert %d" % height,
                prepared,
                tx_entries=block_txs(seed, height),
                meta={"last": b"%d" % height},
            )
            parent = prepared
            height += 1


if __name__ == "__main__":
    main()
