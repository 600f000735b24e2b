"""The peer transport of one shard: a full mesh of authenticated websocket connections.

:class:`PeerMesh` connects a validator to the shard's other validators and carries
opaque payloads (consensus messages) between them. The node drives it like this::

    mesh = PeerMesh(key, "ch/zurich", peers={node_key: "wss://10.0.0.2:7400/peer/v1", ...},
                    tls=PeerTls.for_validator(key, my_cert, genesis_certs),
                    on_message=handle, listen=("0.0.0.0", 7400))
    await mesh.start()
    mesh.send(node_key, payload)      # never blocks; False if not queued
    mesh.broadcast(payload)           # never blocks; number of peers queued
    mesh.set_peers(new_peers)         # the validator set changed
    mesh.status()                     # for /v1/status and /metrics
    await mesh.stop()

``on_message(sender_node_key, payload)`` is awaited for each frame, in order per
peer; while it runs, that peer's connection reads nothing more (TCP pushes back on
that peer only), so it should hand the payload to the node's consensus loop and return.

**Listening.** With ``listen=(host, port)`` the mesh runs its own aiohttp site (port 0
picks a free port; see :attr:`PeerMesh.listen_port`) with the mutual-TLS server
context. Or the node mounts :meth:`PeerMesh.handle` at :data:`PEER_PATH` in its own
application with :meth:`PeerMesh.mount`; if that port also serves the public API, its
server context is built with ``require_client_certificate=False`` and the handler
itself insists on a pinned certificate.

**Who dials whom.** Each pair holds one connection, dialed by the lower node key
(bytewise) as soon as it can. The higher key dials only as a fallback, when the pair
has had no connection for ``dial_fallback_ms`` (the lower side may lack its URL or be
unable to reach it). When two authenticated connections to one peer exist (both
dialed at once, or a restarted peer reconnecting before the old connection timed out),
both sides keep the same one: the one dialed by the lower key, else the newer; the
other is closed with code 4004. Dialing retries with exponential back-off and equal
jitter (half fixed, half drawn from the injected ``rng``, so tests replay), reset
once a connection is established.

**What gets a peer disconnected.** A frame that is not a canonical DATA frame, a
text frame, or broken websocket framing: the peer is sending garbage, so its
connection closes (4002, or aiohttp's 1002/1007 for framing) with a logged reason,
and only that peer is affected. A frame above the size limit: aiohttp
refuses to buffer it and closes the connection (1009); the frame is dropped, logged
and counted. An honest node never sends one, because :meth:`PeerMesh.send` refuses
oversized payloads locally. Removal from the validator set closes with 4003.
Handshake refusals close with 4001 and the reason; the dialer logs the reason.

**Plain mode.** ``tls=None`` runs the same protocol over plain ``ws://`` for tests and
development; it must be passed explicitly and is logged as a warning at start. With
TLS the pinned certificates are the first gate (an unknown certificate never reaches
the websocket; OpenSSL refuses it before any gridledger code runs, so the refusing
node does not log it, while the dialing node logs "cannot reach peer"); without TLS
the handshake is the only gate.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from ledger.block import MAX_BLOCK_SIZE
from ledger.crypto import PUBLIC_KEY_LEN, PrivateKey
from ledger.log import get_logger
from node.peer import PeerState
from node.peer_protocol import (
    PEER_PATH,
    AcceptorHandshake,
    DialerHandshake,
    FrameError,
    HandshakeRefused,
    TransportError,
    data_frame_size,
    decode_data,
    encode_data,
)
from node.tls import PeerTls, TlsError, peer_certificate_key

__all__ = ["PEER_PATH", "MeshLimits", "OnMessage", "PeerMesh", "TransportError", "backoff_seconds"]

OnMessage = Callable[[bytes, bytes], Awaitable[None]]

# Websocket close codes 4000-4999 are the application's (RFC 6455 7.4.2).
CLOSE_REFUSED = 4001
CLOSE_GARBAGE = 4002
CLOSE_REMOVED = 4003
CLOSE_DUPLICATE = 4004
# A close frame's reason is at most 123 bytes (RFC 6455 5.5: control payload <= 125).
_MAX_CLOSE_REASON = 123


@dataclass(frozen=True)
class MeshLimits:
    """The transport's bounds. Times are integer milliseconds; ``None`` turns a feature off.

    ``max_payload_bytes`` defaults to the largest block plus room for the consensus
    message around it, so a block proposal always fits. The per-peer queue holds at
    most ``queue_frames`` frames and ``queue_bytes`` bytes (see :mod:`node.peer`).
    ``heartbeat_ms``: a websocket ping that often; no pong within half of it closes
    the connection (a stalled or vanished peer), so the node must never block its
    event loop that long (run slow verification in an executor).
    ``handshake_timeout_ms`` bounds the TCP+TLS connect and the handshake.
    ``max_pending_handshakes`` bounds connections that have not yet authenticated.
    """

    max_payload_bytes: int = MAX_BLOCK_SIZE + 256 * 1024
    queue_frames: int = 1024
    queue_bytes: int = 64 * 1024 * 1024
    handshake_timeout_ms: int = 5_000
    heartbeat_ms: int | None = 15_000
    close_timeout_ms: int = 2_000
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 10_000
    dial_fallback_ms: int | None = 5_000
    max_pending_handshakes: int = 64

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "queue_frames", "handshake_timeout_ms", "close_timeout_ms",
                     "backoff_initial_ms", "max_pending_handshakes"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise TransportError(f"limit {name} must be a positive integer, got {value!r}")
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise TransportError("backoff_max_ms must be at least backoff_initial_ms")
        if type(self.queue_bytes) is not int or self.queue_bytes < self.max_frame_bytes:
            raise TransportError("queue_bytes must hold at least one frame of max_payload_bytes")
        for name in ("heartbeat_ms", "dial_fallback_ms"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise TransportError(f"limit {name} must be a non-negative integer or None, got {value!r}")

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame a peer may send: exactly the DATA frame of the largest payload."""
        return data_frame_size(self.max_payload_bytes)


