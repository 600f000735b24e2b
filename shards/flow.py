"""The flow module of one shard: a deterministic state machine over packets with proofs.

One :class:`FlowModule` runs in every shard. Its inputs are transactions (a consumer's
purchase, a grid operator's bridge registration or redispatch, anyone's settlement
trigger, a relayer's delivery, taken in by :mod:`shards.intake`) and its outputs are
changes to its :class:`~shards.records.Storage`, calls to the shard's
:class:`~shards.records.Effects`, and packets written to its outboxes. It reads no
clock (``now`` is the block time of the transaction's block) and does no I/O, so the node
runs exactly this code in each shard's executor and the simulator runs it in memory.

**Check, then act.** Every entry point checks everything that can refuse before its
first change; a refusal raises :class:`~shards.errors.FlowRefused` (or, for packets,
:class:`~shards.errors.PacketError` / :class:`~shards.errors.LightClientError`) and
changes nothing. The only effect that may refuse, :meth:`Effects.lock`, is the first
change of a purchase. A packet no honest neighbour sends raises
:class:`~shards.errors.ProtocolViolation` before any change; the delivery then freezes
the bridge to that neighbour instead.

The protocol itself (the per-hop phases, money and capacity rules, idempotence and the
conservation argument) is specified in ``shards/DESIGN.md``; the comments here say which
rule each branch implements.
"""

from __future__ import annotations

from ledger.crypto import ADDRESS_LEN
from ledger.validators import ValidatorSet
from shards import packets as P
from shards.errors import (
    FlowRefused,
    PacketError,
    ProtocolViolation,
    TopologyError,
)
from shards.intake import DeliveryIntake
from shards.lightclient import LightClient
from shards.packets import Packet
from shards.records import (
    CANCELLED,
    CANCELLING,
    COMMITTED,
    LOCKED,
    MAX_AMOUNT,
    REFUNDED,
    RESERVED,
    SETTLED,
    Effects,
    FlowSpec,
    HopRecord,
    Storage,
)
from shards.topology import MAX_CAPACITY_WH, MAX_FEE_PER_KWH, Topology, bridge_address

__all__ = [
    "FlowModule",
    "MAX_FLOW_PERIODS",
    "MAX_FLOW_TIMEOUT_S",
    "carried_energy",
    "edge_fee",
    "install_genesis",
    "split_transfer",
]

# A consumer's money is locked at most this long waiting for the destination's verdict
# (the deadline is at most this far after the purchase): one hour covers relaying across
# a tree of any depth with large margins, and bounds how long capacity can be held by a
# flow that will not commit.
MAX_FLOW_TIMEOUT_S = 3600
# A flow reserves capacity per elementary period on up to two edges per hop: a week of
# 15-minute periods (672) keeps one hop's work per packet bounded.
MAX_FLOW_PERIODS = 672


