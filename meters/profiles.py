"""Power profiles of simulated meters, deterministic from a seed and the simulated time.

Every profile is a pure function ``power_w(t)`` of the simulated unix time ``t``
(integer seconds) returning integer watts, positive when the meter's site imports
(consumes) and negative when it exports (produces). Randomness comes from a
counter-based hash (SplitMix64) of ``(seed, stream, t)``, not from a stateful
generator, so the value at any instant is the same however often, in whatever order
and from however many processes it is asked for.

- ``solar``: a clear-sky bell between sunrise and sunset (day length varies over the
  year), attenuated by slowly drifting clouds; a few watts of standby import at night.
- ``wind``: a turbine power curve (cut-in 3 m/s, rated 12 m/s, cut-out 25 m/s) driven
  by a wind speed made of hourly drift, five-minute gusts and ten-second turbulence.
- ``household``: base load, a morning and an evening peak, appliances switching on at
  random minutes.
- ``constant``: a fixed power, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meters.errors import ConfigError

__all__ = ["PROFILES", "Profile", "smooth_noise", "unit_noise"]

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def unit_noise(seed: int, stream: int, n: int) -> float:
    """A uniform value in [0, 1) for knot ``n`` of ``stream``; the same for the same inputs."""
    return _mix(_mix(_mix(seed & _MASK) ^ (stream & _MASK)) ^ (n & _MASK)) / 2.0**64


def smooth_noise(seed: int, stream: int, t: float, period_s: float) -> float:
    """Value noise in [0, 1): random knots every ``period_s``, cosine-interpolated between."""
    x = t / period_s
    n = math.floor(x)
    a, b = unit_noise(seed, stream, n), unit_noise(seed, stream, n + 1)
    w = (1 - math.cos(math.pi * (x - n))) / 2
    return a + (b - a) * w


@dataclass(frozen=True, slots=True)
class Profile:
    """``kind`` with its peak (solar, household), rating (wind) or fixed power (constant)."""

    kind: str
    peak_w: int
    seed: int
    utc_offset_s: int = 3600

    def power_w(self, t: int) -> int:
        return _KINDS[self.kind](self, t)


def _solar(p: Profile, t: int) -> int:
    local = t + p.utc_offset_s
    hour = (local % 86400) / 3600
    day = (local // 86400) % 365
    length = 12 + 4 * math.sin(2 * math.pi * (day - 80) / 365)  # hours of daylight
    sunrise = 12 - length / 2
    if not sunrise < hour < sunrise + length:
        return 5  # inverter standby, drawn from the grid at night
    elevation = math.sin(math.pi * (hour - sunrise) / length)
    season = 0.75 + 0.25 * math.sin(2 * math.pi * (day - 80) / 365)
    clouds = smooth_noise(p.seed, 1, t, 1800)
    flicker = smooth_noise(p.seed, 2, t, 60)
    attenuation = (1 - 0.7 * clouds**2) * (0.95 + 0.05 * flicker)
    return -round(p.peak_w * season * elevation**1.3 * attenuation)


def _wind(p: Profile, t: int) -> int:
    speed = (
        7.5
        + 4.0 * (2 * smooth_noise(p.seed, 3, t, 3600) - 1)
        + 2.0 * (2 * smooth_noise(p.seed, 4, t, 300) - 1)
        + 0.8 * (2 * unit_noise(p.seed, 5, t // 10) - 1)
    )
    if speed < 3 or speed >= 25:
        return 0
    if speed >= 12:
        return -p.peak_w
    return -round(p.peak_w * ((speed - 3) / 9) ** 3)


def _household(p: Profile, t: int) -> int:
    # Each household keeps its own habits: peaks up to 45 minutes earlier or later, a
    # larger or smaller base load.
    shift = (unit_noise(p.seed, 8, 0) - 0.5) * 1.5
    hour = ((t + p.utc_offset_s) % 86400) / 3600 - shift
    base = 0.05 + 0.05 * smooth_noise(p.seed, 10, t, 900)
    shape = base + 0.30 * math.exp(-((hour - 7.5) ** 2) / 1.0) + 0.50 * math.exp(-((hour - 19.0) ** 2) / 2.5)
    minute = t // 60
    appliance = 0.0
    if unit_noise(p.seed, 6, minute) < 0.15:
        appliance = 0.2 + 0.4 * unit_noise(p.seed, 7, minute)
    return round(p.peak_w * min(1.0, shape + appliance))


def _constant(p: Profile, t: int) -> int:
    return p.peak_w


_KINDS = {"solar": _solar, "wind": _wind, "household": _household, "constant": _constant}
PROFILES = tuple(_KINDS)


def make_profile(kind: str, peak_w: int, seed: int, utc_offset_s: int = 3600) -> Profile:
    if kind not in _KINDS:
        raise ConfigError(f"unknown profile {kind!r}; allowed: {', '.join(PROFILES)}")
    if type(peak_w) is not int or (kind != "constant" and peak_w <= 0):
        raise ConfigError(f"profile {kind}: peak_w must be a positive integer (watts), got {peak_w!r}")
    return Profile(kind, peak_w, seed, utc_offset_s)