def backoff_seconds(failures: int, limits: MeshLimits, rng: random.Random) -> float:
    """Seconds to wait before the next dial after ``failures`` failed attempts in a row.

    ``backoff_initial_ms * 2**failures``, capped at ``backoff_max_ms``, with equal
    jitter: half the delay is fixed, half drawn from ``rng``. The jitter keeps the
    validators of a shard from redialing a restarted peer in lockstep; the fixed half
    keeps a refused dialer from hammering.
    """
    delay = min(limits.backoff_max_ms, limits.backoff_initial_ms << min(failures, 30)) / 1000
    return delay / 2 + rng.uniform(0, delay / 2)


class _Session:
    """One authenticated websocket connection to a peer."""

    __slots__ = ("ws", "peer_key", "dialer_key", "direction", "started", "writer", "closing", "reason", "abort")

    def __init__(self, ws: Any, peer_key: bytes, dialer_key: bytes, direction: str, abort: Callable[[], None]) -> None:
        self.ws = ws
        self.peer_key = peer_key
        self.dialer_key = dialer_key
        self.direction = direction  # "out": we dialed; "in": the peer dialed
        self.started = time.monotonic()
        self.writer: asyncio.Task | None = None
        self.closing = False
        self.reason = ""  # why we closed it, when we did
        self.abort = abort


def _short(key: bytes | None) -> str | None:
    return None if key is None else key.hex()[:16]


