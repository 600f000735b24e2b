"""State sync, the serving side: a consistent snapshot of the committed state, in pages.

A node that is far behind (a validator back after a long outage, a new observer)
installs the state at one certified height instead of replaying every block since
genesis (:mod:`node.sync` is the fetching side). This module serves that state::

    POST   /v1/sync/snapshots                    open a sync session at the committed head
    -> 201 {"session", "height", "state_root", "block_hex", "certificate_hex",
            "checkpoint_hex", "idle_ms", "expires_ms", "max_page_bytes"}
    GET    /v1/sync/snapshots/{session}?from=<tree position hex>&max_bytes=N
    -> 200 {"session", "height", "from", "next", "count", "bytes", "items_base64"}
    DELETE /v1/sync/snapshots/{session}
    -> 200 {"session", "closed": true}

**One session, one snapshot.** Opening a session pins one LMDB read snapshot (a
:class:`ledger.store.StateReader`) at the committed head, whose block carries a commit
certificate for its own header: every page of the session comes from that snapshot,
however many blocks commit meanwhile, so the pages together are exactly the state
under the certified header's state root. ``items_base64`` is the base64 of the
canonical encoding of ``[[key, value], ...]`` in tree order (the order of
``tree_path(key)``); ``next`` is the tree position to ask for next, ``null`` after the
last page. The client checks nothing per page; it rebuilds the tree from all pages and
the store installs the state only if the root is the certified one.

**Sessions are short and bounded, because a pinned snapshot costs disk.** While a read
transaction is open, LMDB cannot reuse the pages that commits free after it began: the
file grows by roughly what the chain writes during the session. So a session lives at
most ``idle_s`` seconds after its last page and ``max_age_s`` in all (a client that
needs longer opens another one, at a newer head), at most ``max_sessions`` are open at
once (``busy`` beyond), and closing one (``DELETE``, or expiry) ends its transaction at
once. Pages are at most ``max_page_bytes`` of encoded items (one item larger than the
page limit is sent alone: a key with a long value must still transfer).

Errors follow the API (``{"error": {"code", "message"}}``): ``not_found`` for an
unknown, closed or expired session (the message says which), ``busy`` when the session
limit is reached, ``bad_request``/``malformed`` for a bad ``from`` or ``max_bytes``,
``not_ready`` before any block, ``not_certified`` when the head's certificate does not
cover its own header (genesis, or a BFT null batch: retry after the next block).

Routes are added to an aiohttp application by :func:`register`; the page is built in a
worker thread (the read snapshot is used by one thread at a time, under the session's
lock) so the node's event loop keeps running consensus while a page is read.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ledger import codec
from ledger.block import NULL_DIGEST, BlockError, BlockHeader
from ledger.certificate import CertificateError, CommitCertificate
from ledger.log import get_logger
from ledger.statekeys import tree_path
from ledger.store import Store, StoreError
from node.api_json import ApiError, api_error, bad_request, json_response, malformed, parse_int

__all__ = ["SnapshotServer", "SyncLimits", "register", "PAGE_ITEM_OVERHEAD"]

# Encoding overhead of one [key, value] item in a page, beyond the key and value bytes:
# array header (1) + two bin headers (up to 5 each). Used to keep a page under its limit.
PAGE_ITEM_OVERHEAD = 11
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_POSITION = re.compile(r"(?:[0-9a-fA-F]{2}){0,32}")


@dataclass(frozen=True)
class SyncLimits:
    """The bounds of state sync serving (see the module docstring for why each exists)."""

    max_sessions: int = 4  # open read snapshots at once; each one holds LMDB pages
    idle_s: float = 15.0  # a session ends this long after its last page
    max_age_s: float = 120.0  # and this long after it opened, whatever the client does
    default_page_bytes: int = 1 << 20
    min_page_bytes: int = 4 << 10
    # 4 MiB of items is ~5.6 MiB of base64 in the JSON answer, well under the SDK's
    # 40 MiB answer limit, and ~0.1 s of work for the worker thread.
    max_page_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.idle_s <= 0 or self.max_age_s <= 0:
            raise ValueError("sync limits: max_sessions >= 1 and positive idle_s, max_age_s")
        if not 0 < self.min_page_bytes <= self.default_page_bytes <= self.max_page_bytes:
            raise ValueError("sync limits: 0 < min_page_bytes <= default_page_bytes <= max_page_bytes")


class _Session:
    __slots__ = (
        "id", "reader", "height", "state_root", "block", "certificate", "checkpoint",
        "opened", "expires", "idle_until", "lock", "timer", "pages", "bytes", "closed",
    )

    def __init__(self, session_id: str, reader, height: int, block: bytes, certificate: bytes,
                 checkpoint: bytes | None, now: float, limits: SyncLimits) -> None:
        self.id = session_id
        self.reader = reader
        self.height = height
        self.state_root = reader.state_root
        self.block = block
        self.certificate = certificate
        self.checkpoint = checkpoint
        self.opened = now
        self.expires = now + limits.max_age_s
        self.idle_until = min(self.expires, now + limits.idle_s)
        self.lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.pages = 0
        self.bytes = 0
        self.closed = False


class SnapshotServer:
    """The sync sessions of one node's store. All methods run on the node's event loop."""

    def __init__(self, store: Store, chain_id: str, *, limits: SyncLimits | None = None,
                 logger: Any = None, clock=time.monotonic) -> None:
        self.store = store
        self.chain_id = chain_id
        self.limits = limits or SyncLimits()
        self.log = logger if logger is not None else get_logger(component="sync", shard=chain_id)
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        # Why a session id is unknown, for a useful message: "expired", "closed".
        self._ended: OrderedDict[str, str] = OrderedDict()
        self.served_pages = 0
        self.served_bytes = 0

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------ sessions

    def open(self) -> dict:
        """Open a session at the committed head; its description (the answer of ``POST``)."""
        limits = self.limits
        if len(self._sessions) >= limits.max_sessions:
            raise api_error(
                "busy", f"{len(self._sessions)} sync sessions are open; the limit is {limits.max_sessions}. "
                f"Retry within {limits.idle_s:g} s, or sync from another node"
            )
        reader = self.store.reader()
        try:
            height = reader.height
            if height is None:
                raise api_error("not_ready", "no block is committed yet, so there is no state to sync")
            block = reader.block(height)
            cert_raw = reader.certificate(height)
            if block is None:
                # A store started from a snapshot holds its base block; any other gap is a bug.
                raise StoreError(f"the store is at height {height} but holds no block there")
            header = BlockHeader.from_fields(codec.decode(block, max_size=len(block), max_depth=4)[0])
            if cert_raw is None:
                raise api_error(
                    "not_certified", f"the block at height {height} has no commit certificate "
                    "(a node at genesis has nothing to sync from); retry after the next block")
            cert = CommitCertificate.decode(cert_raw)
            if cert.digest == NULL_DIGEST or cert.digest != header.hash or cert.height != height:
                raise api_error(
                    "not_certified", f"the certificate at height {height} does not commit its header "
                    "(a null batch); retry after the next block")
            checkpoint = reader.checkpoint(height)
        except (BlockError, CertificateError, codec.CodecError) as exc:
            reader.close()
            raise StoreError(f"the block or certificate at the head does not decode: {exc}") from None
        except BaseException:
            reader.close()
            raise
        now = self._clock()
        session = _Session(os.urandom(16).hex(), reader, height, block, cert_raw, checkpoint, now, limits)
        self._sessions[session.id] = session
        self._arm(session)
        self.log.info("sync session opened", session=session.id[:8], height=height, open=len(self._sessions))
        return {
            "session": session.id,
            "height": height,
            "state_root": session.state_root.hex(),
            "block_hex": block.hex(),
            "certificate_hex": cert_raw.hex(),
            "checkpoint_hex": None if checkpoint is None else checkpoint.hex(),
            "idle_ms": int(limits.idle_s * 1000),
            "expires_ms": int(limits.max_age_s * 1000),
            "max_page_bytes": limits.max_page_bytes,
        }

    def _arm(self, session: _Session) -> None:
        if session.timer is not None:
            session.timer.cancel()
        delay = max(0.0, session.idle_until - self._clock())
        session.timer = asyncio.get_running_loop().call_later(delay, self._on_timer, session.id)

    def _on_timer(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        if self._clock() + 1e-3 < session.idle_until:
            self._arm(session)  # a page arrived since the timer was set
            return
        self._end(session, "expired")

    def _end(self, session: _Session, why: str) -> None:
        self._sessions.pop(session.id, None)
        self._ended[session.id] = why
        while len(self._ended) > 1024:
            self._ended.popitem(last=False)
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        session.closed = True
        # A page being read in a worker thread holds the lock and closes the reader when
        # it finishes; otherwise the snapshot ends now.
        if not session.lock.locked():
            session.reader.close()
        self.log.info("sync session ended", session=session.id[:8], why=why, pages=session.pages,
                      bytes=session.bytes, seconds=round(self._clock() - session.opened, 3))

    def _session(self, session_id: str) -> _Session:
        if not _SESSION_ID.fullmatch(session_id):
            raise malformed(f"{session_id[:80]!r} is not a sync session id (32 hex digits)")
        session = self._sessions.get(session_id)
        if session is None:
            why = self._ended.get(session_id)
            if why == "expired":
                raise api_error(
                    "not_found", f"sync session {session_id} expired (sessions end {self.limits.idle_s:g} s after "
                    f"their last page and {self.limits.max_age_s:g} s after opening); open a new one")
            if why is not None:
                raise api_error("not_found", f"sync session {session_id} was {why}; open a new one")
            raise api_error("not_found", f"no sync session {session_id} on this node; open one with POST /v1/sync/snapshots")
        if self._clock() >= session.expires or self._clock() >= session.idle_until:
            self._end(session, "expired")
            return self._session(session_id)
        return session

    def close(self, session_id: str) -> dict:
        session = self._session(session_id)
        self._end(session, "closed")
        return {"session": session_id, "closed": True}

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self._end(session, "closed")

    # ------------------------------------------------------------ pages

    async def page(self, session_id: str, start_hex: str | None, max_bytes: int | None) -> dict:
        """One page of the session's snapshot from tree position ``start_hex`` (the answer of ``GET``)."""
        limits = self.limits
        if max_bytes is None:
            max_bytes = limits.default_page_bytes
        if not limits.min_page_bytes <= max_bytes <= limits.max_page_bytes:
            raise bad_request(
                f"max_bytes={max_bytes} is outside the allowed {limits.min_page_bytes}..{limits.max_page_bytes}")
        start_hex = start_hex or ""
        if not _POSITION.fullmatch(start_hex):
            raise malformed(f"from={start_hex[:80]!r} is not a tree position (up to 64 hex digits)")
        start = bytes.fromhex(start_hex)
        session = self._session(session_id)
        async with session.lock:
            if session.closed:
                raise api_error("not_found", f"sync session {session_id} ended while this page waited; open a new one")
            try:
                items, encoded_size, following = await asyncio.to_thread(_read_page, session.reader, start, max_bytes)
            finally:
                if session.closed:
                    session.reader.close()
        now = self._clock()
        session.idle_until = min(session.expires, now + limits.idle_s)
        payload = codec.encode(items)
        session.pages += 1
        session.bytes += len(payload)
        self.served_pages += 1
        self.served_bytes += len(payload)
        return {
            "session": session_id,
            "height": session.height,
            "from": start.hex(),
            "next": None if following is None else following.hex(),
            "count": len(items),
            "bytes": len(payload),
            "items_base64": base64.b64encode(payload).decode("ascii"),
        }


