"""One seeded run of the shard-tree simulator, and a sweep over seeds.

A run builds a three-level tree of 7 to 13 shards (BFT and Raft, each with its own
validators, checkpoint interval and clock skew), funds consumers, grid operators and
producers, and offers producers' tokens in every shard. During the **fault phase**
consumers buy across shards (random pairs, so paths of two to five shards), some
purchases exceed a bridge (refused by the quote before anything is locked) and some race
for the same margin (refused by a hop and refunded), local buyers compete for offers,
grid operators redispatch and raise capacities, validator sets change, shards stall and
the relayers crash, delay, duplicate, reorder and (some) mangle or misroute deliveries.
Then the **quiet phase**: faults stop, every relayer runs, and the run continues until
every flow has ended on every hop (or a time limit, which is a liveness violation).

Invariants (``shards.sim.checker``) are checked after every block. Every random choice
comes from one ``random.Random(seed)``: a seed replays exactly.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from shards.errors import BridgeError
from shards.packets import Delivery, Packet
from shards.quote import quote_flow
from shards.records import COMMITTED, FlowSpec
from shards.sim.checker import check_final, check_step
from shards.sim.relayer import RelayerFaults, SimRelayer
from shards.sim.world import SimShard, Tx, account
from shards.topology import BridgeSpec, ShardSpec, Topology

__all__ = ["SeedResult", "World", "run_seed"]

GENESIS_TIME = 1_767_225_600
PERIOD_S = 30  # short elementary periods: deliveries begin (and flows settle) within a run
FAULT_PHASE_MS = 60_000
TIME_LIMIT_MS = 900_000
CURRENCY = "CHF"
# Position limits of a shard's consumers (Wh per period): offers are 100..7,000 Wh, so
# two overlapping purchases often pass the smaller limits (100 seeds: ~80 refusals by a limit).
POSITION_LIMITS = (2_500, 5_000, 8_000)

AREAS = ["zurich", "bern", "basel", "ticino"]
LOCALS = ["oerlikon", "altstetten", "wiedikon", "enge", "breitenrain", "bethlehem", "mitte"]


@dataclass
class SeedResult:
    seed: int
    flows: int = 0
    committed: int = 0  # settled on every hop
    refunded: int = 0  # refunded (refused, over capacity, timed out) or cancelled by redispatch
    cancelled: int = 0  # of which cancelled by redispatch
    refused_by_quote: int = 0  # refused before anything was locked
    refused_at_origin: int = 0
    refused_by_limit: int = 0  # of which over the consumer's position limit (holds included)
    mangled_refused: int = 0
    blocks: int = 0
    deliveries: int = 0
    violations: list[str] = field(default_factory=list)
    sim_ms: int = 0


def make_topology(rng: random.Random) -> Topology:
    areas = rng.sample(AREAS, rng.choice([2, 2, 3]))
    shards = [ShardSpec("ch", "bft", rng.choice([4, 8]), 4, "transmission")]
    bridges = []
    for area in areas:
        area_id = f"ch/{area}"
        shards.append(ShardSpec(area_id, rng.choice(["bft", "bft", "raft"]), rng.choice([4, 8]), 4, "distribution"))
        bridges.append(BridgeSpec(area_id, rng.randint(3, 12) * 1000, rng.randint(0, 6)))
        for local in rng.sample(LOCALS, rng.choice([2, 2, 3])):
            local_id = f"{area_id}/{local}"
            shards.append(ShardSpec(local_id, rng.choice(["bft", "raft"]), rng.choice([4, 8]), 4, "local"))
            bridges.append(BridgeSpec(local_id, rng.randint(1, 6) * 1000, rng.randint(0, 9)))
    return Topology.build(shards, bridges, genesis_time=GENESIS_TIME, period_s=PERIOD_S)


class World:
    def __init__(self, seed: int, *, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.tracing = trace
        self.lines: list[str] = []
        self.result = SeedResult(seed)
        self.now_ms = 0
        self._events: list[tuple[int, int, Any]] = []
        self._seq = 0
        self.topology = make_topology(self.rng)
        self.shards: dict[str, SimShard] = {}
        for spec in self.topology.shards:
            size = 4 if spec.protocol == "bft" else self.rng.choice([1, 3])
            self.shards[spec.id] = SimShard(
                spec, self.topology, genesis_size=size, pool=size + 2, skew_s=self.rng.randint(-2, 2), rng=self.rng
            )
        for shard in self.shards.values():
            shard.install({n: self.shards[n].genesis_set for n in self.topology.neighbours(shard.id)})
        self.flows: dict[bytes, FlowSpec] = {}
        self._keeper: dict[bytes, int] = {}
        self.sent: dict[tuple[str, str, int], Packet] = {}
        self.handled: set[tuple[str, str, int]] = set()
        self.money = 0
        self.consumers: list[tuple[str, bytes]] = []
        self._fund()
        self.relayers = self._relayers()

    # ------------------------------------------------------------------ setup

    def _fund(self) -> None:
        rng = self.rng
        last_first = (FAULT_PHASE_MS // 1000 + 150) // PERIOD_S
        for shard in self.shards.values():
            ledger = shard.ledger

            def genesis(shard=shard, ledger=ledger) -> None:
                ledger.admit(shard.go, {"grid_operator"})
                ledger.mint(shard.go, 50_000)
                for i in range(2 if shard.topology.children(shard.id) else 3):
                    consumer = account(shard.id, f"consumer{i}")
                    # position limits tight enough that overlapping purchases meet them
                    ledger.admit(consumer, {"consumer"}, limit=POSITION_LIMITS[i])
                    ledger.mint(consumer, rng.randint(2_000, 60_000))
                    self.consumers.append((shard.id, consumer))
                trader = account(shard.id, "trader")
                ledger.admit(trader, {"trader"})
                ledger.mint(trader, 20_000)
                self.consumers.append((shard.id, trader))  # not a consumer: refused at the origin
                for p in range(rng.randint(1, 2)):
                    producer = account(shard.id, f"producer{p}")
                    ledger.admit(producer, {"producer"})
                    for _ in range(rng.randint(3, 7)):
                        first = rng.randint(2, last_first)
                        energy = rng.choice([100, 250, 500, 1000, 1500, 2500, 4000, 7000])
                        ledger.emit_offer(producer, energy, first, first + rng.randint(0, 2), rng.randint(0, 400))

            shard.genesis_tx(genesis)
        self.money = sum(s.ledger.outside for s in self.shards.values())

    def _relayers(self) -> list[SimRelayer]:
        rng = self.rng
        channels = [(a, b) for a in self.topology.ids for b in self.topology.neighbours(a)]
        relayers = []
        for i in range(rng.randint(1, 3)):
            faults = RelayerFaults(
                max_delay_ms=rng.choice([200, 1500, 4000]),
                duplicate=rng.choice([0.0, 0.1, 0.3]),
                reorder=rng.choice([0.0, 0.1, 0.3]),
                checkpoint=rng.choice([0.0, 0.0, 0.0, 0.2]),
            )
            served = channels if i == 0 or rng.random() < 0.5 else rng.sample(channels, len(channels) // 2)
            relayers.append(SimRelayer(f"r{i}", list(served), faults))
        if rng.random() < 0.4:  # a Byzantine relayer: mangles or misroutes what it carries
            relayers.append(SimRelayer("byz", list(channels), RelayerFaults(max_delay_ms=1000, mangle=0.7, misroute=0.3)))
        return relayers

    # ------------------------------------------------------------------ scheduler

    def schedule(self, at_ms: int, action) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_ms, self._seq, action))

    def trace(self, at_ms: int, text: str) -> None:
        if self.tracing:
            self.lines.append(f"{at_ms / 1000:9.3f}s {text}")

    def in_flight(self) -> list[Packet]:
        out = []
        for s in self.shards.values():
            for n in self.topology.neighbours(s.id):
                for seq in range(self.shards[n].module.next_recv(s.id), s.module.next_send(n)):
                    out.append(self.sent[(s.id, n, seq)])
        return out

    # ------------------------------------------------------------------ transactions

    def submit_delivery(self, relayer: str, dst: str, data: bytes, mangled: bool) -> None:
        shard = self.shards[dst]

        def run(shard: SimShard, now: int):
            delivery = Delivery.decode(data)
            src = delivery.src
            before = shard.module.next_recv(src) if self.topology.is_neighbour(src, dst) else 0
            report = shard.module.deliver(now, delivery)
            return delivery, before, report

        def done(shard: SimShard, result) -> None:
            self.result.deliveries += 1
            if isinstance(result, BridgeError):
                if mangled:
                    self.result.mangled_refused += 1
                self.trace(self.now_ms, f"{dst} refused delivery by {relayer}: {result}")
                return
            delivery, before, report = result
            if mangled:
                self.result.violations.append(f"a mangled delivery by {relayer} was accepted by {dst}")
            source = self.shards[delivery.src]
            real = source.headers.get(delivery.header.height)
            if real is None or real.hash != delivery.header.hash:
                self.result.violations.append(f"{dst} accepted a header of {delivery.src} that was never certified")
            for seq in range(before, before + report.processed):
                key = (delivery.src, dst, seq)
                if key in self.handled:
                    self.result.violations.append(f"packet {key} handled twice")
                self.handled.add(key)
                packet = next(p for p, _ in delivery.items if p.seq == seq)
                if packet != self.sent.get(key):
                    self.result.violations.append(f"{dst} handled a packet {key} its source never sent")
            if report.frozen:
                self.result.violations.append(f"{dst} froze its bridge to {delivery.src} (honest validators)")
            self.trace(self.now_ms, f"{dst} took {report.processed} packets from {delivery.src} (+{report.duplicates} dup) via {relayer}")

        shard.submit(Tx("deliver", run, relayer, done))

    def _purchase(self) -> None:
        rng = self.rng
        origin, consumer = rng.choice(self.consumers)
        others = [s for s in self.topology.ids if s != origin]
        destination = rng.choice(others)
        offers = self.shards[destination].ledger.open_offers()
        if not offers:
            return
        token = rng.choice(offers)
        now_s = self.now_ms // 1000
        start = self.topology.period_start(token.first_period)
        if start <= GENESIS_TIME + now_s + 2:
            return
        deadline = min(start, GENESIS_TIME + now_s + rng.choice([4, 10, 20, 40, 60, 90]))

        def read_link(parent: str, child: str):
            return self.shards[parent].module.link(child)

        def read_reserved(parent: str, child: str, period: int) -> int:
            return self.shards[parent].module.reserved(child, period)

        try:
            quote = quote_flow(
                self.topology, origin, destination, energy_wh=token.energy_wh, first_period=token.first_period,
                last_period=token.last_period, read_link=read_link, read_reserved=read_reserved,
            )
        except BridgeError as exc:
            self.result.refused_by_quote += 1
            self.trace(self.now_ms, f"quote refused {origin}->{destination} token {token.serial}: {exc}")
            return
        budget = quote.total_fee + rng.choice([0, 0, quote.total_fee // 10, 50])
        if rng.random() < 0.05:
            budget = max(0, quote.total_fee - 1)  # a consumer who under-budgets
        shard = self.shards[origin]

        def run(shard: SimShard, now: int):
            return shard.module.open_flow(
                now, consumer, destination=destination, token=token.serial, price=token.price, currency=CURRENCY,
                energy_wh=token.energy_wh, first_period=token.first_period, last_period=token.last_period,
                fee_budget=budget, deadline=deadline,
            )

        def done(shard: SimShard, result) -> None:
            if isinstance(result, BridgeError):
                self.result.refused_at_origin += 1
                if result.code == "position_limit_exceeded":
                    self.result.refused_by_limit += 1
                self.trace(self.now_ms, f"{origin} refused purchase of {destination}#{token.serial}: {result}")
                return
            self.flows[result.flow_id] = result
            self._keeper[result.flow_id] = 0
            self.trace(self.now_ms, f"flow {result.flow_id.hex()[:8]} opened {' -> '.join(result.path)} ({result.energy_wh} Wh x {result.periods})")

        shard.submit(Tx("purchase", run, "", done))

    def _settle_keeper(self) -> None:
        """Anyone may trigger a settlement; this keeper watches the clock, not the chain (an
        idle shard's last block time lags), and lets the origin refuse one that is early."""
        wall = GENESIS_TIME + self.now_ms // 1000
        for flow_id in list(self._keeper):
            spec = self.flows[flow_id]
            if wall < self.topology.period_start(spec.first_period) or self._keeper[flow_id] > self.now_ms:
                continue
            origin = self.shards[spec.origin]
            record = origin.module.record(flow_id)
            if record is None or record.phase in ("settled", "cancelled", "refunded"):
                del self._keeper[flow_id]
            elif record.phase == COMMITTED:
                self._keeper[flow_id] = self.now_ms + 3000
                origin.submit(Tx("settle", lambda s, now, f=flow_id: s.module.settle(now, f)))

    def _redispatch(self) -> None:
        candidates = []
        for flow_id, spec in self.flows.items():
            for hop in spec.path:
                record = self.shards[hop].module.record(flow_id)
                if record is not None and record.phase == COMMITTED:
                    candidates.append((hop, flow_id))
        if candidates:
            hop, flow_id = self.rng.choice(candidates)
            shard = self.shards[hop]
            self.trace(self.now_ms, f"grid operator of {hop} redispatches flow {flow_id.hex()[:8]}")
            shard.submit(Tx("redispatch", lambda s, now, f=flow_id: s.module.redispatch(now, s.go, f)))

    def _local_buy(self) -> None:
        shard = self.shards[self.rng.choice(self.topology.ids)]
        offers = shard.ledger.open_offers()
        if offers:
            serial = self.rng.choice(offers).serial
            buyer = shard.go
            shard.submit(Tx("local_buy", lambda s, now: s.ledger.local_buy(serial, buyer)))

    def _raise_capacity(self) -> None:
        child = self.rng.choice([c for c in self.topology.ids if self.topology.parent(c) is not None])
        parent = self.shards[self.topology.parent(child)]
        capacity, fee = parent.module.link(child)
        new_capacity = capacity + self.rng.randint(1, 4) * 500
        parent.submit(Tx("register_bridge", lambda s, now: s.module.register_bridge(s.go, child, new_capacity, fee)))

    # ------------------------------------------------------------------ running

    def _after_block(self, shard: SimShard) -> None:
        self.result.blocks += 1
        for n in self.topology.neighbours(shard.id):
            for seq in range(shard.module.next_send(n)):
                key = (shard.id, n, seq)
                if key in self.sent:
                    continue
                fields = shard.storage.values.get(("bridge", "outbox", (n, seq)))
                if fields is not None:
                    self.sent[key] = Packet.from_fields(fields)
        problems = check_step(self, shard.id)
        if problems:
            self.result.violations.extend(f"t={self.now_ms}ms after block {shard.id}#{shard.height}: {p}" for p in problems)

    def _fault_event(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            self._purchase()
        elif roll < 0.55:
            self._local_buy()
        elif roll < 0.63:
            self._redispatch()
        elif roll < 0.68:
            self._raise_capacity()
        elif roll < 0.75:
            shard = self.shards[rng.choice(self.topology.ids)]
            shard.change_validators()
            self.trace(self.now_ms, f"{shard.id} changes its validator set")
        elif roll < 0.85:
            shard = self.shards[rng.choice(self.topology.ids)]
            shard.stall_until_ms = self.now_ms + rng.randint(2_000, 25_000)
            self.trace(self.now_ms, f"{shard.id} stalls until {shard.stall_until_ms / 1000:.1f}s")
        else:
            relayer = rng.choice(self.relayers)
            relayer.crashed_until_ms = self.now_ms + rng.choice([3_000, 15_000, FAULT_PHASE_MS])
            self.trace(self.now_ms, f"relayer {relayer.name} crashes until {relayer.crashed_until_ms / 1000:.1f}s")

    def run(self) -> SeedResult:
        rng = self.rng
        for shard in self.shards.values():
            self.schedule(rng.randint(0, 1000), ("block", shard.id))
        for relayer in self.relayers:
            self.schedule(rng.randint(0, 500), ("poll", relayer))
        t = 0
        while t < FAULT_PHASE_MS:
            t += rng.randint(200, 1500)
            self.schedule(t, ("fault", None))
        self.schedule(FAULT_PHASE_MS, ("quiet", None))
        self.schedule(1000, ("keeper", None))
        quiet = False
        while self._events:
            at, _, action = heapq.heappop(self._events)
            self.now_ms = at
            if at > TIME_LIMIT_MS:
                break
            if not isinstance(action, tuple):
                action()  # a relayer's submission arriving at the destination's mempool
                continue
            kind, arg = action
            if kind == "block":
                shard = self.shards[arg]
                results = shard.produce(at)
                if results is not None:
                    for tx, outcome in results:
                        if isinstance(outcome, BridgeError) and tx.on_done is None:
                            self.trace(at, f"{shard.id} refused {tx.kind}: {outcome}")
                    self._after_block(shard)
                self.schedule(at + rng.randint(800, 1200), ("block", arg))
            elif kind == "poll":
                arg.poll(self, at)
                self.schedule(at + rng.randint(300, 1200), ("poll", arg))
            elif kind == "fault":
                if not quiet:
                    self._fault_event()
            elif kind == "keeper":
                self._settle_keeper()
                if quiet and self._finished():
                    break
                self.schedule(at + 1000, ("keeper", None))
            elif kind == "quiet":
                quiet = True
                for relayer in self.relayers:
                    relayer.crashed_until_ms = 0
                for shard in self.shards.values():
                    shard.stall_until_ms = 0
                self.trace(at, "quiet phase: faults stop, every relayer runs")
            if len(self.result.violations) > 20:
                break
        self.result.sim_ms = self.now_ms
        if not self.result.violations:
            self.result.violations += check_final(self)
        self._count()
        if self.tracing:
            for flow_id, spec in self.flows.items():
                phases = [getattr(self.shards[h].module.record(flow_id), "phase", "-") for h in spec.path]
                reason = getattr(self.shards[spec.origin].module.record(flow_id), "reason", "")
                self.trace(self.now_ms, f"flow {flow_id.hex()[:8]} ended {'/'.join(phases)} {reason}".rstrip())
        return self.result

    def _finished(self) -> bool:
        if self.in_flight() or any(s.mempool for s in self.shards.values()):
            return False
        for flow_id, spec in self.flows.items():
            record = self.shards[spec.origin].module.record(flow_id)
            if record is None or record.phase not in ("settled", "cancelled", "refunded"):
                return False
        return True

    def _count(self) -> None:
        result = self.result
        result.flows = len(self.flows)
        for flow_id, spec in self.flows.items():
            record = self.shards[spec.origin].module.record(flow_id)
            phase = record.phase if record is not None else None
            if phase == "settled":
                result.committed += 1
            elif phase in ("refunded", "cancelled"):
                result.refunded += 1
                if phase == "cancelled":
                    result.cancelled += 1


def run_seed(seed: int, *, trace: bool = False) -> tuple[SeedResult, list[str]]:
    """Run one seed; returns its result and (with ``trace``) the trace lines."""
    world = World(seed, trace=trace)
    try:
        result = world.run()
    except Exception as exc:  # a crash of the code under test is a violation of this seed
        import traceback

        result = world.result
        result.violations.append(f"exception at t={world.now_ms}ms: {type(exc).__name__}: {exc}")
        if trace:
            world.lines.append(traceback.format_exc())
    return result, world.lines
