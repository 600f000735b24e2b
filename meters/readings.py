"""From cumulative counter samples to readings: integer Wh per elementary period.

A meter's counter is sampled at every poll. The energy between two accepted samples
(the delta of the cumulative counter) is attributed to the elementary periods the
interval covers, in proportion to time, with integer arithmetic that conserves every
Wh: the shares of one delta always sum to the delta. A period is *closed*, and becomes
a :class:`Reading`, when a sample lands after its end. Because each reading is the
difference of integer cumulative values, rounding never drifts (see
``meters.maps.sdm630`` on float32 counters).

Validation happens per sample, before anything is attributed:

- a delta above ``rated power * elapsed time * tolerance`` (plus the device's register
  refresh step and two counter steps of quantisation) is impossible and refused
  (``above_rated_power``); summed over a period this is the rule "no reading above
  rated power times the period";
- a counter that went backwards is a *rollover* when adding the counter's modulus
  gives a plausible delta (flag ``ROLLOVER``), a *reset* when the new value is itself
  plausible as energy counted from zero (flag ``RESET``, the energy since the reset),
  and otherwise refused (``negative_delta``);
- NaN and infinite floats never reach this module: decoding refuses them.

One odd sample must not move the baseline (a garbage read of 0.0 is not a reset), so an
anomalous sample is *held*: a reset is accepted once ``confirm_reset`` following sample
continues it plausibly; a jump that persists for ``rebase_after`` mutually consistent
samples (a replaced meter, a counter set by a technician) becomes the new baseline,
the jump is refused, the unobservable energy in between is counted as zero and the
periods it touches are flagged ``PARTIAL``. A held sample that the next ones
contradict is refused.

Everything here is pure: :func:`advance` maps (state, sample) to (state, readings,
refusals). The gateway persists the state and the readings it produced in one
transaction, which is what makes a crash lose or duplicate nothing.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace

__all__ = [
    "FLAG_MASK",
    "Flag",
    "Limits",
    "Outcome",
    "PeriodClock",
    "Reading",
    "Refusal",
    "Sample",
    "TrackerState",
    "advance",
]


class Flag(enum.IntFlag):
    """The bits of a reading's ``flags`` (the one place they are defined).

    RESET      the counter restarted from zero in this period; energy is counted from
               the reset (a lower bound).
    ROLLOVER   the counter wrapped past its maximum; the wrap was added back (exact).
    ESTIMATED  part of this period's energy was apportioned by time across a sampling
               gap longer than the configured limit (device or gateway outage).
    PARTIAL    the meter was not observable for part of this period (first period
               after start, or a re-based counter); the energy is a lower bound.
    """

    RESET = 1
    ROLLOVER = 2
    ESTIMATED = 4
    PARTIAL = 8


FLAG_MASK = int(Flag.RESET | Flag.ROLLOVER | Flag.ESTIMATED | Flag.PARTIAL)


@dataclass(frozen=True, slots=True)
class Reading:
    """A meter's energy for one elementary period, as submitted on chain."""

    meter: str
    period: int
    energy_wh: int
    flags: int = 0

    def as_arg(self) -> list[int]:
        """The ``[period, energy_wh, flags]`` triple of ``meters.submit_readings``."""
        return [self.period, self.energy_wh, self.flags]


@dataclass(frozen=True, slots=True)
class PeriodClock:
    """Elementary periods numbered from the shard's genesis: ``(t - genesis) // period``."""

    genesis_time: int
    period_seconds: int

    def period_of(self, at_ms: int) -> int:
        return (at_ms - self.genesis_time * 1000) // (self.period_seconds * 1000)

    def start_ms(self, period: int) -> int:
        return (self.genesis_time + period * self.period_seconds) * 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """What a meter can plausibly measure, and how patient validation is."""

    rated_power_w: int
    tolerance_pct: int = 120
    estimate_gap_ms: int = 30_000
    update_ms: int = 1_000
    confirm_reset: int = 1
    rebase_after: int = 3

    def max_delta(self, elapsed_ms: int, resolution_wh: int) -> int:
        """The most energy (Wh) the meter can count in ``elapsed_ms``.

        Devices refresh their counter registers in steps (``update_ms``, about a second),
        so a sample may include energy from up to one step before the previous sample;
        and each value is quantised (``resolution_wh``) at both ends.
        """
        span = elapsed_ms + self.update_ms
        return self.rated_power_w * span * self.tolerance_pct // (3_600_000 * 100) + 2 * resolution_wh


