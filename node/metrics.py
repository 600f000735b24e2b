"""A small Prometheus registry: counters, gauges, histograms and rates, rendered as text.

The node updates the metrics; ``GET /metrics`` renders them in the Prometheus text
exposition format (version 0.0.4), which every Prometheus, VictoriaMetrics or Grafana
Agent scraper reads. We keep our own ~250 lines instead of ``prometheus_client``: the
node needs four metric types and one renderer, and the chosen stack stays as it is.

    registry = Registry()
    m = NodeMetrics.create(registry)
    m.height.set(1042)
    m.committed_txs.inc(250)
    m.committed_tps.add(250)
    with m.apply_seconds.time():
        ...
    registry.render()

Metric and label names follow Prometheus rules (checked when a metric is created);
label values are escaped when rendered, so any text may be a label value. Values are
floats or ints: these are measurements of the process, never ledger data, so the
integers-only rule of signed data does not apply. Everything runs on the node's event
loop; no locking.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "DEFAULT_BUCKETS",
    "Gauge",
    "Histogram",
    "MetricError",
    "NodeMetrics",
    "Rate",
    "Registry",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets in seconds, from a fast state read (~100 µs) to a slow block apply.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricError(ValueError):
    """A metric is misdeclared or misused (bad name, wrong labels, negative counter increment)."""


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Family:
    """A named metric with a fixed list of label names; one child per combination of label values."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise MetricError(f"metric name {name!r} is not a Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                raise MetricError(f"label name {label!r} is not allowed ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)")
        if len(set(labels)) != len(labels):
            raise MetricError(f"metric {name}: a label name appears twice")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], object] = {}

    def labels(self, *values: object, **named: object):
        """The child for one combination of label values (positional or by name)."""
        if named:
            if values or set(named) != set(self.label_names):
                raise MetricError(f"metric {self.name} takes labels {list(self.label_names)}")
            values = tuple(named[n] for n in self.label_names)
        if len(values) != len(self.label_names):
            raise MetricError(f"metric {self.name} takes {len(self.label_names)} label values, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _new_child(self):
        raise NotImplementedError

    def _one(self):
        """The only child of a metric without labels."""
        if self.label_names:
            raise MetricError(f"metric {self.name} has labels {list(self.label_names)}; use .labels(...)")
        return self.labels()

    def _samples(self) -> Iterator[str]:
        if not self.label_names and not self._children:
            self.labels()  # an unlabelled metric shows its zero before the first update
        for key, child in sorted(self._children.items()):
            yield from child.samples(self.name, self.label_names, key)

    def render(self) -> str:
        head = f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self._samples())


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def samples(self, name, label_names, key) -> Iterator[str]:
        yield f"{name}{_labels_text(label_names, key)} {_fmt(self.value)}"


