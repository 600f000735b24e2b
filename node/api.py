"""The node's public HTTP API: JSON over aiohttp, routes and documentation from one table.

The server depends on the node only through :class:`NodeView`, a small protocol the
node process implements (and tests fake). Every route comes from
:data:`node.openapi.ENDPOINTS`: its ``operation`` names a handler method of
:class:`ApiServer` (submission in :mod:`node.api_submit`, reads in :mod:`node.api_read`,
the event stream in :mod:`node.api_events`), and the same table generates
``/openapi.json``.

What the server promises whatever it is sent:

* every error answer is JSON ``{"error": {"code", "message"}}`` with a stable code
  (:data:`node.openapi.ERRORS`), including unknown paths (``not_found``), wrong methods
  (``method_not_allowed``) and a handler's own failure (``internal``, logged);
* request bodies are read up to ``max_request_bytes`` and no further (``too_large``);
  query values, hex, integers and key parts are checked before anything is looked up;
* a failing request never stops the server; event streams are bounded in number and
  each is backpressured by its client's socket.

JSON conventions (hex bytes, big integers as strings) are in :mod:`node.api_json`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from aiohttp import web

from ledger.block import BlockHeader
from ledger.log import get_logger
from ledger.store import Store
from ledger.tx import Event
from ledger.validators import ValidatorSet
from node import openapi
from node.api_events import EventHandlers
from node.api_json import ApiError, api_error, dumps, json_response, loads
from node.api_read import ReadHandlers
from node.api_submit import SubmitHandlers
from node.mempool import TxRejected
from node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from node.metrics import Registry

__all__ = ["ApiServer", "NodeView"]


class NodeView(Protocol):
    """What the API needs from the node process. The node implements it; tests fake it.

    Everything is called from the node's event loop. Plain methods must not block for
    long (they read memory or the store); ``async`` ones may wait.
    """

    chain_id: str  # the shard id this node serves, e.g. "ch/zurich"
    role: str  # "validator" or "observer"
    protocol: str  # "bft" or "raft", from genesis
    node_key: bytes  # this node's Ed25519 public key (32 bytes)
    genesis_hash: bytes | None  # hash of the genesis document
    validators: ValidatorSet  # the shard's current validator set
    store: Store  # the shard's store: the API reads prove/block/certificate/tx_location/head
    metrics: Registry  # the node's metrics; the API adds its own and renders them all

    async def submit(self, raw: bytes) -> bytes:
        """Admit one encoded transaction (an observer forwards it); return its id.

        Raises :class:`node.mempool.TxRejected` with a reason code when refused.
        """
        ...

    async def submit_many(self, raws: Sequence[bytes]) -> list[bytes | TxRejected]:
        """Admit each transaction independently: its id, or the :class:`TxRejected` refusing it, in order."""
        ...

    async def wait_for(self, tx_id: bytes, timeout_s: float) -> bool:
        """True once the transaction is committed; False at the timeout, or as soon as it is rejected."""
        ...

    def tx_pending(self, tx_id: bytes) -> bool:
        """True while the transaction waits in the mempool (or, on an observer, was forwarded)."""
        ...

    def tx_rejected(self, tx_id: bytes) -> tuple[str, str] | None:
        """(code, message) if the transaction was recently dropped at block building (e.g. ``expired``)."""
        ...

    def account(self, address: bytes) -> dict:
        """The account of a 20-byte address: ``nonce`` (next nonce in committed state, 0 if never
        seen), ``pending_nonce`` (counting waiting transactions), ``roles`` (list of str) if known."""
        ...

    def events(
        self, contract: str | None, name: str | None, from_height: int | None
    ) -> AsyncIterator[tuple[int, int, bytes, Event]]:
        """(height, tx index, tx id, event) of committed events matching the filters (None: any),
        from ``from_height`` on (None: the next block), then live ones as blocks commit, in
        block order. The API closes the iterator (``aclose``) when its client goes away; the
        node may end it if the consumer falls too far behind."""
        ...

    def status(self) -> dict:
        """Live status: ``height``, ``view`` (BFT) or ``term`` (Raft), ``leader`` (node key),
        ``peers`` (count), ``mempool`` (count), ``catching_up``, ``shard``...; merged over
        the API's own fields (shard, role, protocol, node_key, genesis_hash, height)."""
        ...

    def ready(self) -> bool:
        """True when caught up and connected to a quorum (``/readyz``)."""
        ...

    def shards(self) -> list[dict]:
        """The shards this node knows: ``shard``, ``height``, ``certified_height``, ..."""
        ...