@dataclass(frozen=True, slots=True)
class Sample:
    """One accepted-for-consideration counter value (cumulative Wh) at gateway time ``at_ms``."""

    at_ms: int
    counter_wh: int
    modulus_wh: int | None = None
    resolution_wh: int = 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """A sample that was not used, and why (``reason`` is a stable snake_case word)."""

    reason: str
    detail: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class TrackerState:
    """Where a meter's accounting stands; persisted with the readings it produced.

    ``accounted_wh`` is all energy attributed since ``first_ms``: the readings emitted,
    ``open_wh``, and ``refused_wh`` (periods refused as above rated power), an audit
    total that survives restarts.
    """

    last_ms: int
    last_wh: int
    open_period: int
    open_wh: int
    open_flags: int
    first_ms: int
    first_wh: int
    accounted_wh: int = 0
    refused_wh: int = 0
    suspects: tuple[tuple[Sample, str], ...] = ()

    def encode(self) -> bytes:
        doc = {
            "last_ms": self.last_ms,
            "last_wh": self.last_wh,
            "open_period": self.open_period,
            "open_wh": self.open_wh,
            "open_flags": self.open_flags,
            "first_ms": self.first_ms,
            "first_wh": self.first_wh,
            "accounted_wh": self.accounted_wh,
            "refused_wh": self.refused_wh,
            "suspects": [[s.at_ms, s.counter_wh, s.modulus_wh, s.resolution_wh, r] for s, r in self.suspects],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> TrackerState:
        doc = json.loads(data)
        suspects = tuple((Sample(a, c, m, res), r) for a, c, m, res, r in doc.pop("suspects"))
        return cls(**doc, suspects=suspects)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: TrackerState
    readings: tuple[Reading, ...] = ()
    refused: tuple[Refusal, ...] = ()
    held: bool = False


def _classify(last_ms: int, last_wh: int, sample: Sample, limits: Limits) -> tuple[str, int, int]:
    """(verdict, delta, flags) of ``sample`` against a baseline; verdict ok|reset|negative_delta|above_rated_power."""
    elapsed = sample.at_ms - last_ms
    allowed = limits.max_delta(elapsed, sample.resolution_wh)
    delta = sample.counter_wh - last_wh
    if delta >= 0:
        return ("ok", delta, 0) if delta <= allowed else ("above_rated_power", delta, 0)
    if sample.modulus_wh and 0 <= delta + sample.modulus_wh <= allowed:
        return "ok", delta + sample.modulus_wh, int(Flag.ROLLOVER)
    if sample.counter_wh <= allowed:
        return "reset", sample.counter_wh, int(Flag.RESET)
    return "negative_delta", delta, 0


def _attribute(state: TrackerState, sample: Sample, delta: int, flags: int, meter: str,
               clock: PeriodClock, limits: Limits) -> tuple[TrackerState, list[Reading]]:
    """Spread ``delta`` over (state.last_ms, sample.at_ms] and close the periods that ended."""
    start, end = state.last_ms, sample.at_ms
    elapsed = end - start
    last_period = clock.period_of(end)
    # Estimated: a long gap with a period boundary strictly inside it (a sample exactly on
    # the boundary measured it; one inside a short gap is ordinary interpolation).
    if elapsed > limits.estimate_gap_ms and clock.start_ms(state.open_period + 1) < end:
        flags |= Flag.ESTIMATED
    readings: list[Reading] = []
    open_wh, open_flags, given = state.open_wh, state.open_flags, 0
    for period in range(state.open_period, last_period):
        # Cumulative share up to the boundary, floored: the shares sum to delta exactly.
        upto = delta * (clock.start_ms(period + 1) - start) // elapsed
        readings.append(Reading(meter, period, open_wh + upto - given, int(open_flags | flags)))
        given = upto
        open_wh, open_flags = 0, 0
    open_wh += delta - given
    if last_period == state.open_period or end > clock.start_ms(last_period):
        open_flags |= flags
    new = replace(
        state,
        last_ms=end,
        last_wh=sample.counter_wh,
        open_period=last_period,
        open_wh=open_wh,
        open_flags=int(open_flags),
        accounted_wh=state.accounted_wh + delta,
        suspects=(),
    )
    return new, readings


def advance(state: TrackerState | None, sample: Sample, *, meter: str, clock: PeriodClock, limits: Limits) -> Outcome:
    """Account one sample: the new state, the periods it closed, the samples it refused.

    A closed period whose energy exceeds rated power times the period is refused as a
    whole (``above_rated_power``): per-sample slack for register refresh and
    quantisation adds up over many short polls, the period bound does not.
    """
    out = _advance(state, sample, meter=meter, clock=clock, limits=limits)
    bound = limits.max_delta(clock.period_seconds * 1000, sample.resolution_wh)
    too_big = [r for r in out.readings if r.energy_wh > bound]
    if not too_big:
        return out
    refusals = tuple(Refusal("above_rated_power", f"period {r.period}: {r.energy_wh} Wh exceeds the rated "
                             f"{limits.rated_power_w} W over {clock.period_seconds} s ({bound} Wh)", sample.at_ms)
                     for r in too_big)
    kept = tuple(r for r in out.readings if r.energy_wh <= bound)
    dropped = sum(r.energy_wh for r in too_big)
    state = replace(out.state, refused_wh=out.state.refused_wh + dropped)
    return Outcome(state, kept, out.refused + refusals, out.held)


def _advance(state: TrackerState | None, sample: Sample, *, meter: str, clock: PeriodClock, limits: Limits) -> Outcome:
    if state is None:
        period = clock.period_of(sample.at_ms)
        partial = int(Flag.PARTIAL) if sample.at_ms > clock.start_ms(period) else 0
        return Outcome(TrackerState(sample.at_ms, sample.counter_wh, period, 0, partial,
                                    sample.at_ms, sample.counter_wh))
    if sample.at_ms <= state.last_ms:
        refusal = Refusal("stale_sample", f"sample at {sample.at_ms} ms is not after the last one ({state.last_ms} ms)", sample.at_ms)
        return Outcome(state, refused=(refusal,))

    verdict, delta, flags = _classify(state.last_ms, state.last_wh, sample, limits)
    if verdict == "ok":
        glitches = tuple(_refusal(s, r, state) for s, r in state.suspects)
        new, readings = _attribute(state, sample, delta, flags, meter, clock, limits)
        return Outcome(new, tuple(readings), glitches)

    refused: tuple[Refusal, ...] = ()
    chain = state.suspects
    if chain:
        # Judged against the chain's first sample, so slack is counted once over its span.
        head = chain[0][0]
        follow, _, _ = _classify(head.at_ms, head.counter_wh, sample, limits)
        if follow != "ok":
            refused = tuple(_refusal(s, r, state) for s, r in chain)
            chain = ()
    chain = chain + ((sample, verdict),)
    first, first_verdict = chain[0]

    if first_verdict == "reset" and len(chain) > limits.confirm_reset:
        _, reset_delta, reset_flags = _classify(state.last_ms, state.last_wh, first, limits)
        new, readings = _attribute(state, first, reset_delta, reset_flags, meter, clock, limits)
        return _replay(new, chain[1:], readings, refused, meter, clock, limits)
    if len(chain) >= limits.rebase_after:
        # The jump itself is refused; counting resumes from the new level.
        refused += (_refusal(first, first_verdict, state),)
        new, readings = _attribute(state, first, 0, int(Flag.PARTIAL), meter, clock, limits)
        new = replace(new, open_flags=new.open_flags | Flag.PARTIAL)
        return _replay(new, chain[1:], readings, refused, meter, clock, limits)
    return Outcome(replace(state, suspects=chain), refused=refused, held=True)


def _replay(state: TrackerState, rest, readings: list[Reading], refused: tuple[Refusal, ...],
            meter: str, clock: PeriodClock, limits: Limits) -> Outcome:
    """Apply the confirmed followers of a reset or re-base from the new baseline."""
    out = list(readings)
    for follower, _ in rest:
        step = _advance(state, follower, meter=meter, clock=clock, limits=limits)
        state = step.state
        out.extend(step.readings)
        refused += step.refused
    return Outcome(state, tuple(out), refused)


def _refusal(sample: Sample, reason: str, state: TrackerState) -> Refusal:
    return Refusal(
        reason,
        f"counter {sample.counter_wh} Wh at {sample.at_ms} ms against {state.last_wh} Wh at {state.last_ms} ms",
        sample.at_ms,
    )