def _abort_socket(ws: Any) -> Callable[[], None]:
    """A function that tears a connection down without waiting for its send buffer.

    A transport's ``close()`` waits until buffered bytes are written, which never
    happens for a peer that stopped reading; shutting the socket down ends it now.
    """

    def abort() -> None:
        sock = ws.get_extra_info("socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return abort


class PeerMesh:
    """The authenticated connections of one validator to the other validators of its shard.

    ``peers`` maps each allowed peer's node key (from genesis) to the URL to dial it
    at, or ``None`` when we cannot dial it (it dials us). Our own key may appear and is
    ignored. ``tls`` is required: a :class:`node.tls.PeerTls`, or ``None`` for plain
    development mode. ``rng`` drives only back-off jitter (handshake challenges come
    from the OS). Raises :class:`TransportError` for a malformed key, URL or limit.
    """

    def __init__(
        self,
        key: PrivateKey,
        chain_id: str,
        peers: Mapping[bytes, str | None],
        *,
        tls: PeerTls | None,
        on_message: OnMessage,
        limits: MeshLimits | None = None,
        listen: tuple[str, int] | None = None,
        rng: random.Random | None = None,
        logger: Any = None,
    ) -> None:
        if not isinstance(chain_id, str) or not chain_id:
            raise TransportError("chain id (the shard id) must be a non-empty string")
        self._key = key
        self._me = key.public_key.raw
        self._chain_id = chain_id
        self._tls = tls
        self._on_message = on_message
        self._limits = limits or MeshLimits()
        self._listen = listen
        self._rng = rng or random.Random()
        self._log = logger or get_logger(shard=chain_id, node=_short(self._me))
        self._peers: dict[bytes, PeerState] = {}
        self._refused: dict[str, int] = {}
        self._unknown_destination = 0
        self._pending = 0
        self._tasks: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._running = False
        self._started = False
        self.listen_port: int | None = None
        for node_key, url in self._validated(peers).items():
            self._peers[node_key] = self._new_peer(node_key, url)

    # ------------------------------------------------------------ public surface

    def mount(self, app: web.Application, path: str = PEER_PATH) -> None:
        """Serve peer connections at ``path`` in the node's own aiohttp application.

        Call before the application starts. With TLS, that application's site must
        serve this node's certificate (dialers check it is the node key they meant to
        reach) with a context from :func:`node.tls.server_context` pinning the shard's
        validators; ``require_client_certificate=False`` if the port also serves the API.
        """
        app.router.add_get(path, self.handle)

    async def start(self) -> None:
        """Start listening (if ``listen`` was given) and dialing. A mesh starts once."""
        if self._started:
            raise TransportError("a PeerMesh is started once; make a new one to restart")
        self._started = self._running = True
        if self._tls is None:
            self._log.warning("peer transport without TLS: development mode only")
        self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self._listen is not None:
            app = web.Application()
            self.mount(app)
            self._runner = web.AppRunner(
                app, access_log=None, handle_signals=False,
                shutdown_timeout=self._limits.close_timeout_ms / 1000,
            )
            await self._runner.setup()
            host, port = self._listen
            site = web.TCPSite(self._runner, host, port, ssl_context=self._tls.server if self._tls else None)
            try:
                await site.start()
            except OSError as exc:
                await self.stop()
                raise TransportError(f"cannot listen for peers on {host}:{port}: {exc.strerror or exc}") from exc
            self.listen_port = self._runner.addresses[0][1]
        for peer in self._peers.values():
            self._start_dialing(peer)
        self._log.info("peer transport started", listen_port=self.listen_port, peers=len(self._peers),
                       tls=self._tls is not None)

    async def stop(self) -> None:
        """Close every connection, stop dialing and listening. Bounded by the close timeout."""
        if not self._running:
            return
        self._running = False
        sessions = [p.session for p in self._peers.values() if p.session is not None]
        await asyncio.gather(*(self._close(s, WSCloseCode.GOING_AWAY, "node stopping") for s in sessions),
                             return_exceptions=True)
        dials = [p.dial_task for p in self._peers.values() if p.dial_task is not None]
        for task in dials:
            task.cancel()
        await asyncio.gather(*dials, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._log.info("peer transport stopped")

    def send(self, node_key: bytes, payload: bytes) -> bool:
        """Queue ``payload`` for one peer; never blocks. False (logged, counted) when not queued.

        Not queued: ``node_key`` is not an allowed peer, or the payload is larger than
        ``max_payload_bytes``. Raises :class:`TransportError` if ``payload`` is not bytes.
        """
        peer = self._peers.get(node_key)
        if peer is None:
            self._unknown_destination += 1
            self._log.debug("send to a node that is not a peer", peer=_short(node_key))
            return False
        frame = self._frame(payload, (peer,))
        if frame is None:
            return False
        self._enqueue(peer, frame)
        return True

    def broadcast(self, payload: bytes) -> int:
        """Queue ``payload`` for every peer; never blocks. Returns how many peers it was queued for."""
        peers = tuple(self._peers.values())
        frame = self._frame(payload, peers)
        if frame is None:
            return 0
        for peer in peers:
            self._enqueue(peer, frame)
        return len(peers)

    def set_peers(self, peers: Mapping[bytes, str | None]) -> None:
        """Replace the allowed peers (the validator set changed). Never blocks.

        A removed peer is disconnected (close code 4003), its queue discarded, and its
        handshakes refused from now on; a new peer is dialed; a changed URL is redialed.
        New validators' certificates must be pinned first (:meth:`PeerTls.trust`).
        """
        wanted = self._validated(peers)
        for node_key in [k for k in self._peers if k not in wanted]:
            peer = self._peers.pop(node_key)
            self._stop_dialing(peer)
            if peer.session is not None:
                self._spawn(self._close(peer.session, CLOSE_REMOVED, "removed from the validator set"))
            self._log.info("peer removed", peer=_short(node_key))
        for node_key, url in wanted.items():
            peer = self._peers.get(node_key)
            if peer is None:
                self._peers[node_key] = peer = self._new_peer(node_key, url)
                self._log.info("peer added", peer=_short(node_key), url=url)
                self._start_dialing(peer)
            elif peer.url != url:
                peer.url = url
                self._stop_dialing(peer)
                self._start_dialing(peer)

    def disconnect(self, node_key: bytes, reason: str) -> None:
        """Close the connection to a peer (e.g. it sent an invalid consensus message); it may reconnect."""
        peer = self._peers.get(node_key)
        if peer is not None and peer.session is not None:
            self._log.warning("disconnecting peer", peer=_short(node_key), reason=reason)
            peer.last_error = reason
            self._spawn(self._close(peer.session, CLOSE_GARBAGE, reason))

    def connected(self) -> frozenset[bytes]:
        """The node keys of the peers with an authenticated connection now."""
        return frozenset(k for k, p in self._peers.items() if p.session is not None)

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary: per-peer connection state and counters, refusals by reason."""
        now = time.monotonic()
        return {
            "node_key": self._me.hex(),
            "chain_id": self._chain_id,
            "tls": self._tls is not None,
            "listen_port": self.listen_port,
            "connected": sum(1 for p in self._peers.values() if p.session is not None),
            "peers": [p.status(now) for p in self._peers.values()],
            "refused": dict(self._refused),
            "pending_handshakes": self._pending,
            "unknown_destination": self._unknown_destination,
        }

    # ------------------------------------------------------------ configuration

    def _validated(self, peers: Mapping[bytes, str | None]) -> dict[bytes, str | None]:
        scheme = "wss" if self._tls is not None else "ws"
        out: dict[bytes, str | None] = {}
        for node_key, url in peers.items():
            if not isinstance(node_key, bytes) or len(node_key) != PUBLIC_KEY_LEN:
                raise TransportError(f"a peer's node key is {PUBLIC_KEY_LEN} bytes")
            if node_key == self._me:
                continue
            if url is not None:
                parsed = urlsplit(url) if isinstance(url, str) else None
                if parsed is None or parsed.scheme != scheme or not parsed.hostname:
                    raise TransportError(
                        f"peer {node_key.hex()[:16]}: URL {url!r} must be {scheme}://host:port/path"
                        + (" (TLS is on)" if self._tls is not None else " (plain development mode)")
                    )
            out[node_key] = url
        return out

    def _new_peer(self, node_key: bytes, url: str | None) -> PeerState:
        return PeerState(node_key, url, self._limits.queue_frames, self._limits.queue_bytes, time.monotonic())

    def _is_allowed(self, node_key: bytes) -> bool:
        return node_key in self._peers

    # ------------------------------------------------------------ sending

    def _frame(self, payload: bytes, peers: tuple[PeerState, ...]) -> bytes | None:
        if not isinstance(payload, bytes):
            raise TransportError(f"a payload is bytes, got {type(payload).__name__}")
        if len(payload) > self._limits.max_payload_bytes:
            for peer in peers:
                peer.oversized_sent += 1
            self._log.warning("oversized payload not sent", size=len(payload),
                              limit=self._limits.max_payload_bytes)
            return None
        return encode_data(payload)

    def _enqueue(self, peer: PeerState, frame: bytes) -> None:
        if peer.enqueue(frame) and not peer.dropping:
            peer.dropping = True
            self._log.warning("peer send queue full, dropping oldest frames", peer=_short(peer.node_key),
                              queue_frames=len(peer.queue), queue_bytes=peer.queue_bytes, dropped=peer.dropped)

    async def _write_loop(self, peer: PeerState, session: _Session) -> None:
        while peer.session is session:
            if not peer.queue:
                peer.wake.clear()
                await peer.wake.wait()
                continue
            frame = peer.pop()
            try:
                await session.ws.send_bytes(frame)
            except Exception as exc:  # the connection broke under us; the reader sees it too
                peer.push_back(frame)
                self._log.debug("peer send failed", peer=_short(peer.node_key), error=repr(exc))
                self._spawn(self._close(session, WSCloseCode.ABNORMAL_CLOSURE, "send failed"))
                return
            peer.frames_sent += 1
            peer.bytes_sent += len(frame)

    # ------------------------------------------------------------ sessions

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, session: _Session, code: int, reason: str) -> None:
        if session.closing:
            return
        session.closing = True
        session.reason = reason
        if session.writer is not None:
            session.writer.cancel()
        message = reason.encode()[:_MAX_CLOSE_REASON]
        try:
            await asyncio.wait_for(session.ws.close(code=code, message=message), self._limits.close_timeout_ms / 1000)
        except Exception:  # timed out or already broken: do not wait for the buffer to drain
            session.abort()

    def _prefer(self, current: _Session, new: _Session) -> bool:
        """True when ``current`` should stay and ``new`` be closed (same answer on both sides)."""
        lower = min(self._me, current.peer_key)
        return current.dialer_key == lower and new.dialer_key != lower

    def _install(self, peer: PeerState, session: _Session) -> bool:
        current = peer.session
        if current is not None and not current.closing:
            if self._prefer(current, session):
                self._spawn(self._close(session, CLOSE_DUPLICATE, "duplicate connection; keeping the one dialed by the lower key"))
                return False
            self._spawn(self._close(current, CLOSE_DUPLICATE, "replaced by a newer connection"))
        peer.session = session
        peer.sessions += 1
        peer.changed.set()
        peer.wake.set()
        return True

    async def _run(self, session: _Session) -> None:
        """Carry one authenticated session until it ends; then clean up."""
        peer = self._peers.get(session.peer_key)
        if peer is None or not self._running:
            await self._close(session, CLOSE_REMOVED, "not a validator of this shard")
            return
        if not self._install(peer, session):
            return
        self._log.info("peer connected", peer=_short(peer.node_key), direction=session.direction)
        session.writer = asyncio.create_task(self._write_loop(peer, session))
        reason = "closed"
        try:
            reason = await self._read_loop(peer, session)
        finally:
            if session.writer is not None:
                session.writer.cancel()
            if peer.session is session:
                peer.session = None
                peer.down_since = time.monotonic()
                peer.changed.set()
            await self._close(session, WSCloseCode.GOING_AWAY, reason)
            self._log.info("peer disconnected", peer=_short(peer.node_key), reason=session.reason)

    async def _read_loop(self, peer: PeerState, session: _Session) -> str:
        """Deliver the session's frames until it ends; returns why it ended."""
        ws = session.ws
        max_payload = self._limits.max_payload_bytes
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                try:
                    payload = decode_data(msg.data, max_payload)
                except FrameError as exc:
                    return await self._garbage(peer, session, str(exc))
                peer.frames_received += 1
                peer.bytes_received += len(msg.data)
                # Nothing more from a removed validator or a superseded connection reaches consensus.
                if self._peers.get(peer.node_key) is not peer:
                    return "removed from the validator set"
                if session.closing:
                    return session.reason
                try:
                    await self._on_message(peer.node_key, payload)
                except Exception:
                    self._log.exception("message handler failed", peer=_short(peer.node_key))
            elif msg.type is WSMsgType.TEXT:
                return await self._garbage(peer, session, "text frame; peers send binary frames only")
            elif msg.type is WSMsgType.ERROR:
                error = msg.data
                if getattr(error, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                    peer.oversized_received += 1
                    peer.last_error = f"oversized frame: {error}"
                    self._log.warning("oversized frame dropped, connection closed", peer=_short(peer.node_key),
                                      limit=self._limits.max_frame_bytes, error=str(error))
                    return "oversized frame"
                if isinstance(error, aiohttp.WebSocketError):  # broken websocket framing: garbage too
                    return await self._garbage(peer, session, f"websocket protocol error {error.code}: {error}")
                peer.last_error = f"connection error: {error!r}"
                return peer.last_error
            else:  # CLOSE, CLOSING, CLOSED
                return f"closed by peer ({ws.close_code})" if msg.type is WSMsgType.CLOSE else "closed"

    async def _garbage(self, peer: PeerState, session: _Session, reason: str) -> str:
        peer.garbage += 1
        peer.last_error = f"garbage: {reason}"
        self._log.warning("peer sent garbage, disconnecting", peer=_short(peer.node_key), reason=reason)
        await self._close(session, CLOSE_GARBAGE, reason)
        return peer.last_error

    # ------------------------------------------------------------ handshakes

    def _refuse(self, reason: str, message: str, *, remote: Any, claimed: bytes | None) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        self._log.warning("peer refused", reason=reason, detail=message, remote=remote, claimed=_short(claimed))

    async def _handshake_frame(self, ws: Any) -> bytes:
        msg = await ws.receive()
        if msg.type is WSMsgType.BINARY:
            return msg.data
        if msg.type is WSMsgType.CLOSE:
            raise HandshakeRefused("refused_by_peer", f"peer closed ({msg.data}): {msg.extra or 'no reason'}")
        raise HandshakeRefused("malformed", f"expected a binary handshake frame, got {msg.type.name}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for inbound peer connections (mount it at :data:`PEER_PATH`)."""
        remote = request.remote
        if not self._running:
            raise web.HTTPServiceUnavailable(text="peer transport is not running")
        tls_key = None
        if self._tls is not None:
            ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
            try:
                tls_key = peer_certificate_key(ssl_object)
            except TlsError as exc:
                self._refuse("certificate_mismatch", str(exc), remote=remote, claimed=None)
                raise web.HTTPForbidden(text=f"refused: {exc}") from None
            if tls_key is None:
                self._refuse("no_certificate", "peer connections need TLS with a validator certificate",
                             remote=remote, claimed=None)
                raise web.HTTPForbidden(text="refused: peer connections need TLS with a validator certificate")
        if self._pending >= self._limits.max_pending_handshakes:
            self._refuse("busy", "too many handshakes in progress", remote=remote, claimed=None)
            raise web.HTTPServiceUnavailable(text="too many peer handshakes in progress")
        ws = web.WebSocketResponse(
            max_msg_size=self._limits.max_frame_bytes + 1,  # aiohttp refuses sizes >= the limit
            compress=False,
            heartbeat=None if self._limits.heartbeat_ms is None else self._limits.heartbeat_ms / 1000,
            timeout=self._limits.close_timeout_ms / 1000,
        )
        handshake = AcceptorHandshake(
            self._key, self._chain_id, self._is_allowed,
            local_tls_key=None if self._tls is None else self._tls.certificate_key, peer_tls_key=tls_key,
        )
        self._pending += 1
        try:
            await ws.prepare(request)
            async with asyncio.timeout(self._limits.handshake_timeout_ms / 1000):
                await ws.send_bytes(handshake.on_hello(await self._handshake_frame(ws)))
                peer_key = handshake.on_proof(await self._handshake_frame(ws))
        except HandshakeRefused as exc:
            self._refuse(exc.reason, str(exc), remote=remote, claimed=handshake.claimed_key)
            await self._close_unauthenticated(ws, str(exc))
            return ws
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "connection_lost"
            self._refuse(reason, repr(exc), remote=remote, claimed=handshake.claimed_key)
            await self._close_unauthenticated(ws, reason)
            return ws
        finally:
            self._pending -= 1
        transport = request.transport
        await self._run(_Session(ws, peer_key, peer_key, "in", transport.abort if transport else lambda: None))
        return ws

    async def _close_unauthenticated(self, ws: Any, reason: str) -> None:
        try:
            await asyncio.wait_for(ws.close(code=CLOSE_REFUSED, message=reason.encode()[:_MAX_CLOSE_REASON]),
                                   self._limits.close_timeout_ms / 1000)
        except Exception:
            _abort_socket(ws)()

    # ------------------------------------------------------------ dialing

    def _start_dialing(self, peer: PeerState) -> None:
        if not self._running or peer.url is None:
            return
        if self._me > peer.node_key and self._limits.dial_fallback_ms is None:
            return
        peer.dial_task = asyncio.create_task(self._dial_loop(peer))

    def _stop_dialing(self, peer: PeerState) -> None:
        if peer.dial_task is not None:
            peer.dial_task.cancel()
            peer.dial_task = None

    async def _fallback_due(self, peer: PeerState) -> None:
        """For the higher key of a pair: wait until the pair has been unconnected for dial_fallback_ms."""
        assert self._limits.dial_fallback_ms is not None
        fallback = self._limits.dial_fallback_ms / 1000
        while True:
            peer.changed.clear()
            if peer.session is None:
                remaining = peer.down_since + fallback - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(peer.changed.wait(), remaining)
                except TimeoutError:
                    pass
            else:
                await peer.changed.wait()

    async def _dial_loop(self, peer: PeerState) -> None:
        failures = 0
        while self._running and self._peers.get(peer.node_key) is peer:
            if self._me > peer.node_key:
                await self._fallback_due(peer)
            try:
                established = await self._dial_once(peer)
            except Exception:  # a bug here must not end dialing this peer for good
                self._log.exception("dialing failed unexpectedly", peer=_short(peer.node_key))
                established = False
            failures = 0 if established else failures + 1
            await asyncio.sleep(backoff_seconds(failures, self._limits, self._rng))

    async def _dial_once(self, peer: PeerState) -> bool:
        """Connect, handshake and carry one session; True if it was established and not refused."""
        assert self._client is not None and peer.url is not None
        limits = self._limits
        try:
            async with asyncio.timeout(limits.handshake_timeout_ms / 1000):
                ws = await self._client.ws_connect(
                    peer.url,
                    ssl=self._tls.client if self._tls is not None else True,
                    max_msg_size=limits.max_frame_bytes + 1,
                    compress=0,
                    heartbeat=None if limits.heartbeat_ms is None else limits.heartbeat_ms / 1000,
                    timeout=aiohttp.ClientWSTimeout(ws_close=limits.close_timeout_ms / 1000),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            peer.dial_failures += 1
            peer.last_error = f"dial failed: {exc!r}"
            # The first failure of a streak is worth an operator's attention; the retries are not.
            log = self._log.debug if peer.unreachable else self._log.warning
            peer.unreachable = True
            log("cannot reach peer", peer=_short(peer.node_key), url=peer.url, error=repr(exc))
            return False
        peer.unreachable = False
        remote = peer.url
        try:
            tls_key = None
            if self._tls is not None:
                tls_key = peer_certificate_key(ws.get_extra_info("ssl_object"))
            handshake = DialerHandshake(
                self._key, self._chain_id, peer.node_key,
                local_tls_key=None if self._tls is None else self._tls.certificate_key, peer_tls_key=tls_key,
            )
            async with asyncio.timeout(limits.handshake_timeout_ms / 1000):
                await ws.send_bytes(handshake.hello())
                await ws.send_bytes(handshake.on_welcome(await self._handshake_frame(ws)))
        except (HandshakeRefused, TlsError) as exc:
            reason = exc.reason if isinstance(exc, HandshakeRefused) else "certificate_mismatch"
            peer.dial_failures += 1
            peer.last_error = f"handshake: {exc}"
            if reason == "refused_by_peer":
                self._log.warning("refused by peer", peer=_short(peer.node_key), detail=str(exc))
            else:
                self._refuse(reason, str(exc), remote=remote, claimed=peer.node_key)
            await self._close_unauthenticated(ws, str(exc))
            return False
        except Exception as exc:  # timeout, connection lost, or anything unexpected: never leak the socket
            peer.dial_failures += 1
            peer.last_error = f"handshake: {exc!r}"
            self._log.info("handshake failed", peer=_short(peer.node_key), error=repr(exc))
            await self._close_unauthenticated(ws, "handshake failed")
            return False
        await self._run(_Session(ws, peer.node_key, self._me, "out", _abort_socket(ws)))
        return ws.close_code != CLOSE_REFUSED
