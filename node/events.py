"""Committed events and transaction waiters, for the API's event streams and ``wait=commit``.

Past events are read from the store (blocks and their receipts); live ones arrive as
blocks commit. A subscriber that falls too far behind is dropped rather than let its
queue grow without bound: the client resumes with ``from_height``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ledger import codec
from ledger.block import Block
from ledger.store import Store
from ledger.tx import Event, Receipt

__all__ = ["EventHub", "Waiters"]

# Events a live subscriber may have queued before it is cut off.
MAX_QUEUED_EVENTS = 10_000


class Waiters:
    """Futures for clients waiting until their transaction commits (or is dropped)."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, list[asyncio.Future]] = {}

    def wait(self, tx_id: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tx_id, []).append(future)
        return future

    def resolve(self, tx_id: bytes, committed: bool) -> None:
        for future in self._waiting.pop(tx_id, ()):
            if not future.done():
                future.set_result(committed)

    def forget(self, tx_id: bytes, future: asyncio.Future) -> None:
        futures = self._waiting.get(tx_id)
        if futures is not None:
            if future in futures:
                futures.remove(future)
            if not futures:
                del self._waiting[tx_id]

    def __len__(self) -> int:
        return len(self._waiting)


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscribers: set[asyncio.Queue] = set()

    def publish(self, block: Block, receipts: list[Receipt]) -> None:
        if not self._subscribers:
            return
        items = [
            (block.height, index, tx.tx_id, event)
            for index, (tx, receipt) in enumerate(zip(block.txs, receipts, strict=True))
            for event in receipt.events
        ]
        for queue in list(self._subscribers):
            if queue.qsize() + len(items) > MAX_QUEUED_EVENTS:
                self._subscribers.discard(queue)
                queue.put_nowait(None)  # tells the subscriber it was cut off
                continue
            for item in items:
                queue.put_nowait(item)
            queue.put_nowait(("height", block.height))

    def past(self, from_height: int, to_height: int):
        """(height, index, tx id, event) of committed blocks ``from_height..to_height``."""
        for height in range(max(from_height, 1), to_height + 1):
            raw = self.store.block(height)
            if raw is None:
                continue
            block = Block.decode(raw)
            for index, tx_id in enumerate(block.tx_ids):
                location = self.store.tx_location(tx_id)
                if location is None:
                    continue
                receipt = Receipt.decode(location[2])
                for event in receipt.events:
                    yield height, index, tx_id, event

    async def stream(
        self, contract: str | None, name: str | None, from_height: int | None
    ) -> AsyncIterator[tuple[int, int, bytes, Event]]:
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            head = self.store.height or 0
            if from_height is not None:
                for item in self.past(from_height, head):
                    if _matches(item[3], contract, name):
                        yield item
            seen = head
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item[0] == "height":
                    seen = item[1]
                    continue
                if item[0] <= seen:
                    continue  # already replayed from the store
                if _matches(item[3], contract, name):
                    yield item
        finally:
            self._subscribers.discard(queue)


def _matches(event: Event, contract: str | None, name: str | None) -> bool:
    return (contract is None or event.contract == contract) and (name is None or event.name == name)


def decode_int(raw: bytes | None) -> int:
    return 0 if raw is None else int(codec.decode(raw))
