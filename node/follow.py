"""The observer's follower: fetch each block from the validators, verify, re-execute, apply.

A regulator's observer trusts no single validator. For every height it fetches the
canonical block and its commit certificate from one of the validators' public APIs
(rotating to the next on any failure), and applies it only when

1. the certificate is valid for that height and block hash under the shard's
   validator set (2f + 1 distinct Ed25519 votes for BFT; the leader's signature for
   Raft), or, for a BFT null batch, certifies the null digest and the block is the
   null block derived from its parent, and
2. re-executing the block here gives exactly the state root and receipts root of its
   header (the block pipeline checks this and stops the node on a mismatch).

A validator that serves a forged block or certificate is skipped and logged; the
observer moves on to another. Submitted transactions are forwarded to a validator.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence

from ledger.httpclient import ApiError
from ledger.tx import Transaction, TxError
from node.catchup import BlockSource
from node.chain import ChainError
from node.mempool import TxRejected

__all__ = ["Follower"]

PROGRESS_EVERY_S = 5.0


class Follower:
    def __init__(self, node) -> None:
        self.node = node
        self.chain = node.chain
        self.log = node.log
        self.source = BlockSource(node.config.follow.urls, node.chain, node.log)
        self.poll_s = node.config.follow.poll_ms / 1000
        self._forwarded: OrderedDict[bytes, None] = OrderedDict()

    @property
    def remote_height(self) -> int:
        return self.source.remote_height

    def caught_up(self) -> bool:
        return self.remote_height > 0 and self.chain.height >= self.remote_height - 1

    def status(self) -> dict:
        return {
            "following": [c.base_url for c in self.source.clients],
            "remote_height": self.remote_height,
            "catching_up": not self.caught_up(),
            "refused_blocks": self.source.refused,
        }

    def forwarded(self, tx_id: bytes) -> bool:
        return tx_id in self._forwarded and self.node.store.tx_location(tx_id) is None

    def _remember(self, tx_id: bytes) -> None:
        self._forwarded[tx_id] = None
        while len(self._forwarded) > 100_000:
            self._forwarded.popitem(last=False)

    async def forward(self, raw: bytes) -> bytes:
        try:
            tx = Transaction.decode(raw)
        except TxError as exc:
            raise TxRejected(exc.code, exc.message) from None
        last: ApiError | None = None
        for _ in range(len(self.source.clients)):
            try:
                await self.source.client.submit(raw)
                self._remember(tx.tx_id)
                return tx.tx_id
            except ApiError as exc:
                if exc.status and 400 <= exc.status < 500:
                    raise TxRejected(exc.code, exc.message) from None
                last = exc
                self.source.rotate()
        raise TxRejected("unavailable", f"no validator accepted the transaction: {last}")

    async def forward_many(self, raws: Sequence[bytes]) -> list[bytes | TxRejected]:
        results: list[bytes | TxRejected] = []
        for raw in raws:
            try:
                results.append(await self.forward(raw))
            except TxRejected as exc:
                results.append(exc)
        return results

    async def run(self) -> None:
        last_progress = 0.0
        try:
            while True:
                try:
                    applied = await self.source.apply_next()
                except ChainError as exc:
                    self.node._die(f"a certified block does not execute to its header here: {exc}")
                    return
                now = time.monotonic()
                if now - last_progress > PROGRESS_EVERY_S and not self.caught_up():
                    self.log.info("observer catching up", height=self.chain.height, remote=self.remote_height)
                    last_progress = now
                if not applied:
                    await asyncio.sleep(self.poll_s)
        finally:
            await self.source.close()