def edge_fee(energy_total_wh: int, fee_per_kwh: int) -> int:
    """The grid fee of one bridge for a flow: ``ceil(Wh x fee / 1000)``, rounded up for the
    grid operator so that no flow crosses a level for free by being small."""
    return -(-energy_total_wh * fee_per_kwh // 1000)


def split_transfer(minted_from_neighbour: int, amount: int) -> tuple[int, int]:
    """How ``amount`` crosses a bridge: ``(release, mint)``.

    Money a shard minted against its neighbour's bridge escrow goes back first: it is
    burned here and the neighbour *releases* it from its bridge account. The rest is
    locked in this shard's bridge account for the neighbour, which *mints* it. So per
    edge: balance of the sender's bridge account = what the neighbour minted from it
    (plus what is in flight), and money is never created nor lost (DESIGN.md, "money
    across bridges").
    """
    release = min(amount, minted_from_neighbour)
    return release, amount - release


def carried_energy(energy: tuple[str, int]) -> tuple[str, int]:
    """The destination token's (category, CO2 in mg per period) as a result can carry it.

    The packet layer bounds both: a category name of 1..16 characters (one outside that
    is carried as ``other``) and CO2 within the codec's range, which every stored token's
    is. So the committing result can always be sent: the commit is done by then, and a
    packet that failed to build would stall the whole channel.
    """
    category, co2_mg = energy
    if type(category) is not str or not 0 < len(category) <= P.MAX_CATEGORY_LEN:
        category = "other"
    return category, co2_mg


def install_genesis(storage: Storage, topology: Topology, shard: str, neighbour_sets: dict[str, ValidatorSet]) -> None:
    """Write a shard's initial bridge state: a light client per neighbour (from the
    neighbours' genesis validator sets) and the genesis registrations of its child bridges."""
    for neighbour in topology.neighbours(shard):
        if neighbour not in neighbour_sets:
            raise TopologyError("bad_topology", f"genesis of {shard} needs the validator set of neighbour {neighbour}")
        spec = topology.shard(neighbour)
        client = LightClient(
            neighbour, spec.protocol, spec.checkpoint_interval, neighbour_sets[neighbour], genesis_time=topology.genesis_time
        )
        storage.put("client", [neighbour], client.to_fields())
    for child in topology.children(shard):
        bridge = topology.bridge(child)
        if bridge is not None:
            storage.put("link", [child], [bridge.capacity_wh, bridge.fee_per_kwh])


def _refuse(code: str, message: str) -> FlowRefused:
    return FlowRefused(code, message)


class FlowModule(DeliveryIntake):
    """The flow state machine of ``shard``. Cheap to construct: all state is in ``storage``."""

    def __init__(self, shard: str, topology: Topology, storage: Storage, effects: Effects) -> None:
        topology.shard(shard)
        self.shard = shard
        self.topology = topology
        self.storage = storage
        self.effects = effects

    # ================================================================== views

    def record(self, flow_id: bytes) -> HopRecord | None:
        fields = self.storage.get("flow", [flow_id])
        return None if fields is None else HopRecord.from_fields(fields)

    def link(self, child: str) -> tuple[int, int] | None:
        """(capacity_wh per period, fee_per_kwh) of the bridge to ``child``; None if unregistered."""
        value = self.storage.get("link", [child])
        return None if value is None else (value[0], value[1])

    def reserved(self, child: str, period: int) -> int:
        return self.storage.get("reserved", [child, period]) or 0

    def next_send(self, neighbour: str) -> int:
        return self.storage.get("send_seq", [neighbour]) or 0

    def next_recv(self, neighbour: str) -> int:
        return self.storage.get("recv_seq", [neighbour]) or 0

    def outbox(self, neighbour: str, seq: int) -> Packet | None:
        fields = self.storage.get("outbox", [neighbour, seq])
        return None if fields is None else Packet.from_fields(fields)

    def light_client(self, neighbour: str) -> LightClient:
        fields = self.storage.get("client", [neighbour])
        if fields is None:
            raise TopologyError("not_neighbour", f"{neighbour!r} is not a neighbour of {self.shard!r}")
        return LightClient.from_fields(fields)

    def is_frozen(self, neighbour: str) -> bool:
        return self.storage.get("evidence", [neighbour]) is not None

    # ================================================================== transactions

    def register_bridge(self, caller: bytes, child: str, capacity_wh: int, fee_per_kwh: int) -> None:
        """The grid operator sets (or changes) the capacity and fee of the bridge to a child.

        Lowering the capacity keeps the reservations already made (they were within the
        capacity in force when made); new flows see the new capacity. Removing a flow that
        was accepted is a redispatch, never a side effect of a parameter change.
        """
        if caller != self.effects.grid_operator():
            raise _refuse("not_grid_operator", "only this shard's grid operator registers its bridges")
        if child not in self.topology or self.topology.parent(child) != self.shard:
            raise _refuse("not_child", f"{child!r} is not a child shard of {self.shard!r}")
        if type(capacity_wh) is not int or not 0 <= capacity_wh <= MAX_CAPACITY_WH:
            raise _refuse("bad_capacity", f"capacity is Wh per elementary period in 0..{MAX_CAPACITY_WH}")
        if type(fee_per_kwh) is not int or not 0 <= fee_per_kwh <= MAX_FEE_PER_KWH:
            raise _refuse("bad_fee", f"the grid fee is minor units per kWh in 0..{MAX_FEE_PER_KWH}")
        self.storage.put("link", [child], [capacity_wh, fee_per_kwh])

    def open_flow(
        self,
        now: int,
        consumer: bytes,
        *,
        destination: str,
        token: int,
        price: int,
        currency: str,
        energy_wh: int,
        first_period: int,
        last_period: int,
        fee_budget: int,
        deadline: int,
        point: bytes | None = None,
    ) -> FlowSpec:
        """The consumer's purchase of the consumer side of ``token`` in ``destination``.

        Locks ``price + fee_budget`` (the side price and the conservative grid-fee estimate
        the consumer was shown) in this shard's escrow, reserves the capacity of the edges
        this shard holds, and sends the RESERVE packet toward the destination. The
        destination must commit before its block time reaches ``deadline``; otherwise every
        hop is refunded. Raises :class:`FlowRefused` with nothing changed.
        """
        topology = self.topology
        if destination == self.shard:
            raise _refuse("same_shard", "a purchase inside one shard is an ordinary buy_side")
        if destination not in topology:
            raise _refuse("unknown_shard", f"shard {destination!r} is not in the topology")
        if type(consumer) is not bytes or len(consumer) != ADDRESS_LEN:
            raise _refuse("bad_address", "the consumer is a 20-byte address")
        point = consumer if point is None else point
        if type(point) is not bytes or len(point) != ADDRESS_LEN:
            raise _refuse("bad_point", "the delivery point is a 20-byte meter id or the consumer's address")
        for name, value, low in (("price", price, 0), ("energy_wh", energy_wh, 1), ("fee_budget", fee_budget, 0), ("token", token, 0)):
            if type(value) is not int or not low <= value < MAX_AMOUNT:
                raise _refuse(f"bad_{name}" if name != "energy_wh" else "bad_energy", f"{name} must be an integer >= {low}")
        if price + fee_budget >= MAX_AMOUNT:
            raise _refuse("bad_amount", "price plus fee budget is too large")
        if type(currency) is not str or not 0 < len(currency) <= 16:
            raise _refuse("unknown_currency", "a currency is a code of 1..16 characters")
        if type(first_period) is not int or type(last_period) is not int or not 0 <= first_period <= last_period:
            raise _refuse("bad_periods", "periods are 0 <= first <= last")
        if last_period - first_period + 1 > MAX_FLOW_PERIODS:
            raise _refuse("bad_periods", f"a flow spans at most {MAX_FLOW_PERIODS} elementary periods")
        if energy_wh * (last_period - first_period + 1) >= MAX_AMOUNT:
            raise _refuse("bad_energy", "the flow's total energy is too large")
        code = self.effects.check_buyer(consumer, point, energy_wh, first_period, last_period)
        if code == "role_missing":
            raise _refuse(code, "only consumers may buy energy from outside their shard")
        if code is not None:
            raise _refuse(code, "the market refuses this buyer for this energy")
        start = topology.period_start(first_period)
        if type(deadline) is not int or not now < deadline <= now + MAX_FLOW_TIMEOUT_S:
            raise _refuse("bad_deadline", f"the deadline is after now and at most {MAX_FLOW_TIMEOUT_S} s ahead")
        if deadline > start:
            raise _refuse("bad_deadline", f"the flow must commit before its first period begins at {start}")
        path = topology.path(self.shard, destination)
        if self.is_frozen(path[1]):
            raise _refuse("bridge_frozen", f"the bridge to {path[1]} is frozen by evidence against it")
        number = self.storage.get("next_flow", []) or 0
        spec = FlowSpec(
            self.shard, number, destination, path, consumer, point, token, price, currency, energy_wh,
            first_period, last_period, fee_budget, deadline, now,
        )
        fee = self._hop_fee(spec, 0)  # refuses on capacity or an unregistered bridge
        if fee > fee_budget:
            raise _refuse("fee_above_budget", f"this level's fee alone is {fee}; the budget is {fee_budget}")
        flow_id = spec.flow_id
        self.effects.lock(flow_id, consumer, currency, spec.locked_amount)  # the first change; may refuse
        # Until the answer comes back the energy counts toward the consumer's position limit.
        self.effects.hold_buyer(flow_id, consumer, energy_wh, first_period, last_period)
        self.storage.put("next_flow", [], number + 1)
        self._reserve(spec, 0, +1)
        self._put(HopRecord(spec, 0, LOCKED, held=fee, fee=fee, reserved=True))
        self._send_with_money(path[1], P.RESERVE, spec, spec.locked_amount - fee, lambda r, m: [spec.to_fields(), r, m])
        return spec

    def settle(self, now: int, flow_id: bytes) -> None:
        """At the origin, once delivery begins: pay this level's fee and send SETTLE along the
        path, so every hop pays its grid operator and the destination pays the seller.
        Anyone may call it (a relayer, the grid operator, the consumer's client)."""
        record = self._record_or_refuse(flow_id)
        if not record.is_origin:
            raise _refuse("not_origin", "settlement starts at the flow's origin shard")
        if record.phase != COMMITTED:
            raise _refuse("not_committed", f"the flow is {record.phase}, not committed")
        start = self.topology.period_start(record.spec.first_period)
        if now < start:
            raise _refuse("not_due", f"the flow settles when its first period begins at {start}")
        self._pay_out(record)
        self._put(record.but(phase=SETTLED, held=0))
        self._send(record.next, P.SETTLE, flow_id, [])

    def redispatch(self, now: int, caller: bytes, flow_id: bytes) -> None:
        """This shard's grid operator cancels the whole chain of a committed flow before its
        delivery begins. The origin decides (the first request wins, and none after the
        settlement); every hop then cancels its token, releases its capacity, and the
        consumer gets back all it paid."""
        if caller != self.effects.grid_operator():
            raise _refuse("not_grid_operator", "only this shard's grid operator redispatches")
        record = self._record_or_refuse(flow_id)
        if record.phase != COMMITTED:
            raise _refuse("not_committed", f"the flow is {record.phase}; only a committed flow is redispatched")
        start = self.topology.period_start(record.spec.first_period)
        if now >= start:
            raise _refuse("period_started", f"delivery began at {start}; the flow can no longer be cancelled")
        if record.cancel_requested:
            raise _refuse("already_requested", "a cancellation of this flow is already on its way to the origin")
        if record.is_origin:
            self._cancel_from_origin(record, "redispatch")
        else:
            self._put(record.but(cancel_requested=True))
            self._send(record.previous, P.CANCEL_REQUEST, flow_id, [self.shard])

    # ================================================================== the state machine

    def receive(self, now: int, packet: Packet) -> str:
        """Handle one verified packet from a neighbour; returns ``"handled"`` or ``"duplicate"``.

        Raises :class:`PacketError` (``out_of_order``) for a packet beyond the next expected
        one, and :class:`ProtocolViolation` for a packet no honest shard sends; both change
        nothing.
        """
        src = packet.src
        if packet.dst != self.shard or not self.topology.is_neighbour(self.shard, src):
            raise PacketError("wrong_channel", f"packet {src}->{packet.dst} is not for {self.shard} from a neighbour")
        expected = self.next_recv(src)
        if packet.seq < expected:
            return "duplicate"
        if packet.seq > expected:
            raise PacketError("out_of_order", f"the next packet from {src} is #{expected}, not #{packet.seq}")
        if packet.acked > self.next_send(src):
            raise ProtocolViolation("bad_ack", f"{src} acknowledges {packet.acked} packets; {self.next_send(src)} were sent")
        handler = {
            P.RESERVE: self._on_reserve,
            P.RESULT: self._on_result,
            P.SETTLE: self._on_settle,
            P.CANCEL_REQUEST: self._on_cancel_request,
            P.CANCEL: self._on_cancel,
            P.CANCEL_DONE: self._on_cancel_done,
        }[packet.kind]
        handler(now, packet)  # checks (may raise ProtocolViolation) before changing anything
        self.storage.put("recv_seq", [src], expected + 1)
        self._prune(src, packet.acked)
        return "handled"

    def _on_reserve(self, now: int, packet: Packet) -> None:
        spec, release, mint = packet.body
        flow_id = packet.flow_id
        if self.shard not in spec.path:
            raise ProtocolViolation("bad_packet", f"flow path {spec.path} does not pass through {self.shard}")
        index = spec.index_of(self.shard)
        if index == 0 or spec.path[index - 1] != packet.src:
            raise ProtocolViolation("bad_packet", f"a reserve for hop {index} came from {packet.src}")
        if self.storage.get("flow", [flow_id]) is not None:
            raise ProtocolViolation("bad_packet", "a second reserve for a flow this shard already holds")
        amount = release + mint
        is_destination = index == len(spec.path) - 1
        refusal, fee = self._reserve_refusal(now, spec, index, amount)
        # The money travels with the packet and is here whatever the outcome.
        self.effects.receive(flow_id, packet.src, spec.currency, release, mint)
        if refusal is not None:
            code, message = refusal
            reason = f"{code} at {self.shard}: {message}"[: P.MAX_REASON_LEN]
            self._put(HopRecord(spec, index, REFUNDED, reason=reason))
            self._send_with_money(packet.src, P.RESULT, spec, amount, lambda r, m: ["aborted", reason, None, r, m], flow_id)
            return
        self._reserve(spec, index, +1)
        if is_destination:
            # Commit: the side goes to the bridge toward the consumer; the price and this
            # level's fee stay in escrow until delivery begins (SETTLE) or a redispatch.
            # The result names the token's category and CO2: every hop token carries them.
            token, seller, energy = self.effects.buy_offer(flow_id, spec, bridge_address(self.shard, packet.src))
            energy = carried_energy(energy)
            held = fee + spec.price
            self._put(HopRecord(spec, index, COMMITTED, held=held, fee=fee, reserved=True, token_ref=token, seller=seller))
            self._send_with_money(
                packet.src, P.RESULT, spec, amount - held, lambda r, m: ["committed", "", list(energy), r, m], flow_id
            )
        else:
            self._put(HopRecord(spec, index, RESERVED, held=fee, fee=fee, reserved=True))
            self._send_with_money(spec.path[index + 1], P.RESERVE, spec, amount - fee, lambda r, m: [spec.to_fields(), r, m], flow_id)

    def _reserve_refusal(self, now: int, spec: FlowSpec, index: int, amount: int) -> tuple[tuple[str, str] | None, int]:
        """Why this hop refuses the flow (code, message), or None; and this hop's fee."""
        try:
            self.topology.check_path(spec.path)
        except TopologyError as exc:
            return (exc.code, exc.message), 0
        if now >= spec.deadline:
            # Every hop refuses past the deadline; the destination's refusal is the one that
            # decides, because only the destination commits.
            return ("timeout", f"block time {now} of {self.shard} is past the deadline {spec.deadline}"), 0
        is_destination = index == len(spec.path) - 1
        if not is_destination and self.is_frozen(spec.path[index + 1]):
            return ("bridge_frozen", f"the bridge to {spec.path[index + 1]} is frozen"), 0
        try:
            fee = self._hop_fee(spec, index)
        except FlowRefused as exc:
            return (exc.code, exc.message), 0
        if amount < spec.price + fee:
            return ("fee_above_budget", f"the fees up to {self.shard} exceed the consumer's fee budget"), 0
        if is_destination:
            code = self.effects.check_offer(spec)
            if code is not None:
                return (code, f"the consumer side of token {spec.token} is not for sale as agreed"), fee
        return None, fee

    def _on_result(self, now: int, packet: Packet) -> None:
        record = self._expect(packet, (LOCKED, RESERVED), from_next=True)
        outcome, reason, energy, release, mint = packet.body
        spec = record.spec
        flow_id = packet.flow_id
        amount = release + mint
        self.effects.receive(flow_id, packet.src, spec.currency, release, mint)
        if record.is_origin:  # the hop token (committed) or nothing (aborted) takes the hold's place
            self.effects.release_buyer(flow_id)
        if outcome == "committed":
            here = self.shard
            consumer_side = spec.consumer if record.is_origin else bridge_address(here, record.previous)
            point = spec.point if record.is_origin else consumer_side
            token = self.effects.create_hop_token(
                flow_id, spec, bridge_address(here, record.next), consumer_side, point, energy
            )
            self._put(record.but(phase=COMMITTED, token_ref=token))
            if record.is_origin:
                # The fee budget not charged by any level goes back to the consumer now.
                self._pay(spec, spec.consumer, amount, "flow_unused_fee_budget")
            else:
                self._send_with_money(
                    record.previous, P.RESULT, spec, amount, lambda r, m: ["committed", "", list(energy), r, m], flow_id
                )
            return
        # Aborted somewhere ahead: release this hop's capacity; its fee goes back too.
        self._reserve(spec, record.index, -1)
        back = amount + record.held
        self._put(record.but(phase=REFUNDED, held=0, reserved=False, reason=reason))
        if record.is_origin:
            self._pay(spec, spec.consumer, back, "flow_refund")
        else:
            self._send_with_money(record.previous, P.RESULT, spec, back, lambda r, m: ["aborted", reason, None, r, m], flow_id)

    def _on_settle(self, now: int, packet: Packet) -> None:
        record = self._expect(packet, (COMMITTED,), from_next=False)
        self._pay_out(record)
        self._put(record.but(phase=SETTLED, held=0))
        if not record.is_destination:
            self._send(record.next, P.SETTLE, packet.flow_id, [])

    def _on_cancel_request(self, now: int, packet: Packet) -> None:
        record = self._expect(packet, None, from_next=True)
        if record.phase != COMMITTED:
            return  # the origin already decided (settled or cancelling): the request lapses
        if record.is_origin:
            if now < self.topology.period_start(record.spec.first_period):
                self._cancel_from_origin(record, f"redispatch by {packet.body[0]}")
            return  # too late: delivery began; the settlement stands
        self._send(record.previous, P.CANCEL_REQUEST, packet.flow_id, [packet.body[0]])

    def _on_cancel(self, now: int, packet: Packet) -> None:
        record = self._expect(packet, (COMMITTED,), from_next=False)
        spec = record.spec
        if record.is_destination:
            self.effects.revert_offer(packet.flow_id, spec, record.token_ref, record.seller)
        else:
            self.effects.cancel_hop_token(packet.flow_id, record.token_ref)
        self._reserve(spec, record.index, -1)
        if record.is_destination:
            held = record.held
            self._put(record.but(phase=CANCELLED, held=0, reserved=False, reason="redispatch"))
            self._send_with_money(record.previous, P.CANCEL_DONE, spec, held, lambda r, m: [r, m], packet.flow_id)
        else:
            self._put(record.but(phase=CANCELLING, reserved=False, reason="redispatch"))
            self._send(record.next, P.CANCEL, packet.flow_id, [])

    def _on_cancel_done(self, now: int, packet: Packet) -> None:
        record = self._expect(packet, (CANCELLING,), from_next=True)
        spec = record.spec
        release, mint = packet.body
        self.effects.receive(packet.flow_id, packet.src, spec.currency, release, mint)
        back = release + mint + record.held
        self._put(record.but(phase=CANCELLED, held=0))
        if record.is_origin:
            self._pay(spec, spec.consumer, back, "flow_cancelled")
        else:
            self._send_with_money(record.previous, P.CANCEL_DONE, spec, back, lambda r, m: [r, m], packet.flow_id)

    # ================================================================== helpers

    def _cancel_from_origin(self, record: HopRecord, reason: str) -> None:
        self.effects.cancel_hop_token(record.spec.flow_id, record.token_ref)
        self._reserve(record.spec, 0, -1)
        self._put(record.but(phase=CANCELLING, reserved=False, reason=reason))
        self._send(record.next, P.CANCEL, record.spec.flow_id, [])

    def _pay_out(self, record: HopRecord) -> None:
        spec = record.spec
        self._pay(spec, self.effects.grid_operator(), record.fee, "grid_fee")
        if record.is_destination:
            self._pay(spec, record.seller, spec.price, f"side_purchase:{spec.token}:consumer")

    def _pay(self, spec: FlowSpec, payee: bytes, amount: int, reason: str) -> None:
        """Pay out of escrow; a zero amount moves nothing (and pays no issuer fee)."""
        if amount:
            self.effects.pay(spec.flow_id, payee, spec.currency, amount, reason)

    def _record_or_refuse(self, flow_id: bytes) -> HopRecord:
        record = self.record(flow_id) if isinstance(flow_id, bytes) else None
        if record is None:
            raise _refuse("unknown_flow", "this shard holds no such flow")
        return record

    def _expect(self, packet: Packet, phases: tuple[str, ...] | None, *, from_next: bool) -> HopRecord:
        """The record a packet about a known flow refers to; a violation if it cannot be."""
        record = self.record(packet.flow_id)
        if record is None:
            raise ProtocolViolation("bad_packet", f"a {packet.kind} for a flow {self.shard} never saw")
        neighbour = record.next if from_next else record.previous
        if neighbour != packet.src:
            raise ProtocolViolation("bad_packet", f"a {packet.kind} from {packet.src}, not from the flow's neighbour {neighbour}")
        if phases is not None and record.phase not in phases:
            raise ProtocolViolation("bad_packet", f"a {packet.kind} for a flow that is {record.phase} here")
        return record

    def _hop_fee(self, spec: FlowSpec, index: int) -> int:
        """This hop's fee for its edges; refuses if a bridge is unregistered or full."""
        fee = 0
        for _, child in self.topology.edges_reserved_at(spec.path, index):
            link = self.link(child)
            if link is None:
                raise _refuse("bridge_not_registered", f"the bridge {self.shard} -> {child} is not registered")
            capacity, fee_per_kwh = link
            for period in range(spec.first_period, spec.last_period + 1):
                left = capacity - self.reserved(child, period)
                if spec.energy_wh > left:
                    raise _refuse(
                        "capacity_exceeded",
                        f"bridge {self.shard} -> {child} has {max(left, 0)} Wh left in period {period}; "
                        f"the flow needs {spec.energy_wh}",
                    )
            fee += edge_fee(spec.energy_total_wh, fee_per_kwh)
        return fee

    def _reserve(self, spec: FlowSpec, index: int, sign: int) -> None:
        for _, child in self.topology.edges_reserved_at(spec.path, index):
            for period in range(spec.first_period, spec.last_period + 1):
                value = self.reserved(child, period) + sign * spec.energy_wh
                if value:
                    self.storage.put("reserved", [child, period], value)
                else:
                    self.storage.delete("reserved", [child, period])

    def _put(self, record: HopRecord) -> None:
        self.storage.put("flow", [record.spec.flow_id], record.to_fields())

    def _send(self, dst: str, kind: str, flow_id: bytes, body: list) -> Packet:
        seq = self.next_send(dst)
        packet = Packet.make(self.shard, dst, seq, self.next_recv(dst), kind, flow_id, body)
        packet.encode()  # refuses an oversized packet before anything is written
        self.storage.put("outbox", [dst, seq], packet.to_fields())
        self.storage.put("send_seq", [dst], seq + 1)
        return packet

    def _send_with_money(self, dst: str, kind: str, spec: FlowSpec, amount: int, body, flow_id: bytes | None = None) -> Packet:
        flow_id = spec.flow_id if flow_id is None else flow_id
        release, mint = self.effects.send(flow_id, dst, spec.currency, amount) if amount else (0, 0)
        return self._send(dst, kind, flow_id, body(release, mint))

    def _prune(self, neighbour: str, acked: int) -> None:
        """Drop outbox packets the neighbour has handled (it says so in ``acked``)."""
        low = self.storage.get("pruned", [neighbour]) or 0
        if acked <= low:
            return
        for seq in range(low, acked):
            self.storage.delete("outbox", [neighbour, seq])
        self.storage.put("pruned", [neighbour], acked)
