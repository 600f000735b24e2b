"""One peer's bookkeeping in the peer transport: its bounded send queue and its counters.

The queue is bounded twice, by frames and by bytes, because consensus frames range
from a vote (~200 bytes) to a block proposal (megabytes): a frame bound alone would let
a slow peer pin gigabytes, a byte bound alone would let it pin millions of tiny objects.

When the queue is full the **oldest** frame is dropped. A peer that cannot keep up
(slow link, stalled process) loses the stale end of its backlog and keeps the newest
messages, which are the ones consensus still acts on: votes for an old view or height
are ignored anyway, and a replica that missed them catches up through view change,
checkpoints and state sync. Dropping the newest instead would freeze a slow peer on
old traffic. Every drop is counted, and the first drop of a burst is logged.

The queue outlives a connection: frames queued while a peer reconnects go out when
it is back, so a short outage loses nothing and a long one costs at most one queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.transport import _Session

__all__ = ["PeerState"]


class PeerState:
    """What the transport knows about one allowed peer, connected or not."""

    def __init__(self, node_key: bytes, url: str | None, max_frames: int, max_bytes: int, now: float) -> None:
        self.node_key = node_key
        self.url = url
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()
        self.queue_bytes = 0
        # Set when a frame is queued (wakes the connection's writer).
        self.wake = asyncio.Event()
        # Set when the current session changes (wakes the dial loop).
        self.changed = asyncio.Event()
        self.session: _Session | None = None
        self.dial_task: asyncio.Task | None = None
        # When the peer was last seen without a session (monotonic loop time).
        self.down_since = now
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_received = 0
        self.bytes_received = 0
        self.dropped = 0  # queue overflow, oldest dropped
        self.dropping = False  # inside a burst of drops (for logging once per burst)
        self.oversized_sent = 0  # refused by send(): payload above the limit
        self.oversized_received = 0  # the peer sent a frame above the limit
        self.garbage = 0  # disconnects because the peer sent a malformed frame
        self.sessions = 0  # authenticated connections established
        self.dial_failures = 0
        self.unreachable = False  # the last dial failed to connect (log once per streak)
        self.last_error = ""

    def enqueue(self, frame: bytes) -> int:
        """Queue ``frame``, dropping the oldest frames to stay in bounds; returns how many were dropped."""
        dropped = 0
        size = len(frame)
        while self.queue and (len(self.queue) >= self.max_frames or self.queue_bytes + size > self.max_bytes):
            self.queue_bytes -= len(self.queue.popleft())
            dropped += 1
        self.queue.append(frame)
        self.queue_bytes += size
        self.dropped += dropped
        self.wake.set()
        return dropped

    def pop(self) -> bytes:
        frame = self.queue.popleft()
        self.queue_bytes -= len(frame)
        if not self.queue:
            self.dropping = False
        return frame

    def push_back(self, frame: bytes) -> None:
        """Return a frame whose send failed to the head of the queue, if it still fits."""
        if len(self.queue) < self.max_frames and self.queue_bytes + len(frame) <= self.max_bytes:
            self.queue.appendleft(frame)
            self.queue_bytes += len(frame)

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-ready summary for ``/v1/status`` and ``/metrics``."""
        session = self.session
        return {
            "node_key": self.node_key.hex(),
            "url": self.url,
            "connected": session is not None,
            "direction": None if session is None else session.direction,
            "connected_ms": None if session is None else int((now - session.started) * 1000),
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "frames_received": self.frames_received,
            "bytes_received": self.bytes_received,
            "queue_frames": len(self.queue),
            "queue_bytes": self.queue_bytes,
            "dropped": self.dropped,
            "oversized_sent": self.oversized_sent,
            "oversized_received": self.oversized_received,
            "garbage": self.garbage,
            "sessions": self.sessions,
            "reconnects": max(0, self.sessions - 1),
            "dial_failures": self.dial_failures,
            "last_error": self.last_error,
        }
