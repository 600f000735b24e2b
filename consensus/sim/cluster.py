"""The simulated cluster: real replicas, their durable records, applications and network.

:class:`Cluster` carries out each replica's actions **in order**, as a node must:

* ``Persist`` is applied to the replica's durable record store (a dict) when it is
  reached; sends after it therefore leave only once it is durable. A *torn* crash
  falls between two actions of one step: what came before is durable or sent, the
  rest is lost. A restarted replica gets exactly its durable records back.
* ``Send``/``Broadcast`` go through :class:`~consensus.sim.network.Network`;
  ``Broadcast`` reaches every other started node (members filter what they accept).
  Every message an honest replica sends is first checked against its durable records
  by the protocol's ``check_send`` (persist-before-send).
* ``Commit`` is checked (:class:`~consensus.sim.checker.SafetyChecker`) and executed
  by the replica's :class:`~consensus.sim.app.SimApplication`, whose new state root is
  fed back as ``Executed`` once the action list is done.
* ``SetTimer`` schedules a ``Tick``; idle ticks are skipped. ``Receive`` and
  ``Propose`` carry the tick at which they happen.
* ``FetchState``: the checkpoint certificate is verified against the validator set in
  force at its height, the state is taken from an honest replica that executed that
  height (its root must equal the certified one), and ``StateInstalled`` follows a few
  ticks later.

One ``random.Random`` drives everything, so a run replays exactly. What happens when
(the fault plan, the client load, the liveness phase) is :mod:`consensus.sim.simulator`.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field

from consensus.sim.app import SimApplication, make_batch
from consensus.sim.certs import verify_checkpoint_certificate
from consensus.sim.checker import SafetyChecker
from consensus.sim.faults import FaultPlan
from consensus.sim.keys import Keyring, SimIdentity
from consensus.sim.network import Network
from consensus.sim.spec import ProtocolSpec
from consensus.types import (
    Broadcast,
    Commit,
    ConsensusConfig,
    ConsensusError,
    Executed,
    FetchState,
    Persist,
    Propose,
    Receive,
    Replica,
    Restart,
    Send,
    SetTimer,
    StateInstalled,
    Tick,
)
from ledger.certificate import CertificateError
from ledger.validators import ValidatorSet

__all__ = ["CHAIN_ID", "Cluster", "SimNode"]

CHAIN_ID = "sim/grid"
TIMEOUT_TICKS = 20
HEARTBEAT_TICKS = 2


@dataclass
class SimNode:
    name: str
    identity: SimIdentity
    config: ConsensusConfig
    byzantine: str | None = None
    app: SimApplication = field(default_factory=SimApplication)
    records: dict[bytes, bytes] = field(default_factory=dict)
    replica: Replica | None = None
    up: bool = False
    incarnation: int = 0
    timers: set[int] = field(default_factory=set)
    torn_armed: bool = False
    crashes: int = 0

    @property
    def honest(self) -> bool:
        return self.byzantine is None


class Cluster:
    """n replicas of ``spec`` with the validators, Byzantine roles and network of ``plan``."""

    def __init__(self, spec: ProtocolSpec, seed: int, rng: random.Random, plan: FaultPlan, *,
                 signatures: str = "cheap", bls: str = "cheap", trace: bool = False,
                 config_overrides: dict | None = None) -> None:
        self.spec = spec
        self.seed = seed
        self.rng = rng
        self.plan = plan
        self.keyring = Keyring(CHAIN_ID, rng, signatures=signatures, bls=bls)
        self.network = Network(rng, max_base=plan.max_base, max_jitter=plan.max_jitter)
        self.tracing = trace
        self.trace: list[str] = []
        self.now = 0
        self._queue: list = []
        self._seq = 0
        self._config_overrides = dict(config_overrides or {})
        self.nodes: dict[str, SimNode] = {}
        self._by_id: dict[bytes, SimNode] = {}
        identities = [self.keyring.new_identity(f"n{i}") for i in range(plan.n)]
        self.genesis = ValidatorSet(tuple(identity.validator for identity in identities))
        # With real Ed25519 keys the protocol's own certificate check (the ledger code) runs;
        # with cheap keys the checker applies the same rules through the keyring.
        interval = self._config_for(0).checkpoint_interval
        effective = spec.reconfig_effective_after
        self.checker = SafetyChecker(spec.name, CHAIN_ID, self.genesis, self.keyring,
                                     spec.verify_certificate if signatures == "ed25519" else None,
                                     (lambda h: effective(h, interval)) if effective else (lambda h: h))
        for i, identity in enumerate(identities):
            self._add_node(identity, plan.byzantine.get(i))
        # Proposals not yet committed by an honest replica: digest -> batch.
        self.pending: dict[bytes, bytes] = {}
        self.proposed_at: dict[bytes, int] = {}
        self.first_commit_at: dict[bytes, int] = {}
        self.first_commit_height: dict[bytes, int] = {}
        self._serial = 0
        self.retired: set[str] = set()  # removed from the validator set
        self.stay_down: list[str] = []
        self.finished = False
        self.stats: dict[str, int] = {}

    # Hooks for the run on top (see Simulation).

    def _first_commit(self, digest: bytes, height: int) -> None:
        """An honest replica committed ``digest`` for the first time."""

    def _progress_made(self) -> None:
        """A replica committed or installed state."""

    # ------------------------------------------------------------------ plumbing

    def _schedule(self, at: int, kind: str, *args) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self.rng.getrandbits(30), self._seq, kind, args))

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:6d} {text}")

    def _describe(self, payload: bytes) -> str:
        if self.spec.describe is not None:
            try:
                return self.spec.describe(payload)
            except Exception:  # a trace must never change the run
                pass
        return f"{len(payload)}B {hashlib.sha256(payload).hexdigest()[:8]}"

    @property
    def violations(self) -> list[str]:
        return self.checker.violations

    def _violation(self, text: str) -> None:
        self.checker.violations.append(text)
        self._log(f"VIOLATION {text}")

    def _config_for(self, index: int) -> ConsensusConfig:
        plan = self.plan
        values = dict(
            chain_id=CHAIN_ID,
            validators=self.genesis,
            timeout_ticks=TIMEOUT_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
            checkpoint_interval=plan.checkpoint_interval,
            snapshot_interval=plan.snapshot_interval,
            max_batch_entries=plan.max_batch_entries,
            seed=self.seed * 1000 + index,
        )
        values.update(self._config_overrides)
        return ConsensusConfig(**values)

    def _add_node(self, identity: SimIdentity, byzantine: str | None = None) -> SimNode:
        node = SimNode(identity.name, identity, self._config_for(len(self.nodes)), byzantine,
                       app=SimApplication(in_order=self.spec.validates_in_order))
        self.nodes[node.name] = node
        self._by_id[identity.node_id] = node
        return node

    def start(self) -> None:
        """Start every node that is not running yet (tick 0 for the genesis validators)."""
        for node in list(self.nodes.values()):
            if not node.up and node.incarnation == 0:
                self._boot(node)

    def _boot(self, node: SimNode) -> None:
        factory = self.spec.make_replica if node.byzantine is None else self.spec.byzantine[node.byzantine]
        node.replica = factory(node.config, node.identity.signer, self.keyring, node.app)
        node.up = True
        node.incarnation += 1
        node.timers = set()
        self._log(f"start {node.name}" + (f" byzantine={node.byzantine}" if node.byzantine else "")
                  + f" with {len(node.records)} records")
        self._step(node, Restart(dict(node.records), self.now))

    def crash(self, name: str, *, torn: bool = False) -> None:
        """Crash ``name`` now, or (``torn``) between two actions of its next step that has any."""
        node = self.nodes[name]
        if not node.up:
            return
        if torn:
            node.torn_armed = True
            self._log(f"arm torn crash {name}")
            self._schedule(self.now + 10, "ctl", self._crash_if_armed, name)
            return
        self._crash_now(node, "crash")

    def _crash_if_armed(self, name: str) -> None:
        node = self.nodes[name]
        if node.up and node.torn_armed:
            self._crash_now(node, "crash (torn crash found no step)")

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def audit(self, node: SimNode) -> None:
        """Ask an honest replica for anomalies it noticed in itself (``ProtocolSpec.audit``)."""
        if self.spec.audit is None or not node.honest or node.replica is None:
            return
        for problem in self.spec.audit(node.replica):
            self._violation(f"t={self.now} {node.name} audit: {problem}")

    def _crash_now(self, node: SimNode, why: str) -> None:
        self._count("torn_crashes" if why.startswith("torn") else "crashes")
        if not why.startswith("halt"):
            self.audit(node)
        node.up = False
        node.torn_armed = False
        node.replica = None
        node.timers = set()
        node.crashes += 1
        node.incarnation += 1
        self._log(f"{why} {node.name}; {len(node.records)} durable records kept")

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        if node.up:
            return
        self._boot(node)

    def crash_all(self, *, torn: bool = False) -> None:
        for name in list(self.nodes):
            self.crash(name, torn=torn)

    def restart_all(self) -> None:
        for name, node in self.nodes.items():
            if not node.up and name not in self.stay_down:
                self._boot(node)

    def _step(self, node: SimNode, event) -> None:
        if not node.up or node.replica is None:
            return
        try:
            actions = node.replica.step(event)
        except ConsensusError as exc:
            self._violation(f"t={self.now} {node.name} refused {type(event).__name__}: {exc}")
            self._crash_now(node, "halt")
            return
        except Exception as exc:  # a replica must never crash on any input
            self._violation(f"t={self.now} {node.name} raised {type(exc).__name__}: {exc} on {type(event).__name__}")
            self._crash_now(node, "halt")
            return
        self._carry_out(node, actions)

    def _carry_out(self, node: SimNode, actions: list) -> None:
        cut = None
        if node.torn_armed and actions:
            cut = self.rng.randrange(len(actions))
        followups = []
        for i, action in enumerate(actions):
            if i == cut:
                self._crash_now(node, f"torn crash after {i}/{len(actions)} actions:")
                return
            kind = type(action)
            if kind is Persist:
                records = node.records
                for key, value in action.records:
                    if value is None:
                        records.pop(key, None)
                    else:
                        records[key] = value
            elif kind is Send:
                target = self._by_id.get(action.to)
                self._check_send(node, action.to, action.payload)
                if target is None or target is node:
                    self._log(f"drop {node.name}->? unknown recipient {action.to.hex()[:8]}")
                    continue
                self._transmit(node, target, action.payload)
            elif kind is Broadcast:
                self._check_send(node, None, action.payload)
                for target in self.nodes.values():
                    if target is not node:
                        self._transmit(node, target, action.payload)
            elif kind is Commit:
                executed = self._on_commit(node, action)
                if executed is not None:
                    followups.append(executed)
            elif kind is SetTimer:
                at = max(action.at, self.now + 1)
                if at not in node.timers:
                    node.timers.add(at)
                    self._schedule(at, "timer", node.name, node.incarnation, at)
            elif kind is FetchState:
                self._on_fetch_state(node, action)
            else:
                self._violation(f"t={self.now} {node.name} returned an unknown action {action!r:.120}")
        for event in followups:
            self._step(node, event)

    def _check_send(self, node: SimNode, to: bytes | None, payload: bytes) -> None:
        if self.spec.check_send is None or not node.honest:
            return
        try:
            problem = self.spec.check_send(node.records, to, payload)
        except Exception as exc:
            problem = f"check_send raised {type(exc).__name__}: {exc}"
        if problem:
            self._violation(f"t={self.now} {node.name} PERSIST-BEFORE-SEND: {problem}")

    def _transmit(self, src: SimNode, dst: SimNode, payload: bytes) -> None:
        delays = self.network.delays(src.name, dst.name)
        if not delays:
            self._log(f"drop {src.name}->{dst.name} {self._describe(payload)}")
        for delay in delays:
            self._schedule(self.now + delay, "deliver", dst.name, src.name, payload)

    def _on_commit(self, node: SimNode, commit: Commit) -> Executed | None:
        app = node.app
        if not node.honest:
            if commit.height == app.height + 1 and isinstance(commit.digest, bytes):
                app.execute(commit.height, commit.digest)
            return None
        self._log(f"commit {node.name} h={commit.height} {commit.digest.hex()[:8]}")
        if not self.checker.on_commit(node.name, app, commit, self.now):
            if self.checker.violations:
                self._log(f"VIOLATION {self.checker.violations[-1]}")
            # A replay: feed back what the application computed then, if it executed it.
            root = app.roots.get(commit.height)
            if commit.height <= app.height and root is not None and app.digests.get(commit.height) == commit.digest:
                return Executed(commit.height, commit.digest, root)
            return None
        root = app.execute(commit.height, commit.digest)
        if commit.digest not in self.first_commit_at:
            self.first_commit_at[commit.digest] = self.now
            self.first_commit_height[commit.digest] = commit.height
            self.pending.pop(commit.digest, None)
            self._first_commit(commit.digest, commit.height)
        self._progress_made()
        return Executed(commit.height, commit.digest, root)

    def _on_fetch_state(self, node: SimNode, action: FetchState) -> None:
        cp = action.checkpoint
        self._log(f"fetch-state {node.name} h={cp.height}")
        if not node.honest:
            return
        if cp.height > self.checker.top:
            self._violation(f"t={self.now} {node.name} asked for state at {cp.height}, above every honest commit")
            return
        validators = self.checker.set_in_force(cp.height)
        try:
            verify_checkpoint_certificate(CHAIN_ID, validators, cp, self.keyring, protocol=self.spec.name)
        except CertificateError as exc:
            self._violation(f"t={self.now} {node.name} asked to install a checkpoint whose certificate fails: {exc}")
            return
        if self.checker.digest_at.get(cp.height) != cp.block_hash:
            self._violation(f"t={self.now} checkpoint at {cp.height} certifies a block no honest replica committed")
            return
        source = None
        for other in self.nodes.values():
            if other.honest and other is not node and cp.height in other.app.roots and cp.height <= other.app.height:
                source = other
                break
        if source is None:
            self._log(f"fetch-state {node.name} h={cp.height}: no honest peer holds that state yet")
            return
        if source.app.roots[cp.height] != cp.state_root:
            self._violation(f"t={self.now} checkpoint at {cp.height} certifies a state root no honest replica computed")
            return
        self._count("state_transfers")
        self._schedule(self.now + self.rng.randint(2, 8), "state", node.name, node.incarnation, cp)

    def _install(self, name: str, incarnation: int, cp) -> None:
        node = self.nodes[name]
        if not node.up or node.incarnation != incarnation:
            return
        if node.app.height < cp.height:
            node.app.install(cp.height, cp.state_root)
        self._log(f"state-installed {name} h={cp.height}")
        self._step(node, StateInstalled(cp, self.checker.recorded_sets(cp.height)))
        self._progress_made()

    def _new_batch(self) -> bytes:
        self._serial += 1
        return make_batch(self._serial, self.rng.randbytes(self.rng.randint(8, 64)))

    def propose(self, batch: bytes | None = None, *, copies: int = 1, to: list[str] | None = None) -> bytes:
        """Submit a batch (a fresh one by default) as a client would: to ``copies`` running
        replicas drawn at random (or to the named ones). Returns its digest. Until an honest
        replica commits it, it is resubmitted every ``REOFFER_TICKS`` to another one."""
        if batch is None:
            batch = self._new_batch()
        digest = hashlib.sha256(batch).digest()
        if digest not in self.first_commit_at:
            self.pending.setdefault(digest, batch)
            self.proposed_at.setdefault(digest, self.now)
        self._offer(batch, copies, to)
        return digest

    def _offer(self, batch: bytes, copies: int = 1, to: list[str] | None = None) -> None:
        if to is None:
            live = [node.name for node in self.nodes.values() if node.up]
            to = self.rng.sample(live, min(copies, len(live)))
        for name in to:
            self._step(self.nodes[name], Propose(batch, self.now))

    def partition(self, groups: list[list[str]]) -> None:
        self._count("partitions")
        self.network.partition(groups)
        self._log(f"partition {groups}")

    def heal_partition(self) -> None:
        self.network.heal_partition()
        self._log("partition healed")

    def leader(self) -> str | None:
        if self.spec.is_leader is None:
            return None
        for node in self.nodes.values():
            if node.up and node.honest and node.name not in self.retired and self.spec.is_leader(node.replica):
                return node.name
        return None

    def run_until(self, tick: int) -> None:
        """Process every event up to and including ``tick`` (or until a violation)."""
        queue = self._queue
        while queue and queue[0][0] <= tick and not self.checker.violations and not self.finished:
            at, _, _, kind, args = heapq.heappop(queue)
            self.now = at
            if kind == "deliver":
                dst, src, payload = args
                node = self.nodes[dst]
                if not node.up:
                    self._log(f"lost {src}->{dst} (down) {self._describe(payload)}")
                    continue
                if not self.network.connected(src, dst):
                    self._log(f"cut {src}->{dst} {self._describe(payload)}")
                    continue
                if self.tracing:
                    self._log(f"deliver {src}->{dst} {self._describe(payload)}")
                self._step(node, Receive(self.nodes[src].identity.node_id, payload, at))
            elif kind == "timer":
                name, incarnation, deadline = args
                node = self.nodes[name]
                if node.up and node.incarnation == incarnation:
                    node.timers.discard(deadline)
                    self._step(node, Tick(at))
            elif kind == "state":
                self._install(*args)
            elif kind == "ctl":
                fn, *rest = args
                fn(*rest)
        if not self.checker.violations and not self.finished:
            self.now = max(self.now, tick)
