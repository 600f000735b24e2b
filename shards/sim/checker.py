"""The invariants of cross-shard flows, checked after every block and at the end of a run.

After every block (``check_step``):

* **money is conserved across all shards**: the money outside bridge accounts in every
  shard plus the money travelling in packets not yet handled is what genesis minted;
  per shard the supply equals the sum of balances; per edge the sender's bridge account
  holds exactly what the neighbour minted from it, up to the packets in flight;
* **escrow**: each shard's bridge-module escrow holds the sum of its hop records' ``held``;
  per flow, what the origin locked = held on all hops + in flight + paid out;
* **no capacity is over-booked**: per bridge and period, the reservations equal the sum
  over the flows reserving there and stay within the capacity;
* **position-limit holds**: each shard holds energy toward a consumer's limit for
  exactly the flows it opened that still wait for their answer, as their specs say, and
  no consumer's position plus what its unanswered flows hold passes its limit in any
  period (so flows opened side by side, whatever their answers, never over-buy);
* **energy is conserved**: across each bridge, the flows whose tokens leave one side are
  the flows whose tokens enter the other, up to the packets that create or cancel the
  second token in flight;
* **all or nothing so far**: no flow is committed at its destination and refunded on a
  hop, or settled on one hop and cancelled on another; hop records form a prefix of the
  path.

At the end (``check_final``), with no packet in flight: every flow is settled on all hops
(the consumer paid exactly the price and the fees of the hops, each grid operator got its
fee, the seller the price, every hop holds its token, and all its tokens carry the sold
energy's category and CO2), or cancelled on all hops, or
refunded on every hop it reached (the consumer got back all it paid, no token remains).
"""

from __future__ import annotations

from shards.records import CANCELLED, CANCELLING, COMMITTED, FINAL_PHASES, LOCKED, REFUNDED, SETTLED
from shards.topology import bridge_address

__all__ = ["check_final", "check_step"]

# Raw field positions (HopRecord.to_fields / FlowSpec.to_fields): the checker reads
# records on every block, so it avoids decoding them.
R_SPEC, R_INDEX, R_PHASE, R_HELD, R_FEE, R_RESERVED = 0, 1, 2, 3, 4, 5
S_PATH, S_CONSUMER, S_PRICE, S_ENERGY, S_FIRST, S_LAST = 4, 5, 8, 10, 11, 12


def _record(world, shard: str, flow_id: bytes):
    return world.shards[shard].storage.values.get(("bridge", "flow", (flow_id,)))


def check_step(world, shard_id: str) -> list[str]:
    problems: list[str] = []
    inflight = world.in_flight()
    problems += _money(world, inflight)
    problems += _shard(world, shard_id)
    problems += _energy(world, inflight)
    problems += _flows(world, inflight)
    for shard in world.shards.values():
        if shard.ledger.problems:
            problems += shard.ledger.problems
            shard.ledger.problems = []
    return problems


def _money(world, inflight) -> list[str]:
    problems = []
    outside = sum(s.ledger.outside for s in world.shards.values())
    moving = sum(p.body[-2] + p.body[-1] for p in inflight if p.kind in ("reserve", "result", "cancel_done"))
    if outside + moving != world.money:
        problems.append(f"money not conserved: {outside} outside bridges + {moving} in flight != {world.money}")
    edge_flight: dict[tuple[str, str], tuple[int, int]] = {}
    for p in inflight:
        if p.kind in ("reserve", "result", "cancel_done"):
            release, mint = p.body[-2], p.body[-1]
            r, m = edge_flight.get((p.src, p.dst), (0, 0))
            edge_flight[(p.src, p.dst)] = (r + release, m + mint)
    for s in world.shards.values():
        for n in world.topology.neighbours(s.id):
            held = s.ledger.balance(bridge_address(s.id, n))
            minted = world.shards[n].ledger.minted_from.get(s.id, 0)
            expected = minted + edge_flight.get((s.id, n), (0, 0))[1] + edge_flight.get((n, s.id), (0, 0))[0]
            if held != expected:
                problems.append(f"bridge {s.id}->{n} holds {held}; {n} minted {minted} (+ in flight) = {expected}")
    return problems


