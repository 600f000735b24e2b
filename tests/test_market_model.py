"""Tests of the market reference model (tests/market_model.py): its invariants as
hypothesis properties, and each rule of contracts/system/MARKET.md by name.

The model is the oracle other tests compare the contracts against, so these tests pin
the rules themselves: if one fails, either the model or MARKET.md is wrong.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

try:  # pytest puts tests/ on sys.path (rootdir-relative import mode)
    import market_model as mm
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests import market_model as mm

Market, ModelError, Params, Currency = mm.Market, mm.ModelError, mm.Params, mm.Currency

GO, BANK, CO2, SA = "go", "bank", "co2", "contract:settlement"
P1, P2, T, C1, C2 = "p1", "p2", "t", "c1", "c2"
M_P1, M_P2, M_C1, M_C2 = "m_p1", "m_p2", "m_c1", "m_c2"
D = 8  # first delivery period used by the tests; gate closure is 4 periods before
REF = b"r" * 32
PROPS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def ref(i: object) -> bytes:
    return repr(i).encode().ljust(32, b"\0")[:32]


def make_market(fund: int = 100_000, approve: bool = True, fee=("bps", 10), **over) -> Market:
    params = dict(
        grid_operator=GO,
        co2_authority=CO2,
        settlement_currency="CHF",
        period_s=900,
        gate_closure_lead_s=3600,
        co2_price_per_t=12_000,
        balancing_co2_g_per_kwh=128,
        settlement_account=SA,
        default_after_failures=2,
        postpone_s=900,
    )
    params.update(over)
    m = Market(
        Params(**params),
        [(GO, ("grid_operator",)), (BANK, ("bank",)), (CO2, ("co2_authority",))],
        [Currency("CHF", BANK, fee[0], fee[1]), Currency("EUR", BANK)],
    )
    for who, roles in (
        (P1, ("producer",)),
        (P2, ("producer",)),
        (T, ("trader",)),
        (C1, ("consumer",)),
        (C2, ("consumer", "retailer")),
    ):
        m.admit(GO, who, roles, ref(who))
    for mid, owner, kind, cat, co2 in (
        (M_P1, P1, "production", "solar", 40),
        (M_P2, P2, "production", "wind", 11),
        (M_C1, C1, "consumption", "other", 0),
        (M_C2, C2, "consumption", "other", 0),
    ):
        m.register_meter(GO, mid, owner, kind, cat, "loc", 400_000, co2)
        m.attest_meter(owner, mid)
    for who in (GO, P1, P2, T, C1, C2):
        if fund:
            m.mint(BANK, "CHF", who, fund, ref(("dep", who)))
        if approve:
            m.approve(who, "CHF", SA, 10**15)
    return m


def emit(m: Market, who: str = P1, first: int = D, last: int = D, wh: int = 10_000, **kw) -> int:
    args = dict(
        first_period=first,
        last_period=last,
        energy_wh=wh,
        category="solar",
        co2_g_per_kwh=40,
        face_value=12,
        currency="CHF",
    )
    if who == P1 and "producer_point" not in kw and kw.get("category", "solar") == "solar":
        args["producer_point"] = M_P1
    args.update(kw)
    return m.emit(who, **args)


def sell(m: Market, serial: int, side: str, buyer: str, price: int = 0, point: str | None = None):
    seller = m.tokens[serial].side(side).owner
    m.offer_side(seller, serial, side, price, "CHF")
    m.buy_side(buyer, serial, side, price, "CHF", point)


def deliver(m: Market, readings: dict[str, int], periods=(D,)) -> None:
    m.set_time(max(m.now, m.period_end(max(periods))))
    for p in periods:
        for mid in (M_P1, M_P2, M_C1, M_C2):
            m.submit_reading(mid, p, readings.get(mid, 0))
        m.reconcile_period(GO, p)


def refuses(code: str, fn, *args, **kw) -> None:
    with pytest.raises(ModelError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value


def total_money(m: Market, cur: str = "CHF") -> int:
    return m.total_balances(cur)


# ====================================================================== arithmetic


@given(st.integers(0, 10**9), st.integers(-(10**6), 10**6))
def test_payment_truncates_toward_zero(wh, price):
    pay = mm.payment(wh, price)
    exact = wh * price
    assert abs(pay) * 1000 <= abs(exact) < (abs(pay) + 1) * 1000
    assert pay == 0 or (pay > 0) == (exact > 0)


@given(
    st.integers(0, 10**9),
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 10**6)),
        min_size=1,
        max_size=20,
        unique_by=lambda kv: kv[0],
    ),
)
def test_largest_remainder_is_exact_and_within_one_unit(amount, weights):
    if sum(w for _, w in weights) == 0:
        return
    shares = mm.largest_remainder(amount, weights)
    total = sum(w for _, w in weights)
    assert sum(shares.values()) == amount
    for k, w in weights:
        assert amount * w // total <= shares[k] <= amount * w // total + 1


def test_largest_remainder_gives_ties_to_the_smaller_key():
    assert mm.largest_remainder(1, [(2, 1), (1, 1)]) == {1: 1, 2: 0}
    assert mm.largest_remainder(10, [("a", 1), ("b", 1), ("c", 1)]) == {"a": 4, "b": 3, "c": 3}


@given(st.integers(-(10**6), 10**6), st.integers(0, 10_000))
def test_imbalance_prices_always_penalise_the_imbalanced_party(vwap, bp):
    m = make_market(fund=0, approve=False, imbalance_spread_bp=bp)
    low, high = m.imbalance_prices(vwap)
    assert low <= vwap <= high and vwap - low == high - vwap
    assert (high - vwap) * 10_000 >= abs(vwap) * bp > (high - vwap - 1) * 10_000


def test_imbalance_prices_with_negative_vwap_still_discount_and_surcharge():
    m = make_market(fund=0, approve=False, imbalance_spread_bp=1000)
    assert m.imbalance_prices(-10) == (-11, -9)
    assert m.imbalance_prices(0) == (0, 0)
    assert m.imbalance_prices(12) == (10, 14)  # ceil(1.2) = 2: rounding favours the BA


def test_vwap_ignores_balancing_tokens_but_counts_grid_loss_purchases():
    m = make_market()
    a = emit(m, wh=10_000, face_value=12)
    b = emit(m, wh=10_000, face_value=500, qualification={"tertiary": (300, 50)})
    c = emit(m, wh=10_000, face_value=20)
    sell(m, a, "consumer", C1)
    m.offer_side(P1, b, "consumer", 0, "CHF")
    m.procure(GO, b, "consumer", "balancing", 0, "CHF")
    assert m.vwap(D) == 12
    m.offer_side(P1, c, "consumer", 0, "CHF")
    m.procure(GO, c, "consumer", "grid_loss", 0, "CHF")
    assert m.vwap(D) == 16


def test_vwap_rounds_to_nearest_and_ignores_unsold_offset_and_foreign_tokens():
    m = make_market()
    a = emit(m, wh=10_000, face_value=12)
    b = emit(m, who=P2, wh=20_000, category="wind", face_value=13, producer_point=M_P2)
    emit(m, wh=50_000, face_value=100)  # never sold: not a market price
    e = emit(m, wh=50_000, face_value=100, currency="EUR")
    sell(m, a, "consumer", C1, point=M_C1)
    sell(m, b, "consumer", C2, point=M_C2)
    sell(m, e, "consumer", C2)
    assert m.vwap(D) == 13  # (120000 + 260000) / 30000 = 12.67 -> 13
    assert m.vwap(D + 1) == m.p.reference_price_per_kwh


# ====================================================================== membership


def test_only_grid_operator_admits_suspends_and_bans():
    m = make_market()
    refuses("not_grid_operator", m.admit, P1, "x", ("consumer",), REF)
    refuses("not_grid_operator", m.suspend, P1, C1)
    refuses("not_grid_operator", m.ban, T, C1)
    refuses("not_member", m.admit, "stranger", "x", ("consumer",), REF)


def test_admission_checks_roles_hash_and_duplicates():
    m = make_market()
    refuses("already_member", m.admit, GO, C1, ("consumer",), REF)
    refuses("bad_role", m.admit, GO, "x", ("wizard",), REF)
    refuses("bad_role", m.admit, GO, "x", ("grid_operator",), REF)
    refuses("bad_role", m.admit, GO, "x", ("meter",), REF)
    refuses("bad_role", m.admit, GO, "x", (), REF)
    refuses("bad_legal_ref", m.admit, GO, "x", ("consumer",), b"Jane Doe, Main St 1")
    m.admit(GO, "x", ("consumer",), REF)
    assert m.members["x"].legal_ref_hash == REF


def test_suspended_participant_cannot_trade():
    m = make_market()
    s = emit(m)
    m.offer_side(P1, s, "consumer", 10, "CHF")
    m.suspend(GO, C1)
    refuses("not_active", m.buy_side, C1, s, "consumer", 10, "CHF")
    refuses("not_active", emit, m, C1, category="other")
    m.suspend(GO, P1)
    refuses("seller_not_active", m.buy_side, C2, s, "consumer", 10, "CHF")
    assert m.offers() == []  # a suspended seller's offers are hidden
    m.reinstate(GO, P1)
    assert [o["serial"] for o in m.offers()] == [s]


def test_banned_is_final_and_grid_operator_cannot_be_suspended():
    m = make_market()
    m.ban(GO, C1)
    refuses("bad_status", m.reinstate, GO, C1)
    refuses("cannot_suspend_grid_operator", m.suspend, GO, GO)
    refuses("not_active", m.transfer, C1, "CHF", C2, 1)
    refuses("not_active", m.transfer, C2, "CHF", C1, 1)


def test_issuer_co2_authority_and_meter_roles_are_protected():
    m = make_market()
    refuses("bad_role", m.set_roles, GO, BANK, ("trader",))
    refuses("bad_role", m.set_roles, GO, CO2, ("regulator",))
    refuses("bad_role", m.set_roles, GO, M_C1, ("consumer",))
    refuses("bad_role", m.suspend, GO, M_C1)
    m.set_roles(GO, T, ("trader", "retailer"))
    assert m.members[T].roles == {"trader", "retailer"}


def test_non_member_transactions_are_refused():
    m = make_market()
    refuses("not_member", m.transfer, "stranger", "CHF", C1, 1)
    refuses("unknown_meter", m.submit_reading, "stranger", D, 1)


# ====================================================================== fiat


def test_mint_only_by_issuer_against_a_unique_deposit_reference():
    m = make_market(fund=0)
    refuses("not_issuer", m.mint, GO, "CHF", C1, 100, ref("d"))
    refuses("bad_amount", m.mint, BANK, "CHF", C1, 0, ref("d"))
    refuses("bad_reference", m.mint, BANK, "CHF", C1, 100, b"short")
    refuses("unknown_currency", m.mint, BANK, "USD", C1, 100, ref("d"))
    m.mint(BANK, "CHF", C1, 100, ref("d"))
    refuses("duplicate_reference", m.mint, BANK, "CHF", C1, 100, ref("d"))
    assert m.supply["CHF"] == 100 == m.balance("CHF", C1)


def test_redeem_burns_from_the_holder():
    m = make_market(fund=0)
    m.mint(BANK, "CHF", C1, 100, ref("d"))
    refuses("insufficient_funds", m.redeem, C1, "CHF", 101, ref("r"))
    m.redeem(C1, "CHF", 60, ref("r"))
    refuses("duplicate_reference", m.redeem, C1, "CHF", 1, ref("r"))
    assert m.supply["CHF"] == 40 == m.balance("CHF", C1)


def test_issuer_fee_percentage_rounds_up_and_is_paid_by_the_payer():
    m = make_market(fund=0)
    m.mint(BANK, "CHF", C1, 1_000, ref("d"))
    m.transfer(C1, "CHF", C2, 1)  # 10 bp of 1 = 0.001 -> 1
    assert (m.balance("CHF", C1), m.balance("CHF", C2), m.balance("CHF", BANK)) == (998, 1, 1)
    refuses("insufficient_funds", m.transfer, C1, "CHF", C2, 998)  # needs 998 + 1
    m.transfer(C1, "CHF", BANK, 998)  # payments to the issuer carry no fee
    assert m.balance("CHF", C1) == 0


def test_issuer_fixed_fee_per_transfer():
    m = make_market(fund=0, fee=("fixed", 5))
    m.mint(BANK, "CHF", C1, 100, ref("d"))
    m.transfer(C1, "CHF", C2, 10)
    assert (m.balance("CHF", C1), m.balance("CHF", BANK)) == (85, 5)


def test_transfer_refuses_zero_and_self():
    m = make_market()
    refuses("bad_amount", m.transfer, C1, "CHF", C2, 0)
    refuses("self_transfer", m.transfer, C1, "CHF", C1, 5)


# ====================================================================== emission and trading


def test_emission_puts_the_creator_on_both_sides_and_stores_co2_exactly():
    m = make_market()
    s = emit(m, wh=2_500, co2_g_per_kwh=37)
    t = m.tokens[s]
    assert (t.producer.owner, t.consumer.owner, t.producer.point, t.consumer.point) == (
        P1,
        P1,
        M_P1,
        P1,
    )
    assert t.co2_mg == 2_500 * 37  # g/kWh == mg/Wh
    assert t.producer.price is None and t.consumer.price is None


def test_emission_preconditions():
    m = make_market(energy_unit_wh=10)
    refuses(
        "role_missing",
        m.emit,
        BANK,
        first_period=D,
        last_period=D,
        energy_wh=10,
        category="solar",
        co2_g_per_kwh=0,
        face_value=1,
        currency="CHF",
    )
    refuses("bad_periods", emit, m, first=D + 1, last=D)
    refuses("bad_energy", emit, m, wh=0)
    refuses("bad_energy", emit, m, wh=15)  # not a multiple of the 10 Wh unit
    refuses("bad_category", emit, m, category="fusion", producer_point=P1)
    refuses("bad_co2", emit, m, co2_g_per_kwh=-1)
    refuses("unknown_currency", emit, m, currency="USD")
    refuses("category_mismatch", emit, m, category="wind", producer_point=M_P1)
    refuses("meter_not_owned", emit, m, producer_point=M_P2)
    refuses("meter_kind_mismatch", emit, m, consumer_point=M_P1)
    refuses("bad_point", emit, m, consumer_point=C1)
    refuses("bad_withdrawal_terms", emit, m, producer_withdrawal=(10, -1))
    m.set_time(m.gate_closure(D))
    refuses("gate_closed", emit, m)


def test_negative_face_value_makes_the_producer_side_pay():
    m = make_market(fee=("none", 0))
    s = emit(m, wh=4_000, face_value=-5)
    sell(m, s, "consumer", C1, point=M_C1)
    deliver(m, {M_P1: 4_000, M_C1: 4_000})
    m.publish_transmission_cost(GO, D, 0)
    before = m.balance("CHF", P1)
    m.run_settlement(GO)
    assert m.balance("CHF", P1) == before - 20


def test_buying_a_side_is_atomic_and_resets_the_price_to_void():
    m = make_market(fee=("none", 0))
    s = emit(m)
    m.offer_side(P1, s, "consumer", 300, "CHF")
    m.buy_side(C1, s, "consumer", 300, "CHF", M_C1)
    t = m.tokens[s]
    assert (t.consumer.owner, t.consumer.point, t.consumer.price) == (C1, M_C1, None)
    assert m.balance("CHF", P1) - m.balance("CHF", C1) == 600
    refuses("not_for_sale", m.buy_side, C2, s, "consumer", 300, "CHF")


def test_buy_refuses_a_changed_price_void_offers_and_self_trade():
    m = make_market()
    s = emit(m)
    refuses("not_for_sale", m.buy_side, C1, s, "consumer", 0, "CHF")
    m.offer_side(P1, s, "consumer", 300, "CHF")
    refuses("price_changed", m.buy_side, C1, s, "consumer", 299, "CHF")
    refuses("price_changed", m.buy_side, C1, s, "consumer", 300, "EUR")
    refuses("self_trade", m.buy_side, P1, s, "consumer", 300, "CHF")
    refuses("not_side_owner", m.offer_side, C1, s, "consumer", 1, "CHF")


def test_buy_refuses_insufficient_funds_and_changes_nothing():
    m = make_market(fund=0)
    s = emit(m)
    m.offer_side(P1, s, "consumer", 300, "CHF")
    snap = copy.deepcopy(m.__dict__)
    refuses("insufficient_funds", m.buy_side, C1, s, "consumer", 300, "CHF")
    assert m.__dict__ == snap


def test_negative_side_price_makes_the_seller_pay_the_buyer():
    m = make_market(fee=("none", 0))
    s = emit(m)
    sell(m, s, "consumer", C1, price=-70)
    assert m.balance("CHF", C1) - m.balance("CHF", P1) == 140


def test_zero_side_price_moves_no_money():
    m = make_market()
    s = emit(m)
    before = dict(m.balances)
    sell(m, s, "producer", T, price=0)
    assert m.balances == before and m.tokens[s].producer.owner == T


def test_offers_view_filters_by_period_category_co2_and_price():
    m = make_market()
    a = emit(m, first=D, last=D + 3, co2_g_per_kwh=40)
    b = emit(
        m, who=P2, first=D + 10, last=D + 10, category="wind", co2_g_per_kwh=11, producer_point=M_P2
    )
    m.offer_side(P1, a, "consumer", 50, "CHF")
    m.offer_side(P2, b, "consumer", -5, "CHF")
    m.offer_side(P2, b, "producer", 7, "CHF")
    assert [(o["serial"], o["side"]) for o in m.offers()] == [
        (a, "consumer"),
        (b, "producer"),
        (b, "consumer"),
    ]
    assert [o["serial"] for o in m.offers(first_period=D + 4)] == [b, b]
    assert [o["serial"] for o in m.offers(last_period=D)] == [a]
    assert [o["serial"] for o in m.offers(category="wind", side="consumer")] == [b]
    assert [o["serial"] for o in m.offers(max_co2_g_per_kwh=39)] == [b, b]
    assert [o["serial"] for o in m.offers(max_price=0)] == [b]
    assert [o["serial"] for o in m.offers(min_price=7)] == [a, b]


def test_position_limit_refuses_opening_beyond_the_limit_but_allows_reducing():
    m = make_market()
    m.set_position_limit(GO, T, 5_000)
    a = emit(m, wh=4_000)
    b = emit(m, wh=2_000)
    sell(m, a, "consumer", T)  # trader long 4000
    m.offer_side(P1, b, "consumer", 0, "CHF")
    refuses("position_limit_exceeded", m.buy_side, T, b, "consumer", 0, "CHF")
    m.set_position_limit(GO, T, 1_000)  # now over the limit: reducing is still allowed
    c = emit(m, who=C1, wh=2_000, category="other")
    sell(m, c, "producer", T)  # trader sells 2000: long 2000
    assert m.net_position(T, D) == 2_000


def test_position_limit_applies_to_the_seller_too():
    m = make_market()
    m.set_position_limit(GO, P1, 1_000)
    s = emit(m, wh=2_000)
    m.offer_side(P1, s, "consumer", 0, "CHF")
    refuses("position_limit_exceeded", m.buy_side, C1, s, "consumer", 0, "CHF")


def test_low_rating_requires_collateral_in_escrow():
    m = make_market(rating_threshold=50, min_collateral=1_000)
    m.set_rating(GO, P1, 80)
    s = emit(m)
    m.offer_side(P1, s, "consumer", 0, "CHF")
    refuses("collateral_required", m.buy_side, C1, s, "consumer", 0, "CHF")
    m.deposit_collateral(C1, "CHF", 1_000)
    m.buy_side(C1, s, "consumer", 0, "CHF")
    refuses("collateral_required", m.release_collateral, C1, "CHF", 1)
    assert m.balance("CHF", SA) == 1_000


def test_allocate_side_to_own_meter_before_gate_closure_only():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C1)
    assert m.tokens[s].consumer.point == C1
    m.allocate_side(C1, s, "consumer", M_C1)
    m.suspend_meter(GO, M_C2)
    refuses("meter_not_owned", m.allocate_side, C1, s, "consumer", M_C2)
    m.set_time(m.gate_closure(D))
    refuses("token_frozen", m.allocate_side, C1, s, "consumer", C1)


def test_a_pending_or_suspended_meter_cannot_take_a_side():
    m = make_market()
    m.register_meter(GO, "m_new", C1, "consumption", "other", "loc", 1_000)
    s = emit(m)
    m.offer_side(P1, s, "consumer", 0, "CHF")
    refuses("meter_not_active", m.buy_side, C1, s, "consumer", 0, "CHF", "m_new")


# ====================================================================== split and merge


def test_split_by_volume_gives_the_co2_remainder_to_the_last_part():
    m = make_market()
    # a volume merge of different intensities gives CO2 that is not proportional to Wh
    a = emit(m, wh=1, co2_g_per_kwh=1)  # 1 mg per period
    b = emit(m, wh=2, co2_g_per_kwh=0)
    ab = m.merge(P1, [a, b])
    assert (m.tokens[ab].energy_wh, m.tokens[ab].co2_mg) == (3, 1)
    kids = m.split_volume(P1, ab, [1, 1, 1])
    assert [m.tokens[k].co2_mg for k in kids] == [0, 0, 1]  # floor, floor, remainder
    c = emit(m, wh=3, co2_g_per_kwh=0)
    d = emit(m, wh=3, co2_g_per_kwh=1)
    cd = m.merge(P1, [c, d])  # 6 Wh, 3 mg
    assert [m.tokens[k].co2_mg for k in m.split_volume(P1, cd, [4, 2])] == [2, 1]
    assert m.tokens[ab].status == "retired" and m.tokens[ab].children == tuple(kids)


def test_split_and_merge_refusals():
    m = make_market(energy_unit_wh=100)
    s = emit(m, first=D, last=D + 3, wh=1_000)
    refuses("bad_split", m.split_volume, P1, s, [1_000])
    refuses("bad_split", m.split_volume, P1, s, [500, 400])
    refuses("bad_energy", m.split_volume, P1, s, [550, 450])
    refuses("bad_split", m.split_period, P1, s, D)
    refuses("bad_split", m.split_period, P1, s, D + 4)
    sell(m, s, "consumer", C1)
    refuses("not_owner_of_both_sides", m.split_volume, C1, s, [500, 500])
    a, b = emit(m, wh=1_000), emit(m, wh=1_000, category="wind", producer_point=P1)
    refuses("not_mergeable", m.merge, P1, [a, b])
    c = emit(m, first=D + 2, last=D + 2, wh=1_000)
    refuses("not_mergeable", m.merge, P1, [a, c])  # not contiguous
    d = emit(m, first=D + 1, last=D + 1, wh=2_000)
    refuses("not_mergeable", m.merge, P1, [a, d])  # different load
    refuses("bad_merge", m.merge, P1, [a, a])
    e = emit(m, wh=1_000, face_value=13)
    refuses("not_mergeable", m.merge, P1, [a, e])


def test_merge_by_period_and_by_volume():
    m = make_market()
    a, b = emit(m, first=D, last=D + 1, wh=500), emit(m, first=D + 2, last=D + 3, wh=500)
    ab = m.merge(P1, [b, a])
    t = m.tokens[ab]
    assert (t.first_period, t.last_period, t.energy_wh, t.co2_mg) == (D, D + 3, 500, 500 * 40)
    c = emit(m, first=D, last=D + 3, wh=700, co2_g_per_kwh=5)
    abc = m.merge(P1, [ab, c])
    t = m.tokens[abc]
    assert (t.energy_wh, t.co2_mg) == (1_200, 500 * 40 + 700 * 5)


def test_frozen_tokens_cannot_be_split_merged_offered_or_withdrawn():
    m = make_market()
    a, b = emit(m, wh=500), emit(m, wh=500)
    m.set_time(m.gate_closure(D))
    refuses("token_frozen", m.split_volume, P1, a, [200, 300])
    refuses("token_frozen", m.merge, P1, [a, b])
    refuses("token_frozen", m.offer_side, P1, a, "consumer", 1, "CHF")
    refuses("token_frozen", m.propose_withdrawal, P1, a)


def test_a_token_spanning_gate_closure_freezes_whole_at_its_first_period():
    m = make_market()
    s = emit(m, first=D, last=D + 90)
    m.set_time(m.gate_closure(D))
    assert m.frozen(m.tokens[s])
    refuses("token_frozen", m.split_period, P1, s, D + 50)


@PROPS
@given(st.data())
def test_volume_and_co2_are_conserved_through_split_and_merge(data):
    m = make_market(fund=0, approve=False)
    n = data.draw(st.integers(1, 12))
    loads = data.draw(
        st.lists(st.tuples(st.integers(1, 50_000), st.integers(0, 1_200)), min_size=1, max_size=3)
    )
    # volume-merging different intensities makes CO2 non-proportional, so splits round
    parts = [emit(m, first=D, last=D + n - 1, wh=w, co2_g_per_kwh=c) for w, c in loads]
    root = parts[0] if len(parts) == 1 else m.merge(P1, parts)
    wh = sum(w for w, _ in loads)
    want_wh, want_co2 = wh * n, sum(w * c for w, c in loads) * n
    for _ in range(data.draw(st.integers(1, 12))):
        live = sorted(t.serial for t in m._live())
        s = data.draw(st.sampled_from(live))
        t = m.tokens[s]
        op = data.draw(st.sampled_from(["volume", "period", "merge"]))
        try:
            if op == "volume" and t.energy_wh >= 2:
                cut = data.draw(st.integers(1, t.energy_wh - 1))
                m.split_volume(P1, s, [cut, t.energy_wh - cut])
            elif op == "period" and t.periods >= 2:
                m.split_period(P1, s, data.draw(st.integers(t.first_period + 1, t.last_period)))
            elif op == "merge" and len(live) >= 2:
                other = data.draw(st.sampled_from([x for x in live if x != s]))
                m.merge(P1, [s, other])
        except ModelError as e:
            assert e.code == "not_mergeable"
        live = m._live()
        assert sum(t.total_wh for t in live) == want_wh
        assert sum(t.total_co2_mg for t in live) == want_co2
        assert {t.category for t in live} == {"solar"}
        assert root not in {t.serial for t in live} or len(live) == 1
        for p in range(D, D + n):  # every period keeps the same load
            assert sum(t.energy_wh for t in live if t.covers(p)) == wh


# ====================================================================== incidents


def test_mutual_withdrawal_needs_both_owners():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C1)
    refuses("no_withdrawal_proposal", m.accept_withdrawal, C1, s)
    m.propose_withdrawal(P1, s)
    refuses("not_side_owner", m.accept_withdrawal, P1, s)
    m.accept_withdrawal(C1, s)
    assert m.tokens[s].status == "withdrawn"
    refuses("token_not_open", m.offer_side, P1, s, "producer", 1, "CHF")


def test_withdrawal_proposal_lapses_when_the_side_is_sold():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C1)
    m.propose_withdrawal(P1, s)
    sell(m, s, "producer", T)
    refuses("no_withdrawal_proposal", m.accept_withdrawal, C1, s)


def test_unilateral_withdrawal_pays_the_pre_agreed_fee_within_notice():
    m = make_market(fee=("none", 0))
    s = emit(m, first=D, last=D + 1, wh=10_000, producer_withdrawal=(5400, 3))
    sell(m, s, "consumer", C1)
    refuses("no_withdrawal_terms", m.withdraw_unilateral, C1, s, "consumer")
    m.set_time(m.period_start(D) - 5400)
    m.withdraw_unilateral(P1, s, "producer")
    assert m.balance("CHF", C1) - m.balance("CHF", P1) == 2 * 60  # 20 kWh * 3
    s2 = emit(m, first=D + 10, last=D + 10, producer_withdrawal=(5400, 3))
    sell(m, s2, "consumer", C1)
    m.set_time(m.period_start(D + 10) - 5399)
    refuses("withdrawal_notice_passed", m.withdraw_unilateral, P1, s2, "producer")


def test_withdrawn_tokens_are_not_delivered_or_settled():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C1, point=M_C1)
    m.propose_withdrawal(P1, s)
    m.accept_withdrawal(C1, s)
    deliver(m, {M_C1: 0, M_P1: 0})
    assert m.reconciled[D]["imbalances"] == {}


# ====================================================================== pre-delivery


def test_procurement_flags_balancing_and_grid_loss_tokens():
    m = make_market()
    a = emit(m, qualification={"tertiary": (900, 20)})
    b = emit(m)
    m.offer_side(P1, a, "consumer", 5, "CHF")
    m.offer_side(P1, b, "consumer", 5, "CHF")
    m.offer_side(P1, b, "producer", 5, "CHF")
    refuses("not_grid_operator", m.procure, C1, a, "consumer", "balancing", 5, "CHF")
    refuses("not_qualified", m.procure, GO, b, "consumer", "balancing", 5, "CHF")
    refuses("bad_side", m.procure, GO, b, "producer", "grid_loss", 5, "CHF")
    m.procure(GO, a, "consumer", "balancing", 5, "CHF")
    m.procure(GO, b, "consumer", "grid_loss", 5, "CHF")
    assert (m.tokens[a].purpose, m.tokens[b].purpose) == ("balancing", "grid_loss")
    assert m.tokens[b].consumer.owner == GO


def test_redispatch_reallocates_a_frozen_side_with_compensation():
    m = make_market(fee=("none", 0))
    s = emit(m, first=D, last=D + 3, wh=8_000, qualification={"redispatch": (600, 4)})
    sell(m, s, "consumer", C1)
    m.set_time(m.gate_closure(D) + 1)
    refuses("compensation_below_qualified_price", m.redispatch, GO, s, "producer", 3)
    mid = m.redispatch(GO, s, "producer", 5, D + 1, D + 2)
    t = m.tokens[mid]
    assert (t.first_period, t.last_period, t.producer.owner, t.consumer.owner) == (
        D + 1,
        D + 2,
        GO,
        C1,
    )
    assert m.balance("CHF", P1) - 100_000 == 80  # 16 kWh * 5
    assert sorted((x.first_period, x.producer.owner) for x in m._live()) == [
        (D, P1),
        (D + 1, GO),
        (D + 3, P1),
    ]
    m.set_time(m.period_start(D + 3))
    refuses("period_started", m.redispatch, GO, max(m.tokens), "producer", 5)


def test_redispatch_can_take_over_a_suspended_participants_side():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C1)
    m.suspend(GO, P1)
    m.redispatch(GO, s, "producer", 0)
    assert m.tokens[s].producer.owner == GO


# ====================================================================== meters


def test_meter_registration_and_attestation():
    m = make_market()
    refuses("not_grid_operator", m.register_meter, P1, "mx", P1, "production", "solar", "l", 1)
    refuses("role_missing", m.register_meter, GO, "mx", C1, "production", "solar", "l", 1)
    refuses("bad_category", m.register_meter, GO, "mx", C1, "consumption", "solar", "l", 1)
    refuses("already_member", m.register_meter, GO, C1, C1, "consumption", "other", "l", 1)
    m.register_meter(GO, "mx", C1, "consumption", "other", "l", 1_000)
    assert m.members["mx"].roles == frozenset({"meter"})
    refuses("not_meter_owner", m.attest_meter, C2, "mx")
    m.set_time(m.period_end(D))
    refuses("meter_not_active", m.submit_reading, "mx", D, 1)
    m.attest_meter(C1, "mx")
    m.submit_reading("mx", D, 250)  # 1000 W * 0.25 h


def test_a_reading_is_accepted_from_the_exact_end_of_its_period():
    m = make_market()
    m.set_time(m.period_end(D) - 1)
    refuses("period_not_ended", m.submit_reading, M_C1, D, 1)
    m.set_time(m.period_end(D))
    m.submit_reading(M_C1, D, 1)


def test_readings_refused_for_unregistered_suspended_duplicate_future_and_excessive():
    m = make_market()
    refuses("unknown_meter", m.submit_reading, C1, D, 1)
    refuses("period_not_ended", m.submit_reading, M_C1, D, 1)
    m.set_time(m.period_end(D))
    refuses("reading_exceeds_capacity", m.submit_reading, M_C1, D, 100_001)
    refuses("bad_energy", m.submit_reading, M_C1, D, -1)
    m.submit_reading(M_C1, D, 100_000)
    refuses("duplicate_reading", m.submit_reading, M_C1, D, 5)
    m.suspend_meter(GO, M_C2)
    refuses("meter_not_active", m.submit_reading, M_C2, D, 5)


def test_only_grid_operator_corrects_and_the_original_stays_visible():
    m = make_market()
    m.set_time(m.period_end(D))
    m.submit_reading(M_C1, D, 700)
    refuses("not_grid_operator", m.correct_reading, C1, M_C1, D, 600, REF)
    m.correct_reading(GO, M_C1, D, 600, REF)
    r = m.readings[(M_C1, D)]
    assert (r.original, r.energy_wh, r.corrections) == (700, 600, [(600, REF)])
    m.correct_reading(GO, M_C2, D, 50, REF)  # a substitute value for a missing reading
    assert (m.readings[(M_C2, D)].original, m.reading(M_C2, D)) == (None, 50)


def test_readings_and_corrections_refused_after_reconciliation():
    m = make_market()
    deliver(m, {})
    refuses("period_reconciled", m.correct_reading, GO, M_C1, D, 1, REF)


# ====================================================================== reconciliation


def test_reconciliation_four_cases():
    m = make_market()
    s = emit(m, wh=10_000, face_value=20)
    w = emit(m, who=P2, wh=6_000, category="wind", producer_point=M_P2, face_value=10)
    sell(m, s, "consumer", C1, point=M_C1)
    sell(m, w, "consumer", C2, point=M_C2)
    deliver(m, {M_P1: 11_000, M_P2: 5_000, M_C1: 9_500, M_C2: 6_800})
    rec = m.reconciled[D]
    assert rec["vwap"] == 16 and (rec["price_low"], rec["price_high"]) == (14, 18)  # 16.25
    assert rec["imbalances"] == {M_P1: 1_000, M_P2: -1_000, M_C1: 500, M_C2: -800}
    offs = {
        m.tokens[x].producer.point
        if m.tokens[x].producer.owner != GO
        else m.tokens[x].consumer.point: m.tokens[x]
        for x in rec["offsets"]
    }
    over_prod, under_prod = offs[M_P1], offs[M_P2]
    under_cons, over_cons = offs[M_C1], offs[M_C2]
    assert (over_prod.producer.owner, over_prod.consumer.owner, over_prod.face_value) == (
        P1,
        GO,
        14,
    )
    assert (over_prod.category, over_prod.co2_mg) == ("solar", 1_000 * 40)
    assert (under_prod.producer.owner, under_prod.consumer.owner, under_prod.face_value) == (
        GO,
        P2,
        18,
    )
    assert (under_cons.producer.owner, under_cons.consumer.owner, under_cons.face_value) == (
        C1,
        GO,
        14,
    )
    assert (over_cons.producer.owner, over_cons.consumer.owner, over_cons.face_value) == (
        GO,
        C2,
        18,
    )
    assert under_prod.category == over_cons.category == "other"
    assert m.ba_position(D) == rec["ba_position"] == 1_000 - 1_000 + 500 - 800


def test_reconciliation_with_no_tokens_uses_the_reference_price():
    m = make_market(reference_price_per_kwh=30)
    deliver(m, {M_C1: 400})
    (off,) = m.reconciled[D]["offsets"]
    t = m.tokens[off]
    assert (t.producer.owner, t.consumer.owner, t.energy_wh, t.face_value) == (GO, C1, 400, 33)


def test_reconciliation_requires_every_reading_then_grid_operator_substitutes():
    m = make_market()
    m.set_time(m.period_end(D))
    refuses("period_not_closed", m.reconcile_period, GO, D + 1)
    for mid in (M_P1, M_P2, M_C1):
        m.submit_reading(mid, D, 0)
    refuses("missing_reading", m.reconcile_period, GO, D)
    m.correct_reading(GO, M_C2, D, 0, REF)
    m.reconcile_period(GO, D)
    refuses("already_reconciled", m.reconcile_period, GO, D)


def test_a_traders_open_position_is_reconciled_at_its_virtual_point():
    m = make_market()
    s = emit(m, wh=3_000)
    sell(m, s, "consumer", T)  # the trader bought and never resold: long 3000
    x = emit(m, who=T, wh=1_000, category="wind")
    sell(m, x, "consumer", C1, point=M_C1)  # sold 1000: still long 2000
    deliver(m, {M_P1: 3_000, M_C1: 1_000})
    assert m.reconciled[D]["imbalances"] == {T: 2_000}
    (off,) = m.reconciled[D]["offsets"]
    assert (m.tokens[off].producer.owner, m.tokens[off].consumer.owner) == (T, GO)


def test_grid_operator_positions_are_not_reconciled():
    m = make_market()
    s = emit(m, wh=3_000)
    m.offer_side(P1, s, "consumer", 0, "CHF")
    m.procure(GO, s, "consumer", "grid_loss", 0, "CHF")
    deliver(m, {M_P1: 3_000})
    assert m.reconciled[D]["imbalances"] == {}


def test_suspended_meter_with_a_reading_is_still_reconciled():
    m = make_market()
    m.set_time(m.period_end(D))
    m.submit_reading(M_C2, D, 900)
    m.suspend_meter(GO, M_C2)
    for mid in (M_P1, M_P2, M_C1):
        m.submit_reading(mid, D, 0)
    m.reconcile_period(GO, D)
    assert m.reconciled[D]["imbalances"] == {M_C2: -900}


# ====================================================================== grid fees


def test_transmission_cost_allocated_pro_rata_to_final_consumption_with_largest_remainder():
    m = make_market()
    a = emit(m, wh=1_000)
    b = emit(m, wh=2_000)
    c = emit(m, wh=4_000)
    sell(m, a, "consumer", C1, point=M_C1)
    sell(m, b, "consumer", C2, point=M_C2)
    sell(m, c, "consumer", T)  # resold energy at a virtual point carries no grid fee
    refuses("period_not_reconciled", m.publish_transmission_cost, GO, D, 10)
    deliver(m, {M_P1: 7_000, M_C1: 1_000, M_C2: 2_000})
    offs = m.reconciled[D]["offsets"]  # the trader's long position sold back to the BA
    shares = m.publish_transmission_cost(GO, D, 100)
    assert shares == {a: 33, b: 67} and m.tokens[c].grid_fee == 0 and not set(offs) & set(shares)
    refuses("already_published", m.publish_transmission_cost, GO, D, 1)


def test_a_period_with_zero_delivered_energy_cannot_carry_a_cost():
    m = make_market()
    deliver(m, {})
    refuses("no_delivered_energy", m.publish_transmission_cost, GO, D, 1)
    assert m.publish_transmission_cost(GO, D, 0) == {}


def test_security_of_supply_fixed_and_pro_rata():
    m = make_market(sos_mode="pro_rata")
    deliver(m, {M_C1: 100, M_C2: 200}, periods=(D, D + 1))
    refuses("period_not_reconciled", m.charge_security_of_supply, GO, D, D + 2, 10)
    assert m.charge_security_of_supply(GO, D, D + 1, 10) == {C1: 3, C2: 7}
    refuses("already_charged", m.charge_security_of_supply, GO, D + 1, D + 1, 10)
    f = make_market(sos_mode="fixed")
    deliver(f, {}, periods=(D,))
    assert f.charge_security_of_supply(GO, D, D, 250) == {C1: 250, C2: 250}


# ====================================================================== settlement


def settled_market(c2_funds: int = 100_000, **over) -> Market:
    m = make_market(fund=0, **over)
    for who in (GO, P1, P2, T, C1):
        m.mint(BANK, "CHF", who, 100_000, ref(("dep", who)))
    if c2_funds:
        m.mint(BANK, "CHF", C2, c2_funds, ref(("dep", C2)))
    s = emit(m, wh=10_000, face_value=20, payment_term_s=1800)
    sell(m, s, "consumer", C2, point=M_C2)
    deliver(m, {M_P1: 10_000, M_C2: 10_000})
    m.publish_transmission_cost(GO, D, 300)
    return m


def test_tokens_are_due_only_after_their_payment_term():
    m = settled_market()
    m.run_settlement(GO)
    assert m.obligations == {}
    m.set_time(m.period_end(D) + 1800)
    m.run_settlement(GO)
    kinds = {(o.kind, o.payer, o.payee, o.amount, o.status) for o in m.obligations.values()}
    assert kinds == {
        ("face_value", C2, P1, 200, "paid"),
        ("grid_fee", C2, GO, 300, "paid"),
        ("co2_fee", C2, CO2, 4, "paid"),
    }  # 400 g * 12000 / 1e6 = 4.8 -> 4


def test_tokens_are_not_due_before_the_grid_fee_is_published():
    m = make_market()
    s = emit(m)
    sell(m, s, "consumer", C2, point=M_C2)
    deliver(m, {M_P1: 10_000, M_C2: 10_000})
    m.set_time(m.now + 10**6)
    m.run_settlement(GO)
    assert m.obligations == {}


def test_settlement_nets_obligations_per_pair():
    m = make_market(fee=("none", 0))
    a = emit(m, wh=10_000, face_value=20)  # P1 sells 200 to C1
    b = emit(m, who=C1, wh=4_000, face_value=25, category="other")  # C1 sells 100 to P1
    sell(m, a, "consumer", C1)
    sell(m, b, "consumer", P1)
    deliver(m, {M_P1: 0})
    m.publish_transmission_cost(GO, D, 0)
    m.set_time(m.now + 1)
    m.run_settlement(GO)
    pays = [
        mv
        for mv in m.movements
        if mv.reason.startswith("settlement") and {mv.frm, mv.to} == {C1, P1}
    ]
    assert [(mv.frm, mv.to, mv.amount) for mv in pays] == [(C1, P1, 200 - 100)]
    assert {o.status for o in m.obligations.values() if {o.payer, o.payee} == {C1, P1}} == {"paid"}


def test_short_balance_postpones_with_a_late_fee_then_defaults_and_escrow_pays_first():
    m = settled_market(c2_funds=0, late_fee_bp=500)
    m.mint(BANK, "CHF", C2, 300, ref("c2"))
    m.deposit_collateral(C2, "CHF", 250)
    m.set_time(m.period_end(D) + 1800)
    r1 = m.run_settlement(GO)
    assert r1["failed"] and C2 not in m.in_default
    late = sorted((o.payee, o.amount) for o in m.obligations.values() if o.kind == "late_fee")
    assert late == [(GO, 15), (P1, 10)]  # ceil(5 % of 300) and ceil(5 % of 200)
    m.set_time(m.now + 899)
    m.run_settlement(GO)  # nothing is retried before the postponement ends
    assert m.failures[C2] == 1
    m.set_time(m.now + 1)
    m.run_settlement(GO)
    assert C2 in m.in_default and m.escrow[("CHF", C2)] == 0
    # the escrow (250) is shared pro rata between the creditors: 315 and 210 owed
    assert (m.balance("CHF", GO) - 100_000, m.balance("CHF", P1) - 100_000) == (150, 100)
    left = sorted((o.payee, o.amount) for o in m.open_obligations(C2))
    assert left == [(GO, 315 - 150), (P1, 210 - 100)]  # no late fee once in default


def test_default_is_cured_when_the_debt_is_paid():
    m = settled_market(c2_funds=0)
    m.set_time(m.period_end(D) + 1800)
    m.run_settlement(GO)
    m.set_time(m.now + 900)
    m.run_settlement(GO)
    assert C2 in m.in_default
    m.mint(BANK, "CHF", C2, 10_000, ref("rescue"))
    m.set_time(m.now + 900)
    m.run_settlement(GO)
    assert C2 not in m.in_default and m.open_obligations(C2) == []


def test_obligations_of_a_suspended_participant_are_blocked_not_failed():
    m = settled_market(c2_funds=0)
    m.suspend(GO, C2)
    m.set_time(m.period_end(D) + 1800)
    m.run_settlement(GO)
    assert m.failures.get(C2, 0) == 0
    assert {o.status for o in m.obligations.values() if o.payer == C2} == {"open"}


def test_settlement_allowance_must_cover_amount_plus_issuer_fee():
    m = settled_market(fee=("bps", 10))  # C2 owes P1 200 (+1), GO 300 (+1), CO2 4 (+1)
    m.approve(C2, "CHF", SA, 200 + 1 + 300 + 1 + 4 + 1 - 1)
    m.set_time(m.period_end(D) + 1800)
    r = m.run_settlement(GO)
    assert [(f[1], f[2]) for f in r["failed"]] == [(C2, P1)]  # the last pair in order
    assert m.allowance("CHF", C2, SA) == 200 + 1 - 1


def test_settlement_without_allowance_counts_as_short():
    m = settled_market()
    m.approve(C2, "CHF", SA, 0)
    m.set_time(m.period_end(D) + 1800)
    assert m.run_settlement(GO)["failed"]


def test_later_pairs_can_use_funds_received_earlier_in_the_same_run():
    m = make_market(fund=0, approve=True, fee=("none", 0))
    for who in (GO, C1, P2):
        m.mint(BANK, "CHF", who, 10_000, ref(who))
    a = emit(m, who=C1, wh=10_000, face_value=20, category="other")
    b = emit(m, who=C2, wh=10_000, face_value=20, category="other")
    sell(m, a, "consumer", C2)  # C2 owes C1 200: the pair (c1, c2) comes first
    sell(m, b, "consumer", P2)  # P2 owes C2 200: the pair (c2, p2) comes later
    deliver(m, {})
    m.publish_transmission_cost(GO, D, 0)
    m.set_time(m.now + 1)
    m.run_settlement(GO)
    assert m.balance("CHF", C2) == 0 and m.open_obligations() == []


def test_settlement_is_grid_operator_only():
    m = make_market()
    refuses("not_grid_operator", m.run_settlement, C1)


# ====================================================================== traceability


def test_traceability_follows_intermediaries_pro_rata():
    m = make_market()
    s = emit(m, wh=3_000, co2_g_per_kwh=40)
    w = emit(m, who=P2, wh=1_000, category="wind", co2_g_per_kwh=12, producer_point=M_P2)
    sell(m, s, "consumer", T)
    sell(m, w, "consumer", T)
    x = emit(m, who=T, wh=2_000, category="other", co2_g_per_kwh=0)
    sell(m, x, "consumer", C1, point=M_C1)
    tr = m.traceability(C1, D, D)
    assert tr["energy_wh"] == 2_000 and tr["mix"] == {"solar": 1_500, "wind": 500}
    assert tr["co2_mg"] == 1_500 * 40 + 500 * 12
    assert {tuple(s["path"]) for s in tr["sources"]} == {(T,)}
    assert (tr["measured_wh"], tr["returned_wh"]) == (0, 0)  # nothing read or reconciled yet


def test_traceability_of_the_scenario_reports_supply_measured_and_returned_energy():
    m = mm.run_scenario()["market"]
    tr = m.traceability("consumer2", 8, 11)
    assert tr["mix"] == {"other": 3_000, "solar": 60_000, "wind": 120_000}
    assert [s["path"] for s in tr["sources"] if s["category"] == "wind"] == [["trader"]]
    assert (tr["measured_wh"], tr["returned_wh"]) == (179_000, 4_000)
    assert tr["energy_wh"] - tr["returned_wh"] == tr["measured_wh"]


def test_traceability_survives_cycles_between_intermediaries():
    m = make_market()
    a = emit(m, who=T, wh=1_000, category="other")
    b = emit(m, who=C2, wh=1_000, category="other")
    sell(m, a, "consumer", C2)
    sell(m, b, "consumer", T)  # T and C2 (virtual) supply each other
    c = emit(m, who=T, wh=500, category="other")
    sell(m, c, "consumer", C1, point=M_C1)
    assert m.traceability(C1, D, D)["energy_wh"] == 500


# ====================================================================== properties of whole runs


@st.composite
def market_runs(draw):
    """A random day: tokens, trades, splits, readings, reconciliation, fees, settlement."""
    return draw(st.data())


def _random_run(data, m: Market, periods=(D, D + 1)) -> dict:
    minted = {"CHF": sum(m.supply.values())}
    traders = (P1, P2, T, C1, C2)
    points = {P1: [P1, M_P1], P2: [P2, M_P2], T: [T], C1: [C1, M_C1], C2: [C2, M_C2]}
    cats = {M_P1: "solar", M_P2: "wind"}
    for _ in range(data.draw(st.integers(1, 16), label="ops")):
        op = data.draw(
            st.sampled_from(
                [
                    "emit",
                    "emit",
                    "buy",
                    "buy",
                    "buy",
                    "split",
                    "transfer",
                    "withdraw",
                    "mint",
                    "redeem",
                ]
            )
        )
        who = data.draw(st.sampled_from(traders))
        live = sorted(t.serial for t in m._live())
        snap = copy.deepcopy(m.__dict__)
        try:
            if op == "emit":
                pp = data.draw(st.sampled_from(points[who]))
                first = data.draw(st.sampled_from(periods))
                m.emit(
                    who,
                    first_period=first,
                    last_period=data.draw(st.integers(first, periods[-1])),
                    energy_wh=data.draw(st.integers(1, 20_000)),
                    category=cats.get(pp, "other"),
                    co2_g_per_kwh=data.draw(st.integers(0, 900)),
                    face_value=data.draw(st.integers(-20, 60)),
                    currency="CHF",
                    producer_point=pp if pp in cats or pp == who else who,
                    producer_withdrawal=(0, 1),
                )
            elif op == "buy" and live:
                s = data.draw(st.sampled_from(live))
                side = data.draw(st.sampled_from(mm.SIDES))
                t = m.tokens[s]
                price = data.draw(st.integers(-300, 300))
                m.offer_side(t.side(side).owner, s, side, price, "CHF")
                snap = copy.deepcopy(m.__dict__)  # the offer is its own transaction
                who = data.draw(st.sampled_from([x for x in traders if x != t.side(side).owner]))
                fits = [
                    x
                    for x in points[who]
                    if x == who
                    or (side == "consumer" and x in (M_C1, M_C2))
                    or (side == "producer" and cats.get(x) == t.category)
                ]
                pt = data.draw(st.sampled_from(fits if data.draw(st.booleans()) else points[who]))
                m.buy_side(who, s, side, price, "CHF", pt)
            elif op == "split" and live:
                s = data.draw(st.sampled_from(live))
                t = m.tokens[s]
                owner = t.producer.owner
                if t.energy_wh >= 2:
                    cut = data.draw(st.integers(1, t.energy_wh - 1))
                    m.split_volume(owner, s, [cut, t.energy_wh - cut])
            elif op == "transfer":
                m.transfer(
                    who,
                    "CHF",
                    data.draw(st.sampled_from(traders)),
                    data.draw(st.integers(0, 5_000)),
                )
            elif op == "withdraw" and live:
                s = data.draw(st.sampled_from(live))
                side = data.draw(st.sampled_from(mm.SIDES))
                m.withdraw_unilateral(m.tokens[s].side(side).owner, s, side)
            elif op == "mint":
                amt = data.draw(st.integers(1, 5_000))
                m.mint(BANK, "CHF", who, amt, ref(("mint", len(m.movements))))
                minted["CHF"] += amt
            elif op == "redeem":
                amt = data.draw(st.integers(1, 5_000))
                m.redeem(who, "CHF", amt, ref(("redeem", len(m.movements))))
                minted["CHF"] -= amt
        except ModelError:
            assert m.__dict__ == snap, f"refused {op} changed state"
        assert total_money(m) == m.supply["CHF"] == minted["CHF"]
    # delivery
    m.set_time(m.period_end(periods[-1]))
    readings = {}
    for p in periods:
        for mid in (M_P1, M_P2, M_C1, M_C2):
            e = data.draw(st.integers(0, 30_000), label=f"reading {mid} {p}")
            m.submit_reading(mid, p, e)
            readings[(mid, p)] = e
        m.reconcile_period(GO, p)
    return minted


def _check_accounted(m: Market, periods) -> None:
    for p in periods:
        pos = m.positions_at(p)
        rec = m.reconciled[p]
        for point in set(pos) | set(m.meters):
            if m._owner_of_point(point) == m.p.grid_operator:
                continue
            assert m.measured_injection(point, p) == pos.get(point, 0), (point, p)
        # the balancing authority's position equals the sum of imbalances
        assert m.ba_position(p) == rec["ba_position"] == sum(rec["imbalances"].values())
        assert rec["ba_position"] == sum(m.measured_injection(x, p) for x in m.meters) - sum(
            v
            for k, v in m.positions_at(p, include_offsets=False).items()
            if m._owner_of_point(k) != m.p.grid_operator
        )


@PROPS
@given(st.data())
def test_every_meters_energy_is_accounted_after_reconciliation(data):
    m = make_market(fund=20_000)
    _random_run(data, m)
    _check_accounted(m, (D, D + 1))


@PROPS
@given(st.data())
def test_money_is_conserved_except_mint_and_burn_through_a_whole_settlement(data):
    """Whole random days: every refused step changes nothing, supply == sum of balances
    after every step, escrow is fully backed, no balance goes negative."""
    m = make_market(
        fund=data.draw(st.sampled_from([0, 300, 2_000, 20_000])),
        late_fee_bp=data.draw(st.integers(0, 2_000)),
        co2_price_per_t=data.draw(st.integers(0, 200_000)),
        sos_mode=data.draw(st.sampled_from(["fixed", "pro_rata"])),
    )
    for who in (C1, C2, T):
        if m.balance("CHF", who) and data.draw(st.integers(0, 3), label=f"collateral {who}"):
            m.deposit_collateral(who, "CHF", 1 + m.balance("CHF", who) // 3)
    minted = _random_run(data, m)
    _check_accounted(m, (D, D + 1))
    for p in (D, D + 1):
        cost = data.draw(st.integers(0, 5_000), label=f"cost {p}")
        try:
            shares = m.publish_transmission_cost(GO, p, cost)
            assert sum(shares.values()) == cost
        except ModelError as e:
            assert e.code == "no_delivered_energy"
            m.publish_transmission_cost(GO, p, 0)
    try:
        m.charge_security_of_supply(GO, D, D + 1, data.draw(st.integers(0, 2_000)))
    except ModelError as e:
        assert e.code == "no_delivered_energy"
    for _ in range(data.draw(st.integers(1, 4), label="runs")):
        m.set_time(m.now + 900)
        r = m.run_settlement(GO)
        event("settlement run with a failed pair" if r["failed"] else "settlement run paid all")
        assert total_money(m) == m.supply["CHF"] == minted["CHF"]
        assert all(v >= 0 for v in m.balances.values())
        assert all(v >= 0 for v in m.escrow.values())
        assert m.balance("CHF", SA) == sum(v for (c, _), v in m.escrow.items() if c == "CHF")
    event(f"trades: {sum(t.producer.owner != t.consumer.owner for t in m.tokens.values()) > 0}")
    event(
        f"defaults: {bool(m.in_default)}; escrow paid: "
        f"{any(mv.reason.startswith('escrow') for mv in m.movements)}"
    )
    # every obligation is paid, open, or folded into exactly one later obligation
    for o in m.obligations.values():
        assert o.status in ("paid", "open", "netted")
        assert (o.status == "netted") == (o.into is not None)
    # payments by settlement equal the paid obligations, netted per pair
    due = sum(t.obligated for t in m.tokens.values())
    assert due <= len(m.tokens)


@PROPS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["mint", "transfer", "redeem", "approve", "deposit", "release"]),
            st.sampled_from([P1, T, C1, C2, BANK]),
            st.sampled_from([P1, T, C1, C2, BANK]),
            st.integers(-5, 3_000),
        ),
        max_size=40,
    ),
    st.sampled_from([("bps", 0), ("bps", 37), ("fixed", 3), ("none", 0)]),
)
def test_fiat_supply_always_equals_the_sum_of_balances(ops, fee):
    m = make_market(fund=0, approve=False, fee=fee)
    minted = 0
    for i, (op, a, b, amt) in enumerate(ops):
        snap = copy.deepcopy(m.__dict__)
        try:
            if op == "mint":
                m.mint(BANK, "CHF", a, amt, ref(i))
                minted += amt
            elif op == "transfer":
                m.transfer(a, "CHF", b, amt)
            elif op == "redeem":
                m.redeem(a, "CHF", amt, ref(i))
                minted -= amt
            elif op == "approve":
                m.approve(a, "CHF", b, amt)
            elif op == "deposit":
                m.deposit_collateral(a, "CHF", amt)
            else:
                m.release_collateral(a, "CHF", amt)
        except ModelError:
            assert m.__dict__ == snap
        assert m.supply["CHF"] == total_money(m) == minted
        assert all(v >= 0 for v in m.balances.values())


# ====================================================================== the end-to-end scenario


def test_scenario_expected_balances():
    r = mm.run_scenario()
    m = r["market"]
    assert r["frozen_refused"]
    assert r["supply"] == 80_000 == total_money(m)
    assert r["balances"] == {
        "grid_operator": 51_975,
        "bank": 16,
        "co2_authority": 99,
        "solar": 4_066,
        "wind": 3_806,
        "trader": 2_757,
        "consumer1": 17_162,
        "consumer2": 119,
        "meter_solar": 0,
        "meter_wind": 0,
        "meter_c1": 0,
        "meter_c2": 0,
        "settlement_account": 0,
    }
    assert r["in_default"] == ["consumer2"]
    assert r["open_obligations"] == [("postponed", "consumer2", "grid_operator", 1_934)]
    _check_accounted(m, range(8, 12))


def test_scenario_balances_do_not_depend_on_time_parameters():
    fast = mm.run_scenario(
        period_s=10,
        gate_closure_lead_s=20,
        postpone_s=5,
        genesis_time=1_700_000_000,
        first_period=40,
    )
    assert fast["balances"] == mm.run_scenario()["balances"]
    assert fast["open_obligations"] == mm.run_scenario()["open_obligations"]


def test_scenario_depends_only_on_address_order():
    names = {n: "grid1" + n for n in mm.SCENARIO_NAMES}
    r = mm.run_scenario(names)
    assert {k: v for k, v in r["balances"].items()} == mm.run_scenario()["balances"]
