"""Benchmark of the authenticated state as the store keeps it.

    python -m bench.state --keys 1000000 [--dir DIR] [--blocks 12] [--blocks-1k 40]

Builds a state of ``--keys`` keys in a fresh LMDB store (setup, not timed), then applies
blocks of random writes exactly as the node does it: each block's state is prepared
(``Store.prepare_state``: the new root computed, nothing written) and applied
(``Store.apply_block``: state values, tree chunks, block, certificate, height and root
in one durable write transaction, ``sync`` on, in LMDB). Half of each block's writes
change existing keys, half insert new ones; the writes are generated before the clock
starts. Prints one JSON line:

* ``updates_per_s``: writes per second in blocks of 10,000, **pipelined** as the node
  runs its blocks (``ledger.store.Committer``): a committer thread applies block N, and
  while LMDB commits and fsyncs it (without holding the GIL) the main thread prepares
  block N + 1 on top of N's prepared state. Every block is still its own durable
  transaction holding all of its tree updates; a block is applied only after its
  parent's commit returned. Measured over ``--blocks`` blocks, from the first block's
  preparation to the last block's durable commit (that commit overlaps nothing: ~3 % of
  the time of 12 blocks, ~1 % of 30).
* ``updates_per_s_1k``: the same in blocks of 1,000;
* ``updates_per_s_serial`` / ``updates_per_s_1k_serial``: the same without overlap
  (prepare, then apply, then the next block), the figure of a node that commits
  synchronously;
* ``prepare_ms`` / ``commit_ms``: per 10,000-write block in the serial run, the time
  computing the new root (CPU) and applying it (puts, commit, fsync), and
  ``prepare_cpu_ms`` / ``commit_cpu_ms`` the CPU time of the calling thread in each
  (steadier than wall time on a busy machine; the commit's own part includes the kernel's
  copy of the written pages);
* ``proof_bytes``: the larger of the mean and the median encoded proof size over
  members and non-members (``proof_bytes_p99`` too);
* ``proof_verify_us``: mean time of ``verify_proof`` on an encoded proof (decode included);
* ``tree_backend``: ``compiled`` when the tree's hot loops run in ``ledger._state_native``
  (built by ``make`` where a C compiler exists), ``python`` otherwise
  (``GRIDLEDGER_PURE_TREE=1`` forces it, for the comparison).

The proofs are verified, and ``Store.get`` and ``Store.reader`` are checked against them
(at this scale reads skip the full top chunks, a path no unit test reaches).
The machine is shared: wall-clock figures depend on what else runs (``load_1m`` is the
load average when the timed blocks start).

The store lives in a temporary directory under ``--dir`` (default: the system temporary
directory, i.e. a real disk here, not tmpfs) and is deleted afterwards.

**Where a block's time goes** (10^6 keys, 10,000 writes, CPU time of the thread, 2-core
machine, idle: load < 1). With the compiled hot loops (``tree_backend: compiled``):
preparing ~95-100 ms, of which the ~9,800 chunk loads (an LMDB get ~1.3 µs and the copy
of a ~3 KB record out of the map) and the batch's Python walk (sorting, descending,
splits, bookkeeping) are most; the ~100,000 SHA-256 of the tree run in C at ~0.12 µs
each. Applying: classifying, encoding and putting the ~10,000 records ~24 ms (~3 + 10 +
11 ms; on the pipelined run's critical path: the node thread waits while py-lmdb takes
the GIL back after every put), the commit (~51 MB written, fsync) ~40 ms of CPU,
overlapped with the next block's preparation. Pipelined, a block takes ~160-170 ms:
58,000-65,000 updates/s (pure Python: ~43,000).

In pure Python (``GRIDLEDGER_PURE_TREE=1``, or no C compiler) preparing takes ~150-165 ms:
turning the writes into ops (a path, value and leaf hash each) ~15 ms; the tree batch
~140 ms, of which ~115,000 SHA-256 calls at ~0.32 µs with their slicing (~37 ms; the
hash itself is ~0.12 µs) and the chunk loads and edits (inserting a leaf or a hash into
a chunk's bytearray ~1.5 µs each); the rest is Python bookkeeping spread over the walk.
The overlapped commit costs the preparation ~15-25 ms of CPU (a thread writing and
syncing 51 MB to another file beside a serial preparation reproduces ~13 ms of it: the
kernel's copy competes for the shared cache and memory). Which loops went to C, and
why those (``ledger.state_native``): the three that do most hashes (a write's walk up a
chunk, the level-by-level rehash of a full top chunk, a write's path and leaf hash) and
the two chunk edits and the decoder that run once per touched chunk; measured one step
at a time, preparing went 150 -> 139 (hash loops) -> 125 (OpenSSL through a reused EVP
context instead of the one-shot SHA256(), which fetches the algorithm on every call)
-> 97 ms (edits and decoder in C).

To compare two versions of the tree code, time both in one process on one store, block
by block in alternation (runs of this benchmark differ by more than most changes);
that is how the two-key split (``TreeBatch._split``) measured -3 % of the tree batch.
Tried and not kept (no gain, or a loss): LMDB ``writemap`` (the put phase took ~70 %
more CPU, page faults moving onto the critical path); the bitmaps at the end of the
record so that a chunk's bytearray is put as it is, without encoding (the put phase
shrank by ~11 ms, the preparation grew by as much, rewriting the bitmaps); guessing the tree
database per depth (< 0.5 %); letting the committer put while the next block is prepared
(a GIL handoff per put: 32,000/s against 45,000/s); a larger collector threshold (no
difference); the two tree modules compiled unchanged with Cython (-4 % of the
preparation: the interpreter's work stays; hand-written C for the hot loops took
35-40 %). Two processes each preparing half of a block (their own read transactions, the records sent back through a
pipe): 148-163 ms of wall time against ~170 ms for one process on an idle machine, each
half taking ~105-120 ms instead of ~85 beside the other, before the commit joins them
on the same two cores; 275-330 ms against 200-540 ms under a load of 5-8.
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
from ledger.state_native import BACKEND as TREE_BACKEND
from ledger.statekeys import state_key
from ledger.store import Committer, PreparedState, Store

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

    def _apply(self, prepared: PreparedState) -> None:
        self.height += 1
        block = self.height.to_bytes(8, "big") * 32
        self.store.apply_block(self.height, bytes(32), block, b"certificate", prepared)

    def serial(self, blocks: list[dict[bytes, bytes | None]]) -> tuple[float, ...]:
        """(total, prepare, apply, prepare CPU, apply CPU) seconds: each block prepared then applied."""
        prep = apply = prep_cpu = apply_cpu = 0.0
        for writes in blocks:
            t0 = time.perf_counter()
            c0 = time.thread_time()
            prepared = self.store.prepare_state(writes)
            t1 = time.perf_counter()
            c1 = time.thread_time()
            self._apply(prepared)
            t2 = time.perf_counter()
            prep += t1 - t0
            apply += t2 - t1
            prep_cpu += c1 - c0
            apply_cpu += time.thread_time() - c1
        return prep + apply, prep, apply, prep_cpu, apply_cpu

    def pipelined(self, blocks: list[dict[bytes, bytes | None]]) -> float:
        """Seconds to prepare block N + 1 while block N commits (``ledger.store.Committer``)."""
        with Committer(self.store) as committer:
            t0 = time.perf_counter()
            parent = None
            done = None
            for writes in blocks:
                prepared = self.store.prepare_state(writes, parent=parent)
                if done is not None:
                    done.result()
                self.height += 1
                block = self.height.to_bytes(8, "big") * 32
                done = committer.apply_block(
                    self.height, bytes(32), block, b"certificate", prepared
                )
                parent = prepared
            done.result()
            return time.perf_counter() - t0


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
            chain.serial([batch])
        setup_s = time.perf_counter() - t0
        load = os.getloadavg()[0]

        def workload(size: int, count: int) -> list[dict[bytes, bytes | None]]:
            out = []
            for _ in range(count):
                writes = {rng.choice(keys): _value(rng) for _ in range(size // 2)}
                while len(writes) < size:
                    k = _key(rng)
                    writes[k] = _value(rng)
                    keys.append(k)
                out.append(writes)
            return out

        # The node's heap is long-lived: keep the setup's objects out of the collector's way.
        gc.collect()
        gc.freeze()
        serial_s, prep_s, apply_s, prep_cpu, apply_cpu = chain.serial(workload(10_000, blocks))
        pipe_s = chain.pipelined(workload(10_000, blocks))
        serial_1k_s = chain.serial(workload(1_000, blocks_1k))[0]
        pipe_1k_s = chain.pipelined(workload(1_000, blocks_1k))

        members = rng.sample(keys, 300)
        absent = [_key(rng) for _ in range(100)]
        reads = [store.prove(k) for k in members + absent]
        sizes = sorted(len(r.proof) for r in reads)
        with store.reader() as view:
            for r in reads:
                assert verify_proof(r.state_root, r.key, r.value, r.proof)
                # Reads take shortcuts at this scale (full top chunks): check them
                # against the proofs' walk.
                assert store.get(r.key) == view.get(r.key) == r.value
        rounds = 5
        t0 = time.perf_counter()
        for _ in range(rounds):
            for r in reads:
                verify_proof(r.state_root, r.key, r.value, r.proof)
        verify_us = (time.perf_counter() - t0) / (rounds * len(reads)) * 1e6
        store.close()
        return {
            "keys": n_keys,
            "updates_per_s": round(blocks * 10_000 / pipe_s),
            "updates_per_s_1k": round(blocks_1k * 1_000 / pipe_1k_s),
            "updates_per_s_serial": round(blocks * 10_000 / serial_s),
            "updates_per_s_1k_serial": round(blocks_1k * 1_000 / serial_1k_s),
            "prepare_ms": round(prep_s / blocks * 1000, 1),
            "commit_ms": round(apply_s / blocks * 1000, 1),
            "prepare_cpu_ms": round(prep_cpu / blocks * 1000, 1),
            "commit_cpu_ms": round(apply_cpu / blocks * 1000, 1),
            "proof_bytes": round(max(statistics.mean(sizes), statistics.median(sizes))),
            "proof_bytes_p99": sizes[int(len(sizes) * 0.99) - 1],
            "proof_verify_us": round(verify_us, 1),
            "setup_s": round(setup_s, 1),
            "load_1m": round(load, 1),
            "tree_backend": TREE_BACKEND,
            "pipelined": True,
            "sync": True,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where to create the temporary store")
    parser.add_argument("--blocks", type=int, default=12, help="timed blocks of 10,000 writes")
    parser.add_argument("--blocks-1k", type=int, default=40, help="timed blocks of 1,000 writes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.keys, args.dir, args.blocks, args.blocks_1k, args.seed)))


if __name__ == "__main__":
    main()
