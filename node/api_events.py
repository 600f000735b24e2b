"""The API's event stream: ``GET /v1/events`` as server-sent events.

One stream per request: a pump task copies the node's event iterator into a bounded
queue, and the handler writes the queue to the socket, so a slow client slows only its
own pump (the node may end an iterator that falls too far behind). Each message's id
``height-tx_index-n`` (n counts the stream's events within one transaction) lets a
client resume exactly after the last event it saw, with the same filters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ledger import codec
from ledger.tx import MAX_HEIGHT
from node.api_json import api_error, check_name, dumps, event_json, malformed, parse_int, to_json
from node.metrics import Gauge

if TYPE_CHECKING:
    from node.api import NodeView

__all__ = ["EventHandlers"]

_EVENT_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,9})-([0-9]{1,9})")
_END = object()
QUEUE_LEN = 256


class EventHandlers:
    """Handlers of :class:`node.api.ApiServer` (a mixin: its attributes come from it)."""

    node: NodeView
    max_event_streams: int
    keepalive_s: float
    _streams: dict[asyncio.Task, asyncio.Queue]
    _open_streams: Gauge
    _log: Any

    def _event_filters(self, request: web.Request) -> tuple[str | None, str | None, int | None, tuple[int, int, int] | None]:
        q = request.query
        contract = check_name(q["contract"], "contract") if q.get("contract") else None
        name = check_name(q["name"], "event name") if q.get("name") else None
        from_height = parse_int(q["from_height"], "from_height", 0, MAX_HEIGHT) if "from_height" in q else None
        resume = None
        last_id = request.headers.get("Last-Event-ID") or q.get("last_event_id")
        if last_id:
            match = _EVENT_ID.fullmatch(last_id)
            if match is None:
                raise malformed(f"event id {last_id[:64]!r} is not height-tx_index-n")
            resume = tuple(int(g) for g in match.groups())
            from_height = resume[0]
        return contract, name, from_height, resume

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        contract, name, from_height, resume = self._event_filters(request)
        if len(self._streams) >= self.max_event_streams:
            raise api_error("busy", f"{self.max_event_streams} event streams are open; retry later")
        task = asyncio.current_task()
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LEN)
        self._streams[task] = queue
        self._open_streams.set(len(self._streams))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        iterator = pump = None
        try:
            iterator = self.node.events(contract, name, from_height)
            pump = asyncio.create_task(self._pump(iterator, queue))
            await response.prepare(request)
            await self._stream(response, queue, resume)
        except ConnectionError:
            pass  # the client went away
        except Exception:
            # Once the stream has started, an error can only end it: its status line is sent.
            if not response.prepared:
                raise
            self._log.exception("api_event_stream_failed", path=request.path)
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    pass
            self._streams.pop(task, None)
            self._open_streams.set(len(self._streams))
        return response

    @staticmethod
    async def _pump(iterator: AsyncIterator, queue: asyncio.Queue) -> None:
        try:
            async for item in iterator:
                await queue.put(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(exc)
            return
        await queue.put(_END)

    async def _stream(self, response: web.StreamResponse, queue: asyncio.Queue, resume: tuple[int, int, int] | None) -> None:
        last: tuple[int, int] | None = None
        n = 0
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), self.keepalive_s)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                self._log.warning("api_event_stream_failed", error=repr(item))
                await response.write(b": the node ended this stream; reconnect with Last-Event-ID\n\n")
                return
            height, tx_index, tx_id, event = item
            n = n + 1 if last == (height, tx_index) else 0
            last = (height, tx_index)
            if resume is not None and (height, tx_index, n) <= resume:
                continue
            data = {
                "height": to_json(height),
                "tx_index": tx_index,
                "tx_id": tx_id.hex(),
                **event_json(event),
                "event_hex": codec.encode(event.to_fields(), allow_maps=True).hex(),
            }
            await response.write(b"id: %d-%d-%d\ndata: %s\n\n" % (height, tx_index, n, dumps(data)))

    async def _close_streams(self, app: web.Application) -> None:
        # End each stream in its own time (cancelling a handler from outside would leave
        # aiohttp waiting for it until the shutdown timeout). Dropping queued events is
        # fine: the client resumes with its last event id.
        for queue in self._streams.values():
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(_END)
