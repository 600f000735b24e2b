"""The gateway's operating endpoints: ``/healthz``, ``/status`` and ``/metrics``.

``/healthz`` answers 200 while the process serves, with a one-line summary (devices
down, node reachable, queue depth); ``/status`` is the full JSON picture, one entry per
device (``up``, ``failing`` or ``down``, last error, last refusal); ``/metrics`` is
Prometheus text. Names start with ``gridledger_meter_``:

    readings_read_total                 samples read from devices
    readings_refused_total{reason}      samples refused by validation
    readings_produced_total             period readings stored in the durable queue
    readings_queued / _in_flight / _parked   readings waiting, in a transaction, parked
    readings_submitted_total            readings sent to the node (first send)
    readings_committed_total            readings confirmed committed
    readings_already_on_chain_total     readings the chain already held
    readings_parked_total               readings refused by the node, kept for retry
    device_errors_total{kind}           failed reads: timeout, exception, connection
    device_up{meter}                    1 while the device answers
    devices_down                        devices that stopped answering
    poll_cycles_total, poll_cycle_seconds, poll_overruns_total
    node_up                             1 while the node answers
    submit_latency_seconds              histogram: first send -> commit confirmed
"""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from collections.abc import Callable

from aiohttp import web

__all__ = ["Metrics", "make_app"]

PREFIX = "gridledger_meter_"
LATENCY_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)
_HELP = {
    "readings_read_total": "Samples read from devices.",
    "readings_refused_total": "Samples refused by validation, by reason.",
    "readings_produced_total": "Period readings stored in the durable queue.",
    "readings_submitted_total": "Readings sent to the node (first send).",
    "readings_committed_total": "Readings confirmed committed by the node.",
    "readings_already_on_chain_total": "Readings the chain already held.",
    "readings_parked_total": "Readings refused by the node and kept for a later retry.",
    "device_errors_total": "Failed device reads, by kind.",
    "poll_cycles_total": "Completed poll cycles.",
    "poll_overruns_total": "Poll cycles that did not finish within the poll interval.",
}


def _escape(value: object) -> str:
    """A label value in the exposition format: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Metrics:
    """Counters and a latency histogram; gauges are read from the gateway when rendered."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
        self._buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latency_sum_ms = 0
        self._latency_count = 0
        self.started = time.time()
        for name in _HELP:
            self.counters[name]  # every counter shows, even at zero

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += n

    def value(self, name: str, **labels: str) -> int:
        if labels:
            return self.counters[name].get(tuple(sorted(labels.items())), 0)
        return sum(self.counters[name].values())

    def observe_submit(self, latency_ms: int) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            if latency_ms <= bound:
                self._buckets[i] += 1
                break
        else:
            self._buckets[-1] += 1
        self._latency_sum_ms += latency_ms
        self._latency_count += 1

    def render(self, gauges: dict[str, float | dict[tuple, float]]) -> str:
        lines: list[str] = []
        for name, series in sorted(self.counters.items()):
            lines.append(f"# HELP {PREFIX}{name} {_HELP.get(name, name)}")
            lines.append(f"# TYPE {PREFIX}{name} counter")
            if not series:
                lines.append(f"{PREFIX}{name} 0")
            for labels, value in sorted(series.items()):
                lines.append(f"{PREFIX}{name}{_labels(labels)} {value}")
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE {PREFIX}{name} gauge")
            if isinstance(value, dict):
                for labels, v in sorted(value.items()):
                    lines.append(f"{PREFIX}{name}{_labels(labels)} {v}")
            else:
                lines.append(f"{PREFIX}{name} {value}")
        lines.append(f"# TYPE {PREFIX}submit_latency_seconds histogram")
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS_MS, self._buckets, strict=False):
            cumulative += count
            lines.append(f'{PREFIX}submit_latency_seconds_bucket{{le="{bound / 1000}"}} {cumulative}')
        lines.append(f'{PREFIX}submit_latency_seconds_bucket{{le="+Inf"}} {self._latency_count}')
        lines.append(f"{PREFIX}submit_latency_seconds_sum {self._latency_sum_ms / 1000}")
        lines.append(f"{PREFIX}submit_latency_seconds_count {self._latency_count}")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lines.append("# TYPE process_cpu_seconds_total counter")
        lines.append(f"process_cpu_seconds_total {usage.ru_utime + usage.ru_stime}")
        lines.append("# TYPE process_max_resident_memory_bytes gauge")
        lines.append(f"process_max_resident_memory_bytes {usage.ru_maxrss * 1024}")
        lines.append("# TYPE process_start_time_seconds gauge")
        lines.append(f"process_start_time_seconds {self.started}")
        return "\n".join(lines) + "\n"


def make_app(snapshot: Callable[[], dict], gauges: Callable[[], dict], metrics: Metrics) -> web.Application:
    """The aiohttp application; ``snapshot`` gives /status, ``gauges`` the current gauge values."""

    async def healthz(request: web.Request) -> web.Response:
        full = snapshot()
        summary = {k: full[k] for k in ("status", "devices", "devices_down", "node_up", "queue") if k in full}
        return web.json_response(summary)

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(snapshot(), indent=1), content_type="application/json")

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(gauges()), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Format": "prometheus-0.0.4"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus)
    return app
