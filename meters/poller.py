"""Polling meters: one cycle every poll interval, every device read, every sample accounted.

Cycles start on wall-clock multiples of the poll interval, so samples land just after
period boundaries and little energy is apportioned across them. In a cycle every due
device is read concurrently (each endpoint's connection pool bounds how many at once);
a read that fails is retried within the cycle with doubling back-off, and a device that
failed whole cycles is polled less often (doubling up to ``device_backoff_max_s``) so
a dead meter does not hold a shared connection hostage. A device is ``failing`` after
one failed cycle and ``down`` after ``down_after``; it is ``up`` again at its next
answer.

Each sample goes through :func:`meters.readings.advance`. At the end of the cycle the
meters whose accounting produced readings are handed to ``on_cycle`` (the gateway
persists states and readings in one transaction, then submits).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meters.config import MeterSettings
from meters.errors import DecodeError, DeviceError
from meters.maps import Layout, Measurement, MeterMap
from meters.modbus import EndpointPool
from meters.readings import Limits, PeriodClock, Reading, Sample, TrackerState, advance

__all__ = ["Device", "DeviceHealth", "Poller"]

Update = tuple[str, TrackerState, list[Reading]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class DeviceHealth:
    state: str = "unknown"  # unknown | up | failing | down
    consecutive_failures: int = 0
    last_ok_ms: int | None = None
    last_error: str | None = None
    last_refusal: str | None = None
    skip_until_ms: int = 0
    reads: int = 0
    errors: int = 0


class Device:
    """One configured meter at runtime."""

    def __init__(self, settings: MeterSettings, meter_map: MeterMap, pool: EndpointPool, limits: Limits) -> None:
        self.settings = settings
        self.name = settings.name
        self.map = meter_map
        self.pool = pool
        self.limits = limits
        self.layout: Layout | None = None
        self.health = DeviceHealth()

    async def _read(self, function: int, address: int, count: int) -> list[int]:
        return await self.pool.read(self.settings.unit_id, function, address, count)

    async def measure(self) -> Measurement:
        """Discover the layout if needed, read its blocks, decode (DeviceError / DecodeError)."""
        if self.layout is None:
            self.layout = await self.map.discover(self._read)
        layout = self.layout
        answers = [await self._read(b.function, b.address, b.count) for b in layout.blocks]
        try:
            return layout.decode(answers)
        except DecodeError as exc:
            if exc.reason == "layout_changed":
                self.layout = None
            raise

    def status(self) -> dict:
        h = self.health
        return {
            "meter": self.name,
            "endpoint": str(self.settings.endpoint),
            "unit_id": self.settings.unit_id,
            "map": self.map.name,
            "channel": self.settings.channel,
            "state": h.state,
            "consecutive_failures": h.consecutive_failures,
            "last_ok_ms": h.last_ok_ms,
            "last_error": h.last_error,
            "last_refusal": h.last_refusal,
            "reads": h.reads,
            "errors": h.errors,
        }


class Poller:
    def __init__(
        self,
        devices: list[Device],
        *,
        clock: PeriodClock,
        interval_s: float,
        retries: int,
        retry_backoff_s: float,
        backoff_max_s: float,
        down_after: int,
        states: dict[str, TrackerState],
        on_cycle: Callable[[list[Update]], Awaitable[None]],
        metrics,
        log,
    ) -> None:
        self.devices = devices
        self.clock = clock
        self.interval_s = interval_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.backoff_max_s = backoff_max_s
        self.down_after = down_after
        self.states = states
        self.on_cycle = on_cycle
        self.metrics = metrics
        self.log = log
        self.cycles = 0
        self.last_cycle_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.interval_s
        while not stop.is_set():
            now = time.time()
            tick = math.floor(now / interval) * interval + interval
            try:
                await asyncio.wait_for(stop.wait(), tick - now)
                return
            except TimeoutError:
                pass
            started = time.monotonic()
            await self.cycle()
            self.last_cycle_s = time.monotonic() - started
            if self.last_cycle_s > interval:
                self.metrics.inc("poll_overruns_total")
                self.log.warning("poll cycle overran the interval", seconds=round(self.last_cycle_s, 3), interval=interval)

    async def cycle(self) -> None:
        """Read every due device once, account the samples, hand new readings to ``on_cycle``."""
        now = now_ms()
        due = [d for d in self.devices if d.health.skip_until_ms <= now]
        results = await asyncio.gather(*(self._poll(d) for d in due))
        updates = [u for u in results if u is not None]
        if updates:
            await self.on_cycle(updates)
        self.cycles += 1
        self.metrics.inc("poll_cycles_total")

    async def _poll(self, device: Device) -> Update | None:
        measurement = await self._read_with_retries(device)
        if measurement is None:
            return None
        counter, modulus = measurement.counter(device.settings.channel)
        if counter is None:
            self._refuse(device, "no_counter", f"the map has no {device.settings.channel} counter")
            return None
        sample = Sample(now_ms(), counter, modulus, measurement.resolution_wh)
        outcome = advance(self.states.get(device.name), sample, meter=device.name, clock=self.clock, limits=device.limits)
        self.states[device.name] = outcome.state
        for refusal in outcome.refused:
            self._refuse(device, refusal.reason, refusal.detail)
        if outcome.readings:
            return device.name, outcome.state, list(outcome.readings)
        return None

    async def _read_with_retries(self, device: Device) -> Measurement | None:
        health = device.health
        delay = self.retry_backoff_s
        for attempt in range(self.retries + 1):
            try:
                measurement = await device.measure()
            except DeviceError as exc:
                self.metrics.inc("device_errors_total", kind=exc.kind)
                health.errors += 1
                health.last_error = str(exc)
                if attempt < self.retries:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                self._failed(device)
                return None
            except DecodeError as exc:
                self._answered(device)
                self._refuse(device, exc.reason, str(exc))
                return None
            self._answered(device)
            self.metrics.inc("readings_read_total")
            health.reads += 1
            return measurement
        return None

    def _answered(self, device: Device) -> None:
        health = device.health
        if health.state in ("failing", "down"):
            self.log.info("device answers again", meter=device.name, after_failures=health.consecutive_failures)
        health.state = "up"
        health.consecutive_failures = 0
        health.last_ok_ms = now_ms()
        health.skip_until_ms = 0

    def _failed(self, device: Device) -> None:
        health = device.health
        health.consecutive_failures += 1
        previous = health.state
        health.state = "down" if health.consecutive_failures >= self.down_after else "failing"
        # Poll a silent device every 2**(k-1) intervals, at most every backoff_max_s.
        wait_s = min(self.backoff_max_s, self.interval_s * 2 ** (health.consecutive_failures - 1))
        health.skip_until_ms = now_ms() + int(1000 * (wait_s - self.interval_s / 2))
        if health.state != previous:
            self.log.warning("device not answering", meter=device.name, state=health.state,
                             failures=health.consecutive_failures, error=health.last_error)

    def _refuse(self, device: Device, reason: str, detail: str) -> None:
        self.metrics.inc("readings_refused_total", reason=reason)
        device.health.last_refusal = f"{reason}: {detail}"
        self.log.warning("sample refused", meter=device.name, reason=reason, detail=detail)
