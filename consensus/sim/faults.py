"""Fault plans: which faults a seeded run injects, and when.

A plan is drawn from the run's RNG, so a seed names its plan. The *mix* chooses the
families of faults; ``random`` (the default) picks a mix per seed, weighted towards
``mixed``, which combines everything at random intensities. Targets that depend on
the run (which node leads, which nodes are up) are resolved when the event fires,
from the same RNG, so the plan stays protocol-agnostic.

Every run has two phases. Until ``heal_at`` anything in the mix may happen: crashes of
any number of replicas (every one at once included), torn crashes between the actions
of one step, partitions, loss and duplication. At ``heal_at`` the network heals, every
crashed replica restarts except at most the number the protocol tolerates, and a probe
batch is proposed; liveness is measured from there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["MIXES", "FaultEvent", "FaultPlan", "make_plan"]

MIXES = ("random", "clean", "network", "partition", "crash", "all-crash", "byzantine", "reconfig", "mixed")

# How often each mix is drawn by ``random`` (out of 100).
_RANDOM_WEIGHTS = (
    ("mixed", 40),
    ("network", 10),
    ("partition", 10),
    ("crash", 10),
    ("all-crash", 8),
    ("byzantine", 10),
    ("reconfig", 10),
    ("clean", 2),
)


@dataclass(frozen=True)
class FaultEvent:
    """``kind`` is one of ``crash``, ``crash_all``, ``partition``, ``lossy``, ``garbage``, ``reconfig``."""

    at: int
    kind: str
    params: tuple[tuple[str, object], ...] = ()

    def get(self, name: str, default: object = None) -> object:
        for key, value in self.params:
            if key == name:
                return value
        return default


@dataclass
class FaultPlan:
    mix: str
    n: int
    heal_at: int
    load_every: int  # mean ticks between proposals
    invalid_permille: int  # proposals that are junk the application refuses
    loss_permille: int
    duplicate_permille: int
    stale_ticks: int  # how late a duplicate may arrive
    max_base: int
    max_jitter: int
    checkpoint_interval: int
    snapshot_interval: int
    max_batch_entries: int
    byzantine: dict[int, str] = field(default_factory=dict)  # initial node index -> behaviour
    stay_down: int = 0  # at most this many replicas stay down after the heal (capped by tolerance)
    # Proposals bound to one height (a node's block, built on the proposer's head): they
    # go stale whenever another batch fills that height first.
    bound_permille: int = 0
    events: list[FaultEvent] = field(default_factory=list)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for event in self.events:
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
        parts = [f"mix={self.mix}", f"n={self.n}", f"heal_at={self.heal_at}",
                 f"loss={self.loss_permille}‰", f"dup={self.duplicate_permille}‰"]
        if self.stale_ticks:
            parts.append(f"stale≤{self.stale_ticks}")
        if self.bound_permille:
            parts.append(f"bound={self.bound_permille}‰")
        if self.byzantine:
            parts.append("byzantine=" + ",".join(f"n{i}:{b}" for i, b in sorted(self.byzantine.items())))
        parts += [f"{k}×{v}" for k, v in kinds.items()]
        return " ".join(parts)


def _pick_mix(rng: random.Random) -> str:
    roll = rng.randrange(100)
    for mix, weight in _RANDOM_WEIGHTS:
        if roll < weight:
            return mix
        roll -= weight
    return "mixed"


def make_plan(rng: random.Random, *, protocol: str, byzantine_behaviours: tuple[str, ...],
              max_faulty, mix: str = "random", n: int | None = None) -> FaultPlan:
    """Draw a plan for one run. ``max_faulty(n)`` is the protocol's tolerance."""
    if mix not in MIXES:
        raise ValueError(f"unknown fault mix {mix!r}; choose one of {', '.join(MIXES)}")
    if mix == "random":
        mix = _pick_mix(rng)
    if mix == "byzantine" and not byzantine_behaviours:
        mix = "network"  # a crash-fault protocol has no lies to tell; test its network instead
    if n is None:
        n = rng.choice((3, 3, 5, 5, 4)) if protocol == "raft" else rng.choice((4, 4, 4, 4, 5, 7))
    heal_at = rng.randint(120, 260)
    plan = FaultPlan(
        mix=mix,
        n=n,
        heal_at=heal_at,
        load_every=rng.randint(2, 6),
        invalid_permille=rng.choice((0, 0, 50, 100)),
        loss_permille=0,
        duplicate_permille=0,
        stale_ticks=0,
        max_base=rng.randint(1, 3),
        max_jitter=rng.randint(0, 5),
        checkpoint_interval=rng.choice((4, 8, 16)),
        snapshot_interval=rng.choice((8, 16, 32)),
        max_batch_entries=rng.choice((1, 4, 16, 64)),
    )
    everything = mix == "mixed"

    def chance(permille: int) -> bool:
        return rng.randrange(1000) < permille

    if mix in ("network", "partition") or (everything and chance(700)):
        if mix != "partition":
            plan.loss_permille = rng.choice((0, 20, 50, 100, 200, 300))
            plan.duplicate_permille = rng.choice((0, 20, 50, 100))
            plan.stale_ticks = rng.choice((0, 0, 20, 60))
            plan.max_jitter = rng.randint(2, 10)
        if chance(300):
            for _ in range(rng.randint(1, 3)):
                plan.events.append(FaultEvent(rng.randint(5, heal_at - 5), "garbage", (("count", rng.randint(1, 20)),)))
    if mix in ("network", "partition") or (everything and chance(600)):
        for _ in range(rng.randint(1, 4)):
            start = rng.randint(5, heal_at - 10)
            shape = rng.choice(("split", "isolate", "isolate_leader", "isolate_leader"))
            plan.events.append(FaultEvent(start, "partition", (("shape", shape), ("until", min(heal_at, start + rng.randint(10, 80))))))
        if chance(300):
            start = rng.randint(5, heal_at - 10)
            plan.events.append(FaultEvent(start, "lossy", (("permille", rng.choice((300, 500, 800))), ("until", min(heal_at, start + rng.randint(10, 60))))))
    if mix == "crash" or (everything and chance(600)):
        for _ in range(rng.randint(1, 5)):
            plan.events.append(FaultEvent(rng.randint(5, heal_at - 5), "crash", (
                ("target", rng.choice(("random", "random", "leader"))),
                ("down_for", rng.randint(1, 60)),
                ("torn", chance(500)),
            )))
    if mix == "all-crash" or (everything and chance(250)):
        for _ in range(rng.randint(1, 2)):
            plan.events.append(FaultEvent(rng.randint(10, heal_at - 10), "crash_all", (
                ("down_for", rng.randint(1, 30)),
                ("stagger", rng.randint(0, 10)),
                ("torn_permille", rng.choice((0, 300, 1000))),
            )))
    if (mix == "byzantine" or (everything and chance(500))) and byzantine_behaviours:
        count = rng.randint(1, max_faulty(n))
        for index in rng.sample(range(n), count):
            plan.byzantine[index] = rng.choice(byzantine_behaviours)
    if mix == "reconfig" or (everything and chance(400)):
        for _ in range(rng.randint(1, 3)):
            plan.events.append(FaultEvent(rng.randint(10, heal_at - 20), "reconfig", (
                ("op", rng.choice(("add", "remove", "replace"))),
            )))
    if mix != "clean":
        plan.stay_down = rng.choice((0, 0, 1, 2))
    plan.bound_permille = rng.choice((0, 0, 100, 300))
    plan.events.sort(key=lambda e: e.at)
    return plan