def _read_page(reader, start: bytes, max_bytes: int) -> tuple[list[list[bytes]], int, bytes | None]:
    """Items from ``start`` up to ``max_bytes`` encoded; and the tree position of the first item not taken."""
    items: list[list[bytes]] = []
    size = 0
    for key, value in reader.iter_state(start):
        item_size = len(key) + len(value) + PAGE_ITEM_OVERHEAD
        if items and size + item_size > max_bytes:
            return items, size, tree_path(key)
        items.append([key, value])
        size += item_size
    return items, size, None


def _answering(handler):
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return json_response(exc.body(), exc.status)

    answer.__name__ = handler.__name__
    return answer


def register(app: web.Application, node: Any, *, limits: SyncLimits | None = None) -> SnapshotServer:
    """Add the sync routes to ``app`` (before it starts); ``node`` gives ``store``, ``chain_id`` and ``log``.

    Returns the :class:`SnapshotServer`, which the application closes on shutdown (every
    open session's snapshot ends before the store can be closed).
    """
    server = SnapshotServer(node.store, node.chain_id, limits=limits, logger=getattr(node, "log", None))

    # Each handler answers its own errors, so the routes behave the same inside the
    # node's API server (whose guard also does this) and in any other application.
    @_answering
    async def open_snapshot(request: web.Request) -> web.Response:
        return json_response(server.open(), 201)

    @_answering
    async def snapshot_page(request: web.Request) -> web.Response:
        text = request.query.get("max_bytes")
        max_bytes = None if text is None else parse_int(text, "max_bytes", 0, 1 << 40)
        return json_response(await server.page(request.match_info["session"], request.query.get("from"), max_bytes))

    @_answering
    async def close_snapshot(request: web.Request) -> web.Response:
        return json_response(server.close(request.match_info["session"]))

    async def shutdown(app: web.Application) -> None:
        server.close_all()

    app.router.add_route("POST", "/v1/sync/snapshots", open_snapshot, name="open_snapshot")
    app.router.add_route("GET", "/v1/sync/snapshots/{session}", snapshot_page, name="snapshot_page")
    app.router.add_route("DELETE", "/v1/sync/snapshots/{session}", close_snapshot, name="close_snapshot")
    app.on_shutdown.append(shutdown)
    return server
