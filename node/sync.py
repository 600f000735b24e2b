"""State sync, the fetching side: install a certified state snapshot instead of replaying blocks.

A node far behind its shard (a validator back after a long outage, a new observer)
would replay every certified block since its head. Past a threshold it instead fetches
the state at another node's committed head (:mod:`node.api_sync` serves it) and installs
it, then continues with ordinary block catch-up or consensus from there.

Nothing a source says is trusted:

1. The session's block must carry a commit certificate for that block's own header, at
   that height, valid under the validator set this node knows (2f + 1 Ed25519 votes for
   BFT; the leader's signature for Raft), for this shard, with transactions matching
   the header's root. The header's state root is then the certified root.
2. Pages must be in strict tree order and start where the previous one ended, so no
   key is repeated or skipped by a source's bookkeeping (a page cannot be verified on
   its own: no per-page proof is served).
3. :meth:`ledger.store.Store.install_snapshot` rebuilds the tree from every page and
   installs the state, in one write transaction, only if its root is the certified
   root. A source that forged, dropped or added anything makes the root differ: the
   store is left exactly as it was and the sources that served the pages are not asked
   again during this sync.

Sources rotate on any failure (unreachable, refused, expired session). When the next
source offers the same snapshot (same height and root, e.g. validators at the same
head), fetching resumes from the last position; otherwise it starts over at the new
source's head. Pages are held in memory until the install (about the state's size
twice: pages, then the tree being built).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass, field

from ledger import codec
from ledger.block import NULL_DIGEST, Block, BlockError
from ledger.certificate import CertificateError, CommitCertificate
from ledger.httpclient import ApiError, Client
from ledger.log import get_logger
from ledger.statekeys import tree_path
from ledger.store import MAX_KEY_SIZE, Store, StoreError
from ledger.validators import ValidatorSet

__all__ = ["DEFAULT_PAGE_BYTES", "StateSync", "SyncError", "SyncResult"]

DEFAULT_PAGE_BYTES = 1 << 20
# A sync gives up after this many failed attempts per source (unreachable, refused,
# behind): the caller then falls back to block replay or retries later.
ATTEMPTS_PER_SOURCE = 4
# Between two rounds over every source (all behind, all busy), wait this long.
ROUND_PAUSE_S = 0.5
SNAPSHOTS = "/v1/sync/snapshots"


class SyncError(RuntimeError):
    """No source provided a snapshot that verifies; the store is unchanged."""


class _Refused(Exception):
    """A source served something that does not verify (it is not asked again in this sync).

    ``at_open``: the session's block or certificate was refused, before any page of it
    was taken: only that source is to blame, and pages from others stay.
    """

    def __init__(self, message: str, *, at_open: bool = False) -> None:
        super().__init__(message)
        self.at_open = at_open


class _Behind(Exception):
    """A source's head is below the height this sync needs."""


@dataclass(frozen=True)
class SyncResult:
    """What one sync installed and what it cost."""

    height: int
    state_root: bytes
    keys: int
    pages: int
    payload_bytes: int  # encoded items received (what the state weighs on the wire, before base64)
    wire_bytes: int  # base64 and hex fields received: the bulk of the HTTP bodies
    seconds: float
    install_seconds: float
    sources: tuple[str, ...]  # the sources whose pages were installed
    restarts: int  # fetches started over at another snapshot
    refused: int  # sources refused for a bad certificate, bad page or wrong root


@dataclass
class _Offer:
    client: Client
    session: str
    height: int
    block: Block
    block_raw: bytes
    certificate_raw: bytes
    state_root: bytes


@dataclass
class _Progress:
    offer: _Offer | None = None
    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    cursor: bytes | None = b""  # tree position of the next page; None once complete
    last_path: bytes = b""
    contributors: set[str] = field(default_factory=set)
    live: bool = False  # the offer's session is open at its source

    def restart(self, offer: _Offer | None) -> None:
        self.offer = offer
        self.live = offer is not None
        self.items = []
        self.cursor = b""
        self.last_path = b""
        self.contributors = set()