def _shard(world, shard_id: str) -> list[str]:
    problems = []
    shard = world.shards[shard_id]
    ledger = shard.ledger
    if sum(ledger.balances.values()) != ledger.supply:
        problems.append(f"{shard_id}: supply {ledger.supply} != sum of balances {sum(ledger.balances.values())}")
    held = 0
    expected: dict[tuple[str, int], int] = {}
    holds: dict[bytes, tuple[bytes, int, int, int]] = {}
    topology = world.topology
    for parts, fields in shard.storage.items("flow"):
        held += fields[R_HELD]
        if fields[R_INDEX] == 0 and fields[R_PHASE] == LOCKED:  # opened here, not answered yet
            spec = fields[R_SPEC]
            holds[parts[0]] = (spec[S_CONSUMER], spec[S_ENERGY], spec[S_FIRST], spec[S_LAST])
        if fields[R_RESERVED]:
            spec = fields[R_SPEC]
            for _, child in topology.edges_reserved_at(spec[S_PATH], fields[R_INDEX]):
                for period in range(spec[S_FIRST], spec[S_LAST] + 1):
                    expected[(child, period)] = expected.get((child, period), 0) + spec[S_ENERGY]
    if ledger.balance(ledger.escrow) != held:
        problems.append(f"{shard_id}: escrow holds {ledger.balance(ledger.escrow)}, hop records hold {held}")
    for account, limit in ledger.limits.items():
        periods = {p for c, _, first, last in ledger.flow_holds.values() if c == account for p in range(first, last + 1)}
        periods |= {p for t in ledger.tokens.values() if t.consumer == account for p in range(t.first_period, t.last_period + 1)}
        for period in sorted(periods):
            taken = ledger.position(account, period) + ledger.held(account, period)
            if taken > limit:
                problems.append(f"{shard_id}: {account.hex()[:8]} takes {taken} Wh in period {period} with what its "
                                f"flows hold, over its limit {limit}")
                break
    if ledger.flow_holds != holds:
        differ = sorted(f.hex()[:8] for f in set(ledger.flow_holds) | set(holds) if ledger.flow_holds.get(f) != holds.get(f))
        problems.append(f"{shard_id}: position-limit holds differ from the unanswered flows' for flows {differ[:5]}")
    actual = {(parts[0], parts[1]): value for parts, value in shard.storage.items("reserved")}
    if actual != expected:
        problems.append(f"{shard_id}: reservations {sorted(actual.items())} != flows' {sorted(expected.items())}")
    for (child, period), value in actual.items():
        capacity = shard.module.link(child)[0]
        if value > capacity:
            problems.append(f"{shard_id}: bridge to {child} over-booked in period {period}: {value} > {capacity} Wh")
    return problems


def _energy(world, inflight) -> list[str]:
    problems = []
    transit: dict[tuple[str, str], set[bytes]] = {}
    for p in inflight:
        if p.kind == "result" and p.body[0] == "committed":
            transit.setdefault((p.src, p.dst), set()).add(p.flow_id)
        elif p.kind == "cancel":
            transit.setdefault((p.dst, p.src), set()).add(p.flow_id)
    for s in world.shards.values():
        for n in world.topology.neighbours(s.id):
            out = s.ledger.out_flows[n]
            into = world.shards[n].ledger.in_flows[s.id]
            if into - out:
                problems.append(f"energy enters {n} from {s.id} for flows that never left it: {len(into - out)}")
            if out - into != transit.get((s.id, n), set()):
                problems.append(f"energy leaving {s.id} toward {n} is not received there nor in flight")
    return problems


