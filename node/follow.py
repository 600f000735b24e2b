"""The observer's follower: fetch each block from the validators, verify, re-execute, apply.

A regulator's observer trusts no single validator. For every height it fetches the
canonical block and its commit certificate from one of the validators' public APIs
(rotating to the next on any failure), and applies it only when

1. the certificate is valid for that height and block hash under the shard's
   validator set (2f + 1 distinct Ed25519 votes for BFT; the leader's signature for
   Raft), or, for a BFT null batch, certifies the null digest and the block is the
   null block derived from its parent and the validator set in force at its height, and
2. re-executing the block here gives exactly the state root and receipts root of its
   header (the block pipeline checks this and stops the node on a mismatch).

A validator that serves a forged block or certificate is skipped and logged; the
observer moves on to another. Submitted transactions are forwarded to a validator.

An observer more than the node's ``sync_threshold`` blocks behind (a new observer with
an empty store, one back after a long outage) first installs a certified state
snapshot (:mod:`node.sync`), then follows block by block from there.
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
# While behind, how often to check whether the gap grew past the sync threshold.
SYNC_CHECK_EVERY_S = 10.0


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

    async def maybe_sync(self) -> bool:
        """Install a state snapshot if the sources are more than the threshold ahead; True if one was.

        A failed sync is logged and leaves block replay to do the work.
        """
        from node.sync import SyncError

        threshold = self.node.sync_threshold
        if not threshold:
            return False
        remote = await self.source.probe()
        if remote - self.chain.height <= threshold:
            return False
        self.log.info("far behind the validators: syncing a state snapshot", height=self.chain.height, remote=remote)
        try:
            await self.node.sync_state(self.chain.height + 1)
        except SyncError as exc:
            self.log.warning("state sync failed; replaying blocks instead", reason=str(exc))
            return False
        return True

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
        if last is not None and last.code == "busy":
            raise TxRejected("busy", f"every validator is busy: {last.message}")
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
        last_sync_check = time.monotonic()
        try:
            await self.maybe_sync()
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
                if not self.caught_up() and now - last_sync_check > SYNC_CHECK_EVERY_S:
                    last_sync_check = now
                    await self.maybe_sync()
                if not applied:
                    await asyncio.sleep(self.poll_s)
        finally:
            await self.source.close()