class StateSync:
    """Fetch, verify and install a state snapshot from other nodes' public APIs.

    ``validators`` is the set this node trusts for the shard (genesis, or the changes it
    recorded); ``validators_at(height)``, when given, the set it knows in force at a
    height (``node.chain.Chain.validators_at``), which certifies a snapshot's block. A
    snapshot above a validator-set change this node has not learned does not verify and
    is refused: the node then replays blocks, which carry the changes. ``protocol``
    decides the certificate's quorum. Use once per sync, then :meth:`close`.
    """

    def __init__(
        self,
        urls: list[str],
        store: Store,
        chain_id: str,
        validators: ValidatorSet,
        *,
        protocol: str = "bft",
        page_bytes: int = DEFAULT_PAGE_BYTES,
        timeout_s: float = 30.0,
        log=None,
        validators_at=None,
    ) -> None:
        if not urls:
            raise SyncError("no API URLs to sync state from (set follow.urls)")
        self.validators_at = validators_at or (lambda height: validators)
        self.clients = [Client(url, timeout=timeout_s) for url in urls]
        self.store = store
        self.chain_id = chain_id
        self.validators = validators
        self.protocol = protocol
        self.page_bytes = page_bytes
        self.log = log or get_logger(component="sync", shard=chain_id)
        self._next = 0
        self._bad: set[str] = set()
        self._round_done = False
        self.refused = 0
        self.restarts = 0
        self.pages = 0
        self.payload_bytes = 0
        self.wire_bytes = 0

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    # ------------------------------------------------------------ probing

    async def remote_height(self) -> int | None:
        """The highest head any source reports (unverified: it only decides whether to sync)."""
        async def one(client: Client) -> int | None:
            try:
                height = (await client.status()).get("height")
            except ApiError:
                return None
            return height if type(height) is int else None

        heights = [h for h in await asyncio.gather(*(one(c) for c in self.clients)) if h is not None]
        return max(heights) if heights else None

    # ------------------------------------------------------------ the sync

    def _client(self) -> Client:
        n = len(self.clients)
        for _ in range(n):
            client = self.clients[self._next % n]
            if client.base_url not in self._bad:
                return client
            self._next += 1
        # Every source was refused once: a transient lie or our own bad luck; try all again.
        self._bad.clear()
        return self.clients[self._next % n]

    def _rotate(self) -> None:
        self._next += 1
        if self._next % len(self.clients) == 0:
            self._round_done = True

    async def sync(self, min_height: int = 0) -> SyncResult:
        """Install a certified snapshot at a height ``>= min_height`` and above the local head.

        Returns what was installed; raises :class:`SyncError` (store unchanged) when no
        source provides one after ``ATTEMPTS_PER_SOURCE`` attempts per source.
        """
        started = time.perf_counter()
        local = self.store.height
        floor = max(min_height, 0 if local is None else local + 1)
        progress = _Progress()
        failures = 0
        budget = ATTEMPTS_PER_SOURCE * len(self.clients)
        self._round_done = False
        last_error = "no attempt"
        while True:
            if failures >= budget:
                await self._abandon(progress)
                raise SyncError(f"no source provided a verifiable snapshot at height >= {floor} "
                                f"after {failures} attempts (last: {last_error})")
            if self._round_done:
                self._round_done = False
                await asyncio.sleep(ROUND_PAUSE_S)
            client = self._client()
            try:
                if progress.offer is None or progress.offer.client is not client or not progress.live:
                    await self._switch(progress, await self._open(client, floor))
                await self._fetch(progress)
                offer = progress.offer
                await self._abandon(progress)  # every page is here: end the source's snapshot now
                installed = time.perf_counter()
                try:
                    await asyncio.to_thread(
                        self.store.install_snapshot, offer.height, offer.block.hash, offer.block_raw,
                        offer.certificate_raw, progress.items, offer.state_root,
                    )
                except StoreError as exc:
                    raise _Refused(f"the pages do not install: {exc}") from None
                install_s = time.perf_counter() - installed
                result = SyncResult(
                    offer.height, offer.state_root, len(progress.items), self.pages, self.payload_bytes,
                    self.wire_bytes, time.perf_counter() - started, install_s, tuple(sorted(progress.contributors)),
                    self.restarts, self.refused,
                )
                self.log.info("state snapshot installed", height=result.height, keys=result.keys, pages=result.pages,
                              bytes=result.payload_bytes, seconds=round(result.seconds, 3),
                              sources=list(result.sources), restarts=result.restarts, refused=result.refused)
                return result
            except _Refused as exc:
                failures += 1
                self.refused += 1
                last_error = f"{client.base_url}: {exc}"
                if exc.at_open:
                    blamed = {client.base_url}
                else:
                    # Pages do not prove themselves: whoever served any of them may have lied.
                    blamed = progress.contributors | {client.base_url}
                    await self._abandon(progress)
                    progress.restart(None)
                self._bad |= blamed
                self.log.warning("state snapshot refused", url=client.base_url, blamed=sorted(blamed), reason=str(exc))
                self._rotate()
            except _Behind as exc:
                failures += 1
                last_error = f"{client.base_url}: {exc}"
                self._rotate()
            except ApiError as exc:
                failures += 1
                last_error = f"{client.base_url}: {exc}"
                self.log.warning("state sync source failed", url=client.base_url, error=str(exc),
                                 keys_so_far=len(progress.items))
                if progress.offer is not None and progress.offer.client is client and progress.live:
                    # Its session is gone or unusable; what was fetched stays, for a source
                    # (this one again, or another) that offers the same snapshot.
                    progress.live = False
                    await self._end_session(progress.offer)
                self._rotate()

    async def _switch(self, progress: _Progress, offer: _Offer) -> None:
        current = progress.offer
        if current is not None and (current.height, current.state_root) == (offer.height, offer.state_root):
            if progress.live and current.client is not offer.client:
                await self._end_session(current)
            progress.offer = offer  # the same snapshot again: carry on from the cursor
            progress.live = True
            return
        if current is not None or progress.items:
            self.restarts += 1
            if progress.live:
                await self._end_session(current)
        progress.restart(offer)

    async def _abandon(self, progress: _Progress) -> None:
        if progress.offer is not None and progress.live:
            progress.live = False
            await self._end_session(progress.offer)

    async def _end_session(self, offer: _Offer | None) -> None:
        if offer is not None:
            await self._close_session(offer.client, offer.session)

    @staticmethod
    async def _close_session(client: Client, session: str) -> None:
        try:
            await client.request("DELETE", f"{SNAPSHOTS}/{session}", timeout=2.0)
        except ApiError:
            pass  # expired, or the source is gone: its session ends on its own

    async def _open(self, client: Client, floor: int) -> _Offer:
        _, body = await client.request("POST", SNAPSHOTS)
        try:
            session = body["session"]
            height = body["height"]
            block_raw = bytes.fromhex(body["block_hex"])
            cert_raw = bytes.fromhex(body["certificate_hex"])
            if not isinstance(session, str) or type(height) is not int:
                raise TypeError("session and height")
        except (KeyError, TypeError, ValueError) as exc:
            raise _Refused(f"the session answer is malformed ({exc})", at_open=True) from None
        self.wire_bytes += len(body["block_hex"]) + len(body["certificate_hex"])
        if height < floor:
            await self._close_session(client, session)
            raise _Behind(f"its head {height} is below the needed {floor}")
        try:
            block = Block.decode(block_raw)
            cert = CommitCertificate.decode(cert_raw)
            header = block.header
            if header.chain_id != self.chain_id:
                raise CertificateError(f"the block is for shard {header.chain_id!r}, not {self.chain_id!r}")
            if header.height != height:
                raise CertificateError(f"the block is at height {header.height}, the session claims {height}")
            if cert.protocol != self.protocol:
                raise CertificateError(f"a {cert.protocol} certificate on a {self.protocol} shard")
            if cert.digest == NULL_DIGEST:
                raise CertificateError("a null-batch certificate does not certify a header")
            cert.verify(self.chain_id, self.validators_at(height), height=height, digest=block.hash)
            block.check_tx_root()
        except (BlockError, CertificateError) as exc:
            await self._close_session(client, session)
            raise _Refused(f"the snapshot's block is not certified: {exc}", at_open=True) from None
        return _Offer(client, session, height, block, block_raw, cert_raw, header.state_root)

    async def _fetch(self, progress: _Progress) -> None:
        offer = progress.offer
        assert offer is not None
        client = offer.client
        while progress.cursor is not None:
            params = {"from": progress.cursor.hex(), "max_bytes": str(self.page_bytes)}
            _, body = await client.request("GET", f"{SNAPSHOTS}/{offer.session}", params=params)
            items, following = self._check_page(body, progress)
            progress.items.extend(items)
            progress.contributors.add(client.base_url)
            progress.cursor = following
            self.pages += 1

    def _check_page(self, body: dict, progress: _Progress) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        offer = progress.offer
        try:
            if body["session"] != offer.session or body["height"] != offer.height:
                raise _Refused("the page belongs to another session or height")
            text = body["items_base64"]
            payload = base64.b64decode(text, validate=True)
            following = body["next"]
            following = None if following is None else bytes.fromhex(following)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise _Refused(f"the page answer is malformed ({exc})") from None
        self.wire_bytes += len(text)
        self.payload_bytes += len(payload)
        try:
            raw_items = codec.decode(payload, max_size=len(payload), max_depth=3)
        except codec.CodecError as exc:
            raise _Refused(f"the page does not decode: {exc}") from None
        if not isinstance(raw_items, list):
            raise _Refused("a page is a list of [key, value] items")
        cursor = progress.cursor or b""
        previous = progress.last_path
        floor = cursor.ljust(32, b"\x00") if cursor else b""
        items: list[tuple[bytes, bytes]] = []
        for item in raw_items:
            if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not bytes
                    or type(item[1]) is not bytes or not 0 < len(item[0]) <= MAX_KEY_SIZE):
                raise _Refused(f"a page item is [key of 1..{MAX_KEY_SIZE} bytes, value bytes]")
            path = tree_path(item[0])
            if path < floor or (previous and path <= previous):
                raise _Refused("page items are out of tree order (repeated, or before the requested position)")
            previous = path
            items.append((item[0], item[1]))
        if following is not None:
            if len(following) != 32 or (previous and following <= previous) or following < floor:
                raise _Refused("the page's next position does not follow its items")
            if not items:
                raise _Refused("an empty page that is not the last")
        progress.last_path = previous
        return items, following