def _flows(world, inflight) -> list[str]:
    problems = []
    moving: dict[bytes, int] = {}
    for p in inflight:
        if p.kind in ("reserve", "result", "cancel_done"):
            moving[p.flow_id] = moving.get(p.flow_id, 0) + p.body[-2] + p.body[-1]
    for flow_id, spec in world.flows.items():
        records = [_record(world, hop, flow_id) for hop in spec.path]
        phases = [r[R_PHASE] if r is not None else None for r in records]
        present = [p is not None for p in phases]
        if present != sorted(present, reverse=True):
            problems.append(f"flow {flow_id.hex()[:8]}: hop records are not a prefix of the path: {phases}")
        committed = phases[-1] in (COMMITTED, SETTLED, CANCELLING, CANCELLED)
        if committed and REFUNDED in phases:
            problems.append(f"flow {flow_id.hex()[:8]}: committed at the destination and refunded on a hop: {phases}")
        if SETTLED in phases and (CANCELLING in phases or CANCELLED in phases):
            problems.append(f"flow {flow_id.hex()[:8]}: settled on one hop and cancelled on another: {phases}")
        held = sum(r[R_HELD] for r in records if r is not None)
        paid = sum(world.shards[hop].ledger.paid.get(flow_id, 0) for hop in spec.path)
        locked = world.shards[spec.origin].ledger.locked.get(flow_id, 0)
        if locked != held + moving.get(flow_id, 0) + paid:
            problems.append(
                f"flow {flow_id.hex()[:8]}: locked {locked} != held {held} + in flight {moving.get(flow_id, 0)} + paid {paid}"
            )
    return problems


def check_final(world) -> list[str]:
    problems = []
    if world.in_flight():
        problems.append(f"{len(world.in_flight())} packets still in flight at the end")
    for flow_id, spec in world.flows.items():
        name = flow_id.hex()[:8]
        records = [_record(world, hop, flow_id) for hop in spec.path]
        phases = [r[R_PHASE] if r is not None else None for r in records]
        reached = [p for p in phases if p is not None]
        if any(p not in FINAL_PHASES for p in reached):
            problems.append(f"flow {name} did not finish: {phases}")
            continue
        kinds = set(reached)
        origin = world.shards[spec.origin].ledger
        refunded_to_consumer = sum(a for f, payee, a, _ in origin.payments if f == flow_id and payee == spec.consumer)
        cost = origin.locked[flow_id] - refunded_to_consumer
        tokens_open = [
            t for hop in spec.path for t in world.shards[hop].ledger.tokens.values()
            if t.flow_id == flow_id and t.status == "open"
        ]
        if kinds == {SETTLED}:
            if len(reached) != len(spec.path):
                problems.append(f"flow {name} settled on {len(reached)} of {len(spec.path)} hops")
            fees = sum(r[R_FEE] for r in records)
            if cost != spec.price + fees:
                problems.append(f"flow {name}: consumer paid {cost}, price + fees = {spec.price + fees}")
            for hop, record in zip(spec.path, records, strict=True):
                ledger = world.shards[hop].ledger
                got = sum(a for f, payee, a, r in ledger.payments if f == flow_id and payee == ledger.go and r == "grid_fee")
                if got != record[R_FEE]:
                    problems.append(f"flow {name}: grid operator of {hop} got {got}, its fee is {record[R_FEE]}")
            if len(tokens_open) != len(spec.path):
                problems.append(f"flow {name}: {len(tokens_open)} open tokens on a settled path of {len(spec.path)}")
            energies = {(t.category, t.co2_mg) for t in tokens_open}
            if len(energies) > 1:
                problems.append(f"flow {name}: its tokens carry different categories or CO2: {sorted(energies)}")
        elif kinds in ({CANCELLED}, {REFUNDED}):
            if kinds == {CANCELLED} and len(reached) != len(spec.path):
                problems.append(f"flow {name} cancelled on {len(reached)} of {len(spec.path)} hops")
            if cost != 0:
                problems.append(f"flow {name} ended {kinds.pop()} but the consumer is out of pocket by {cost}")
            if tokens_open:
                problems.append(f"flow {name} ended without commit but {len(tokens_open)} of its tokens remain")
        else:
            problems.append(f"flow {name} ended in mixed phases {phases}")
    return problems
