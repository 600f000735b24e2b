"""The LMDB store of one shard: blocks, transaction index, state, state tree, records.

One LMDB environment per shard a node serves, with named databases:

==============  ==============================================================
``meta``        chain id, genesis hash, storage format, height, state root,
                and the application's own metadata (``app/<name>``)
``blocks``      height -> encoded block
``hashes``      height -> block hash
``certs``       height -> encoded commit certificate
``checkpoints`` height -> encoded checkpoint certificate
``txindex``     transaction id -> encode([height, position, receipt])
``state``       state key -> value (the current state)
``nodes``       state tree chunks (:mod:`ledger.state_tree`)
``records``     consensus records (votes, views, terms) the replica persisted
==============  ==============================================================

**Applying a block is one write transaction**: its state writes, tree chunks, block,
certificate, index entries, new height and state root commit together or not at all,
with ``sync`` on, so after a crash the store is at one committed height whose state root
is the root of its state (``tests/test_store.py`` kills a writer hundreds of times to
check this).

**Speculative execution.** The header of a block carries the state root *after* the
block, so the leader and every validator compute it before the block commits, possibly
on top of another prepared block (pipelining). :meth:`Store.prepare_state` computes the
root of a set of writes on top of the committed state or of a parent
:class:`PreparedState`, without writing anything; :meth:`Store.apply_block` commits it,
reusing the chunks computed during preparation. Discarding a prepared state costs
nothing (drop the object). A prepared state is refused unless it was prepared on the
state that is committed when it is applied.

**A full map** raises :class:`StoreFullError` and leaves the store at its last
committed height. Grow the map with :meth:`Store.grow`, the ``map_size`` argument (node
setting ``store.map_size``) or the ``GRIDLEDGER_STORE_MAP_SIZE`` environment variable;
LMDB maps are sparse, so a generous size costs address space, not disk.

A store is used from one thread (the node's event loop); LMDB read transactions give
every read a consistent snapshot of the latest committed height.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import lmdb

from ledger import codec
from ledger.state import EMPTY, value_hash
from ledger.state_tree import (
    CHUNK_BITS,
    ROOT_CHUNK,
    Chunk,
    TreeBatch,
    chunk_depth,
    chunk_encoder,
    decode_chunk,
    leaf_entry,
    prove_path,
)
from ledger.statekeys import tree_path

__all__ = [
    "DEFAULT_MAP_SIZE",
    "MAP_SIZE_ENV",
    "MAX_KEY_SIZE",
    "PreparedState",
    "ProvenValue",
    "Store",
    "StoreError",
    "StoreFullError",
]

MAP_SIZE_ENV = "GRIDLEDGER_STORE_MAP_SIZE"
DEFAULT_MAP_SIZE = 16 << 30
# LMDB's compiled-in key limit. State keys are short encodings of
# [contract, variable, key parts]; a longer one is a contract bug, refused clearly.
MAX_KEY_SIZE = 511
# Chunks at these depths (257 chunks, ~13 MB decoded) are touched by nearly every
# block; keeping them decoded saves their decoding on every batch.
CACHE_CHUNK_DEPTH = 1
FORMAT = b"gridledger-store/1/chunk%d" % CHUNK_BITS

_DBS = (
    b"meta",
    b"blocks",
    b"hashes",
    b"certs",
    b"checkpoints",
    b"txindex",
    b"state",
    b"nodes",
    b"records",
)


class StoreError(Exception):
    """The store refused an operation; the message says why. Nothing was written."""


class StoreFullError(StoreError):
    """The LMDB map is full. The store is still at its last committed height."""


def _height_key(height: int) -> bytes:
    return height.to_bytes(8, "big")


def _copy(chunk: Chunk) -> Chunk:
    return [dict(chunk[0]), dict(chunk[1])]


@dataclass(frozen=True, slots=True)
class ProvenValue:
    """A state read with its proof, all from one snapshot: ``verify_proof(state_root, key, value, proof)``."""

    key: bytes
    value: bytes | None
    proof: bytes
    height: int | None
    state_root: bytes


class PreparedState:
    """The state after a set of writes, computed but not committed (see the module docstring)."""

    __slots__ = ("root", "parent", "parent_root", "writes", "chunks", "applied", "_store")

    def __init__(self, store, parent, parent_root, writes, chunks, root) -> None:
        self._store = store
        self.parent: PreparedState | None = parent
        self.parent_root: bytes = parent_root
        self.writes: dict[bytes, bytes | None] = writes
        self.chunks: dict[bytes, Chunk | None] = chunks
        self.root: bytes = root
        self.applied = False

    def pending(self) -> Iterator[PreparedState]:
        """This state and its parents that are not committed yet, nearest first."""
        node = self
        while node is not None and not node.applied:
            yield node
            node = node.parent


class Store:
    """One shard's LMDB environment. Open with :meth:`Store.open`; close with :meth:`close`."""

    def __init__(self, env: lmdb.Environment, path: str) -> None:
        self._env = env
        self.path = path
        self._db = {name.decode(): env.open_db(name) for name in _DBS}
        self._cache: dict[bytes, Chunk | None] = {}

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str,
        chain_id: str,
        *,
        genesis_hash: bytes | None = None,
        map_size: int | None = None,
        create: bool = True,
    ) -> Store:
        """Open (or create) the store of ``chain_id`` at ``path``.

        Raises :class:`StoreError` when the store belongs to another chain, another
        genesis, or another storage format.
        """
        if map_size is None:
            env_value = os.environ.get(MAP_SIZE_ENV)
            try:
                map_size = int(env_value) if env_value else DEFAULT_MAP_SIZE
            except ValueError:
                raise StoreError(f"{MAP_SIZE_ENV}={env_value!r} is not a size in bytes") from None
        if not create and not os.path.exists(os.path.join(path, "data.mdb")):
            raise StoreError(f"no store at {path}")
        os.makedirs(path, exist_ok=True)
        try:
            env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=len(_DBS) + 1,
                sync=True,
                metasync=True,
                readahead=False,
                meminit=False,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        store = cls(env, path)
        try:
            store._check_identity(chain_id, genesis_hash)
        except BaseException:
            env.close()
            raise
        return store

    def _check_identity(self, chain_id: str, genesis_hash: bytes | None) -> None:
        meta = self._db["meta"]
        with self._write() as txn:
            stored = txn.get(b"chain_id", db=meta)
            if stored is None:
                txn.put(b"chain_id", chain_id.encode(), db=meta)
                txn.put(b"format", FORMAT, db=meta)
            elif stored.decode() != chain_id:
                raise StoreError(
                    f"the store at {self.path} belongs to chain {stored.decode()!r}, not {chain_id!r}"
                )
            fmt = txn.get(b"format", db=meta)
            if fmt != FORMAT:
                raise StoreError(
                    f"the store at {self.path} has format {fmt!r}; this node reads {FORMAT!r}"
                )
            if genesis_hash is not None:
                known = txn.get(b"genesis_hash", db=meta)
                if known is None:
                    txn.put(b"genesis_hash", genesis_hash, db=meta)
                elif known != genesis_hash:
                    raise StoreError(
                        f"the store at {self.path} was created from another genesis ({known.hex()})"
                    )

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def grow(self, new_size: int) -> None:
        """Enlarge the LMDB map to ``new_size`` bytes (no transaction may be open)."""
        if new_size <= self._env.info()["map_size"]:
            raise StoreError(
                f"the map is already {self._env.info()['map_size']} bytes; pass a larger size"
            )
        self._env.set_mapsize(new_size)

    # ------------------------------------------------------------------ transactions

    def _write(self):
        return _WriteTxn(self)

    # ------------------------------------------------------------------ reads

    def _meta_get(self, txn, name: bytes) -> bytes | None:
        return txn.get(name, db=self._db["meta"])

    @staticmethod
    def _height_of(raw: bytes | None) -> int | None:
        return None if raw is None else int.from_bytes(raw, "big")

    @property
    def chain_id(self) -> str:
        with self._env.begin() as txn:
            return self._meta_get(txn, b"chain_id").decode()

    @property
    def genesis_hash(self) -> bytes | None:
        with self._env.begin() as txn:
            return self._meta_get(txn, b"genesis_hash")

    @property
    def height(self) -> int | None:
        """Height of the last applied block; None before the first."""
        with self._env.begin() as txn:
            return self._height_of(self._meta_get(txn, b"height"))

    @property
    def state_root(self) -> bytes:
        with self._env.begin() as txn:
            return self._meta_get(txn, b"state_root") or EMPTY

    def head(self) -> tuple[int | None, bytes]:
        """(height, state root), read together."""
        with self._env.begin() as txn:
            return self._height_of(self._meta_get(txn, b"height")), self._meta_get(
                txn, b"state_root"
            ) or EMPTY

    def meta(self, name: str) -> bytes | None:
        """Application metadata written with :meth:`apply_block`."""
        with self._env.begin() as txn:
            return self._meta_get(txn, b"app/" + name.encode())

    def _by_height(self, db: str, height: int) -> bytes | None:
        with self._env.begin(db=self._db[db]) as txn:
            return txn.get(_height_key(height))

    def block(self, height: int) -> bytes | None:
        return self._by_height("blocks", height)

    def block_hash(self, height: int) -> bytes | None:
        return self._by_height("hashes", height)

    def certificate(self, height: int) -> bytes | None:
        return self._by_height("certs", height)

    def checkpoint(self, height: int) -> bytes | None:
        return self._by_height("checkpoints", height)

    def checkpoint_heights(self) -> list[int]:
        with self._env.begin(db=self._db["checkpoints"]) as txn:
            return [int.from_bytes(k, "big") for k in txn.cursor().iternext(values=False)]

    def tx_location(self, tx_id: bytes) -> tuple[int, int, bytes] | None:
        """(height, position in block, encoded receipt) of a committed transaction."""
        with self._env.begin(db=self._db["txindex"]) as txn:
            raw = txn.get(tx_id)
        if raw is None:
            return None
        height, position, receipt = codec.decode(raw)
        return height, position, receipt

    def get(self, key: bytes, at: PreparedState | None = None) -> bytes | None:
        """The value of ``key`` in the committed state, or on top of a prepared state."""
        if at is not None:
            for node in at.pending():
                if key in node.writes:
                    return node.writes[key]
        with self._env.begin(db=self._db["state"]) as txn:
            return txn.get(key)

    def prove(self, key: bytes) -> ProvenValue:
        """The committed value of ``key`` (or its absence) with its proof, height and root."""
        with self._env.begin() as txn:
            value = txn.get(key, db=self._db["state"])
            nodes = self._db["nodes"]

            def load(ckey: bytes) -> Chunk | None:
                raw = txn.get(ckey, db=nodes)
                return None if raw is None else decode_chunk(raw)

            vhash, proof = prove_path(load, tree_path(key))
            height = self._height_of(self._meta_get(txn, b"height"))
            root = self._meta_get(txn, b"state_root") or EMPTY
        if (value is None) != (vhash is None) or (value is not None and value_hash(value) != vhash):
            raise StoreError(f"state and tree disagree on key {key.hex()} (store corrupted)")
        return ProvenValue(key, value, proof.encode(), height, root)

    def iter_state(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs of the committed state from ``start`` on, in key order, from one snapshot."""
        with self._env.begin(db=self._db["state"]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start):
                return
            yield from cursor.iternext()

    def records(self) -> dict[bytes, bytes]:
        """The consensus records (what the replica persisted), to restart it."""
        with self._env.begin(db=self._db["records"]) as txn:
            return dict(txn.cursor().iternext())

    # ------------------------------------------------------------------ writes

    def put_records(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write (None: delete) consensus records; durable on disk when this returns."""
        db = self._db["records"]
        with self._write() as txn:
            for key, value in items:
                if value is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, value, db=db)

    def put_checkpoint(self, height: int, certificate: bytes) -> None:
        """Store the checkpoint certificate of ``height`` (durable when this returns)."""
        with self._write() as txn:
            txn.put(_height_key(height), certificate, db=self._db["checkpoints"])

    def put_certificate(self, height: int, certificate: bytes) -> None:
        """Store (or replace) the commit certificate of an applied block."""
        with self._write() as txn:
            if txn.get(_height_key(height), db=self._db["blocks"]) is None:
                raise StoreError(f"no block at height {height} to attach a certificate to")
            txn.put(_height_key(height), certificate, db=self._db["certs"])

    # ------------------------------------------------------------------ speculative state

    def prepare_state(
        self, writes: Mapping[bytes, bytes | None], parent: PreparedState | None = None
    ) -> PreparedState:
        """Compute the state after ``writes`` (None deletes) on top of the committed state or ``parent``.

        Nothing is written. Raises :class:`StoreError` for a key that is not bytes or
        too long, a value that is not bytes or None, or a parent from another store.
        """
        if parent is not None and parent._store is not self:
            raise StoreError("the parent prepared state belongs to another store")
        ops = []
        clean: dict[bytes, bytes | None] = {}
        for key, value in writes.items():
            if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_SIZE:
                raise StoreError(
                    f"state keys are 1..{MAX_KEY_SIZE} bytes; got {type(key).__name__} of length {len(key) if isinstance(key, bytes) else '?'}"
                )
            path = tree_path(key)
            if value is None:
                ops.append((path, int.from_bytes(path, "big"), None, None))
            elif type(value) is bytes:
                ops.append(leaf_entry(path, value_hash(value)))
            else:
                raise StoreError(
                    f"state values are bytes (or None to delete); got {type(value).__name__}"
                )
            clean[key] = value
        ops.sort()
        pending = list(parent.pending()) if parent is not None else []
        cache = self._cache
        with self._env.begin(db=self._db["nodes"]) as txn:
            if pending:
                parent_root = parent.root
            else:
                parent_root = self._meta_get(txn, b"state_root") or EMPTY
                if parent is not None and parent.root != parent_root:
                    raise StoreError(
                        "the parent prepared state was applied but is no longer the committed state"
                    )

            def load(ckey: bytes) -> Chunk | None:
                for node in pending:
                    if ckey in node.chunks:
                        chunk = node.chunks[ckey]
                        return None if chunk is None else _copy(chunk)
                chunk = cache.get(ckey)
                if chunk is not None:
                    return _copy(chunk)
                raw = txn.get(ckey)
                if raw is None:
                    return None
                chunk = decode_chunk(raw)
                if chunk_depth(ckey) <= CACHE_CHUNK_DEPTH:
                    cache[ckey] = chunk
                    return _copy(chunk)
                return chunk

            batch = TreeBatch(load)
            root = batch.apply(ops)
        return PreparedState(self, parent, parent_root, clean, batch.writes, root)

    def apply_block(
        self,
        height: int,
        block_hash: bytes,
        block: bytes,
        certificate: bytes | None,
        prepared: PreparedState,
        tx_entries: Sequence[tuple[bytes, bytes]] = (),
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """Commit a block and its prepared state in one durable write transaction.

        ``tx_entries`` are (transaction id, encoded receipt) in block order. Raises
        :class:`StoreError` (nothing written) when the height does not follow the
        committed one, ``prepared`` was not prepared on the committed state, or a
        transaction id is already indexed; :class:`StoreFullError` when the map is full.
        """
        if prepared._store is not self:
            raise StoreError("this prepared state belongs to another store")
        if prepared.applied:
            raise StoreError("this prepared state was already applied")
        if prepared.parent is not None and not prepared.parent.applied:
            raise StoreError("the parent of this prepared state is not applied yet; apply it first")
        if type(block_hash) is not bytes or len(block_hash) != 32:
            raise StoreError("a block hash is 32 bytes")
        db = self._db
        with self._write() as txn:
            current = self._height_of(self._meta_get(txn, b"height"))
            if current is not None and height != current + 1:
                raise StoreError(
                    f"block height {height} does not follow the committed height {current}"
                )
            if height < 0:
                raise StoreError("block heights start at 0")
            if prepared.parent_root != (self._meta_get(txn, b"state_root") or EMPTY):
                raise StoreError(
                    "the prepared state was computed on another state than the committed one"
                )
            self._write_state(txn, prepared.writes, prepared.chunks)
            hk = _height_key(height)
            txn.put(hk, block, db=db["blocks"])
            txn.put(hk, block_hash, db=db["hashes"])
            if certificate is not None:
                txn.put(hk, certificate, db=db["certs"])
            index = db["txindex"]
            for position, (tx_id, receipt) in enumerate(tx_entries):
                if not txn.put(
                    tx_id, codec.encode([height, position, receipt]), db=index, overwrite=False
                ):
                    raise StoreError(f"transaction {tx_id.hex()} is already indexed")
            meta_db = db["meta"]
            for name, value in (meta or {}).items():
                txn.put(b"app/" + name.encode(), value, db=meta_db)
            txn.put(b"height", hk, db=meta_db)
            txn.put(b"state_root", prepared.root, db=meta_db)
        prepared.applied = True
        self._refresh_cache(prepared.chunks)

    def _write_state(self, txn, writes, chunks) -> None:
        state = self._db["state"]
        nodes = self._db["nodes"]
        put = txn.put
        delete = txn.delete
        encode = chunk_encoder()
        for key, value in writes.items():
            if value is None:
                delete(key, db=state)
            else:
                put(key, value, db=state)
        for ckey, chunk in chunks.items():
            if chunk is None:
                delete(ckey, db=nodes)
            else:
                put(ckey, encode(chunk), db=nodes)

    def _refresh_cache(self, chunks: Mapping[bytes, Chunk | None]) -> None:
        cache = self._cache
        for ckey, chunk in chunks.items():
            if chunk_depth(ckey) <= CACHE_CHUNK_DEPTH:
                if chunk is None:
                    cache.pop(ckey, None)
                else:
                    cache[ckey] = chunk

    # ------------------------------------------------------------------ state sync

    def install_snapshot(
        self,
        height: int,
        block_hash: bytes,
        block: bytes,
        certificate: bytes | None,
        items: Iterable[tuple[bytes, bytes]],
        expected_root: bytes,
        meta: Mapping[str, bytes] | None = None,
    ) -> None:
        """Replace the state by ``items`` at ``height``, if and only if their root is ``expected_root``.

        One write transaction: on a root mismatch (or any error) nothing changes.
        """
        writes: dict[bytes, bytes] = {}
        for key, value in items:
            if key in writes:
                raise StoreError(f"snapshot holds key {key.hex()} twice")
            writes[key] = value
        ops = sorted(
            leaf_entry(p, value_hash(v)) for p, v in ((tree_path(k), v) for k, v in writes.items())
        )
        batch = TreeBatch(lambda ckey: None)
        root = batch.apply(ops)
        if root != expected_root:
            raise StoreError(
                f"snapshot root {root.hex()} is not the expected {expected_root.hex()}"
            )
        db = self._db
        with self._write() as txn:
            txn.drop(db["state"], delete=False)
            txn.drop(db["nodes"], delete=False)
            self._write_state(txn, writes, batch.writes)
            hk = _height_key(height)
            txn.put(hk, block, db=db["blocks"])
            txn.put(hk, block_hash, db=db["hashes"])
            if certificate is not None:
                txn.put(hk, certificate, db=db["certs"])
            for name, value in (meta or {}).items():
                txn.put(b"app/" + name.encode(), value, db=db["meta"])
            txn.put(b"height", hk, db=db["meta"])
            txn.put(b"state_root", root, db=db["meta"])
        self._cache.clear()

    def tree_root(self) -> bytes:
        """The root as stored in the tree's root chunk (equals :attr:`state_root` in a sound store)."""
        with self._env.begin(db=self._db["nodes"]) as txn:
            raw = txn.get(ROOT_CHUNK)
        return EMPTY if raw is None else decode_chunk(raw)[0].get(1, EMPTY)


class _WriteTxn:
    """A write transaction that commits on success, aborts on error, and turns LMDB errors into StoreErrors."""

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn = None

    def __enter__(self) -> lmdb.Transaction:
        try:
            self._txn = self._store._env.begin(write=True)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size and retry.
            self._store._env.set_mapsize(0)
            self._txn = self._store._env.begin(write=True)
        return self._txn

    def __exit__(self, exc_type, exc, tb) -> bool:
        txn = self._txn
        if exc_type is not None:
            txn.abort()
            if issubclass(exc_type, lmdb.MapFullError):
                raise _full(self._store) from None
            if issubclass(exc_type, lmdb.Error):
                raise StoreError(f"LMDB refused the write: {exc}") from None
            return False
        try:
            txn.commit()
        except lmdb.MapFullError:
            raise _full(self._store) from None
        except lmdb.Error as exc:
            raise StoreError(f"LMDB could not commit: {exc}") from None
        return False


def _full(store: Store) -> StoreFullError:
    size = store._env.info()["map_size"]
    return StoreFullError(
        f"the store at {store.path} is full (LMDB map of {size} bytes); nothing was written and the "
        f"store is still at its last committed height. Grow the map: call Store.grow(new_size), set "
        f"the node's store.map_size, or set {MAP_SIZE_ENV}=<bytes> and restart (for example "
        f"{MAP_SIZE_ENV}={size * 2})."
    )