class ApiServer(SubmitHandlers, ReadHandlers, EventHandlers):
    """The HTTP API of one node: :meth:`start` / :meth:`stop`, or ``app`` to embed.

    Embedding ``app`` in another runner: pass ``handler_cancellation=True`` to it, as
    :meth:`start` does, so that requests whose client left stop waiting.
    """

    def __init__(
        self,
        node: NodeView,
        *,
        max_request_bytes: int = 1 << 20,
        max_event_streams: int = 256,
        keepalive_s: float = 15.0,
        shutdown_timeout_s: float = 2.0,
        body_timeout_s: float = 30.0,
        logger: Any = None,
    ) -> None:
        self.node = node
        self.max_request_bytes = max_request_bytes
        self.max_event_streams = max_event_streams
        self.keepalive_s = keepalive_s
        self.shutdown_timeout_s = shutdown_timeout_s
        # A client that trickles its body in holds a connection; 30 s is ample for 1 MiB.
        self.body_timeout_s = body_timeout_s
        self._log = logger if logger is not None else get_logger(component="api", shard=node.chain_id)
        self._headers: OrderedDict[int, tuple[BlockHeader, bytes]] = OrderedDict()
        self._streams: dict[asyncio.Task, asyncio.Queue] = {}
        self._document = dumps(openapi.document())
        registry = node.metrics
        self._requests = registry.counter(
            "gridledger_api_requests_total", "API requests answered, by operation and HTTP status.", ("operation", "status")
        )
        self._latency = registry.histogram("gridledger_api_request_seconds", "Seconds to answer an API request.", ("operation",))
        self._open_streams = registry.gauge("gridledger_api_event_streams", "Open event streams.")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        # Our own reader enforces the body limit per request; aiohttp's is the backstop.
        app = web.Application(client_max_size=self.max_request_bytes, middlewares=[self._guard])
        for ep in openapi.ENDPOINTS:
            app.router.add_route(ep.method, ep.path, getattr(self, ep.operation), name=ep.operation)
        app.on_shutdown.append(self._close_streams)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: Any = None) -> int:
        """Serve on ``host:port`` (0: any free port); returns the bound port."""
        # handler_cancellation: a client that goes away ends its wait=commit or event
        # stream at once instead of at the next timeout or keepalive write.
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.shutdown_timeout_s, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ the guard

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route
        operation = getattr(route, "name", None) or "unmatched"
        try:
            response = await handler(request)
        except ApiError as exc:
            response = json_response(exc.body(), exc.status)
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
            message = {
                "not_found": f"no such path: {request.path}",
                "method_not_allowed": f"{request.method} is not allowed on {request.path}",
            }.get(code, exc.reason or "refused")
            response = json_response({"error": {"code": code, "message": message}}, exc.status if exc.status < 500 else 500)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("api_handler_failed", operation=operation, path=request.path)
            response = json_response(
                {"error": {"code": "internal", "message": f"the node failed to answer ({type(exc).__name__}); it keeps serving"}},
                500,
            )
        self._requests.labels(operation, response.status).inc()
        self._latency.labels(operation).observe(time.perf_counter() - started)
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise api_error("too_large", f"the request body is {request.content_length} bytes; the limit is {limit}")
        data = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while chunk := await request.content.read(1 << 16):
                    data += chunk
                    if len(data) > limit:
                        raise api_error("too_large", f"the request body exceeds the limit of {limit} bytes")
        except TimeoutError:
            raise api_error("timeout", f"the request body did not arrive within {self.body_timeout_s:g} s") from None
        return bytes(data)

    async def _json_body(self, request: web.Request) -> Any:
        return loads(await self._read_body(request))

    # ------------------------------------------------------------ operating

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.node.ready():
            return json_response({"ready": True})
        return json_response({"ready": False, "error": {"code": "not_ready", "message": "catching up or not connected to a quorum"}}, 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.node.metrics.render().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")
