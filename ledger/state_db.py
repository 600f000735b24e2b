"""The state and its tree in LMDB: three databases, prepared states, reads and writes.

The store (:mod:`ledger.store`) owns the environment and the write transactions; this
module decides what the state's records are and where they go.

==============  ==============================================================
``tree``        tree chunks (:mod:`ledger.state_tree`, keys and values inside)
                whose record is ``BIG_RECORD`` bytes or longer
``tree_small``  the other tree chunks
``values``      ``tree_path(key)`` -> a value longer than ``MAX_INLINE_VALUE``
==============  ==============================================================

**Why two tree databases** (measured at 10^6 keys, blocks of 10,000 random writes,
fsync on, bytes written per commit from ``/proc/self/io``): LMDB writes whole 4 KB
pages, and keeps a record longer than ~2 KB on overflow pages of its own, with a small
pointer in the B-tree. A bottom chunk is ~2.9 KB at 10^6 keys (~15 keys and their
values), so an update rewrites one overflow page and the page holding the pointer. In
one database, the ~37,000 smaller chunks (a deeper chunk holding 2 keys, ~370 bytes)
spread those pointers over ~40,000 leaf pages, and a block wrote ~82 MB (~20,000
pages). Apart, the ~59,000 pointers fit in ~440 pages and a block writes ~53 MB, ~51 MB
with compact top chunks (blocks of 1,000 writes: 10 MB, from 18 MB with the first
version's layout). A chunk moves between the two when its record crosses
:func:`big_record`; a batch knows where each chunk it loaded came from.

**Prepared states** are chains of in-memory layers (the chunks each block changed) on
top of the committed state. Chunks at depths ``<= CACHE_CHUNK_DEPTH`` (the 257 top
chunks, touched by every block) are also kept decoded, as of one state root; the cache
is replaced as a whole after a commit, never changed in place, so that readers in other
threads see one version.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from operator import itemgetter

import lmdb

from ledger.state import EMPTY, LEAF_PREFIX, StateProof
from ledger.state_chunk import (
    CHUNK_BITS,
    DEPTH_BYTE,
    FULL,
    MASK,
    MAX_INLINE_VALUE,
    ROOT_CHUNK,
    SLOT0,
    Chunk,
    copy_chunk,
    decode_chunk,
    encode_chunk,
    encoded_size,
    landing,
    lookup,
)
from ledger.state_native import path_leaf
from ledger.state_tree import TreeBatch, iter_leaves, prove_path

__all__ = [
    "BIG_RECORD",
    "CACHE_CHUNK_DEPTH",
    "DBS",
    "MAX_KEY_SIZE",
    "PreparedState",
    "StateDB",
    "StoreError",
    "big_record",
    "ops_of",
]

DBS = (b"tree", b"tree_small", b"values")
# With 4 KB pages (LMDB uses the OS page size), LMDB stores a record on overflow pages
# when key + value + an 8-byte node header exceed 2038 bytes: from 2030 bytes of value
# on, whatever the key (measured with LMDB 0.9.36). See big_record() for other sizes.
BIG_RECORD = 2030  # big_record(4096)
# Chunks at these depths (257 chunks, ~2 MB decoded) are touched by nearly every block.
CACHE_CHUNK_DEPTH = 1
# How many chunks that is when the top of the tree is full.
_TOP_CHUNKS = sum(1 << (CHUNK_BITS * d) for d in range(CACHE_CHUNK_DEPTH + 1))
# A state key is a short encoding of [contract, variable, key parts]; a longer one is a
# contract bug, refused clearly (keys live in tree chunks, which should stay small).
MAX_KEY_SIZE = 511

_sha256 = hashlib.sha256
# ledger.statekeys.tree_path(key) is sha256(_PATH_TAG + key), inlined on the hot paths
# (tests compare every root with ledger.state.compute_root, which uses tree_path).
_PATH_TAG = b"gridledger/state-key"
_PATH = itemgetter(0)
# The longest bitmap of a chunk's record: one bit per position.
_BITMAP_BYTES = 2 * SLOT0 // 8


class StoreError(Exception):
    """The store refused an operation; the message says why. Nothing was written.

    (Defined here, the lowest module of the store, and exported by :mod:`ledger.store`.)
    """


class PreparedState:
    """The state after a set of writes, computed but not committed (see :mod:`ledger.store`)."""

    __slots__ = (
        "root",
        "parent",
        "parent_root",
        "writes",
        "chunks",
        "blobs",
        "origin",
        "applied",
        "_store",
        "__weakref__",
    )

    def __init__(self, store, parent, parent_root, writes, batch: TreeBatch, origin, root) -> None:
        self._store = store
        self.parent: PreparedState | None = parent
        self.parent_root: bytes = parent_root
        self.writes: dict[bytes, bytes | None] = writes
        self.chunks: dict[bytes, Chunk | None] = batch.writes  # never changed once prepared
        self.blobs: dict[bytes, bytes | None] = batch.blobs  # path -> long value (None: delete)
        self.origin: dict[bytes, bool] = origin  # chunk key -> its record was big before
        self.root: bytes = root
        self.applied = False

    def pending(self) -> Iterator[PreparedState]:
        """This state and its parents that are not committed yet, nearest first."""
        node = self
        while node is not None and not node.applied:
            yield node
            node = node.parent

    def release(self) -> None:
        """Drop what only an uncommitted state needs (called once it is applied).

        A reader that listed this state before it was applied holds its own references;
        one that finds them gone reads the commit instead (its snapshot begins later).
        """
        self.parent = None
        self.writes = self.chunks = self.blobs = self.origin = None


def big_record(page_size: int) -> int:
    """The shortest record LMDB stores on overflow pages whatever its key (1..32 bytes).

    LMDB's largest node is ``((page_size - 16) // 2 & ~1) - 2`` bytes: 8 bytes of
    header, the key and the value; a record whose node would be larger (with a 1-byte
    key) goes to overflow pages.
    """
    return (((page_size - 16) // 2) & ~1) - 2 - 8


class StateDB:
    """The state's databases in one LMDB environment (transactions come from the caller)."""

    def __init__(self, env: lmdb.Environment, root: bytes | None) -> None:
        self._big = big_record(env.stat()["psize"])
        self._tree = env.open_db(b"tree")
        self._small = env.open_db(b"tree_small")
        self._values = env.open_db(b"values")
        # (state root, {chunk key: chunk}, every top chunk cached and full): see the
        # module docstring. Full top chunks (always at 10^6 keys) send every path to
        # depth 2, so a read goes there directly.
        self._cache: tuple[bytes | None, dict[bytes, Chunk], bool] = (root, {}, False)
        self._cache_lock = threading.Lock()  # serialises replacing the tuple, not reads

    # ------------------------------------------------------------------ reads

    def loader(self, txn, root: bytes) -> Callable[[bytes], Chunk | None]:
        """A chunk loader for reads in ``txn``, whose state root is ``root`` (chunks read-only)."""
        cache_root, cache, _ = self._cache
        fill = cache_root == root
        if not fill:
            cache = {}
        tree = self._tree
        small = self._small
        get = txn.get

        def load(ckey: bytes) -> Chunk | None:
            chunk = cache.get(ckey)
            if chunk is not None:
                return chunk
            raw = get(ckey, db=tree)
            if raw is None:
                raw = get(ckey, db=small)
                if raw is None:
                    return None
            chunk = decode_chunk(raw)
            if fill and ckey[-1] <= CACHE_CHUNK_DEPTH:
                cache[ckey] = chunk
            return chunk

        return load

    def _mark_full(self, root: bytes, cache: dict[bytes, Chunk]) -> None:
        """Set the cache's full flag if ``cache`` is complete, full, and still the current one."""
        if all(chunk.eb == FULL and not chunk.lb for chunk in list(cache.values())):
            with self._cache_lock:
                if self._cache[1] is cache:
                    self._cache = (root, cache, True)

    def _long_value(self, txn, path: bytes) -> bytes:
        value = txn.get(path, db=self._values)
        if value is None:
            raise StoreError(f"the value at {path.hex()} is missing (store corrupted)")
        return bytes(value)

    def get(self, txn, root: bytes, key: bytes) -> bytes | None:
        """The value of ``key`` in ``txn``'s state, whose root is ``root``.

        Reads the records in place (``txn`` may return buffers): the cached top chunks,
        then one bottom chunk, of which only the value is copied.
        """
        path = _sha256(_PATH_TAG + key).digest()
        pi = int.from_bytes(path, "big")
        cache_root, cache, full = self._cache
        if cache_root != root:
            cache = {}
        tree = self._tree
        small = self._small
        if full and cache_root == root:
            k = CACHE_CHUNK_DEPTH + 1
            ckey = path[:k] + DEPTH_BYTE[k]
        else:
            if cache_root == root and len(cache) == _TOP_CHUNKS:
                self._mark_full(cache_root, cache)
            k = 0
            ckey = ROOT_CHUNK
        while True:
            chunk = cache.get(ckey)
            if chunk is not None:
                pos, child = landing(chunk.eb, chunk.lb, (pi >> (248 - CHUNK_BITS * k)) & MASK)
                found = True if child else chunk.leaf(pos) or False
            else:
                raw = txn.get(ckey, db=tree)
                if raw is None:
                    raw = txn.get(ckey, db=small)
                    if raw is None:
                        if k:
                            raise StoreError(f"state tree chunk {ckey.hex()} is missing (store corrupted)")
                        return None
                if k <= CACHE_CHUNK_DEPTH and cache_root == root:
                    cache[ckey] = decode_chunk(bytes(raw))
                found = lookup(raw, pi, k)
            if found is True:
                k += 1
                ckey = path[:k] + DEPTH_BYTE[k]
                continue
            if found is False or found[0] != key:
                return None
            return self._long_value(txn, path) if found[2] else found[1]

    def prove(self, txn, root: bytes, key: bytes) -> tuple[bytes | None, StateProof]:
        """(value or None, proof) of ``key`` in ``txn``'s state, whose root is ``root``."""
        path = _sha256(_PATH_TAG + key).digest()
        leaf, lhash, proof = prove_path(self.loader(txn, root), path)
        if leaf is None:
            return None, proof
        leaf_key, value, outside = leaf
        leaf_path = _sha256(_PATH_TAG + leaf_key).digest()
        if outside:
            value = self._long_value(txn, leaf_path)
        vhash = _sha256(value).digest()
        if _sha256(LEAF_PREFIX + leaf_path + vhash).digest() != lhash:
            raise StoreError(f"state and tree disagree at {leaf_path.hex()} (store corrupted)")
        if leaf_key == key:
            return value, proof
        return None, StateProof(proof.depth, proof.bitmap, proof.siblings, (leaf_path, vhash))

    def iterate(self, txn, root: bytes, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value, outside in iter_leaves(self.loader(txn, root), start):
            if outside:
                value = self._long_value(txn, _sha256(_PATH_TAG + key).digest())
            yield key, value

    def tree_root(self, txn) -> bytes:
        raw = txn.get(ROOT_CHUNK, db=self._tree) or txn.get(ROOT_CHUNK, db=self._small)
        return EMPTY if raw is None else decode_chunk(raw).get(1) or EMPTY

    # ------------------------------------------------------------------ preparing

    def prepare(
        self, store, txn, writes: Mapping[bytes, bytes | None], parent: PreparedState | None,
        pending: list[PreparedState], layers: list[dict],
    ) -> PreparedState:
        """Compute the state after ``writes`` on ``parent`` (or the committed state) in ``txn``.

        ``pending`` are ``parent`` and its unapplied ancestors and ``layers`` their
        chunks (those not released yet), listed before ``txn`` began: a parent applied
        in between is then visible to ``txn`` (it is marked applied and released only
        after its commit) and, if still listed, read from memory: the same.
        """
        ops, clean = ops_of(writes)
        # ``txn`` returns buffers into the map (valid until it ends): decoding copies once.
        txn_root = bytes(txn.get(b"state_root", db=store._meta) or EMPTY)
        if pending:
            parent_root = parent.root
            valid = {node.root for node in pending}
            valid.add(pending[-1].parent_root)
            if txn_root not in valid:
                raise StoreError("the parent prepared state is not on the committed chain any more")
        else:
            parent_root = txn_root
            if parent is not None and parent.root != parent_root:
                raise StoreError(
                    "the parent prepared state was applied but is no longer the committed state"
                )
            valid = {txn_root}
        cache_root, cache, _ = self._cache
        if cache_root not in valid:
            cache = {}
        # Chunks read from the database may join the cache only if they are of its version.
        fill = cache_root == txn_root
        origin: dict[bytes, bool] = {}
        big = self._big
        tree = self._tree
        small = self._small
        get = txn.get
        top = CACHE_CHUNK_DEPTH

        def load(ckey: bytes) -> Chunk | None:
            for chunks in layers:
                if ckey in chunks:
                    chunk = chunks[ckey]
                    if chunk is None:
                        return None
                    origin[ckey] = encoded_size(chunk, ckey[-1] <= CACHE_CHUNK_DEPTH) >= big
                    return copy_chunk(chunk)
            depth = ckey[-1]
            if depth <= top:
                chunk = cache.get(ckey)
                if chunk is not None:
                    origin[ckey] = encoded_size(chunk, True) >= big
                    return copy_chunk(chunk)
            raw = get(ckey, db=tree)
            if raw is not None:
                origin[ckey] = True
            else:
                raw = get(ckey, db=small)
                if raw is None:
                    return None
                origin[ckey] = False
            chunk = decode_chunk(raw)
            if fill and depth <= top:
                cache[ckey] = chunk
                return copy_chunk(chunk)
            return chunk

        batch = TreeBatch(load)
        root = batch.apply(ops)
        return PreparedState(store, parent, parent_root, clean, batch, origin, root)

    # ------------------------------------------------------------------ writing

    def write(self, txn, prepared: PreparedState) -> None:
        """Put (or delete) the chunks and long values of ``prepared`` in the write transaction."""
        self._write(txn, prepared.chunks, prepared.blobs, prepared.origin)

    def _write(self, txn, chunks, blobs, origin) -> None:
        tree = self._tree
        small = self._small
        delete = txn.delete
        big_records = []
        small_records = []
        # encoded_size(chunk) inlined for the chunks below the top (once per chunk of the
        # block): the 3 length bytes, the bitmaps (at most 3 * _BITMAP_BYTES) and the body.
        # The body alone decides nearly every chunk; the bitmaps are measured near the limit.
        limit = self._big - 3
        small_below = limit - 3 * _BITMAP_BYTES
        top = CACHE_CHUNK_DEPTH
        for ckey, chunk in chunks.items():
            was = origin.get(ckey)
            if chunk is None:
                if was is not None:
                    delete(ckey, db=tree if was else small)
                continue
            if ckey[-1] <= top:
                compact = True
                big = encoded_size(chunk, True) >= self._big
            else:
                compact = False
                n = len(chunk.b)
                if n >= limit:
                    big = True
                elif n < small_below:
                    big = False
                else:
                    big = (
                        n
                        + ((chunk.eb.bit_length() + 7) >> 3)
                        + ((chunk.lb.bit_length() + 7) >> 3)
                        + ((chunk.xb.bit_length() + 7) >> 3)
                    ) >= limit
            (big_records if big else small_records).append((ckey, chunk, compact))
            if was is not None and was != big:
                delete(ckey, db=tree if was else small)
        # One call per database, the loop in C; each record is encoded as it is put
        # and freed right after (a block's records would be ~30 MB held at once).
        for db, records in ((tree, big_records), (small, small_records)):
            if records:
                txn.cursor(db=db).putmulti((k, encode_chunk(c, cp)) for k, c, cp in records)
        values = self._values
        for path, value in blobs.items():
            if value is None:
                delete(path, db=values)
            else:
                txn.put(path, value, db=values)

    def committed(self, prepared: PreparedState) -> None:
        """Move the cache to the state ``prepared`` just committed (call after the commit)."""
        cache_root, cache, _ = self._cache
        fresh = dict(cache) if cache_root == prepared.parent_root else {}
        for ckey, chunk in prepared.chunks.items():
            if ckey[-1] <= CACHE_CHUNK_DEPTH:
                if chunk is None:
                    fresh.pop(ckey, None)
                else:
                    fresh[ckey] = chunk
        full = len(fresh) == _TOP_CHUNKS and all(
            chunk.eb == FULL and not chunk.lb for chunk in fresh.values()
        )
        with self._cache_lock:
            self._cache = (prepared.root, fresh, full)

    @staticmethod
    def build(writes: Mapping[bytes, bytes]) -> tuple[bytes, TreeBatch]:
        """(root, chunks) of the state holding exactly ``writes`` (nothing is read or written)."""
        ops, _ = ops_of(writes)
        batch = TreeBatch(lambda ckey: None)
        return batch.apply(ops), batch

    def install(self, txn, batch: TreeBatch) -> None:
        """Replace the whole state by one :meth:`build` computed (in the write transaction)."""
        for db in (self._tree, self._small, self._values):
            txn.drop(db, delete=False)
        self._write(txn, batch.writes, batch.blobs, {})

    def reset_cache(self, root: bytes) -> None:
        with self._cache_lock:
            self._cache = (root, {}, False)


def ops_of(writes: Mapping[bytes, bytes | None]) -> tuple[list[tuple], dict[bytes, bytes | None]]:
    """Check ``writes`` and turn them into tree ops (``ledger.state_tree.op``) in tree order."""
    sha = _sha256
    tag = _PATH_TAG
    from_bytes = int.from_bytes
    ops: list[tuple] = []
    append = ops.append
    for key, value in writes.items():
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
            raise StoreError(
                f"state keys are 1..{MAX_KEY_SIZE} bytes; got {type(key).__name__} of length "
                f"{len(key) if isinstance(key, bytes) else '?'}"
            )
        # The same tuples as ledger.state_tree.op, built inline: this runs once per write.
        if type(value) is bytes:
            path, lh = path_leaf(tag, key, value)
            if len(value) > MAX_INLINE_VALUE:
                append((path, from_bytes(path, "big"), lh, key, b"", 1, value))
            else:
                append((path, from_bytes(path, "big"), lh, key, value, 0))
        elif value is None:
            path = sha(tag + key).digest()
            append((path, from_bytes(path, "big"), None, key, None, 0))
        else:
            raise StoreError(
                f"state values are bytes (or None to delete); got {type(value).__name__}"
            )
    ops.sort(key=_PATH)
    return ops, dict(writes)
