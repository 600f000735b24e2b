"""The simulated network: per-link delays, loss, duplication, reordering and partitions.

Probabilities are given per mille and delays in whole ticks; a run depends only on the
seeded ``random.Random`` it is given. Reordering needs no rule of its own:
every copy of a message draws its own delay, and messages due at the same tick are
delivered in an order drawn from the same RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["LinkProfile", "Network"]


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One direction of a link: ``base + uniform(0, jitter)`` ticks, and now and then a spike."""

    base: int
    jitter: int
    spike_permille: int
    spike: int


class Network:
    """Decides, for each message, whether and when each copy arrives."""

    def __init__(self, rng: random.Random, *, max_base: int = 3, max_jitter: int = 4,
                 spike_permille: int = 10, spike: int = 12) -> None:
        self._rng = rng
        self._max_base = max_base
        self._max_jitter = max_jitter
        self._spike_permille = spike_permille
        self._spike = spike
        self._links: dict[tuple[str, str], LinkProfile] = {}
        self.loss_permille = 0
        self.duplicate_permille = 0
        # A duplicate may arrive much later than the original: a stale, replayed message.
        self.stale_ticks = 0
        self._group: dict[str, int] | None = None  # node -> side of the current partition
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def link(self, src: str, dst: str) -> LinkProfile:
        profile = self._links.get((src, dst))
        if profile is None:
            rng = self._rng
            profile = LinkProfile(
                base=rng.randint(1, self._max_base),
                jitter=rng.randint(0, self._max_jitter),
                spike_permille=rng.randint(0, self._spike_permille),
                spike=rng.randint(1, self._spike),
            )
            self._links[(src, dst)] = profile
        return profile

    # ----------------------------------------------------------------- partitions

    def partition(self, groups: list[list[str]]) -> None:
        """Cut the network into ``groups``; nodes named in no group are isolated from all."""
        self._group = {name: i for i, group in enumerate(groups) for name in group}

    def heal_partition(self) -> None:
        self._group = None

    @property
    def partitioned(self) -> bool:
        return self._group is not None

    def connected(self, src: str, dst: str) -> bool:
        if self._group is None:
            return True
        a = self._group.get(src)
        return a is not None and a == self._group.get(dst)

    # ------------------------------------------------------------------- delivery

    def delays(self, src: str, dst: str) -> list[int]:
        """The delays (ticks) of the copies of one message that will arrive; empty if it is lost."""
        self.sent += 1
        rng = self._rng
        if not self.connected(src, dst) or (self.loss_permille and rng.random() * 1000 < self.loss_permille):
            self.dropped += 1
            return []
        profile = self.link(src, dst)
        copies = 1
        if self.duplicate_permille and rng.random() * 1000 < self.duplicate_permille:
            copies = 2
            self.duplicated += 1
        out = []
        for copy in range(copies):
            delay = profile.base + (rng.randint(0, profile.jitter) if profile.jitter else 0)
            if profile.spike_permille and rng.random() * 1000 < profile.spike_permille:
                delay += profile.spike
            if copy and self.stale_ticks:
                delay += rng.randint(0, self.stale_ticks)
            out.append(delay)
        return out
