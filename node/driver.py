"""Drives a sans-IO consensus replica from the node's event loop.

The replica is pure (``consensus.types``); this is the only place where its actions
touch the world, and it carries them out **in order**:

* ``Persist``: written to the store's consensus records in one durable LMDB write
  transaction *before* any later action of the same list runs, so no message that
  depends on a record (a vote, a term, a view change) leaves the process before the
  record is on disk. This is the rule that stops a restarted validator from voting
  twice.
* ``Send`` / ``Broadcast``: handed to the peer mesh (non-blocking, bounded queues).
* ``Commit``: the block pipeline commits the batch with its certificate; then the
  replica learns the resulting state root (``Executed``), which BFT checkpoints sign.
* ``FetchState``: the node is too far behind to replay; state sync takes over.
* ``SetTimer``: the driver ticks at a fixed rate, so deadlines are met by the next tick.

Events produced while actions run (``Executed`` after a commit) are queued and
stepped after the current list, never re-entrantly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from consensus.types import (
    Broadcast,
    Commit,
    ConsensusConfig,
    Event,
    Executed,
    FetchState,
    Persist,
    Receive,
    Restart,
    Send,
    SetTimer,
    Tick,
)
from ledger import bls
from ledger.crypto import PrivateKey, verify_signature
from ledger.log import get_logger

__all__ = ["ConsensusDriver", "NodeSigner", "NodeVerifier"]


class NodeSigner:
    """Signs as this validator: Ed25519 votes bound to the shard, BLS checkpoint shares."""

    def __init__(self, chain_id: str, key: PrivateKey, bls_secret: bytes) -> None:
        self.chain_id = chain_id
        self._key = key
        self._bls = bls_secret
        self.node_id = key.public_key.raw

    def sign(self, kind: str, payload: bytes) -> bytes:
        return self._key.sign(self.chain_id, kind, payload)

    def bls_sign(self, message: bytes) -> bytes:
        return bls.sign(self._bls, message)


class NodeVerifier:
    def __init__(self, chain_id: str) -> None:
        self.chain_id = chain_id

    def verify(self, node_id: bytes, kind: str, payload: bytes, signature: bytes) -> bool:
        return verify_signature(node_id, self.chain_id, kind, payload, signature)

    def bls_fast_aggregate_verify(self, bls_keys: list[bytes], message: bytes, signature: bytes) -> bool:
        return bls.fast_aggregate_verify(bls_keys, message, signature)

    def bls_aggregate(self, signatures: list[bytes]) -> bytes:
        return bls.aggregate(signatures)


class ConsensusDriver:
    def __init__(
        self,
        replica,
        config: ConsensusConfig,
        *,
        store,
        send: Callable[[bytes, bytes], bool],
        broadcast: Callable[[bytes], int],
        commit: Callable[[Commit], tuple[int, bytes, bytes] | None],
        fetch_state: Callable[[FetchState], None],
        tick_ms: int,
        logger=None,
        on_persist_seconds: Callable[[float], None] | None = None,
    ) -> None:
        self.replica = replica
        self.config = config
        self.store = store
        self._send = send
        self._broadcast = broadcast
        self._commit = commit
        self._fetch_state = fetch_state
        self.tick_ms = tick_ms
        self.log = logger or get_logger(shard=config.chain_id)
        self._queue: deque[Event] = deque()
        self._stepping = False
        self._on_persist = on_persist_seconds
        self.steps = 0

    def now(self) -> int:
        return int(time.monotonic() * 1000) // self.tick_ms

    def start(self) -> None:
        """Restart the replica from the records it persisted (empty on a fresh node)."""
        self.step(Restart(self.store.records(), self.now()))

    def tick(self) -> None:
        self.step(Tick(self.now()))

    def receive(self, sender: bytes, payload: bytes) -> None:
        self.step(Receive(sender, payload))

    def step(self, event: Event) -> None:
        self._queue.append(event)
        if self._stepping:
            return
        self._stepping = True
        try:
            while self._queue:
                actions = self.replica.step(self._queue.popleft())
                self.steps += 1
                if actions:
                    self._run(actions)
        finally:
            self._stepping = False

    def _flush(self, records: list) -> None:
        started = time.perf_counter()
        self.store.put_records(records)
        if self._on_persist is not None:
            self._on_persist(time.perf_counter() - started)

    def _run(self, actions) -> None:
        # Consecutive Persist actions become one durable write: the rule is only that
        # they are on disk before the next action that is not a Persist runs.
        pending: list = []
        for action in actions:
            kind = type(action)
            if kind is Persist:
                pending.extend(action.records)
                continue
            if pending:
                self._flush(pending)
                pending = []
            if kind is Send:
                self._send(action.to, action.payload)
            elif kind is Broadcast:
                self._broadcast(action.payload)
            elif kind is Commit:
                executed = self._commit(action)
                if executed is not None:
                    self._queue.append(Executed(*executed))
            elif kind is FetchState:
                self._fetch_state(action)
            elif kind is SetTimer:
                pass  # the driver ticks every tick_ms
            else:
                raise TypeError(f"unknown consensus action {action!r}")
        if pending:
            self._flush(pending)
