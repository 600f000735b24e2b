"""The seeded run: a fault plan, client load, reconfigurations, the heal and liveness.

:class:`Simulation` builds a :class:`~consensus.sim.cluster.Cluster` from
``random.Random(seed)``: the fault plan (:mod:`consensus.sim.faults`), keys, delays,
losses, crash points and the order of same-tick deliveries all come from that one RNG,
so a seed replays exactly (``SIM_VERSION`` names the expansion of seeds into runs).

Clients submit each batch to one running replica (the liveness probe to max_faulty + 1
of them) and resubmit to another until an honest replica commits it. Validator-set
changes are proposed one at a time; an added validator's node starts when its change
is proposed.

Liveness: at the plan's heal point the network heals, crashed replicas restart (all
but at most the tolerated number) and a probe batch is proposed. The run passes when
an honest replica has committed the probe (with a certificate that verifies) and every
honest validator of the current set that is up has reached its height, both within
the liveness bound. ``ticks_to_commit_after_heal`` is the first of the two.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from consensus.sim.app import make_bound_batch, make_invalid_batch, make_reconfig, reconfig_set
from consensus.sim.cluster import CHAIN_ID, TIMEOUT_TICKS, Cluster, SimNode
from consensus.sim.faults import FaultEvent, FaultPlan, make_plan
from consensus.sim.spec import ProtocolSpec
from ledger.validators import ValidatorSet

__all__ = ["CHAIN_ID", "SIM_VERSION", "RunResult", "SimNode", "Simulation"]

# Bumped whenever the expansion of a seed changes (fault plans, client model, network
# model): a seed names a scenario only together with this version.
SIM_VERSION = 7  # v5: height-bound batches in the load; v6: removals respect the stay-down nodes;
# v7: BFT applications judge a height-bound batch only on its parent's state
# Default liveness bound after the heal, in ticks: generous against election timeouts
# (Raft draws in [T, 2T)) and doubled view-change timeouts (BFT), yet finite.
DEFAULT_LIVENESS_FACTOR = 30
# Resubmit proposals that have not committed, as a client would, to another replica.
REOFFER_TICKS = 30
REOFFER_MAX = 8


@dataclass
class RunResult:
    protocol: str
    seed: int
    plan: str
    safety_violations: list[str]
    liveness_failure: str | None
    ticks_to_commit_after_heal: int | None
    ticks: int
    height: int
    commits: int
    messages: int
    trace: list[str] | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.safety_violations and self.liveness_failure is None


class Simulation(Cluster):
    """One seeded run. ``run()`` executes the fault plan; tests may also script faults by hand."""

    def __init__(self, spec: ProtocolSpec, seed: int, *, faults: str = "random", plan: FaultPlan | None = None,
                 n: int | None = None, signatures: str = "cheap", bls: str = "cheap", trace: bool = False,
                 liveness_bound: int | None = None, config_overrides: dict | None = None) -> None:
        rng = random.Random(seed)
        plan = plan or make_plan(rng, protocol=spec.name, byzantine_behaviours=tuple(spec.byzantine),
                                 max_faulty=spec.max_faulty, mix=faults, n=n)
        super().__init__(spec, seed, rng, plan, signatures=signatures, bls=bls, trace=trace,
                         config_overrides=config_overrides)
        timeout = self._config_overrides.get("timeout_ticks", TIMEOUT_TICKS)
        if liveness_bound is None:
            liveness_bound = (spec.liveness_bound_ticks(timeout) if spec.liveness_bound_ticks
                              else DEFAULT_LIVENESS_FACTOR * timeout)
        self.liveness_bound = liveness_bound
        self._pending_reconfig: bytes | None = None
        self.bound_offered: set[bytes] = set()  # digests of the height-bound batches offered
        self._reconfig_followups: list[Callable[[], None]] = []
        self.healed_at: int | None = None
        self.probe: bytes | None = None
        self.probe_quorum_at: int | None = None
        self.converged_at: int | None = None
        self.liveness_failure: str | None = None

    def _first_commit(self, digest: bytes, height: int) -> None:
        if digest == self._pending_reconfig:
            self._reconfig_committed(height)

    def _progress_made(self) -> None:
        self._check_liveness()

    # ------------------------------------------------------------------ load

    def _propose_invalid(self) -> None:
        self._serial += 1
        self._offer(make_invalid_batch(self._serial, self.rng.randbytes(16)))

    def _propose_bound(self) -> None:
        """A batch built on one replica's head, valid at the next height only, offered to
        that replica alone and never re-offered (like a node's block or nudge)."""
        live = sorted(node.name for node in self.nodes.values() if node.up)
        if not live:
            return
        node = self.nodes[self.rng.choice(live)]
        self._serial += 1
        batch = make_bound_batch(self._serial, node.app.height + 1)
        self.bound_offered.add(hashlib.sha256(batch).digest())
        self._offer(batch, to=[node.name])

    def _reoffer(self) -> None:
        for batch in list(self.pending.values())[:REOFFER_MAX]:
            self._offer(batch)
        if not self.finished:
            self._schedule(self.now + REOFFER_TICKS, "ctl", self._reoffer)

    def _load(self) -> None:
        if self.finished:
            return
        if self.plan.invalid_permille and self.rng.randrange(1000) < self.plan.invalid_permille:
            self._propose_invalid()
        elif self.plan.bound_permille and self.rng.randrange(1000) < self.plan.bound_permille:
            self._propose_bound()
        else:
            self.propose()
        self._schedule(self.now + self.rng.randint(1, 2 * self.plan.load_every), "ctl", self._load)

    def reconfigure(self, op: str, target: str | None = None) -> bytes | None:
        """Propose a validator-set change (``add``, ``remove`` or ``replace``); None if not possible now.

        One change is in flight at a time. A new validator's node starts (with the
        genesis configuration, as an operator's fresh node would) when the change is
        proposed; a removed validator's node keeps running outside the set.
        """
        if self._pending_reconfig is not None:
            return None
        current = self.checker.latest_set()
        members = [self._by_id[v.node_key] for v in current.validators]
        max_faulty = self.spec.max_faulty
        # Never shrink below the smallest set that tolerates a fault.
        lower = next(k for k in range(1, 16) if max_faulty(k) >= 1)
        if op == "add":
            if current.n >= 7:
                return None
            node = self._add_node(self.keyring.new_identity(f"n{len(self.nodes)}"))
            new_set = current.with_change(add=node.identity.validator)
            self._boot(node)
        elif op == "remove":
            if target is not None and self.nodes[target] not in members:
                return None
            candidates = members if target is None else [self.nodes[target]]
            # The smaller set must tolerate its faulty members: the Byzantine ones and,
            # after the heal, the ones that stay down (seed 13232 of v5 removed a live
            # validator after the heal had left two of the remaining four down).
            def faulty(m) -> bool:
                return not m.honest or m.name in self.stay_down

            faulty_members = sum(map(faulty, members))
            candidates = [m for m in candidates if faulty_members - faulty(m) <= max_faulty(current.n - 1)]
            if current.n <= lower or not candidates:
                return None
            victim = candidates[self.rng.randrange(len(candidates))] if target is None else candidates[0]
            new_set = current.with_change(remove=victim.identity.node_id)
        elif op == "replace":
            old = self.nodes[target] if target else members[self.rng.randrange(len(members))]
            if self.spec.single_server_changes:
                # One server at a time: add the new key, then remove the old one.
                if current.n >= 7:
                    return self.reconfigure("remove", old.name) if current.n > lower else None
                digest = self.reconfigure("add")
                self._reconfig_followups.append(lambda: self.reconfigure("remove", old.name))
                return digest
            node = self._add_node(self.keyring.new_identity(f"n{len(self.nodes)}"))
            new_set = ValidatorSet(tuple(node.identity.validator if v.node_key == old.identity.node_id else v
                                         for v in current.validators))
            self._boot(node)
        else:
            raise ValueError(f"unknown reconfiguration {op!r}")
        self._serial += 1
        batch = make_reconfig(self._serial, new_set)
        self._log(f"reconfig {op} -> [{', '.join(self._by_id[v.node_key].name for v in new_set.validators)}]")
        digest = self.propose(batch)
        self._pending_reconfig = digest
        return digest

    def _reconfig_committed(self, height: int) -> None:
        self._count("reconfigurations")
        self._pending_reconfig = None
        new_set = self.checker.latest_set()
        for node in self.nodes.values():
            if node.identity.node_id not in new_set:
                self.retired.add(node.name)
            else:
                self.retired.discard(node.name)
        self._log(f"reconfig committed at {height}; set is now "
                  f"[{', '.join(self._by_id[v.node_key].name for v in new_set.validators)}]")
        if self._reconfig_followups:
            followup = self._reconfig_followups.pop(0)
            self._schedule(self.now + 1, "ctl", followup)

    def _pick_target(self, target: str) -> str | None:
        live = [n.name for n in self.nodes.values() if n.up]
        if not live:
            return None
        if target == "leader":
            leader = self.leader()
            if leader is not None:
                return leader
        return live[self.rng.randrange(len(live))]

    def _fire(self, event: FaultEvent) -> None:
        if self.healed_at is not None:
            return
        kind = event.kind
        if kind == "crash":
            name = self._pick_target(str(event.get("target")))
            if name is not None:
                self.crash(name, torn=bool(event.get("torn")))
                down_for = int(event.get("down_for"))
                self._schedule(self.now + down_for + (10 if event.get("torn") else 0), "ctl", self._restart_before_heal, name)
        elif kind == "crash_all":
            permille = int(event.get("torn_permille"))
            for name in list(self.nodes):
                self.crash(name, torn=self.rng.randrange(1000) < permille)
            stagger = int(event.get("stagger"))
            for name in list(self.nodes):
                at = self.now + int(event.get("down_for")) + 10 + self.rng.randint(0, stagger)
                self._schedule(at, "ctl", self._restart_before_heal, name)
        elif kind == "partition":
            names = [n for n in self.nodes]
            shape = event.get("shape")
            if shape == "split":
                self.rng.shuffle(names)
                cut = self.rng.randint(1, len(names) - 1)
                self.partition([names[:cut], names[cut:]])
            else:
                victim = self._pick_target("leader" if shape == "isolate_leader" else "random")
                if victim is None:
                    return
                self.partition([[victim], [n for n in names if n != victim]])
            self._schedule(int(event.get("until")), "ctl", self._heal_partition_before_heal)
        elif kind == "lossy":
            before = self.network.loss_permille
            self.network.loss_permille = int(event.get("permille"))
            self._log(f"loss {self.network.loss_permille}‰")
            self._schedule(int(event.get("until")), "ctl", self._set_loss_before_heal, before)
        elif kind == "garbage":
            # Junk bytes from a real peer's address: a replica must drop them, never crash.
            names = list(self.nodes)
            for _ in range(int(event.get("count"))):
                src, dst = self.rng.sample(names, 2)
                junk = self.rng.randbytes(self.rng.randint(0, 64))
                if self.rng.randrange(2):
                    junk = bytes([0x90 + self.rng.randint(1, 9)]) + junk  # looks like an array
                self._schedule(self.now + self.rng.randint(0, 5), "deliver", dst, src, junk)
            self.stats["garbage"] = self.stats.get("garbage", 0) + int(event.get("count"))
        elif kind == "reconfig":
            self.reconfigure(str(event.get("op")))

    def _restart_before_heal(self, name: str) -> None:
        if self.healed_at is None:
            self.restart(name)

    def _heal_partition_before_heal(self) -> None:
        if self.healed_at is None:
            self.heal_partition()

    def _set_loss_before_heal(self, permille: int) -> None:
        if self.healed_at is None:
            self.network.loss_permille = permille

    def heal(self) -> None:
        """End the faulty phase: heal the network, restart replicas, and propose the probe."""
        self.healed_at = self.now
        self.network.heal_partition()
        self.network.loss_permille = 0
        for node in self.nodes.values():
            node.torn_armed = False
        self._reconfig_followups.clear()
        self.stay_down = self._choose_stay_down()
        for name in self.stay_down:
            if self.nodes[name].up:
                self._crash_now(self.nodes[name], "keep down")
        self._log(f"HEAL; staying down: {self.stay_down}")
        self.restart_all()
        # A client that cannot know who is faulty submits to more replicas than may fail.
        self.probe = self.propose(copies=self.spec.max_faulty(self.checker.latest_set().n) + 1)
        self._check_liveness()

    def _choose_stay_down(self) -> list[str]:
        # From the last checkpoint on: a set must still be able to certify the checkpoint at
        # its last height (BFT hands over there), so it counts until that one is stable.
        interval = self.nodes["n0"].config.checkpoint_interval
        sets = self.checker.sets_from(interval * (self.checker.top // interval))
        if self._pending_reconfig is not None:
            pending = reconfig_set(self.pending[self._pending_reconfig])
            if pending is not None:
                sets.append(pending)
        honest_members = []
        for validators in sets:
            for v in validators.validators:
                node = self._by_id[v.node_key]
                if node.honest and node.name not in honest_members:
                    honest_members.append(node.name)
        down: list[str] = []
        wanted = self.plan.stay_down
        self.rng.shuffle(honest_members)
        for name in honest_members:
            if len(down) >= wanted:
                break
            trial = down + [name]
            if all(self._faulty_in(s, trial) <= self.spec.max_faulty(s.n) for s in sets):
                down = trial
        return down

    def _faulty_in(self, validators: ValidatorSet, down: list[str]) -> int:
        count = 0
        for v in validators.validators:
            node = self._by_id[v.node_key]
            if not node.honest or node.name in down:
                count += 1
        return count

    def _check_liveness(self) -> None:
        """The probe counts as committed at its first honest ``Commit`` (whose certificate the
        checker verified: the proof a quorum stands behind it); the run is done once every
        honest validator of the current set that is up has reached its height."""
        if self.probe is None or self.finished:
            return
        height = self.first_commit_height.get(self.probe)
        if height is None:
            return
        if self.probe_quorum_at is None:
            self.probe_quorum_at = self.first_commit_at[self.probe]
            self._log(f"probe committed at height {height}, {self.probe_quorum_at - self.healed_at} ticks after the heal")
        # Every honest validator that is up and still in the set must catch up (one removed
        # by a later change need not).
        latest = self.checker.latest_set()
        current = [self._by_id[v.node_key] for v in latest.validators]
        if all(m.app.height >= height for m in current if m.up and m.honest):
            self.converged_at = self.now
            self.finished = True
            self._log("every honest validator that is up has the probe")

    def start_load(self) -> None:
        """Start the client load (a proposal every ``plan.load_every`` ticks on average) and
        the resubmission of pending proposals."""
        self._schedule(self.now + 1, "ctl", self._load)
        self._schedule(self.now + REOFFER_TICKS, "ctl", self._reoffer)

    def run(self) -> RunResult:
        """Execute the whole plan and the liveness phase; return what happened."""
        plan = self.plan
        self.network.duplicate_permille = plan.duplicate_permille
        self.network.loss_permille = plan.loss_permille
        self.network.stale_ticks = plan.stale_ticks
        self.start()
        self.start_load()
        for event in plan.events:
            if event.at < plan.heal_at:
                self._schedule(event.at, "ctl", self._fire, event)
        self.run_until(plan.heal_at - 1)
        if not self.checker.violations:
            self.now = plan.heal_at
            self.heal()
            self.run_until(plan.heal_at + self.liveness_bound)
        return self.result()

    def result(self) -> RunResult:
        if not self.checker.violations:
            for node in self.nodes.values():
                if node.up:
                    self.audit(node)
        failure = None
        if not self.checker.violations and self.healed_at is not None and not self.finished:
            failure = self._describe_liveness_failure()
        self.liveness_failure = failure
        ticks = None
        if self.probe_quorum_at is not None and self.healed_at is not None:
            ticks = self.probe_quorum_at - self.healed_at
        return RunResult(
            protocol=self.spec.name,
            seed=self.seed,
            plan=self.plan.describe(),
            safety_violations=list(self.checker.violations),
            liveness_failure=failure,
            ticks_to_commit_after_heal=ticks,
            ticks=self.now,
            height=self.checker.top,
            commits=self.checker.commits,
            messages=self.network.sent,
            trace=self.trace if self.tracing else None,
            stats=dict(self.stats, recommits=self.checker.recommits),
        )

    def _describe_liveness_failure(self) -> str:
        heights = ", ".join(
            f"{n.name}{'' if n.up else '(down)'}{'(byz)' if not n.honest else ''}{'(retired)' if n.name in self.retired else ''}={n.app.height}"
            for n in self.nodes.values()
        )
        what = "probe not committed" if self.probe_quorum_at is None else "honest validators did not reach the probe"
        return f"{what} within {self.liveness_bound} ticks of the heal at {self.healed_at}; heights: {heights}"
