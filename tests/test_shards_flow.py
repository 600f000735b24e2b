"""The flow state machine, rule by rule, on the three-level topology (no proofs: shards.sim.net)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shards.errors import FlowRefused, PacketError, ProtocolViolation
from shards.flow import edge_fee, split_transfer
from shards.packets import Packet
from shards.quote import quote_flow
from shards.records import CANCELLED, COMMITTED, LOCKED, REFUNDED, RESERVED, SETTLED
from shards.sim.net import Net
from shards.sim.world import account
from shards.topology import Topology, bridge_address

TOPOLOGY = Topology.load(Path(__file__).resolve().parent.parent / "genesis" / "three-levels.toml")
T0 = TOPOLOGY.genesis_time
OERLIKON, ZURICH, CH, BERN, BREITENRAIN = "ch/zurich/oerlikon", "ch/zurich", "ch", "ch/bern", "ch/bern/breitenrain"
FIVE = (OERLIKON, ZURICH, CH, BERN, BREITENRAIN)
FIRST = 20  # first elementary period of the offered tokens: begins at T0 + 20 * 900
NOW = T0 + 1000


def setup(energy: int = 100_000, price: int = 1_500, periods: int = 2):
    """A consumer in Oerlikon, a producer in Breitenrain offering a consumer side."""
    net = Net(TOPOLOGY).at(NOW)
    consumer = account(OERLIKON, "consumer")
    producer = account(BREITENRAIN, "producer")
    net[OERLIKON].tx(net[OERLIKON].ledger.admit, consumer, {"consumer"})
    net[OERLIKON].tx(net[OERLIKON].ledger.mint, consumer, 50_000)
    net[BREITENRAIN].tx(net[BREITENRAIN].ledger.admit, producer, {"producer"})
    token = net[BREITENRAIN].tx(net[BREITENRAIN].ledger.emit_offer, producer, energy, FIRST, FIRST + periods - 1, price)
    return net, consumer, producer, token


def quote(net: Net, origin: str, destination: str, energy: int, first: int = FIRST, last: int = FIRST + 1):
    return quote_flow(
        TOPOLOGY, origin, destination, energy_wh=energy, first_period=first, last_period=last,
        read_link=lambda parent, child: net[parent].module.link(child),
        read_reserved=lambda parent, child, period: net[parent].module.reserved(child, period),
    )


def buy(net: Net, consumer: bytes, token: int, *, energy: int = 100_000, price: int = 1_500, periods: int = 2,
        budget: int | None = None, deadline: int | None = None, origin: str = OERLIKON, destination: str = BREITENRAIN):
    if budget is None:
        budget = quote(net, origin, destination, energy, FIRST, FIRST + periods - 1).total_fee
    hop = net[origin]
    return hop.tx(
        hop.module.open_flow, hop.time, consumer, destination=destination, token=token, price=price, currency="CHF",
        energy_wh=energy, first_period=FIRST, last_period=FIRST + periods - 1, fee_budget=budget,
        deadline=NOW + 60 if deadline is None else deadline,
    )


def phases(net: Net, spec) -> list:
    return [getattr(net[s].module.record(spec.flow_id), "phase", None) for s in spec.path]


def reserved_total(net: Net) -> int:
    return sum(v for hop in net.hops.values() for _, v in hop.storage.items("reserved"))


def money_outside_bridges(net: Net) -> int:
    return sum(hop.ledger.outside for hop in net.hops.values())


# ---------------------------------------------------------------------- paths and quotes


def test_path_of_a_flow_between_two_local_shards_crosses_five_shards():
    assert TOPOLOGY.path(OERLIKON, BREITENRAIN) == FIVE


def test_quote_charges_each_level_for_its_own_bridges():
    net, *_ = setup()
    q = quote(net, OERLIKON, BREITENRAIN, 100_000)
    total_wh = 200_000
    expected = [
        0,
        edge_fee(total_wh, TOPOLOGY.bridge(OERLIKON).fee_per_kwh),
        edge_fee(total_wh, TOPOLOGY.bridge(ZURICH).fee_per_kwh) + edge_fee(total_wh, TOPOLOGY.bridge(BERN).fee_per_kwh),
        edge_fee(total_wh, TOPOLOGY.bridge(BREITENRAIN).fee_per_kwh),
        0,
    ]
    assert [h.fee for h in q.hops] == expected
    assert q.total_fee == sum(expected)


def test_edge_fee_rounds_up_for_the_grid_operator():
    assert edge_fee(1, 1) == 1
    assert edge_fee(1000, 3) == 3
    assert edge_fee(1001, 3) == 4
    assert edge_fee(0, 5) == 0


# ---------------------------------------------------------------------- the happy path


def test_flow_commits_on_every_hop_and_fees_land_at_each_level():
    net, consumer, producer, token = setup()
    q = quote(net, OERLIKON, BREITENRAIN, 100_000)
    spec = buy(net, consumer, token, budget=q.total_fee + 40)
    assert phases(net, spec) == [LOCKED, None, None, None, None]
    assert net[OERLIKON].ledger.balance(consumer) == 50_000 - 1_500 - q.total_fee - 40
    net.pump()
    assert phases(net, spec) == [COMMITTED] * 5
    # The unused part of the budget came back with the acknowledgement.
    assert net[OERLIKON].ledger.balance(consumer) == 50_000 - 1_500 - q.total_fee
    net.at(TOPOLOGY.period_start(FIRST))
    net[OERLIKON].tx(net[OERLIKON].module.settle, net[OERLIKON].time, spec.flow_id)
    net.pump()
    assert phases(net, spec) == [SETTLED] * 5
    for hop, hq in zip(FIVE, q.hops, strict=True):
        assert net[hop].ledger.balance(net[hop].go) == 100_000 + hq.fee, hop
    assert net[BREITENRAIN].ledger.balance(producer) == 1_500
    # One token per shard, with the bridges as counterparties.
    tokens = [t for hop in FIVE for t in net[hop].ledger.tokens.values() if t.flow_id == spec.flow_id]
    assert len(tokens) == 5
    origin_token = next(t for t in net[OERLIKON].ledger.tokens.values() if t.flow_id == spec.flow_id)
    assert origin_token.consumer == consumer and origin_token.producer == bridge_address(OERLIKON, ZURICH)
    sold = net[BREITENRAIN].ledger.tokens[token]
    assert sold.producer == producer and sold.consumer == bridge_address(BREITENRAIN, BERN)


def test_money_is_conserved_at_every_step_of_a_flow():
    net, consumer, _, token = setup()
    total = money_outside_bridges(net)
    spec = buy(net, consumer, token)
    while net.in_flight():
        in_packets = sum(p.body[-1] + p.body[-2] for a, b in net.channels() for p in net.pending(a, b) if p.kind in ("reserve", "result", "cancel_done"))
        assert money_outside_bridges(net) + in_packets == total
        src, dst = next((a, b) for a, b in net.channels() if net.pending(a, b))
        net.deliver(src, dst)
    assert money_outside_bridges(net) == total
    assert phases(net, spec) == [COMMITTED] * 5


def test_money_crosses_a_bridge_by_minting_and_goes_back_by_release():
    assert split_transfer(0, 100) == (0, 100)
    assert split_transfer(30, 100) == (30, 70)
    assert split_transfer(500, 100) == (100, 0)
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    # Oerlikon locked what it sent up in its bridge account; Zurich minted it.
    sent_up = net[OERLIKON].ledger.balance(bridge_address(OERLIKON, ZURICH))
    assert sent_up > 0
    assert net[ZURICH].ledger.minted_from[OERLIKON] == sent_up
    assert spec.flow_id


# ---------------------------------------------------------------------- refusals before anything is locked


def test_purchase_exceeding_a_bridge_is_refused_by_the_quote_before_anything_is_locked():
    net, consumer, producer, token = setup(energy=200_000)
    buy(net, consumer, token, energy=200_000)
    net.pump()
    second = net[BREITENRAIN].tx(net[BREITENRAIN].ledger.emit_offer, producer, 200_000, FIRST, FIRST + 1, 100)
    before = [h.snapshot() for h in net.hops.values()]
    with pytest.raises(FlowRefused) as refused:
        quote(net, OERLIKON, BREITENRAIN, 200_000)
    assert refused.value.code == "capacity_exceeded"
    assert "ch/bern -> ch/bern/breitenrain" in refused.value.message
    assert [h.snapshot() for h in net.hops.values()] == before
    assert second


def test_origin_refuses_a_purchase_over_its_own_bridge_and_changes_nothing():
    net = Net(TOPOLOGY).at(NOW)
    consumer = account(ZURICH, "consumer")
    net[ZURICH].tx(net[ZURICH].ledger.admit, consumer, {"consumer"})
    net[ZURICH].tx(net[ZURICH].ledger.mint, consumer, 50_000)
    too_much = TOPOLOGY.bridge(OERLIKON).capacity_wh + 1
    error = net.refused(
        ZURICH, net[ZURICH].module.open_flow, NOW, consumer, destination=OERLIKON, token=1, price=0, currency="CHF",
        energy_wh=too_much, first_period=FIRST, last_period=FIRST, fee_budget=10_000, deadline=NOW + 60,
    )
    assert error.code == "capacity_exceeded"


def test_only_consumers_buy_across_shards():
    net, _, _, token = setup()
    trader = account(OERLIKON, "trader")
    net[OERLIKON].tx(net[OERLIKON].ledger.admit, trader, {"trader"})
    net[OERLIKON].tx(net[OERLIKON].ledger.mint, trader, 50_000)
    error = net.refused(
        OERLIKON, net[OERLIKON].module.open_flow, NOW, trader, destination=BREITENRAIN, token=token, price=1_500,
        currency="CHF", energy_wh=100_000, first_period=FIRST, last_period=FIRST + 1, fee_budget=5_000, deadline=NOW + 60,
    )
    assert error.code == "role_missing"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"deadline": NOW}, "bad_deadline"),
        ({"deadline": TOPOLOGY.period_start(FIRST) + 1}, "bad_deadline"),
        ({"energy_wh": 0}, "bad_energy"),
        ({"price": -1}, "bad_price"),
        ({"first_period": FIRST + 2}, "bad_periods"),
        ({"destination": ZURICH}, "same_shard"),
        ({"destination": "ch/nowhere"}, "unknown_shard"),
        ({"fee_budget": 0}, "fee_above_budget"),
    ],
)
def test_origin_refuses_malformed_purchases(changes, code):
    net = Net(TOPOLOGY).at(NOW)
    consumer = account(ZURICH, "consumer")
    net[ZURICH].tx(net[ZURICH].ledger.admit, consumer, {"consumer"})
    net[ZURICH].tx(net[ZURICH].ledger.mint, consumer, 50_000)
    args = dict(destination=OERLIKON, token=1, price=10, currency="CHF", energy_wh=1_000, first_period=FIRST,
                last_period=FIRST + 1, fee_budget=1_000, deadline=NOW + 60)
    if "first_period" in changes:
        args["last_period"] = FIRST
    args.update(changes)
    error = net.refused(ZURICH, net[ZURICH].module.open_flow, NOW, consumer, **args)
    assert error.code == code


def test_purchase_without_funds_is_refused_and_changes_nothing():
    net, consumer, _, token = setup(price=60_000)
    with pytest.raises(FlowRefused) as refused:
        buy(net, consumer, token, price=60_000)
    assert refused.value.code == "insufficient_funds"
    assert reserved_total(net) == 0
    assert net[OERLIKON].module.next_send(ZURICH) == 0


# ---------------------------------------------------------------------- aborts and timeouts


def test_capacity_race_refunds_the_later_flow_on_every_hop():
    net, consumer, producer, token = setup(energy=200_000)
    other = net[BREITENRAIN].tx(net[BREITENRAIN].ledger.emit_offer, producer, 200_000, FIRST, FIRST + 1, 100)
    first = buy(net, consumer, token, energy=200_000)
    # Both quotes pass before either flow reserved; the Bern -> Breitenrain bridge holds one.
    second = buy(net, consumer, other, energy=200_000, price=100)
    net.pump()
    assert phases(net, first) == [COMMITTED] * 5
    assert phases(net, second) == [REFUNDED] * 4 + [None]
    assert "capacity_exceeded" in net[OERLIKON].module.record(second.flow_id).reason
    assert net[BERN].module.reserved(BREITENRAIN, FIRST) == 200_000
    assert net[OERLIKON].ledger.locked[second.flow_id] == sum(
        a for f, p, a, _ in net[OERLIKON].ledger.payments if f == second.flow_id and p == consumer
    )


def test_timeout_refunds_every_hop_and_releases_capacity():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token, deadline=NOW + 30)
    balance = net[OERLIKON].ledger.balance(consumer) + spec.locked_amount
    net.deliver(OERLIKON, ZURICH)
    net.deliver(ZURICH, CH)
    assert phases(net, spec) == [LOCKED, RESERVED, RESERVED, None, None]
    assert reserved_total(net) > 0
    # The relayer dies; when another one delivers, the deadline has passed.
    net.at(NOW + 31)
    net.pump()
    assert phases(net, spec) == [REFUNDED] * 4 + [None]
    assert "timeout at ch/bern" in net[OERLIKON].module.record(spec.flow_id).reason
    assert reserved_total(net) == 0
    assert net[OERLIKON].ledger.balance(consumer) == balance
    assert all(h.ledger.balance(h.ledger.escrow) == 0 for h in net.hops.values())


def test_the_destinations_block_time_decides_the_timeout():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token, deadline=NOW + 30)
    for src, dst in zip(FIVE, FIVE[1:], strict=False):
        if dst == BREITENRAIN:
            net[dst].time = NOW + 29  # still before the deadline at the destination
        net.deliver(src, dst)
    # Every other shard's clock is long past the deadline when the acknowledgement arrives.
    for hop in FIVE[:-1]:
        net[hop].time = NOW + 500
    net.pump()
    assert phases(net, spec) == [COMMITTED] * 5

    net2, consumer2, _, token2 = setup()
    spec2 = buy(net2, consumer2, token2, deadline=NOW + 30)
    for src, dst in zip(FIVE, FIVE[1:], strict=False):
        if dst == BREITENRAIN:
            net2[dst].time = NOW + 30  # the destination's block time reached the deadline
        net2.deliver(src, dst)
    net2.pump()
    assert phases(net2, spec2) == [REFUNDED] * 5


def test_offer_gone_at_the_destination_refunds_every_hop():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    local = account(BREITENRAIN, "local")
    net[BREITENRAIN].tx(net[BREITENRAIN].ledger.mint, local, 5_000)
    net[BREITENRAIN].tx(net[BREITENRAIN].ledger.local_buy, token, local)
    net.pump()
    assert phases(net, spec) == [REFUNDED] * 5
    assert "not_for_sale" in net[OERLIKON].module.record(spec.flow_id).reason
    assert net[OERLIKON].ledger.balance(consumer) == 50_000


def test_a_level_raising_its_fee_above_the_budget_aborts_the_flow():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net[BERN].tx(net[BERN].module.register_bridge, net[BERN].go, BREITENRAIN, 300_000, 50)
    net.pump()
    assert phases(net, spec) == [REFUNDED] * 4 + [None]
    assert "fee_above_budget at ch/bern" in net[OERLIKON].module.record(spec.flow_id).reason
    assert net[OERLIKON].ledger.balance(consumer) == 50_000


# ---------------------------------------------------------------------- idempotence


def test_duplicate_delivery_is_harmless():
    net, consumer, _, token = setup()
    buy(net, consumer, token)
    packet = net.pending(OERLIKON, ZURICH)[0]
    assert net.deliver(OERLIKON, ZURICH, packet) == "handled"
    after = net[ZURICH].snapshot()
    assert net.deliver(OERLIKON, ZURICH, packet) == "duplicate"
    assert net[ZURICH].snapshot() == after


def test_out_of_order_packet_is_refused_and_changes_nothing():
    net, consumer, producer, token = setup()
    other = net[BREITENRAIN].tx(net[BREITENRAIN].ledger.emit_offer, producer, 1_000, FIRST, FIRST + 1, 10)
    buy(net, consumer, token)
    buy(net, consumer, other, energy=1_000, price=10)
    second = net.pending(OERLIKON, ZURICH)[1]
    before = net[ZURICH].snapshot()
    with pytest.raises(PacketError) as refused:
        net.deliver(OERLIKON, ZURICH, second)
    assert refused.value.code == "out_of_order"
    assert net[ZURICH].snapshot() == before


def test_a_result_for_a_flow_never_seen_is_a_protocol_violation():
    net = Net(TOPOLOGY).at(NOW)
    forged = Packet.make(ZURICH, OERLIKON, 0, 0, "settle", bytes(32), [])
    before = net[OERLIKON].snapshot()
    with pytest.raises(ProtocolViolation):
        net.deliver(ZURICH, OERLIKON, forged)
    assert net[OERLIKON].snapshot() == before


# ---------------------------------------------------------------------- redispatch and settlement


def test_redispatch_cancels_the_whole_chain_and_releases_capacity():
    net, consumer, producer, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    assert reserved_total(net) > 0
    net[CH].tx(net[CH].module.redispatch, NOW, net[CH].go, spec.flow_id)
    net.pump()
    assert phases(net, spec) == [CANCELLED] * 5
    assert reserved_total(net) == 0
    assert net[OERLIKON].ledger.balance(consumer) == 50_000  # all it paid came back
    assert all(h.ledger.balance(h.go) == 100_000 for h in net.hops.values())  # no fee kept
    assert not [t for h in net.hops.values() for t in h.ledger.tokens.values() if t.flow_id == spec.flow_id and t.status == "open"]
    side = net[BREITENRAIN].ledger.tokens[token]
    assert side.consumer == producer and side.price is None  # back to the seller, not for sale


def test_redispatch_is_refused_once_delivery_began():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    start = TOPOLOGY.period_start(FIRST)
    net.at(start)
    error = net.refused(BERN, net[BERN].module.redispatch, start, net[BERN].go, spec.flow_id)
    assert error.code == "period_started"


def test_redispatch_by_someone_else_than_the_grid_operator_is_refused():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    error = net.refused(CH, net[CH].module.redispatch, NOW, consumer, spec.flow_id)
    assert error.code == "not_grid_operator"


def test_a_cancellation_request_that_reaches_the_origin_after_settlement_lapses():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    net[BERN].tx(net[BERN].module.redispatch, NOW, net[BERN].go, spec.flow_id)
    start = TOPOLOGY.period_start(FIRST)
    net.at(start)
    net[OERLIKON].tx(net[OERLIKON].module.settle, start, spec.flow_id)  # the origin decides first
    net.pump()
    assert phases(net, spec) == [SETTLED] * 5


def test_settlement_waits_for_delivery_to_begin_and_starts_at_the_origin():
    net, consumer, _, token = setup()
    spec = buy(net, consumer, token)
    net.pump()
    assert net.refused(OERLIKON, net[OERLIKON].module.settle, NOW, spec.flow_id).code == "not_due"
    start = TOPOLOGY.period_start(FIRST)
    assert net.refused(CH, net[CH].module.settle, start, spec.flow_id).code == "not_origin"


def test_outbox_is_pruned_once_the_neighbour_acknowledges():
    net, consumer, _, token = setup()
    buy(net, consumer, token)
    net.pump()
    # Oerlikon's reserve #0 was acknowledged by Zurich's result (acked = 1).
    assert net[OERLIKON].module.outbox(ZURICH, 0) is None
    assert net[OERLIKON].storage.get("pruned", [ZURICH]) == 1
