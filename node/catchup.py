"""Catching up from other nodes' public APIs: fetch certified blocks, verify, re-execute, apply.

Used by observers to follow the validators, and by a validator whose replica asks for
state it missed (``FetchState``: it was down while the others moved past its
consensus window). Both trust no single source: every block comes with its commit
certificate, checked against the validator set in force at its height (the chain's
schedule, learned from the changes in the blocks applied before it) before the block is executed,
and execution must reproduce the header's state and receipts roots. A source that
serves anything else is skipped for the next one.
"""

from __future__ import annotations

from ledger.block import NULL_DIGEST, BlockError, null_block
from ledger.certificate import CertificateError
from ledger.httpclient import ApiError, Client

__all__ = ["BlockSource", "CatchUpError"]


class CatchUpError(RuntimeError):
    """No source could provide a verifiable block."""


class BlockSource:
    """Rotating access to other nodes' APIs for certified blocks."""

    def __init__(self, urls: list[str], chain, log) -> None:
        if not urls:
            raise CatchUpError("no API URLs to catch up from (set follow.urls)")
        self.clients = [Client(url, timeout=10.0) for url in urls]
        self.chain = chain
        self.log = log
        self._next = 0
        self.remote_height = 0
        self.refused = 0

    @property
    def client(self) -> Client:
        return self.clients[self._next % len(self.clients)]

    def rotate(self) -> None:
        self._next += 1

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    async def probe(self) -> int:
        """Ask the sources for their latest height (rotating past unreachable ones); the best known.

        Unverified: it only tells how far behind this node is (to choose between state
        sync and block replay); every block applied is still verified.
        """
        for _ in range(len(self.clients)):
            client = self.client
            try:
                latest = await client.block("latest")
            except ApiError as exc:
                self.log.warning("node unreachable for catch-up", url=client.base_url, error=str(exc))
                self.rotate()
                continue
            self.remote_height = max(self.remote_height, latest.height)
            break
        return self.remote_height

    async def apply_next(self) -> bool:
        """Fetch, verify and apply the block after the local head; False if none is available yet.

        Raises :class:`node.chain.ChainError` when a certified block does not execute to
        its header here (the node must stop).
        """
        height = self.chain.height + 1
        client = self.client
        try:
            info = await client.block(height, raw=True)
        except ApiError as exc:
            if exc.code == "not_found":
                try:
                    latest = await client.block("latest")
                    self.remote_height = max(self.remote_height, latest.height)
                except ApiError:
                    self.rotate()
                return False
            self.log.warning("node unreachable for catch-up", url=client.base_url, error=str(exc))
            self.rotate()
            return False
        self.remote_height = max(self.remote_height, height)
        block, cert = info.block, info.certificate
        try:
            if block is None or cert is None:
                raise CertificateError("the node served no certificate")
            if cert.digest == NULL_DIGEST:
                if block != null_block(self.chain.head_header(), height, self.chain.validators_at(height).hash):
                    raise CertificateError("a null certificate for a block that is not the null block")
                cert.verify(self.chain.chain_id, self.chain.validators_at(height), height=height)
                batch = b""
            else:
                cert.verify(self.chain.chain_id, self.chain.validators_at(height), height=height, digest=block.hash)
                # The certificate covers the header only: transactions that are not the
                # ones under its root are the source's lie, not a reason to stop here.
                block.check_tx_root()
                batch = block.encode()
        except (CertificateError, BlockError) as exc:
            self.refused += 1
            self.log.warning("block refused", height=height, url=client.base_url, reason=str(exc))
            self.rotate()
            return False
        self.chain.commit(height, batch, cert)
        return True
