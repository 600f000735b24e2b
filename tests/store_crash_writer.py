"""A store writer for the crash test: applies deterministic blocks until it is killed.

    python tests/store_crash_writer.py STORE_DIR SEED

Block ``h``'s writes, transactions and metadata are a function of (SEED, h) only, so
the test that SIGKILLs this process can recompute exactly what the store must hold at
whatever height it finds after reopening.
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
        writes[key] = None if rng.random() < 0.25 else rng.randbytes(rng.randrange(1, 200))
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
    from ledger.store import Store

    path, seed = sys.argv[1], int(sys.argv[2])
    store = Store.open(path, CHAIN_ID)
    height = store.height
    height = 0 if height is None else height + 1
    prepared = None
    while True:
        # Pipelined like the node: the next block is prepared on top of the current one
        # before the current one commits.
        current = (
            prepared if prepared is not None else store.prepare_state(block_writes(seed, height))
        )
        prepared = store.prepare_state(block_writes(seed, height + 1), parent=current)
        store.apply_block(
            height,
            block_hash(seed, height),
            block_bytes(seed, height),
            b"cert %d" % height,
            current,
            tx_entries=block_txs(seed, height),
            meta={"last": b"%d" % height},
        )
        height += 1


if __name__ == "__main__":
    main()