class _CounterValue(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise MetricError("a counter only increases; use a gauge for values that go down")
        self.value += amount


class Counter(_Family):
    """A count that only goes up (restarts reset it; Prometheus' ``rate()`` handles that)."""

    kind = "counter"

    def _new_child(self) -> _CounterValue:
        return _CounterValue()

    def inc(self, amount: float = 1) -> None:
        self._one().inc(amount)

    @property
    def value(self) -> float:
        return self._one().value


class _GaugeValue(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class Gauge(_Family):
    """A value that goes up and down, or is read from a function when rendered."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.function: Callable[[], float | None] | None = None

    def _new_child(self) -> _GaugeValue:
        return _GaugeValue()

    def set(self, value: float) -> None:
        self._one().set(value)

    def inc(self, amount: float = 1) -> None:
        self._one().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._one().dec(amount)

    @property
    def value(self) -> float:
        return self._one().value

    def set_function(self, function: Callable[[], float | None]) -> None:
        """Read the value from ``function`` at every scrape (the node's height, the mempool size)."""
        if self.label_names:
            raise MetricError(f"gauge {self.name}: a function gauge has no labels")
        self.function = function

    def _samples(self) -> Iterator[str]:
        if self.function is None:
            yield from super()._samples()
            return
        try:
            value = self.function()
        except Exception:  # a scrape must never fail because one reading did
            return
        if value is not None:
            yield f"{self.name} {_fmt(value)}"


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self, name, label_names, key) -> Iterator[str]:
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            yield f"{name}_bucket{_labels_text(label_names, key, ('le', _fmt(bound)))} {cumulative}"
        yield f"{name}_bucket{_labels_text(label_names, key, ('le', '+Inf'))} {self.count}"
        yield f"{name}_sum{_labels_text(label_names, key)} {_fmt(self.sum)}"
        yield f"{name}_count{_labels_text(label_names, key)} {self.count}"


class Histogram(_Family):
    """Observations counted into cumulative buckets (upper bounds inclusive), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels)
        if "le" in self.label_names:
            raise MetricError(f"histogram {name}: 'le' is reserved for bucket bounds")
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or math.isinf(bounds[-1]):
            raise MetricError(f"histogram {name}: buckets must be finite, strictly increasing and not empty")
        self.bounds = bounds

    def _new_child(self) -> _HistogramValue:
        return _HistogramValue(self.bounds)

    def observe(self, value: float) -> None:
        self._one().observe(value)

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the seconds the ``with`` block takes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)


class Rate(_Family):
    """Events per second over a trailing window, rendered as a gauge (committed tx/s).

    Prometheus computes rates from counters itself (``rate(..._total[1m])``); this gauge
    serves a dashboard or ``gridledger status`` that reads one scrape.
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, help)
        if window_s <= 0:
            raise MetricError(f"rate {name}: the window must be positive")
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, float]] = deque()
        self._total = 0.0
        self._started = clock()

    def add(self, amount: float = 1) -> None:
        now = self._clock()
        self._events.append((now, amount))
        self._total += amount
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._total -= self._events.popleft()[1]

    def value(self) -> float:
        now = self._clock()
        self._expire(now)
        span = min(self.window_s, max(now - self._started, 1e-9))
        return self._total / span

    def _samples(self) -> Iterator[str]:
        yield f"{self.name} {_fmt(self.value())}"


class Registry:
    """The node's metrics, by name. Declaring a name twice with the same shape returns the first."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Family] = {}

    def _declare(self, cls: type, name: str, help: str, labels: Sequence[str], **kw) -> _Family:
        known = self._metrics.get(name)
        if known is not None:
            if type(known) is not cls or known.label_names != tuple(labels):
                raise MetricError(f"metric {name} is already declared as a {known.kind} with labels {list(known.label_names)}")
            return known
        metric = cls(name, help, labels, **kw) if cls is not Rate else cls(name, help, **kw)
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._declare(Counter, name, help, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = (), function: Callable[[], float | None] | None = None) -> Gauge:
        gauge = self._declare(Gauge, name, help, labels)
        if function is not None:
            gauge.set_function(function)
        return gauge

    def histogram(self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._declare(Histogram, name, help, labels, buckets=buckets)

    def rate(self, name: str, help: str, window_s: float = 10.0) -> Rate:
        return self._declare(Rate, name, help, (), window_s=window_s)

    def get(self, name: str) -> _Family | None:
        return self._metrics.get(name)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format, sorted by name."""
        return "".join(self._metrics[name].render() for name in sorted(self._metrics))


@dataclass(frozen=True)
class NodeMetrics:
    """The metrics every node exports, under their stable names. The node updates them."""

    height: Gauge
    committed_blocks: Counter
    committed_txs: Counter
    committed_tps: Rate
    mempool_size: Gauge
    mempool_bytes: Gauge
    rejected_txs: Counter
    view_changes: Counter
    peers: Gauge
    apply_seconds: Histogram

    @classmethod
    def create(cls, registry: Registry) -> NodeMetrics:
        return cls(
            height=registry.gauge("gridledger_height", "Height of the last committed block."),
            committed_blocks=registry.counter("gridledger_committed_blocks_total", "Blocks committed since the node started."),
            committed_txs=registry.counter("gridledger_committed_txs_total", "Transactions committed since the node started."),
            committed_tps=registry.rate("gridledger_committed_tps", "Transactions committed per second over the last 10 s."),
            mempool_size=registry.gauge("gridledger_mempool_size", "Transactions waiting in the mempool."),
            mempool_bytes=registry.gauge("gridledger_mempool_bytes", "Bytes of the transactions waiting in the mempool."),
            rejected_txs=registry.counter("gridledger_rejected_txs_total", "Transactions refused, by reason code.", ("code",)),
            view_changes=registry.counter("gridledger_view_changes_total", "BFT view changes (Raft: new terms) seen."),
            peers=registry.gauge("gridledger_peers", "Validators this node is connected to."),
            apply_seconds=registry.histogram("gridledger_apply_seconds", "Seconds to execute and apply one block."),
        )
