"""Submitting queued readings to the node, each exactly once on chain.

Per meter (one sender account, sequential nonces) at most **one** transaction is in
flight. It carries up to ``batch_max`` queued periods and is written to the durable
queue with its exact signed bytes *before* it is sent. From then on the gateway only
ever re-sends those same bytes, until the node says one of:

- committed, receipt ok: the readings are on chain; delete them.
- committed, receipt refused as a duplicate reading: a single reading is "already
  there" (delete it); a batch is split and each reading goes alone, so the ones not
  yet on chain are not lost with the one that was.
- committed with another receipt error, or refused for a reason retrying will not fix
  (``not_member``, ``bad_signature``...): the readings are *parked*, kept, shown in
  status and retried later.
- refused with ``bad_nonce``/``expired``, or unknown after its expiry height: that
  transaction can never commit; its readings go back to the queue and are signed
  again at the node's current nonce.

Exactly once follows from two halves: the gateway never drops a reading before a
confirmation (at least once), and the contract refuses a second reading for a
``(meter, period)`` (at most once), which the gateway reads as "already there". After a
SIGKILL the gateway reloads the in-flight transactions and asks the node about each
before doing anything else.

Network work runs in bounded concurrent tasks; their verdicts are applied to the
store in batches (one SQLite commit per batch). When the node is unreachable the
submitter backs off and sends one probe at a time instead of a storm.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ledger.crypto import PrivateKey
from ledger.tx import MAX_HEIGHT
from meters.errors import NodeUnavailable
from meters.nodeapi import DUPLICATE_READING_CODES, NodeClient, TxStatus, build_submission
from meters.queue import ReadingStore, Resolution, StoredReading, TxRecord
from meters.readings import Reading

__all__ = ["SubmitSettings", "Submitter"]

# Rejection codes that say "not now" rather than "never".
RETRY_CODES = frozenset({"mempool_full", "busy", "not_ready"})
CHECK_START_MS = 500
CHECK_MAX_MS = 10_000
NODE_BACKOFF_START_MS = 500
NODE_BACKOFF_MAX_MS = 30_000
HEIGHT_MAX_AGE_MS = 5_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    chain_id: str
    batch_max: int = 96
    gas_limit: int = 1_000_000
    expiry_blocks: int = 0  # 0: transactions never expire
    wait_ms: int = 2_000  # ?wait=commit timeout per submission
    park_ms: int = 300_000  # retry parked readings after this long
    concurrency: int = 32


@dataclass(slots=True)
class _Inflight:
    record: TxRecord
    readings: tuple[StoredReading, ...]
    action: str = "check"  # "send" or "check"
    due_ms: int = 0
    attempts: int = 0
    first_sent_ms: int | None = None


@dataclass(slots=True)
class _Meter:
    name: str
    key: PrivateKey
    queued: dict[int, StoredReading] = field(default_factory=dict)
    inflight: _Inflight | None = None
    next_nonce: int | None = None
    busy: bool = False
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Verdict:
    meter: str
    action: str  # committed|already|release|release_solo|park|wait|resend|retry|unavailable|nonce
    next_nonce: int | None = None
    keep_nonce: bool = False
    error: str | None = None
    nonce: int | None = None


class Submitter:
    """Drives every meter's queued readings onto the chain."""

    def __init__(
        self,
        *,
        store: ReadingStore,
        db: Callable[..., Awaitable],
        node: NodeClient,
        keys: dict[str, PrivateKey],
        settings: SubmitSettings,
        metrics,
        log,
    ) -> None:
        self.store = store
        self._db = db  # runs a store method in the gateway's database thread
        self.node = node
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.meters = {name: _Meter(name, key) for name, key in keys.items()}
        self.latencies_ms: deque[int] = deque(maxlen=20_000)
        self.node_up = True
        self.node_error: str | None = None
        self._node_down_until = 0
        self._node_backoff = NODE_BACKOFF_START_MS
        self._probe_running = False
        self._height: int | None = None
        self._height_ms = 0
        self._height_task: asyncio.Task | None = None
        self._verdicts: list[_Verdict] = []
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(settings.concurrency)

    # ------------------------------------------------------------ inputs

    async def load(self) -> None:
        """Reload everything unconfirmed from the store (after a restart or a crash)."""
        readings, txs = await self._db(self.store.load_pending)
        by_tx: dict[bytes, list[StoredReading]] = {}
        for stored in readings:
            meter = self.meters.get(stored.reading.meter)
            if meter is None:
                self.log.warning("queued readings of a meter no longer configured", meter=stored.reading.meter)
                continue
            if stored.tx_id is None:
                meter.queued[stored.reading.period] = stored
            else:
                by_tx.setdefault(stored.tx_id, []).append(stored)
        for record in txs:
            meter = self.meters.get(record.meter)
            if meter is None:
                continue
            meter.inflight = _Inflight(record, tuple(by_tx.pop(record.tx_id, ())), action="check")
        for orphans in by_tx.values():  # bound to a transaction row that does not exist
            for stored in orphans:
                self.meters[stored.reading.meter].queued[stored.reading.period] = StoredReading(stored.reading)
        self._wake.set()

    def add(self, readings: Sequence[Reading]) -> None:
        """Readings that are now durably stored."""
        for reading in readings:
            self.meters[reading.meter].queued[reading.period] = StoredReading(reading)
        self._wake.set()

    # ------------------------------------------------------------ figures

    def counts(self) -> dict[str, int]:
        now = now_ms()
        queued = parked = inflight = 0
        for m in self.meters.values():
            for stored in m.queued.values():
                if stored.parked_until_ms > now:
                    parked += 1
                else:
                    queued += 1
            if m.inflight is not None:
                inflight += len(m.inflight.readings)
        return {"queued": queued, "in_flight": inflight, "parked": parked}

    def pending(self) -> int:
        return sum(len(m.queued) + (len(m.inflight.readings) if m.inflight else 0) for m in self.meters.values())

    # ------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Clear before stepping: a verdict arriving while the step awaits the
                # database must wake the next wait, not be wiped out after it.
                self._wake.clear()
                await self._step()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._next_wake_s())
                except TimeoutError:
                    pass
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _next_wake_s(self) -> float:
        due = [m.inflight.due_ms for m in self.meters.values() if m.inflight and not m.busy]
        wait = (min(due) - now_ms()) / 1000 if due else 1.0
        return min(1.0, max(0.01, wait))

    async def _step(self) -> None:
        await self._apply_verdicts()
        now = now_ms()
        if not self.node_up and now < self._node_down_until:
            return
        if not self.node_up:
            self._spawn_probe()
            return
        await self._start_transactions(now)
        for meter in self.meters.values():
            flight = meter.inflight
            if flight is not None and not meter.busy and flight.due_ms <= now:
                self._spawn(meter, self._drive(meter, flight))

    def _spawn(self, meter: _Meter, coro) -> None:
        meter.busy = True

        async def guarded() -> None:
            async with self._sem:
                try:
                    verdict = await coro
                except NodeUnavailable as exc:
                    verdict = _Verdict(meter.name, "unavailable", error=str(exc))
                except Exception as exc:  # a surprise must not leave the meter busy forever
                    self.log.error("submission step failed; will retry", meter=meter.name, error=repr(exc))
                    verdict = _Verdict(meter.name, "retry", error=repr(exc))
            self._verdicts.append(verdict)
            self._wake.set()

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_probe(self) -> None:
        if self._probe_running:
            return
        self._probe_running = True

        async def probe() -> None:
            try:
                self._height, self._height_ms = await self.node.height(), now_ms()
                self._node_is_up()
            except NodeUnavailable as exc:
                self._node_is_down(str(exc))
            finally:
                self._probe_running = False
                self._wake.set()

        task = asyncio.get_running_loop().create_task(probe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _node_is_up(self) -> None:
        if self.node_up:
            return
        self.log.info("node reachable again")
        self.node_up, self.node_error = True, None
        self._node_backoff = NODE_BACKOFF_START_MS
        now = now_ms()
        for meter in self.meters.values():
            if meter.inflight is not None:
                meter.inflight.due_ms = min(meter.inflight.due_ms, now)

    def _node_is_down(self, error: str) -> None:
        if self.node_up:
            self.log.warning("node unreachable; readings stay queued", error=error)
        self.node_up, self.node_error = False, error
        self._node_down_until = now_ms() + self._node_backoff
        self._node_backoff = min(NODE_BACKOFF_MAX_MS, self._node_backoff * 2)

    # ------------------------------------------------------------ building transactions

    def _eligible(self, meter: _Meter, now: int) -> list[StoredReading]:
        ready = sorted((s for s in meter.queued.values() if s.parked_until_ms <= now), key=lambda s: s.reading.period)
        if not ready:
            return []
        if ready[0].solo:
            return ready[:1]
        return [s for s in ready if not s.solo][: self.settings.batch_max]

    async def _start_transactions(self, now: int) -> None:
        needs_height = self.settings.expiry_blocks > 0 and (self._height is None or now - self._height_ms > HEIGHT_MAX_AGE_MS)
        records: list[tuple[_Meter, TxRecord, list[StoredReading]]] = []
        for meter in self.meters.values():
            if meter.inflight is not None or meter.busy:
                continue
            batch = self._eligible(meter, now)
            if not batch:
                continue
            if meter.next_nonce is None:
                self._spawn(meter, self._fetch_nonce(meter))
                continue
            if needs_height:
                self._refresh_height()
                continue
            expiry = MAX_HEIGHT if self.settings.expiry_blocks <= 0 else self._height + self.settings.expiry_blocks
            tx = build_submission(
                meter.key,
                [s.reading for s in batch],
                chain_id=self.settings.chain_id,
                nonce=meter.next_nonce,
                gas_limit=self.settings.gas_limit,
                expiry=expiry,
            )
            record = TxRecord(tx.tx_id, meter.name, tx.nonce, expiry, tx.encode(),
                              tuple(s.reading.period for s in batch), now)
            records.append((meter, record, batch))
        if not records:
            return
        await self._db(self.store.assign, [r for _, r, _ in records])  # durable before any send
        for meter, record, batch in records:
            for stored in batch:
                del meter.queued[stored.reading.period]
            meter.inflight = _Inflight(record, tuple(batch), action="send", due_ms=now)

    def _refresh_height(self) -> None:
        if self._height_task is not None and not self._height_task.done():
            return

        async def refresh() -> None:
            try:
                self._height, self._height_ms = await self.node.height(), now_ms()
            except NodeUnavailable as exc:
                self._node_is_down(str(exc))
            self._wake.set()

        self._height_task = asyncio.get_running_loop().create_task(refresh())
        self._tasks.add(self._height_task)
        self._height_task.add_done_callback(self._tasks.discard)

    async def _fetch_nonce(self, meter: _Meter) -> _Verdict:
        nonce = await self.node.next_nonce(meter.key.address)
        return _Verdict(meter.name, "nonce", nonce=nonce)

    # ------------------------------------------------------------ judging answers

    async def _drive(self, meter: _Meter, flight: _Inflight) -> _Verdict:
        record = flight.record
        if flight.action == "send":
            if flight.first_sent_ms is None:
                flight.first_sent_ms = now_ms()
                self.metrics.inc("readings_submitted_total", len(flight.readings))
            answer = await self.node.submit(record.raw, wait_ms=self.settings.wait_ms)
        else:
            answer = await self.node.tx_status(record.tx_id)
        return await self._judge(meter, record, answer)

    async def _judge(self, meter: _Meter, record: TxRecord, answer: TxStatus) -> _Verdict:
        name = meter.name
        if answer.status == "committed":
            if answer.ok:
                return _Verdict(name, "committed", next_nonce=record.nonce + 1)
            if answer.code in DUPLICATE_READING_CODES:
                action = "already" if len(record.periods) == 1 else "release_solo"
                return _Verdict(name, action, next_nonce=record.nonce + 1, error=f"{answer.code}: {answer.message}")
            return _Verdict(name, "park", next_nonce=record.nonce + 1, error=f"{answer.code}: {answer.message}")
        if answer.status == "pending":
            return _Verdict(name, "wait")
        if answer.status == "rejected":
            code = answer.code or "unknown"
            if code in ("duplicate", "bad_nonce"):
                again = await self.node.tx_status(record.tx_id)
                if again.status == "committed":
                    return await self._judge(meter, record, again)
                if again.status == "pending" or code == "duplicate":
                    # The node knows this transaction (or will say so): ask again later.
                    return _Verdict(name, "wait")
                return _Verdict(name, "release", error=f"{code}: {answer.message}")
            if code == "expired":
                return _Verdict(name, "release", error=f"{code}: {answer.message}")
            if code in RETRY_CODES:
                return _Verdict(name, "retry", keep_nonce=True, error=f"{code}: {answer.message}")
            return _Verdict(name, "park", error=f"{code}: {answer.message}")
        # Unknown: never received, or dropped (a node restart empties its mempool).
        if record.expiry != MAX_HEIGHT:
            height = await self.node.height()
            if height > record.expiry:
                return _Verdict(name, "release", error="expired unseen")
        return _Verdict(name, "resend", keep_nonce=True)

    async def _apply_verdicts(self) -> None:
        if not self._verdicts:
            return
        verdicts, self._verdicts = self._verdicts, []
        now = now_ms()
        resolutions: list[Resolution] = []
        for v in verdicts:
            meter = self.meters[v.meter]
            flight = meter.inflight
            if v.action in ("committed", "already", "release", "release_solo", "park") and flight is not None:
                until = now + self.settings.park_ms if v.action == "park" else 0
                db_action = "committed" if v.action in ("committed", "already") else v.action
                resolutions.append(Resolution(flight.record.tx_id, db_action, until, v.error))
        if resolutions:
            await self._db(self.store.resolve, resolutions)
        for v in verdicts:
            self._apply_in_memory(self.meters[v.meter], v, now)

    def _apply_in_memory(self, meter: _Meter, v: _Verdict, now: int) -> None:
        meter.busy = False
        flight = meter.inflight
        if v.action == "unavailable":
            self._node_is_down(v.error or "")
            if flight is not None:
                flight.due_ms = max(flight.due_ms, self._node_down_until)
            return
        self._node_is_up()
        if v.action == "nonce":
            meter.next_nonce = v.nonce
            return
        if flight is None:
            return
        n = len(flight.readings)
        if v.action in ("wait", "resend", "retry"):
            flight.attempts += 1
            delay = min(CHECK_MAX_MS, CHECK_START_MS * 2 ** min(flight.attempts - 1, 6))
            flight.action = "check" if v.action == "wait" else "send"
            flight.due_ms = now + (0 if v.action == "resend" and flight.attempts < 3 else delay)
            if v.error:
                meter.last_error = v.error
            return
        meter.inflight = None
        meter.next_nonce = v.next_nonce
        if v.action == "committed":
            self.metrics.inc("readings_committed_total", n)
            if flight.first_sent_ms is not None:
                self.latencies_ms.append(now - flight.first_sent_ms)
                self.metrics.observe_submit(now - flight.first_sent_ms)
            meter.last_error = None
        elif v.action == "already":
            self.metrics.inc("readings_already_on_chain_total", n)
            self.log.info("reading already on chain", meter=meter.name, periods=list(flight.record.periods))
        else:
            solo = v.action == "release_solo"
            until = now + self.settings.park_ms if v.action == "park" else 0
            for stored in flight.readings:
                meter.queued[stored.reading.period] = StoredReading(
                    stored.reading, None, solo or stored.solo, until, v.error if v.action == "park" else None
                )
            meter.last_error = v.error
            if v.action == "park":
                self.metrics.inc("readings_parked_total", n)
                self.log.error("readings refused by the node; parked for retry", meter=meter.name,
                               periods=list(flight.record.periods), error=v.error)
            else:
                self.log.info("transaction cannot commit; its readings are queued again", meter=meter.name,
                              nonce=flight.record.nonce, reason=v.error, solo=solo)
