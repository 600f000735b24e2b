"""A simulated shard's authenticated state: the bridge module's storage under a real state tree.

The simulator proves packets exactly as a node does: every value the flow module
stores lives under ``state_key("bridge", name, parts)`` (and the shard's validator
epoch records under ``state_key("validators", "epoch", [e])``) in a sparse Merkle tree
built with ``ledger.state_tree.TreeBatch``, the store's own tree code. Like a node's
store it keeps only the current version, so proofs are made at the head.

Transactions are atomic: writes go to an overlay, merged on success and dropped on a
refusal, as the node's executor reverts a failed transaction.
"""

from __future__ import annotations

from typing import Any

from ledger import codec
from ledger.state import EMPTY, StateProof, value_hash
from ledger.state_tree import TreeBatch, copy_chunk, op, prove_path
from ledger.statekeys import state_key, tree_path

__all__ = ["ProvableTree", "SimStorage"]

_MISSING = object()


class ProvableTree:
    """The current state tree over (key -> value bytes), with proofs at the current root."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, Any] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.root = EMPTY

    def _load(self, key: bytes):
        chunk = self.chunks.get(key)
        return None if chunk is None else copy_chunk(chunk)

    def apply(self, writes: dict[bytes, bytes | None]) -> bytes:
        if not writes:
            return self.root
        batch = TreeBatch(self._load)
        self.root = batch.apply(sorted((op(k, v) for k, v in writes.items()), key=lambda o: o[0]))
        for key, chunk in batch.writes.items():
            if chunk is None:
                self.chunks.pop(key, None)
            else:
                self.chunks[key] = chunk
        for path, value in batch.blobs.items():
            if value is None:
                self.blobs.pop(path, None)
            else:
                self.blobs[path] = value
        return self.root

    def prove(self, key: bytes) -> bytes:
        leaf, _, proof = prove_path(self.chunks.get, tree_path(key))
        if leaf is not None and leaf[0] != key:
            path = tree_path(leaf[0])
            value = self.blobs[path] if leaf[2] else leaf[1]
            proof = StateProof(proof.depth, proof.bitmap, proof.siblings, (path, value_hash(value)))
        return proof.encode()


class SimStorage:
    """:class:`shards.records.Storage` over a dict, with a transaction overlay and the tree.

    Values are kept decoded; the tree receives ``codec.encode(value)`` of every key a
    block changed, exactly the bytes a node's contract storage would hold.
    """

    def __init__(self) -> None:
        self.values: dict[tuple, Any] = {}  # (contract, name, parts tuple) -> value
        self._overlay: dict[tuple, Any] | None = None
        self._dirty: set[tuple] = set()
        self.tree = ProvableTree()

    @staticmethod
    def _key(name: str, parts: list, contract: str = "bridge") -> tuple:
        return (contract, name, tuple(parts))

    # Storage protocol -------------------------------------------------------------

    def get(self, name: str, parts: list) -> Any | None:
        return self.read(self._key(name, parts))

    def put(self, name: str, parts: list, value: Any) -> None:
        self.write(self._key(name, parts), value)

    def delete(self, name: str, parts: list) -> None:
        self.write(self._key(name, parts), None)

    # raw access --------------------------------------------------------------------

    def read(self, key: tuple) -> Any | None:
        if self._overlay is not None:
            value = self._overlay.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return self.values.get(key)

    def write(self, key: tuple, value: Any) -> None:
        if self._overlay is None:
            raise RuntimeError("storage written outside a transaction")
        self._overlay[key] = value

    def begin(self) -> None:
        self._overlay = {}

    def commit(self) -> None:
        assert self._overlay is not None
        for key, value in self._overlay.items():
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
            self._dirty.add(key)
        self._overlay = None

    def rollback(self) -> None:
        self._overlay = None

    def seal(self) -> bytes:
        """Apply the keys changed since the last seal to the tree; return the state root."""
        writes = {}
        for contract, name, parts in self._dirty:
            value = self.values.get((contract, name, parts))
            writes[state_key(contract, name, list(parts))] = None if value is None else codec.encode(value)
        self._dirty.clear()
        return self.tree.apply(writes)

    def prove(self, contract: str, name: str, parts: list) -> tuple[Any | None, bytes, bytes | None]:
        """(value, proof, encoded value) of a key at the last sealed root."""
        value = self.values.get((contract, name, tuple(parts)))
        key = state_key(contract, name, list(parts))
        return value, self.tree.prove(key), None if value is None else codec.encode(value)

    def items(self, name: str, contract: str = "bridge"):
        """Every (parts, value) stored under ``name`` (committed state)."""
        for (c, n, parts), value in self.values.items():
            if c == contract and n == name:
                yield parts, value
