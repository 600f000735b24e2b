"""The LMDB store of one shard: blocks, transaction index, state and state tree, records.

One LMDB environment per shard a node serves, with named databases:

==============  ==============================================================
``meta``        chain id, genesis hash, storage format, height, state root,
                base height (of the last installed state snapshot, if any),
                and the application's own metadata (``app/<name>``)
``blocks``      height -> encoded block
``hashes``      height -> block hash
``certs``       height -> encoded commit certificate
``checkpoints`` height -> encoded checkpoint certificate
``txindex``     transaction id -> encode([height, position, receipt])
``tree``, ``tree_small``, ``values``
                the state inside its tree (:mod:`ledger.state_db`)
``records``     consensus records (votes, views, terms) the replica persisted
==============  ==============================================================

The state lives in the tree's chunks (keys and values inside the bottom chunks, see
:mod:`ledger.state_tree` and :mod:`ledger.state_db` for the layout and the measurements
behind it): updating a key rewrites one record. :meth:`Store.get` walks the cached top
chunks and reads one bottom chunk; :meth:`Store.iter_state` yields the state in tree
order (the order of ``tree_path(key)``).

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

**Threading contract.** Reads (``get``, ``reader``, ``prove``, ``prepare_state``,
``iter_state``, ``head`` and the other getters) may run in any thread, concurrently
with one write (``apply_block``, ``put_records``, ...) running in another; writes are
serialised by a lock. The intended use is :class:`Committer`: a committer thread
applies block N while the node's thread executes and prepares block N + 1 on top of N's
prepared state. A reader sees either the state before a commit or after it, never a
mix: the cache of decoded top chunks is replaced as a whole, and a prepared state is
marked applied (and its chunks released) only after its commit is visible to new read
transactions. Every block is still its own durable write transaction. For the many
reads of a block's execution, :meth:`Store.reader` keeps one snapshot (``get`` opens
one per call).

**A full map** raises :class:`StoreFullError` and leaves the store at its last
committed height. Grow the map with :meth:`Store.grow`, the ``map_size`` argument (node
setting ``store.map_size``) or the ``GRIDLEDGER_STORE_MAP_SIZE`` environment variable;
LMDB maps are sparse, so a generous size costs address space, not disk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import lmdb

from ledger import codec
from ledger.state import EMPTY
from ledger.state_db import DBS as _STATE_DBS
from ledger.state_db import MAX_KEY_SIZE, PreparedState, StateDB, StoreError
from ledger.state_tree import CHUNK_BITS, MAX_INLINE_VALUE

__all__ = [
    "Committer",
    "StateReader",
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
FORMAT = b"gridledger-store/3/chunk%d/inline%d" % (CHUNK_BITS, MAX_INLINE_VALUE)

_DBS = (
    b"meta",
    b"blocks",
    b"hashes",
    b"certs",
    b"checkpoints",
    b"txindex",
    b"records",
)


class StoreFullError(StoreError):
    """The LMDB map is full. The store is still at its last committed height."""


def _height_key(height: int) -> bytes:
    return height.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class ProvenValue:
    """A state read with its proof, all from one snapshot: ``verify_proof(state_root, key, value, proof)``."""

    key: bytes
    value: bytes | None
    proof: bytes
    height: int | None
    state_root: bytes


class Store:
    """One shard's LMDB environment. Open with :meth:`Store.open`; close with :meth:`close`."""

    def __init__(self, env: lmdb.Environment, path: str) -> None:
        self._env = env
        self.path = path
        self._db = {name.decode(): env.open_db(name) for name in _DBS}
        self._meta = self._db["meta"]
        self._state = StateDB(env, None)
        self._write_lock = threading.Lock()

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
                max_dbs=len(_DBS) + len(_STATE_DBS) + 1,
                sync=True,
                metasync=True,
                readahead=False,
                meminit=False,
                max_spare_txns=4,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        store = cls(env, path)
        try:
            store._check_identity(chain_id, genesis_hash)
        except BaseException:
            env.close()
            raise
        store._state.reset_cache(store.state_root)
        return store

    def _check_identity(self, chain_id: str, genesis_hash: bytes | None) -> None:
        meta = self._meta
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
        with self._write_lock:
            self._env.set_mapsize(new_size)

    def _write(self):
        return _WriteTxn(self)

    # ------------------------------------------------------------------ reads

    def _meta_get(self, txn, name: bytes) -> bytes | None:
        return txn.get(name, db=self._meta)

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

    @property
    def base_height(self) -> int | None:
        """The height of the last state snapshot installed here (None: the store replayed every block).

        A store started from a snapshot holds no blocks between genesis and this height
        (nor their transaction index): readers must say so rather than "not found".
        """
        with self._env.begin() as txn:
            return self._height_of(self._meta_get(txn, b"base_height"))

    def holds_block(self, height: int) -> bool:
        """True if the block at ``height`` is in this store (False below a snapshot's base, or above the head)."""
        return self.block(height) is not None

    def tx_location(self, tx_id: bytes) -> tuple[int, int, bytes] | None:
        """(height, position in block, encoded receipt) of a committed transaction."""
        with self._env.begin(db=self._db["txindex"]) as txn:
            raw = txn.get(tx_id)
        if raw is None:
            return None
        height, position, receipt = codec.decode(raw)
        return height, position, receipt

    def _root(self, txn) -> bytes:
        return self._meta_get(txn, b"state_root") or EMPTY

    def get(self, key: bytes, at: PreparedState | None = None) -> bytes | None:
        """The value of ``key`` in the committed state, or on top of a prepared state."""
        if at is not None:
            for node in at.pending():
                writes = node.writes  # None once released: then the snapshot below has it
                if writes is not None and key in writes:
                    return writes[key]
        with self._env.begin(buffers=True) as txn:
            return self._state.get(txn, bytes(self._root(txn)), key)

    def reader(self, at: PreparedState | None = None) -> StateReader:
        """A view of the committed state, or of ``at``, for many reads (``with`` it, or close it).

        One LMDB snapshot for all its reads, taken with the prepared states it reads
        through (the cheapest way to run a block's transactions: ``get`` opens a snapshot
        per call). It stays consistent while a committer thread applies ``at``'s
        parents. A snapshot keeps LMDB from reusing the pages it sees: close it after
        the block. Raises :class:`StoreError` if ``at`` is no longer on the committed chain.
        """
        return StateReader(self, at)

    def prove(self, key: bytes) -> ProvenValue:
        """The committed value of ``key`` (or its absence) with its proof, height and root."""
        with self._env.begin() as txn:
            height = self._height_of(self._meta_get(txn, b"height"))
            root = self._root(txn)
            value, proof = self._state.prove(txn, root, key)
        return ProvenValue(key, value, proof.encode(), height, root)

    def iter_state(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs of the committed state, from one snapshot, in tree order.

        Tree order is the order of ``tree_path(key)``. ``start`` is a tree position (up
        to 32 bytes): iteration begins at the first key whose path is ``>= start``, so a
        transfer interrupted after key K resumes from
        ``(int.from_bytes(tree_path(K), "big") + 1).to_bytes(32, "big")``.
        """
        with self._env.begin() as txn:
            yield from self._state.iterate(txn, self._root(txn), start)

    def records(self) -> dict[bytes, bytes]:
        """The consensus records (what the replica persisted), to restart it."""
        with self._env.begin(db=self._db["records"]) as txn:
            return dict(txn.cursor().iternext())

    def tree_root(self) -> bytes:
        """The root as stored in the tree's root chunk (equals :attr:`state_root` in a sound store)."""
        with self._env.begin() as txn:
            return self._state.tree_root(txn)

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
        too long, a value that is not bytes or None, or a parent from another store or
        no longer on the committed chain.
        """
        if parent is not None and parent._store is not self:
            raise StoreError("the parent prepared state belongs to another store")
        pending = list(parent.pending()) if parent is not None else []
        layers = [chunks for chunks in (node.chunks for node in pending) if chunks is not None]
        with self._env.begin(buffers=True) as txn:
            return self._state.prepare(self, txn, writes, parent, pending, layers)

    def apply_block(
        self,
        height: int,
        block_hash: bytes,
        block: bytes,
        certificate: bytes | None,
        prepared: PreparedState,
        tx_entries: Sequence[tuple[bytes, bytes]] = (),
        meta: Mapping[str, bytes] | None = None,
        *,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """Commit a block and its prepared state in one durable write transaction.

        ``tx_entries`` are (transaction id, encoded receipt) in block order. Raises
        :class:`StoreError` (nothing written) when the height does not follow the
        committed one, ``prepared`` was not prepared on the committed state, or a
        transaction id is already indexed; :class:`StoreFullError` when the map is full.
        May run in a committer thread while other threads read (see the module docstring
        and :class:`Committer`); ``on_written`` is called once every record is in the
        transaction, just before the commit.
        """
        if prepared._store is not self:
            raise StoreError("this prepared state belongs to another store")
        if prepared.applied:
            raise StoreError("this prepared state was already applied")
        if prepared.parent is not None and not prepared.parent.applied:
            raise StoreError("the parent of this prepared state is not applied yet; apply it first")
        if type(block_hash) is not bytes or len(block_hash) != 32:
            raise StoreError("a block hash is 32 bytes")
        if height < 0:
            raise StoreError("block heights start at 0")
        db = self._db
        with self._write() as txn:
            current = self._height_of(self._meta_get(txn, b"height"))
            if current is not None and height != current + 1:
                raise StoreError(
                    f"block height {height} does not follow the committed height {current}"
                )
            if prepared.parent_root != (self._meta_get(txn, b"state_root") or EMPTY):
                raise StoreError(
                    "the prepared state was computed on another state than the committed one"
                )
            self._state.write(txn, prepared)
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
            meta_db = self._meta
            for name, value in (meta or {}).items():
                txn.put(b"app/" + name.encode(), value, db=meta_db)
            txn.put(b"height", hk, db=meta_db)
            txn.put(b"state_root", prepared.root, db=meta_db)
            if on_written is not None:
                on_written()
        # Order matters to readers in other threads: the commit is visible, then the
        # cache moves to the new root, then the state is marked applied.
        self._state.committed(prepared)
        prepared.applied = True
        prepared.release()

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

        One write transaction: on a root mismatch (or any error) nothing changes. A
        snapshot never moves the store back: ``height`` must be above the committed
        height. The store then records ``height`` as its :attr:`base_height`: blocks
        between the previous head and it are not held here.
        """
        current = self.height
        if current is not None and height <= current:
            raise StoreError(
                f"snapshot height {height} is not above the committed height {current}; "
                "a snapshot never moves the store back"
            )
        writes: dict[bytes, bytes] = {}
        for key, value in items:
            if key in writes:
                raise StoreError(f"snapshot holds key {key.hex()} twice")
            if value is None:
                raise StoreError(f"snapshot value of key {key.hex()} is None; values are bytes")
            writes[key] = value
        root, batch = self._state.build(writes)
        if root != expected_root:
            raise StoreError(
                f"snapshot root {root.hex()} is not the expected {expected_root.hex()}"
            )
        db = self._db
        with self._write() as txn:
            self._state.install(txn, batch)
            hk = _height_key(height)
            txn.put(hk, block, db=db["blocks"])
            txn.put(hk, block_hash, db=db["hashes"])
            if certificate is not None:
                txn.put(hk, certificate, db=db["certs"])
            for name, value in (meta or {}).items():
                txn.put(b"app/" + name.encode(), value, db=self._meta)
            txn.put(b"height", hk, db=self._meta)
            txn.put(b"state_root", root, db=self._meta)
            txn.put(b"base_height", hk, db=self._meta)
        self._state.reset_cache(root)


class StateReader:
    """See :meth:`Store.reader`."""

    __slots__ = ("_store", "_state", "_txn", "_root", "_layers")

    def __init__(self, store: Store, at: PreparedState | None) -> None:
        if at is not None and at._store is not store:
            raise StoreError("this prepared state belongs to another store")
        pending = list(at.pending()) if at is not None else []
        self._layers = [w for w in (node.writes for node in pending) if w is not None]
        # The snapshot begins after the pending states are listed (as in prepare_state).
        self._txn = store._env.begin(buffers=True)
        self._store = store
        self._state = store._state
        self._root = bytes(store._root(self._txn))
        if pending:
            valid = {node.root for node in pending} | {pending[-1].parent_root}
            if self._root not in valid:
                self._txn.abort()
                raise StoreError("the prepared state is not on the committed chain any more")

    def get(self, key: bytes) -> bytes | None:
        for writes in self._layers:
            if key in writes:
                return writes[key]
        return self._state.get(self._txn, self._root, key)

    # The snapshot's own view of the chain: the committed height, root and block
    # records as of the moment the reader began (prepared layers are not included).

    @property
    def height(self) -> int | None:
        """The committed height this reader's snapshot sees (None before the first block)."""
        return Store._height_of(self._txn.get(b"height", db=self._store._meta))

    @property
    def state_root(self) -> bytes:
        """The committed state root this reader's snapshot sees."""
        return self._root

    def _by_height(self, db: str, height: int) -> bytes | None:
        raw = self._txn.get(_height_key(height), db=self._store._db[db])
        return None if raw is None else bytes(raw)

    def block(self, height: int) -> bytes | None:
        return self._by_height("blocks", height)

    def certificate(self, height: int) -> bytes | None:
        return self._by_height("certs", height)

    def checkpoint(self, height: int) -> bytes | None:
        return self._by_height("checkpoints", height)

    def iter_state(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The committed state of this snapshot in tree order, from tree position ``start`` (see :meth:`Store.iter_state`).

        Prepared layers are not included: this serves state sync, which transfers a
        committed, certified state. Keys and values are copied out of the map (they stay
        valid after the reader closes).
        """
        for key, value in self._state.iterate(self._txn, self._root, start):
            yield bytes(key), bytes(value)

    def close(self) -> None:
        self._txn.abort()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Committer:
    """Applies blocks in a thread of its own, overlapping each durable commit with the caller's work.

    ``apply_block`` takes the arguments of :meth:`Store.apply_block` and returns a future
    that completes when the block is durable (or fails with the store's error). It returns
    once the block's records are in its write transaction: the caller holds off while
    they are written, because py-lmdb releases the GIL around every put, so a busy
    caller would make each put wait for the GIL; LMDB's commit and fsync are one call,
    during which the caller runs freely. Measured in ``bench/state.py``.

    Blocks are applied in submission order, each in its own write transaction; a block
    whose parent failed fails too (its parent is not applied). Typical use, as the
    node's block pipeline::

        with Committer(store) as committer:
            done = committer.apply_block(n, ..., prepared_n)
            prepared_next = store.prepare_state(writes, parent=prepared_n)  # meanwhile
            done.result()  # block n is durable
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committer")

    def apply_block(self, *args, **kwargs) -> Future:
        written = threading.Event()
        future = self._executor.submit(
            self._store.apply_block, *args, **kwargs, on_written=written.set
        )
        future.add_done_callback(lambda _: written.set())  # failed before writing
        written.wait()
        return future

    def close(self) -> None:
        """Wait for the blocks submitted so far, then stop the thread."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Committer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WriteTxn:
    """A write transaction that commits on success, aborts on error, and turns LMDB errors into StoreErrors.

    Holds the store's write lock from begin to commit, in the calling thread (LMDB ties
    a write transaction to the thread that began it).
    """

    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn = None

    def __enter__(self) -> lmdb.Transaction:
        self._store._write_lock.acquire()
        try:
            try:
                self._txn = self._store._env.begin(write=True)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and retry.
                self._store._env.set_mapsize(0)
                self._txn = self._store._env.begin(write=True)
        except BaseException:
            self._store._write_lock.release()
            raise
        return self._txn

    def __exit__(self, exc_type, exc, tb) -> bool:
        txn = self._txn
        try:
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
        finally:
            self._store._write_lock.release()


def _full(store: Store) -> StoreFullError:
    size = store._env.info()["map_size"]
    return StoreFullError(
        f"the store at {store.path} is full (LMDB map of {size} bytes); nothing was written and the "
        f"store is still at its last committed height. Grow the map: call Store.grow(new_size), set "
        f"the node's store.map_size, or set {MAP_SIZE_ENV}=<bytes> and restart (for example "
        f"{MAP_SIZE_ENV}={size * 2})."
    )
