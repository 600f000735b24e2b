"""Counter samples -> readings per elementary period: conservation, flags, validation."""

from hypothesis import given
from hypothesis import strategies as st

from meters.readings import Flag, Limits, PeriodClock, Sample, TrackerState, advance

CLOCK = PeriodClock(genesis_time=1_000, period_seconds=60)  # one-minute periods from t=1000 s
LIMITS = Limits(rated_power_w=6_000, tolerance_pct=120, estimate_gap_ms=30_000, update_ms=0)
T0 = 1_000_000 + 60_000 * 10  # start of period 10, in ms


def feed(samples, state=None, limits=LIMITS):
    readings, refused = [], []
    for s in samples:
        out = advance(state, s, meter="m", clock=CLOCK, limits=limits)
        state = out.state
        readings += out.readings
        refused += out.refused
    return state, readings, refused


@given(st.lists(st.tuples(st.integers(1, 40_000), st.integers(0, 100)), min_size=1, max_size=60),
       st.integers(0, 59_999), st.integers(0, 10**9))
def test_energy_is_conserved_and_periods_are_contiguous(steps, offset, start_wh):
    t, c = T0 + offset, start_wh
    samples = [Sample(t, c)]
    for dt, dc in steps:
        t += dt
        c += dc  # at most 100 Wh in >= 1 ms can exceed 6 kW: shrink to the rated bound
        samples.append(Sample(t, samples[-1].counter_wh + min(dc, 6_000 * dt // 3_600_000)))
    state, readings, refused = feed(samples)
    assert not refused
    assert sum(r.energy_wh for r in readings) + state.open_wh == state.last_wh - state.first_wh == state.accounted_wh
    periods = [r.period for r in readings]
    assert periods == list(range(CLOCK.period_of(samples[0].at_ms), state.open_period))
    assert all(r.energy_wh >= 0 for r in readings)


def test_energy_across_a_boundary_is_split_by_time():
    # 50 Wh between 45 s into period 10 and 15 s into period 11: 25 Wh each side.
    state, readings, refused = feed([Sample(T0 - 60_000, 0), Sample(T0 + 45_000, 0), Sample(T0 + 75_000, 50)])
    assert not refused
    assert [(r.period, r.energy_wh) for r in readings] == [(9, 0), (10, 25)]
    assert state.open_wh == 25


def test_first_period_is_partial_and_later_ones_are_not():
    _, readings, _ = feed([Sample(T0 + 30_000, 0), Sample(T0 + 60_000, 50), Sample(T0 + 120_000, 100)])
    assert [(r.period, r.flags) for r in readings] == [(10, Flag.PARTIAL), (11, 0)]


def test_gap_longer_than_the_limit_apportions_and_flags_estimated():
    # Silent for three periods: 0 -> 180 Wh over 180 s, 60 Wh per period, all ESTIMATED.
    _, readings, _ = feed([Sample(T0, 0), Sample(T0 + 180_000, 180)])
    assert [(r.period, r.energy_wh) for r in readings] == [(10, 60), (11, 60), (12, 60)]
    assert all(r.flags & Flag.ESTIMATED for r in readings)


def test_reset_is_confirmed_by_the_next_sample_then_flagged_never_negative():
    base = [Sample(T0, 50_000), Sample(T0 + 10_000, 50_010)]
    state, readings, refused = feed(base + [Sample(T0 + 20_000, 4)])
    assert not readings and not refused and state.suspects  # held, not yet believed
    state, readings, refused = feed([Sample(T0 + 70_000, 20)], state)
    assert not refused
    assert [r.period for r in readings] == [10]
    assert readings[0].flags & Flag.RESET and readings[0].energy_wh == 10 + 4 + 16 * 40_000 // 50_000
    assert state.last_wh == 20 and state.open_wh >= 0


def test_single_glitch_to_zero_is_refused_not_taken_as_a_reset():
    samples = [Sample(T0, 80_000), Sample(T0 + 10_000, 0), Sample(T0 + 20_000, 80_020)]
    state, readings, refused = feed(samples)
    assert [r.reason for r in refused] == ["reset"]
    assert state.last_wh == 80_020 and state.open_wh == 20


def test_rollover_adds_the_modulus_and_is_flagged():
    modulus = 1_000_000
    samples = [Sample(T0, modulus - 30, modulus), Sample(T0 + 20_000, 5, modulus),
               Sample(T0 + 40_000, 25, modulus), Sample(T0 + 65_000, 35, modulus)]
    state, readings, refused = feed(samples)
    assert not refused
    # 30 + 5 across the wrap, 20 more, and 20 of the last 25 seconds' 10 Wh.
    assert [(r.period, r.energy_wh, r.flags) for r in readings] == [(10, 35 + 20 + 8, Flag.ROLLOVER)]
    assert state.open_wh == 2 and state.open_flags == 0


def test_delta_above_rated_power_is_refused_and_keeps_the_baseline():
    # 6 kW * 10 s * 1.2 = 20 Wh allowed; 500 Wh in 10 s is impossible.
    state, readings, refused = feed([Sample(T0, 1_000), Sample(T0 + 10_000, 1_500), Sample(T0 + 20_000, 1_010)])
    assert [r.reason for r in refused] == ["above_rated_power"]
    assert state.last_wh == 1_010


def test_rated_power_times_the_period_bounds_every_reading():
    # A steady 5 kW under a 6 kW rating: each one-minute period is exactly 83 or 84 Wh.
    samples = [Sample(T0 + i * 15_000, 5_000 * i * 15 // 3_600) for i in range(20)]
    _, readings, refused = feed(samples)
    assert not refused
    assert all(r.energy_wh <= 6_000 * 60 * 120 // 100 // 3_600 for r in readings)


def test_persistent_backwards_jump_is_rebased_after_consistent_samples():
    samples = [Sample(T0, 900_000), Sample(T0 + 10_000, 900_010)]
    samples += [Sample(T0 + 20_000 + i * 10_000, 500_000 + i * 10) for i in range(3)]
    state, readings, refused = feed(samples)
    assert [r.reason for r in refused] == ["negative_delta"]  # the jump, once
    assert state.last_wh == 500_020 and state.open_flags & Flag.PARTIAL
    assert state.accounted_wh == 10 + 20


def test_stale_sample_is_refused():
    state, _, _ = feed([Sample(T0, 10)])
    _, _, refused = feed([Sample(T0, 11)], state)
    assert [r.reason for r in refused] == ["stale_sample"]


def test_state_survives_encoding_with_held_samples():
    state, _, _ = feed([Sample(T0, 50_000), Sample(T0 + 10_000, 3)])
    assert state.suspects
    assert TrackerState.decode(state.encode()) == state


@given(st.lists(st.tuples(st.integers(1_000, 20_000), st.integers(0, 30),
                          st.sampled_from(["ok"] * 6 + ["zero", "huge", "back", "reset"])), min_size=2, max_size=80))
def test_garbage_never_yields_negative_or_lost_energy(steps):
    # A real counter with injected garbage samples, resets and jumps: whatever the gateway
    # decides, readings are non-negative, periods contiguous, and every Wh accounted once.
    t, true = T0, 10**6
    samples = [Sample(t, true)]
    for dt, dc, kind in steps:
        t += dt
        true += min(dc, 6_000 * dt // 3_600_000)
        if kind == "reset":
            true = 0
        value = {"ok": true, "reset": true, "zero": 0, "huge": true + 10**9, "back": max(0, true - 5_000)}[kind]
        samples.append(Sample(t, value))
    state, readings, _ = feed(samples)
    assert all(r.energy_wh >= 0 for r in readings)
    assert [r.period for r in readings] == list(range(CLOCK.period_of(T0), state.open_period))
    assert sum(r.energy_wh for r in readings) + state.open_wh + state.refused_wh == state.accounted_wh
    assert all(r.energy_wh <= LIMITS.max_delta(60_000, 1) for r in readings)
