"""The energy_tokens contract (MARKET.md section 6): emission, trading, the offers view,
position limits and collateral, split and merge, withdrawal, procurement and
redispatch, and its running indexes, through real transactions."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import Chain, event_fields

GO = "grid_operator"
D = 8  # delivery period of most tests: gate closure (1 h before) is 1 h after genesis
PRODUCERS = ("p1", "p2")
MARKET = ("p1", "p2", "t", "c1", "c2")
ARG_ORDER = (
    "payment_term_s",
    "producer_point",
    "consumer_point",
    "producer_withdrawal",
    "consumer_withdrawal",
    "qualification",
)


def market(fund: int = 100_000, **kw) -> Chain:
    chain = Chain(**kw)
    for who, roles in (
        ("p1", ["producer"]),
        ("p2", ["producer"]),
        ("t", ["trader"]),
        ("c1", ["consumer"]),
        ("c2", ["consumer", "retailer"]),
    ):
        chain.admit(who, roles)
    if fund:
        for who in (*MARKET, GO):
            chain.mint(who, fund)
    return chain


def with_meters(chain: Chain) -> Chain:
    for mid, owner, kind, cat, co2 in (
        ("m_p1", "p1", "production", "solar", 40),
        ("m_p2", "p2", "production", "wind", 11),
        ("m_c1", "c1", "consumption", "other", 0),
        ("m_c2", "c2", "consumption", "other", 0),
    ):
        chain.ok(
            GO,
            "meters",
            "register_meter",
            chain.addr(mid),
            chain.addr(owner),
            kind,
            cat,
            "loc",
            400_000,
            co2,
        )
        chain.ok(owner, "meters", "attest_meter", chain.addr(mid))
    return chain


def emit_args(first=D, last=D, e=1000, cat="solar", co2=40, face=12, cur="CHF", **kw):
    args = [first, last, e, cat, co2, face, cur]
    extra = [kw.pop(k, None if k != "payment_term_s" else 0) for k in ARG_ORDER]
    assert not kw, kw
    while extra and extra[-1] is None:
        extra.pop()
    return args + extra


def emit(chain: Chain, who: str, **kw) -> int:
    return chain.ok(who, "energy_tokens", "emit", *emit_args(**kw))


def emit_fails(chain: Chain, who: str, **kw) -> str:
    return chain.fails(who, "energy_tokens", "emit", *emit_args(**kw))


def side(chain: Chain, serial: int, name: str) -> dict:
    return chain.token(serial)[name]


def sold(
    chain: Chain,
    serial: int,
    name: str,
    price: int,
    buyer: str,
    seller: str,
    point: str | None = None,
) -> None:
    chain.ok(seller, "energy_tokens", "offer_side", serial, name, price, "CHF")
    args = [serial, name, price, "CHF"] + ([chain.addr(point)] if point else [])
    chain.ok(buyer, "energy_tokens", "buy_side", *args)


# ------------------------------------------------------------------ emission


def test_any_market_role_emits_a_token_owning_both_sides():
    chain = market()
    for who in MARKET:
        serial = emit(chain, who, cat="wind", co2=11)
        t = chain.token(serial)
        for name in ("producer", "consumer"):
            assert t[name] == {
                "owner": chain.addr(who),
                "point": chain.addr(who),
                "price": None,
                "currency": None,
                "point_kind": "virtual",
            }
        assert (t["status"], t["purpose"], t["origin_shard"], t["co2_mg"]) == (
            "open",
            "market",
            "ch/test",
            11_000,
        )
    assert chain.view("energy_tokens", "next_serial") == 6


@pytest.mark.parametrize(
    ("who", "code"),
    [
        ("bank", "role_missing"),
        (GO, "role_missing"),
        ("co2_authority", "role_missing"),
        ("ghost", "not_member"),
    ],
)
def test_only_market_roles_emit(who, code):
    chain = market()
    assert emit_fails(chain, who) == code


def test_a_suspended_member_cannot_emit():
    chain = market()
    chain.ok(GO, "membership", "suspend", chain.addr("p1"))
    assert emit_fails(chain, "p1") == "not_active"


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"first": -1, "last": D}, "bad_periods"),
        ({"first": D + 1, "last": D}, "bad_periods"),
        ({"first": D, "last": D + 96 * 366}, "bad_periods"),
        ({"first": 4, "last": 4}, "gate_closed"),
        ({"e": 0}, "bad_energy"),
        ({"e": -5}, "bad_energy"),
        ({"cat": "plasma"}, "bad_category"),
        ({"co2": -1}, "bad_co2"),
        ({"cur": "USD"}, "unknown_currency"),
        ({"payment_term_s": -1}, "bad_payment_term"),
        ({"producer_withdrawal": [-1, 2]}, "bad_withdrawal_terms"),
        ({"consumer_withdrawal": [100]}, "bad_withdrawal_terms"),
        ({"consumer_withdrawal": [100, -2]}, "bad_withdrawal_terms"),
        ({"qualification": [["fast", 10, 5]]}, "bad_qualification"),
        ({"qualification": [["primary", -1, 5]]}, "bad_qualification"),
        ({"qualification": [["primary", 1, 5], ["primary", 2, 5]]}, "bad_qualification"),
    ],
)
def test_emission_refuses_invalid_characteristics(kw, code):
    chain = market()
    assert emit_fails(chain, "p1", **kw) == code
    assert chain.view("energy_tokens", "next_serial") == 1


def test_energy_must_be_a_multiple_of_the_energy_unit():
    chain = market(params={"energy_unit_wh": 100})
    assert emit_fails(chain, "p1", e=150) == "bad_energy"
    emit(chain, "p1", e=200)


def test_emission_checks_in_the_documented_order():
    chain = market()
    bad = dict(
        first=4,
        last=4,
        e=0,
        cat="plasma",
        co2=-1,
        cur="USD",
        payment_term_s=-1,
        producer_withdrawal=[-1, 0],
        qualification=[["x", 0, 0]],
    )
    for code, fix in (
        ("gate_closed", {"first": D, "last": D}),
        ("bad_energy", {"e": 1000}),
        ("bad_category", {"cat": "solar"}),
        ("bad_co2", {"co2": 5}),
        ("unknown_currency", {"cur": "CHF"}),
        ("bad_payment_term", {"payment_term_s": 0}),
        ("bad_withdrawal_terms", {"producer_withdrawal": None}),
        ("bad_qualification", {"qualification": None}),
    ):
        assert emit_fails(chain, "p1", **bad) == code
        bad.update(fix)
    emit(chain, "p1", **bad)


def test_fixed_characteristics_are_stored_as_given():
    chain = market()
    serial = emit(
        chain,
        "p1",
        first=D,
        last=D + 3,
        e=2500,
        cat="hydro",
        co2=7,
        face=-3,
        cur="EUR",
        payment_term_s=3600,
        producer_withdrawal=[900, 2],
        consumer_withdrawal=[0, 0],
        qualification=[["tertiary", 600, 9], ["primary", 30, 20]],
    )
    t = chain.token(serial)
    assert (
        t["first_period"],
        t["last_period"],
        t["energy_wh"],
        t["category"],
        t["co2_mg"],
        t["face_value"],
        t["currency"],
        t["payment_term_s"],
    ) == (D, D + 3, 2500, "hydro", 17_500, -3, "EUR", 3600)
    assert t["withdrawal"] == {"producer": [900, 2], "consumer": [0, 0]}
    assert t["qualification"] == [["primary", 30, 20], ["tertiary", 600, 9]]
    assert (t["parents"], t["children"], t["grid_fee"], t["obligated"]) == ([], [], 0, False)


def test_emission_changes_no_position():
    chain = market()
    emit(chain, "p1", last=D + 2)
    for p in (D, D + 1, D + 2):
        assert chain.view("energy_tokens", "net_position", chain.addr("p1"), p) == 0
        assert chain.view("energy_tokens", "point_position", p, chain.addr("p1")) == 0
        assert chain.view("energy_tokens", "vwap_acc", p) == [0, 0]


# ------------------------------------------------------------------ delivery points


def test_side_points_are_the_owners_address_or_its_own_active_meters():
    chain = with_meters(market())
    serial = emit(chain, "p1", producer_point=chain.addr("m_p1"))
    assert side(chain, serial, "producer")["point_kind"] == "production"
    assert chain.view("energy_tokens", "point_position", D, chain.addr("m_p1")) == 1000
    assert chain.view("energy_tokens", "point_position", D, chain.addr("p1")) == -1000
    assert emit_fails(chain, "p1", producer_point=chain.addr("nowhere")) == "bad_point"
    assert (
        emit_fails(chain, "p1", producer_point=chain.addr("m_p2"), cat="wind") == "meter_not_owned"
    )
    assert emit_fails(chain, "c1", consumer_point=chain.addr("m_p1")) == "meter_not_owned"
    assert emit_fails(chain, "p1", consumer_point=chain.addr("m_p1")) == "meter_kind_mismatch"
    assert (
        emit_fails(chain, "p1", producer_point=chain.addr("m_p1"), cat="wind")
        == "category_mismatch"
    )
    chain.ok(GO, "meters", "suspend_meter", chain.addr("m_p1"))
    assert emit_fails(chain, "p1", producer_point=chain.addr("m_p1")) == "meter_not_active"


def test_a_pending_meter_is_not_a_valid_point():
    chain = with_meters(market())
    chain.ok(
        GO,
        "meters",
        "register_meter",
        chain.addr("m_new"),
        chain.addr("c1"),
        "consumption",
        "other",
        "loc",
        1000,
        0,
    )
    assert (
        emit_fails(chain, "c1", cat="other", co2=0, consumer_point=chain.addr("m_new"))
        == "meter_not_active"
    )


def test_a_buyer_takes_the_side_at_its_own_meter():
    chain = with_meters(market())
    serial = emit(chain, "p1", producer_point=chain.addr("m_p1"))
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 100, "CHF")
    assert (
        chain.fails(
            "c1", "energy_tokens", "buy_side", serial, "consumer", 100, "CHF", chain.addr("m_c2")
        )
        == "meter_not_owned"
    )
    chain.ok("c1", "energy_tokens", "buy_side", serial, "consumer", 100, "CHF", chain.addr("m_c1"))
    assert side(chain, serial, "consumer") == {
        "owner": chain.addr("c1"),
        "point": chain.addr("m_c1"),
        "price": None,
        "currency": None,
        "point_kind": "consumption",
    }
    assert chain.view("energy_tokens", "final_consumption", D) == 1000
    assert chain.view("energy_tokens", "final_tokens", D, 0, 10) == [[serial, 1000]]
    assert chain.view("energy_tokens", "point_position", D, chain.addr("m_c1")) == -1000
    assert chain.view("energy_tokens", "point_position", D, chain.addr("p1")) == 0


def test_allocate_side_moves_a_side_between_the_owners_points():
    chain = with_meters(market())
    serial = emit(chain, "c1", cat="other", co2=0)
    assert (
        chain.fails("c2", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("m_c2"))
        == "not_side_owner"
    )
    assert (
        chain.fails("c1", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("m_c2"))
        == "meter_not_owned"
    )
    receipt = chain.tx(
        "c1", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("m_c1")
    )
    assert receipt.ok and event_fields(receipt.events[0]) == {
        "serial": serial,
        "side": "consumer",
        "point": chain.addr("m_c1"),
    }
    assert chain.view("energy_tokens", "final_consumption", D) == 1000
    chain.ok("c1", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("c1"))
    assert chain.view("energy_tokens", "final_consumption", D) == 0
    chain.ok("c1", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("m_c1"))
    assert chain.view("energy_tokens", "final_token_count", D) == 1  # listed once
    chain.set_time(chain.gate_closure(D))
    assert (
        chain.fails("c1", "energy_tokens", "allocate_side", serial, "consumer", chain.addr("c1"))
        == "token_frozen"
    )


# ------------------------------------------------------------------ trading


def test_offer_side_sets_and_voids_a_price():
    chain = market()
    serial = emit(chain, "p1")
    receipt = chain.tx("p1", "energy_tokens", "offer_side", serial, "consumer", -20, "EUR")
    assert event_fields(receipt.events[0]) == {
        "serial": serial,
        "side": "consumer",
        "price": -20,
        "currency": "EUR",
    }
    assert (
        side(chain, serial, "consumer")["price"],
        side(chain, serial, "consumer")["currency"],
    ) == (-20, "EUR")
    receipt = chain.tx("p1", "energy_tokens", "offer_side", serial, "consumer", None, "EUR")
    assert event_fields(receipt.events[0])["currency"] is None
    assert (
        side(chain, serial, "consumer")["price"],
        side(chain, serial, "consumer")["currency"],
    ) == (None, None)


def test_offer_side_checks_in_the_documented_order():
    chain = market()
    serial = emit(chain, "p1")
    assert (
        chain.fails("c1", "energy_tokens", "offer_side", serial, "middle", 5, "CHF") == "bad_side"
    )
    assert (
        chain.fails("ghost", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
        == "not_member"
    )
    assert (
        chain.fails("c1", "energy_tokens", "offer_side", 99, "consumer", 5, "CHF")
        == "unknown_token"
    )
    assert (
        chain.fails("c1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
        == "not_side_owner"
    )
    assert (
        chain.fails("p1", "energy_tokens", "offer_side", serial, "consumer", 5, "USD")
        == "unknown_currency"
    )
    chain.set_time(chain.gate_closure(D))
    assert (
        chain.fails("p1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
        == "token_frozen"
    )


def test_buying_a_side_pays_moves_ownership_and_voids_the_price():
    chain = market()
    serial = emit(chain, "p1", last=D + 1)
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 300, "CHF")
    receipt = chain.tx("c1", "energy_tokens", "buy_side", serial, "consumer", 300, "CHF")
    assert receipt.ok
    assert [e.name for e in receipt.events] == ["Transferred", "FeePaid", "SideSold"]
    assert event_fields(receipt.events[0])["reason"] == f"side_purchase:{serial}:consumer"
    assert event_fields(receipt.events[2]) == {
        "serial": serial,
        "side": "consumer",
        "seller": chain.addr("p1"),
        "buyer": chain.addr("c1"),
        "price": 300,
        "currency": "CHF",
    }
    assert chain.balance("c1") == 100_000 - 301 and chain.balance("p1") == 100_300
    assert side(chain, serial, "consumer") == {
        "owner": chain.addr("c1"),
        "point": chain.addr("c1"),
        "price": None,
        "currency": None,
        "point_kind": "virtual",
    }
    for p in (D, D + 1):
        assert chain.view("energy_tokens", "net_position", chain.addr("c1"), p) == 1000
        assert chain.view("energy_tokens", "net_position", chain.addr("p1"), p) == -1000
        assert chain.view("energy_tokens", "vwap_acc", p) == [12_000, 1000]
    assert chain.view("energy_tokens", "vwap_acc", D + 2) == [0, 0]
    assert (
        chain.fails("t", "energy_tokens", "buy_side", serial, "consumer", 300, "CHF")
        == "not_for_sale"
    )


def test_buying_a_side_is_atomic_when_fiat_is_short():
    chain = market(fund=0)
    chain.mint("c1", 300)  # 300 + fee 1 needed
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 300, "CHF")
    before = dict(chain.state)
    receipt = chain.tx("c1", "energy_tokens", "buy_side", serial, "consumer", 300, "CHF")
    assert receipt.error[1].startswith("insufficient_funds") and receipt.events == ()
    changed = {k for k in chain.state if before.get(k) != chain.state[k]}
    assert all(k.startswith(b"\x93\xa8accounts") for k in changed), (
        "only the nonce and gas account change"
    )
    assert (
        side(chain, serial, "consumer")["owner"] == chain.addr("p1")
        and side(chain, serial, "consumer")["price"] == 300
    )
    assert chain.balance("c1") == 300 and chain.balance("p1") == 0


def test_a_negative_price_is_paid_by_the_seller_who_offered_it():
    chain = market()
    serial = emit(chain, "p1")
    sold(chain, serial, "consumer", -50, "c2", "p1")
    assert chain.balance("c2") == 100_050 and chain.balance("p1") == 100_000 - 51


def test_a_negative_price_fails_when_the_seller_is_short():
    chain = market(fund=0)
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", -50, "CHF")
    assert (
        chain.fails("c2", "energy_tokens", "buy_side", serial, "consumer", -50, "CHF")
        == "insufficient_funds"
    )


def test_a_zero_price_moves_no_money():
    chain = market(fund=0)
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "producer", 0, "CHF")
    receipt = chain.tx("t", "energy_tokens", "buy_side", serial, "producer", 0, "CHF")
    assert receipt.ok and [e.name for e in receipt.events] == ["SideSold"]
    assert (
        chain.view("energy_tokens", "net_position", chain.addr("t"), D) == -1000
    )  # short: it must deliver
    assert chain.view("energy_tokens", "net_position", chain.addr("p1"), D) == 1000


def test_the_buyer_consents_to_one_exact_price():
    chain = market()
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 300, "CHF")
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 299, "CHF")
        == "price_changed"
    )
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 300, "EUR")
        == "price_changed"
    )


def test_buy_side_checks_in_the_documented_order():
    chain = market()
    serial = emit(chain, "p1")
    assert chain.fails("c1", "energy_tokens", "buy_side", serial, "x", 1, "CHF") == "bad_side"
    assert (
        chain.fails("bank", "energy_tokens", "buy_side", serial, "consumer", 1, "CHF")
        == "role_missing"
    )
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", 77, "consumer", 1, "CHF") == "unknown_token"
    )
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 1, "CHF")
        == "not_for_sale"
    )
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 1, "CHF")
        == "price_changed"
    )
    assert (
        chain.fails("p1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF") == "self_trade"
    )
    assert (
        chain.fails(
            "c1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF", chain.addr("elsewhere")
        )
        == "bad_point"
    )
    chain.ok(GO, "membership", "suspend", chain.addr("p1"))
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF")
        == "seller_not_active"
    )
    chain.set_time(chain.gate_closure(D))
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF")
        == "token_frozen"
    )


def test_suspended_member_cannot_buy_a_side():
    chain = market()
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
    chain.ok(GO, "membership", "suspend", chain.addr("c1"))
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF") == "not_active"
    )
    chain.ok(GO, "membership", "ban", chain.addr("c1"))
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", serial, "consumer", 5, "CHF") == "not_active"
    )


def test_a_suspended_seller_cannot_offer_and_its_offers_are_hidden():
    chain = market()
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
    chain.ok(GO, "membership", "suspend", chain.addr("p1"))
    assert (
        chain.fails("p1", "energy_tokens", "offer_side", serial, "consumer", 6, "CHF")
        == "not_active"
    )
    assert chain.view("energy_tokens", "offers")["offers"] == []
    chain.ok(GO, "membership", "reinstate", chain.addr("p1"))
    assert [o["serial"] for o in chain.view("energy_tokens", "offers")["offers"]] == [serial]


def test_a_sale_voids_a_pending_withdrawal_proposal():
    chain = market()
    serial = emit(chain, "p1")
    sold(chain, serial, "consumer", 10, "c1", "p1")
    chain.ok("c1", "energy_tokens", "propose_withdrawal", serial)
    assert chain.token(serial)["withdrawal_proposal"] == ["consumer", chain.addr("c1")]
    sold(chain, serial, "consumer", 10, "c2", "c1")
    assert chain.token(serial)["withdrawal_proposal"] is None
    assert (
        chain.fails("p1", "energy_tokens", "accept_withdrawal", serial) == "no_withdrawal_proposal"
    )


def test_a_consumer_may_buy_a_producer_side():
    chain = market()
    serial = emit(chain, "t")
    sold(chain, serial, "producer", 40, "c1", "t")
    assert side(chain, serial, "producer")["owner"] == chain.addr("c1")


# ------------------------------------------------------------------ the offers view


def offer_book(chain: Chain) -> Chain:
    a = emit(chain, "p1", first=D, last=D + 1, cat="solar", co2=40)  # 1
    b = emit(chain, "p2", first=D + 2, last=D + 3, cat="wind", co2=11)  # 2
    c = emit(chain, "t", first=D, last=D, cat="wind", co2=11, cur="EUR")  # 3
    emit(chain, "p1")  # 4: never offered
    chain.ok("p1", "energy_tokens", "offer_side", a, "consumer", 100, "CHF")
    chain.ok("p1", "energy_tokens", "offer_side", a, "producer", -10, "CHF")
    chain.ok("p2", "energy_tokens", "offer_side", b, "consumer", 0, "CHF")
    chain.ok("t", "energy_tokens", "offer_side", c, "consumer", 70, "EUR")
    return chain


def listed(chain: Chain, **filters) -> list:
    return [
        (o["serial"], o["side"], o["price"])
        for o in chain.view("energy_tokens", "offers", *offer_args(**filters))["offers"]
    ]


def offer_args(
    side=None,
    first_period=None,
    last_period=None,
    category=None,
    max_co2_g_per_kwh=None,
    min_price=None,
    max_price=None,
    currency=None,
    start_serial=0,
    limit=100,
):
    return [
        side,
        first_period,
        last_period,
        category,
        max_co2_g_per_kwh,
        min_price,
        max_price,
        currency,
        start_serial,
        limit,
    ]


def test_offers_view_lists_open_offers_by_serial_producer_first():
    chain = offer_book(market())
    page = chain.view("energy_tokens", "offers")
    assert page["next"] is None
    assert page["offers"][0] == {
        "serial": 1,
        "side": "producer",
        "owner": chain.addr("p1"),
        "price": -10,
        "currency": "CHF",
    }
    assert listed(chain) == [
        (1, "producer", -10),
        (1, "consumer", 100),
        (2, "consumer", 0),
        (3, "consumer", 70),
    ]


def test_offers_view_filters_by_period_category_co2_price_and_currency():
    chain = offer_book(market())
    assert listed(chain, side="consumer") == [
        (1, "consumer", 100),
        (2, "consumer", 0),
        (3, "consumer", 70),
    ]
    assert listed(chain, first_period=D + 1, last_period=D + 2) == [
        (1, "producer", -10),
        (1, "consumer", 100),
        (2, "consumer", 0),
    ]
    assert listed(chain, first_period=D + 3) == [(2, "consumer", 0)]
    assert listed(chain, category="wind") == [(2, "consumer", 0), (3, "consumer", 70)]
    assert listed(chain, max_co2_g_per_kwh=11) == [(2, "consumer", 0), (3, "consumer", 70)]
    assert listed(chain, max_co2_g_per_kwh=40) == listed(chain)
    assert listed(chain, min_price=0, max_price=70) == [(2, "consumer", 0), (3, "consumer", 70)]
    assert listed(chain, currency="EUR") == [(3, "consumer", 70)]


def test_offers_view_hides_sold_withdrawn_and_frozen_offers():
    chain = offer_book(market())
    chain.ok("c1", "energy_tokens", "buy_side", 1, "consumer", 100, "CHF")
    chain.ok("t", "energy_tokens", "offer_side", 3, "consumer", None, None)
    assert listed(chain) == [(1, "producer", -10), (2, "consumer", 0)]
    chain.set_time(chain.gate_closure(D))  # token 1 freezes; token 2 starts at D + 2
    assert listed(chain) == [(2, "consumer", 0)]


def test_offers_view_is_paged():
    chain = market()
    serials = [emit(chain, "p1") for _ in range(7)]
    for s in serials:
        chain.ok("p1", "energy_tokens", "offer_side", s, "consumer", s, "CHF")
    seen, start = [], 0
    while start is not None:
        page = chain.view("energy_tokens", "offers", *offer_args(start_serial=start, limit=3))
        assert len(page["offers"]) <= 3
        seen += [o["serial"] for o in page["offers"]]
        start = page["next"]
    assert seen == serials


def test_offers_view_skips_empty_stretches_of_serials():
    chain = market()
    first = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", first, "consumer", 1, "CHF")
    # serials far beyond one bucket: split a token into many parts, never offered
    big = emit(chain, "p1", e=200)
    chain.ok("p1", "energy_tokens", "split_volume", big, [1] * 200)
    last = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", last, "producer", 2, "CHF")
    assert last > 200
    assert listed(chain) == [(first, "consumer", 1), (last, "producer", 2)]


# ------------------------------------------------------------------ position limits and collateral


def test_opening_beyond_the_position_limit_is_refused():
    chain = market()
    chain.ok(GO, "membership", "set_position_limit", chain.addr("c1"), 1500)
    a = emit(chain, "p1", last=D + 1)
    b = emit(chain, "p2", first=D + 1, last=D + 1, cat="wind", co2=11)
    sold(chain, a, "consumer", 10, "c1", "p1")  # +1000 in D, D+1
    chain.ok("p2", "energy_tokens", "offer_side", b, "consumer", 10, "CHF")
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", b, "consumer", 10, "CHF")
        == "position_limit_exceeded"
    )  # 2000 in D+1
    chain.ok(GO, "membership", "set_position_limit", chain.addr("c1"), 2000)
    chain.ok("c1", "energy_tokens", "buy_side", b, "consumer", 10, "CHF")
    assert chain.view("energy_tokens", "net_position", chain.addr("c1"), D + 1) == 2000


def test_reducing_a_position_is_always_allowed_even_above_the_limit():
    chain = market()
    a = emit(chain, "p1", e=3000)
    sold(chain, a, "consumer", 10, "t", "p1")  # t long 3000
    chain.ok(GO, "membership", "set_position_limit", chain.addr("t"), 1000)
    b = emit(chain, "p2", e=1000, cat="wind", co2=11)
    sold(chain, b, "producer", 10, "t", "p2")  # t sells 1000: 3000 -> 2000, still above 1000
    assert chain.view("energy_tokens", "net_position", chain.addr("t"), D) == 2000
    c = emit(chain, "p2", e=500, cat="wind", co2=11)
    chain.ok("p2", "energy_tokens", "offer_side", c, "consumer", 10, "CHF")
    assert (
        chain.fails("t", "energy_tokens", "buy_side", c, "consumer", 10, "CHF")
        == "position_limit_exceeded"
    )


def test_the_sellers_limit_applies_too():
    chain = market()
    chain.ok(GO, "membership", "set_position_limit", chain.addr("p1"), 500)
    a = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", a, "consumer", 10, "CHF")
    assert (
        chain.fails("c1", "energy_tokens", "buy_side", a, "consumer", 10, "CHF")
        == "position_limit_exceeded"
    )
    chain.ok(GO, "membership", "set_position_limit", chain.addr("p1"), 0)
    chain.ok(GO, "membership", "set_position_limit", chain.addr("c1"), 0)
    # a zero limit still allows a token whose sides stay with one owner
    emit(chain, "c1", cat="other", co2=0)


def test_collateral_is_required_below_the_rating_threshold():
    chain = market(params={"rating_threshold": 50, "min_collateral": 500})
    chain.ok(GO, "membership", "set_rating", chain.addr("p1"), 80)
    assert emit_fails(chain, "c2") == "collateral_required"
    a = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", a, "consumer", 10, "CHF")
    assert (
        chain.fails("c2", "energy_tokens", "buy_side", a, "consumer", 10, "CHF")
        == "collateral_required"
    )
    chain.ok("c2", "settlement", "deposit_collateral", "CHF", 499)
    assert emit_fails(chain, "c2") == "collateral_required"
    chain.ok("c2", "settlement", "deposit_collateral", "CHF", 1)
    emit(chain, "c2")
    chain.ok("c2", "energy_tokens", "buy_side", a, "consumer", 10, "CHF")


# ------------------------------------------------------------------ split and merge


def test_split_by_volume_conserves_wh_and_co2():
    chain = market()
    serial = emit(chain, "p1", last=D + 2, e=1000, co2=7)  # 7000 mg per period
    receipt = chain.tx("p1", "energy_tokens", "split_volume", serial, [333, 333, 334])
    assert receipt.ok and event_fields(receipt.events[0]) == {
        "serial": serial,
        "children": receipt.result,
    }
    kids = [chain.token(s) for s in receipt.result]
    assert [k["energy_wh"] for k in kids] == [333, 333, 334]
    assert [k["co2_mg"] for k in kids] == [2331, 2331, 2338]  # the last part keeps the remainder
    assert sum(k["co2_mg"] for k in kids) == 7000
    for k in kids:
        assert (k["first_period"], k["last_period"], k["parents"], k["category"]) == (
            D,
            D + 2,
            [serial],
            "solar",
        )
    parent = chain.token(serial)
    assert parent["status"] == "retired" and parent["children"] == receipt.result


def test_split_by_volume_refuses_bad_parts():
    chain = market(params={"energy_unit_wh": 10})
    serial = emit(chain, "p1", e=1000)
    assert chain.fails("p1", "energy_tokens", "split_volume", serial, [1000]) == "bad_split"
    assert chain.fails("p1", "energy_tokens", "split_volume", serial, [500, 0, 500]) == "bad_energy"
    assert chain.fails("p1", "energy_tokens", "split_volume", serial, [505, 495]) == "bad_energy"
    assert chain.fails("p1", "energy_tokens", "split_volume", serial, [500, 400]) == "bad_split"


def test_split_by_period_cuts_the_range():
    chain = market()
    serial = emit(chain, "p1", first=D, last=D + 3)
    assert chain.fails("p1", "energy_tokens", "split_period", serial, D) == "bad_split"
    assert chain.fails("p1", "energy_tokens", "split_period", serial, D + 4) == "bad_split"
    before, after = chain.ok("p1", "energy_tokens", "split_period", serial, D + 1)
    assert (chain.token(before)["first_period"], chain.token(before)["last_period"]) == (D, D)
    assert (chain.token(after)["first_period"], chain.token(after)["last_period"]) == (D + 1, D + 3)
    assert chain.token(after)["energy_wh"] == 1000 and chain.token(after)["co2_mg"] == 40_000


def test_split_and_merge_need_both_sides():
    chain = market()
    serial = emit(chain, "p1")
    sold(chain, serial, "consumer", 10, "c1", "p1")
    assert (
        chain.fails("p1", "energy_tokens", "split_volume", serial, [500, 500])
        == "not_owner_of_both_sides"
    )
    assert (
        chain.fails("c1", "energy_tokens", "split_period", serial, D) == "not_owner_of_both_sides"
    )
    other = emit(chain, "p1")
    assert chain.fails("p1", "energy_tokens", "merge", [other, serial]) == "not_owner_of_both_sides"


def test_frozen_and_retired_tokens_are_not_reshaped():
    chain = market()
    serial = emit(chain, "p1")
    kids = chain.ok("p1", "energy_tokens", "split_volume", serial, [500, 500])
    assert (
        chain.fails("p1", "energy_tokens", "split_volume", serial, [500, 500]) == "token_not_open"
    )
    chain.set_time(chain.gate_closure(D))
    assert chain.fails("p1", "energy_tokens", "split_volume", kids[0], [250, 250]) == "token_frozen"
    assert chain.fails("p1", "energy_tokens", "merge", kids) == "token_frozen"


def test_split_voids_the_parents_offers():
    chain = market()
    serial = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "consumer", 10, "CHF")
    kids = chain.ok("p1", "energy_tokens", "split_volume", serial, [500, 500])
    assert chain.view("energy_tokens", "offers")["offers"] == []
    assert all(side(chain, k, "consumer")["price"] is None for k in kids)


def test_merge_by_volume_adds_energy_and_co2():
    chain = market()
    a = emit(chain, "p1", last=D + 1, e=300, co2=40)
    b = emit(chain, "p1", last=D + 1, e=700, co2=40)
    receipt = chain.tx("p1", "energy_tokens", "merge", [b, a])
    m = chain.token(receipt.result)
    assert (m["energy_wh"], m["co2_mg"], m["parents"], m["first_period"], m["last_period"]) == (
        1000,
        40_000,
        [b, a],
        D,
        D + 1,
    )
    assert event_fields(receipt.events[0]) == {"parents": [b, a], "serial": receipt.result}
    assert chain.token(a)["children"] == [receipt.result] and chain.token(a)["status"] == "retired"


def test_merge_by_period_needs_contiguous_equal_loads():
    chain = market()
    a = emit(chain, "p1", first=D + 2, last=D + 3)
    b = emit(chain, "p1", first=D, last=D + 1)
    c = emit(chain, "p1", first=D + 5, last=D + 5)
    d = emit(chain, "p1", first=D + 4, last=D + 4, e=999)
    assert chain.fails("p1", "energy_tokens", "merge", [a, c]) == "not_mergeable"
    assert chain.fails("p1", "energy_tokens", "merge", [a, b, d]) == "not_mergeable"
    merged = chain.ok("p1", "energy_tokens", "merge", [a, b])
    t = chain.token(merged)
    assert (t["first_period"], t["last_period"], t["energy_wh"], t["co2_mg"]) == (
        D,
        D + 3,
        1000,
        40_000,
    )


def test_merge_refuses_differing_fixed_fields_and_points():
    chain = with_meters(market())
    base = emit(chain, "p1")
    for kw in (
        {"face": 13},
        {"cur": "EUR"},
        {"cat": "hydro"},
        {"payment_term_s": 1},
        {"producer_withdrawal": [0, 1]},
        {"qualification": [["primary", 1, 1]]},
        {"producer_point": chain.addr("m_p1")},
    ):
        other = emit(chain, "p1", **kw)
        assert chain.fails("p1", "energy_tokens", "merge", [base, other]) == "not_mergeable", kw
    assert chain.fails("p1", "energy_tokens", "merge", [base]) == "bad_merge"
    assert chain.fails("p1", "energy_tokens", "merge", [base, base]) == "bad_merge"
    assert chain.fails("p1", "energy_tokens", "merge", [base, 999]) == "unknown_token"


def test_merge_refuses_a_period_merge_longer_than_allowed():
    chain = market(params={"max_token_periods": 3})
    a = emit(chain, "p1", first=D, last=D + 1)
    b = emit(chain, "p1", first=D + 2, last=D + 3)
    assert chain.fails("p1", "energy_tokens", "merge", [a, b]) == "bad_periods"


def test_split_and_merge_keep_every_index():
    chain = with_meters(market())
    serial = emit(chain, "p1", last=D + 1, producer_point=chain.addr("m_p1"))

    def indexes():
        return [
            chain.view("energy_tokens", v, p, chain.addr(x))
            for p in (D, D + 1)
            for v, x in (("point_position", "m_p1"), ("point_position", "p1"))
        ]

    before = indexes()
    kids = chain.ok("p1", "energy_tokens", "split_volume", serial, [400, 600])
    halves = chain.ok("p1", "energy_tokens", "split_period", kids[0], D + 1)
    assert indexes() == before
    chain.ok("p1", "energy_tokens", "merge", halves)
    assert indexes() == before
    assert sorted(chain.view("energy_tokens", "tokens_at", D, 0, 100)) == [1, 2, 3, 4, 6]


# ------------------------------------------------------------------ withdrawal


def test_the_owner_of_both_sides_withdraws_at_once():
    chain = market()
    serial = emit(chain, "p1")
    receipt = chain.tx("p1", "energy_tokens", "propose_withdrawal", serial)
    assert [(e.name, event_fields(e)) for e in receipt.events] == [
        ("Withdrawn", {"serial": serial, "how": "mutual"})
    ]
    assert chain.token(serial)["status"] == "withdrawn"
    assert chain.fails("p1", "energy_tokens", "propose_withdrawal", serial) == "token_not_open"


def test_withdrawal_by_mutual_agreement():
    chain = market()
    serial = emit(chain, "p1")
    sold(chain, serial, "consumer", 10, "c1", "p1")
    assert (
        chain.fails("c1", "energy_tokens", "accept_withdrawal", serial) == "no_withdrawal_proposal"
    )
    assert chain.fails("t", "energy_tokens", "propose_withdrawal", serial) == "not_side_owner"
    chain.ok("p1", "energy_tokens", "propose_withdrawal", serial)
    assert chain.fails("p1", "energy_tokens", "accept_withdrawal", serial) == "not_side_owner"
    receipt = chain.tx("c1", "energy_tokens", "accept_withdrawal", serial)
    assert event_fields(receipt.events[0]) == {"serial": serial, "how": "mutual"}
    assert chain.view("energy_tokens", "net_position", chain.addr("c1"), D) == 0
    assert chain.view("energy_tokens", "vwap_acc", D) == [0, 0]


def test_unilateral_withdrawal_pays_the_pre_agreed_fee():
    chain = market()
    serial = emit(chain, "p1", last=D + 1, e=1500, consumer_withdrawal=[1800, 3])
    sold(chain, serial, "consumer", 10, "c1", "p1")
    assert (
        chain.fails("p1", "energy_tokens", "withdraw_unilateral", serial, "producer")
        == "no_withdrawal_terms"
    )
    receipt = chain.tx("c1", "energy_tokens", "withdraw_unilateral", serial, "consumer")
    fee = 3000 * 3 // 1000  # payment(energy over both periods, 3 per kWh)
    assert [e.name for e in receipt.events] == ["Transferred", "FeePaid", "Withdrawn"]
    assert event_fields(receipt.events[0])["reason"] == f"withdrawal_fee:{serial}"
    assert event_fields(receipt.events[2]) == {"serial": serial, "how": "unilateral:consumer"}
    assert chain.balance("p1") == 100_010 + fee


def test_unilateral_withdrawal_after_the_notice_is_refused():
    chain = market(params={"gate_closure_lead_s": 600})
    early = emit(chain, "p1", consumer_withdrawal=[3600, 3])
    late = emit(chain, "p1", consumer_withdrawal=[3600, 3])
    sold(chain, early, "consumer", 10, "c1", "p1")
    sold(chain, late, "consumer", 10, "c1", "p1")
    chain.set_time(chain.period_start(D) - 3600)  # exactly the notice: still in time
    chain.ok("c1", "energy_tokens", "withdraw_unilateral", early, "consumer")
    chain.set_time(chain.period_start(D) - 3599)
    assert (
        chain.fails("c1", "energy_tokens", "withdraw_unilateral", late, "consumer")
        == "withdrawal_notice_passed"
    )
    chain.ok("c1", "energy_tokens", "propose_withdrawal", late)  # a proposal needs no notice


def test_unilateral_withdrawal_needs_the_fee_in_funds():
    chain = market(fund=0)
    chain.mint("c1", 10)
    serial = emit(chain, "p1", e=10_000, consumer_withdrawal=[0, 5])
    sold(chain, serial, "consumer", 0, "c1", "p1")
    assert (
        chain.fails("c1", "energy_tokens", "withdraw_unilateral", serial, "consumer")
        == "insufficient_funds"
    )
    assert chain.token(serial)["status"] == "open"


def test_nobody_withdraws_after_gate_closure():
    chain = market()
    serial = emit(chain, "p1", consumer_withdrawal=[0, 0])
    sold(chain, serial, "consumer", 10, "c1", "p1")
    chain.ok("p1", "energy_tokens", "propose_withdrawal", serial)
    chain.set_time(chain.gate_closure(D))
    assert chain.fails("c1", "energy_tokens", "accept_withdrawal", serial) == "token_frozen"
    assert (
        chain.fails("c1", "energy_tokens", "withdraw_unilateral", serial, "consumer")
        == "token_frozen"
    )


# ------------------------------------------------------------------ procurement and redispatch


def test_grid_operator_procures_balancing_and_grid_loss_tokens():
    chain = market()
    qualified = emit(chain, "p1", qualification=[["tertiary", 900, 30]])
    plain = emit(chain, "p2", cat="wind", co2=11)
    chain.ok("p1", "energy_tokens", "offer_side", qualified, "consumer", 50, "CHF")
    chain.ok("p2", "energy_tokens", "offer_side", plain, "consumer", 40, "CHF")
    chain.ok("p2", "energy_tokens", "offer_side", plain, "producer", 40, "CHF")
    assert (
        chain.fails("c1", "energy_tokens", "procure", plain, "consumer", "grid_loss", 40, "CHF")
        == "not_grid_operator"
    )
    assert (
        chain.fails(GO, "energy_tokens", "procure", plain, "consumer", "reserve", 40, "CHF")
        == "bad_purpose"
    )
    assert (
        chain.fails(GO, "energy_tokens", "procure", plain, "consumer", "balancing", 40, "CHF")
        == "not_qualified"
    )
    assert (
        chain.fails(GO, "energy_tokens", "procure", plain, "producer", "grid_loss", 40, "CHF")
        == "bad_side"
    )
    receipt = chain.tx(GO, "energy_tokens", "procure", plain, "consumer", "grid_loss", 40, "CHF")
    assert receipt.ok and receipt.events[-1].name == "SideSold"
    assert chain.token(plain)["purpose"] == "grid_loss"
    assert side(chain, plain, "consumer")["owner"] == chain.addr(GO)
    assert (
        chain.fails(GO, "energy_tokens", "procure", plain, "producer", "grid_loss", 40, "CHF")
        == "bad_side"
    )
    chain.ok(GO, "energy_tokens", "procure", qualified, "consumer", "balancing", 50, "CHF")
    assert chain.token(qualified)["purpose"] == "balancing"
    # grid-loss purchases count in the VWAP, balancing ones do not
    assert chain.view("energy_tokens", "vwap_acc", D) == [12_000, 1000]


def test_procurement_of_a_flagged_token_is_not_tradable():
    chain = market()
    serial = emit(chain, "p1", qualification=[["tertiary", 900, 30]])
    sold(chain, serial, "consumer", 5, "c1", "p1")
    chain.ok("p1", "energy_tokens", "offer_side", serial, "producer", 5, "CHF")
    chain.ok(GO, "energy_tokens", "procure", serial, "producer", "balancing", 5, "CHF")
    chain.ok("c1", "energy_tokens", "offer_side", serial, "consumer", 5, "CHF")
    assert (
        chain.fails(GO, "energy_tokens", "procure", serial, "consumer", "balancing", 5, "CHF")
        == "not_tradable"
    )


def test_procurement_ignores_the_grid_operators_limit_but_not_the_sellers():
    chain = market()
    chain.ok(GO, "membership", "set_position_limit", chain.addr(GO), 0)
    a = emit(chain, "p1")
    chain.ok("p1", "energy_tokens", "offer_side", a, "consumer", 5, "CHF")
    chain.ok(GO, "energy_tokens", "procure", a, "consumer", "grid_loss", 5, "CHF")
    chain.ok(GO, "membership", "set_position_limit", chain.addr("p2"), 10)
    b = emit(chain, "p2", cat="wind", co2=11)
    chain.ok("p2", "energy_tokens", "offer_side", b, "consumer", 5, "CHF")
    assert (
        chain.fails(GO, "energy_tokens", "procure", b, "consumer", "grid_loss", 5, "CHF")
        == "position_limit_exceeded"
    )


def test_redispatch_takes_a_frozen_side_and_pays_compensation():
    chain = market()
    serial = emit(chain, "p1", e=2000)
    sold(chain, serial, "producer", 10, "t", "p1")
    chain.set_time(chain.gate_closure(D))
    receipt = chain.tx(GO, "energy_tokens", "redispatch", serial, "producer", 4)
    assert receipt.ok and receipt.result == serial
    assert [e.name for e in receipt.events] == ["Transferred", "FeePaid", "Redispatched"]
    assert event_fields(receipt.events[0])["reason"] == f"redispatch:{serial}:producer"
    assert event_fields(receipt.events[2]) == {
        "serial": serial,
        "side": "producer",
        "previous_owner": chain.addr("t"),
        "compensation": 8,
    }
    assert side(chain, serial, "producer") == {
        "owner": chain.addr(GO),
        "point": chain.addr(GO),
        "price": None,
        "currency": None,
        "point_kind": "virtual",
    }
    assert chain.view("energy_tokens", "net_position", chain.addr("t"), D) == 0
    assert chain.fails(GO, "energy_tokens", "redispatch", serial, "producer", 4) == "already_owned"


def test_redispatch_of_a_period_range_cuts_the_token_in_three():
    chain = market()
    serial = emit(chain, "p1", first=D, last=D + 4)
    sold(chain, serial, "consumer", 10, "c1", "p1")
    chain.ok("c1", "energy_tokens", "offer_side", serial, "consumer", 99, "CHF")
    receipt = chain.tx(GO, "energy_tokens", "redispatch", serial, "consumer", 2, D + 1, D + 2)
    assert receipt.ok
    names = [e.name for e in receipt.events]
    assert names[0] == "SplitByPeriod" and names[-1] == "Redispatched"
    kids = event_fields(receipt.events[0])["children"]
    assert [(chain.token(k)["first_period"], chain.token(k)["last_period"]) for k in kids] == [
        (D, D),
        (D + 1, D + 2),
        (D + 3, D + 4),
    ]
    assert receipt.result == kids[1]
    assert side(chain, kids[1], "consumer")["owner"] == chain.addr(GO)
    assert (
        side(chain, kids[0], "consumer")["owner"] == chain.addr("c1")
        and side(chain, kids[0], "consumer")["price"] is None
    )
    assert chain.token(serial)["status"] == "retired"
    assert chain.balance("c1") == 100_000 - 11 + 4  # compensation trunc(2000 Wh x 2 / 1000)
    assert [
        chain.view("energy_tokens", "net_position", chain.addr("c1"), p) for p in range(D, D + 5)
    ] == [1000, 0, 0, 1000, 1000]


def test_redispatch_checks():
    chain = market()
    serial = emit(chain, "p1", first=D, last=D + 1, qualification=[["redispatch", 0, 5]])
    sold(chain, serial, "consumer", 10, "c1", "p1")
    assert (
        chain.fails("c1", "energy_tokens", "redispatch", serial, "consumer", 5)
        == "not_grid_operator"
    )
    assert chain.fails(GO, "energy_tokens", "redispatch", serial, "both", 5) == "bad_side"
    assert (
        chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", 5, D - 1, D)
        == "bad_periods"
    )
    assert (
        chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", 5, D + 1, D)
        == "bad_periods"
    )
    assert chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", -1) == "bad_price"
    assert (
        chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", 4)
        == "compensation_below_qualified_price"
    )
    chain.set_time(chain.period_start(D))
    assert chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", 5) == "period_started"
    chain.ok(GO, "energy_tokens", "redispatch", serial, "consumer", 5, D + 1, D + 1)


def test_redispatch_needs_the_grid_operators_funds():
    chain = market(fund=0)
    serial = emit(chain, "p1", e=10_000)
    sold(chain, serial, "consumer", 0, "c1", "p1")
    assert (
        chain.fails(GO, "energy_tokens", "redispatch", serial, "consumer", 1)
        == "insufficient_funds"
    )
    assert chain.ok(GO, "energy_tokens", "redispatch", serial, "consumer", 0) == serial


# ------------------------------------------------------------------ privileged entry points


def test_entry_points_of_other_system_contracts_refuse_transactions():
    chain = market()
    serial = emit(chain, "p1")
    assert (
        chain.fails(
            GO,
            "energy_tokens",
            "create_offset",
            D,
            chain.addr("p1"),
            chain.addr("p1"),
            100,
            10,
            "other",
            0,
            "virtual",
        )
        == "not_allowed"
    )
    assert chain.fails(GO, "energy_tokens", "add_grid_fee", serial, 5) == "not_allowed"
    assert chain.fails(GO, "energy_tokens", "mark_obligated", serial) == "not_allowed"


def test_gate_closure_freezes_tokens():
    chain = market()
    serial = emit(chain, "p1", first=D, last=D + 3)
    sold(chain, serial, "consumer", 10, "c1", "p1")
    chain.set_time(chain.gate_closure(D) - 1)
    chain.ok("c1", "energy_tokens", "offer_side", serial, "consumer", 20, "CHF")
    chain.set_time(chain.gate_closure(D))  # the whole token freezes at its first period
    for fn, args in (
        ("offer_side", (serial, "consumer", 30, "CHF")),
        ("propose_withdrawal", (serial,)),
        ("allocate_side", (serial, "consumer", chain.addr("c1"))),
    ):
        assert chain.fails("c1", "energy_tokens", fn, *args) == "token_frozen", fn
    assert (
        chain.fails("t", "energy_tokens", "buy_side", serial, "consumer", 20, "CHF")
        == "token_frozen"
    )
    assert emit_fails(chain, "p1", first=D, last=D + 1) == "gate_closed"
    emit(chain, "p1", first=D + 1, last=D + 1)


# ------------------------------------------------------------------ offsets (created by reconciliation)

# A stand-in for the reconciliation contract (named like it, so energy_tokens accepts it).
RECONCILIATION_DOUBLE = """
@export
def offset(period: int, point: Address, owner: Address, imbalance_wh: int, face_value: int, category: str, co2: int, kind: str) -> int:
    return call("energy_tokens", "create_offset", period, point, owner, imbalance_wh, face_value, category, co2, kind)
"""


def offset_chain() -> Chain:
    return with_meters(
        market(
            exclude=("reconciliation",), extra_contracts=[("reconciliation", RECONCILIATION_DOUBLE)]
        )
    )


def test_offsets_link_a_point_owner_and_the_balancing_authority():
    chain = offset_chain()
    over = chain.ok(
        GO,
        "reconciliation",
        "offset",
        D,
        chain.addr("m_p1"),
        chain.addr("p1"),
        400,
        14,
        "solar",
        40,
        "production",
    )
    under = chain.ok(
        GO,
        "reconciliation",
        "offset",
        D,
        chain.addr("m_c1"),
        chain.addr("c1"),
        -300,
        18,
        "other",
        128,
        "consumption",
    )
    t = chain.token(over)
    assert (
        t["purpose"],
        t["energy_wh"],
        t["co2_mg"],
        t["face_value"],
        t["currency"],
        t["first_period"],
        t["last_period"],
    ) == ("offset", 400, 16_000, 14, "CHF", D, D)
    assert t["producer"]["owner"] == chain.addr("p1") and t["producer"]["point"] == chain.addr(
        "m_p1"
    )
    assert t["consumer"]["owner"] == chain.addr(GO) and t["consumer"]["point"] == chain.addr(GO)
    u = chain.token(under)
    assert u["producer"]["owner"] == chain.addr(GO) and u["consumer"]["point"] == chain.addr("m_c1")
    # offsets count in final consumption, never in positions or the VWAP
    assert chain.view("energy_tokens", "final_consumption", D) == 300
    assert chain.view("energy_tokens", "final_tokens", D, 0, 10) == [[under, 300]]
    assert chain.view("energy_tokens", "tokens_at", D, 0, 10) == [over, under]
    assert chain.view("energy_tokens", "tokens_ending", D, 0, 10) == [over, under]
    assert chain.view("energy_tokens", "vwap_acc", D) == [0, 0]
    assert chain.view("energy_tokens", "net_position", chain.addr("c1"), D) == 0
    assert chain.view("energy_tokens", "point_position", D, chain.addr("m_c1")) == 0


def test_offsets_are_never_traded_reshaped_or_withdrawn():
    chain = offset_chain()
    serial = chain.ok(
        GO,
        "reconciliation",
        "offset",
        D,
        chain.addr("p1"),
        chain.addr("p1"),
        400,
        14,
        "other",
        0,
        "virtual",
    )
    assert (
        chain.fails("p1", "energy_tokens", "offer_side", serial, "producer", 5, "CHF")
        == "not_tradable"
    )
    assert chain.fails("p1", "energy_tokens", "propose_withdrawal", serial) == "not_tradable"
    assert chain.fails(GO, "energy_tokens", "redispatch", serial, "producer", 0) == "not_tradable"
    mine = chain.ok(
        GO,
        "reconciliation",
        "offset",
        D,
        chain.addr(GO),
        chain.addr(GO),
        400,
        14,
        "other",
        0,
        "virtual",
    )
    assert chain.fails(GO, "energy_tokens", "split_volume", mine, [200, 200]) == "not_tradable"


def test_grid_fees_and_obligations_are_recorded_only_for_their_contracts():
    double = """
@export
def fee(serial: int, amount: int) -> int:
    return call("energy_tokens", "add_grid_fee", serial, amount)
"""
    chain = market(exclude=("grid_fees",), extra_contracts=[("grid_fees", double)])
    serial = emit(chain, "p1")
    assert chain.ok(GO, "grid_fees", "fee", serial, 7) == 7
    assert chain.ok(GO, "grid_fees", "fee", serial, 5) == 12
    assert chain.token(serial)["grid_fee"] == 12
    assert chain.fails(GO, "grid_fees", "fee", 99, 5) == "unknown_token"
    assert chain.fails(GO, "grid_fees", "fee", serial, -1) == "bad_amount"


def test_redispatch_keeps_published_grid_fees_with_the_earliest_child():
    double = """
@export
def fee(serial: int, amount: int) -> int:
    return call("energy_tokens", "add_grid_fee", serial, amount)
"""
    chain = market(exclude=("grid_fees",), extra_contracts=[("grid_fees", double)])
    serial = emit(chain, "p1", first=D, last=D + 3)
    sold(chain, serial, "consumer", 10, "c1", "p1")
    chain.ok(GO, "grid_fees", "fee", serial, 40)  # as if period D were delivered and published
    kids = chain.ok(GO, "energy_tokens", "redispatch", serial, "consumer", 0, D + 2, D + 3)
    first_child = chain.token(serial)["children"][0]
    assert kids != first_child
    assert chain.token(first_child)["grid_fee"] == 40 and chain.token(kids)["grid_fee"] == 0
    assert chain.token(serial)["grid_fee"] == 0


# ------------------------------------------------------------------ conservation through split and merge


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_split_and_merge_conserve_energy_and_co2_in_every_period(data):
    chain = with_meters(market(params={"energy_unit_wh": 10}))
    for first, last, e, co2 in (
        (D, D + 3, 1230, 37),
        (D + 2, D + 5, 990, 41),
        (D, D + 1, 1230, 37),
    ):
        emit(chain, "p1", first=first, last=last, e=e, co2=co2, producer_point=chain.addr("m_p1"))

    def open_tokens():
        n = chain.view("energy_tokens", "next_serial")
        found = [
            x
            for k in range(1, n, 16)
            for x in chain.view("energy_tokens", "tokens", list(range(k, min(k + 16, n))))
        ]
        return [x for x in found if x["status"] == "open"]

    def totals():
        tokens = open_tokens()
        per_period = {
            p: (
                sum(x["energy_wh"] for x in tokens if x["first_period"] <= p <= x["last_period"]),
                sum(x["co2_mg"] for x in tokens if x["first_period"] <= p <= x["last_period"]),
            )
            for p in range(D, D + 6)
        }
        whole = (
            sum(x["energy_wh"] * (x["last_period"] - x["first_period"] + 1) for x in tokens),
            sum(x["co2_mg"] * (x["last_period"] - x["first_period"] + 1) for x in tokens),
        )
        points = [
            chain.view("energy_tokens", "point_position", p, chain.addr(pt))
            for p in range(D, D + 6)
            for pt in ("m_p1", "p1")
        ]
        kinds = {(x["category"], x["origin_shard"]) for x in tokens}
        return per_period, whole, points, kinds

    expected = totals()
    for _ in range(data.draw(st.integers(3, 10))):
        live = [x["serial"] for x in open_tokens()]
        op = data.draw(st.sampled_from(["volume", "period", "merge"]))
        serial = data.draw(st.sampled_from(live))
        t = chain.token(serial)
        if op == "volume":
            k = data.draw(st.integers(2, 4))
            cuts = (
                sorted(
                    data.draw(
                        st.lists(
                            st.integers(1, t["energy_wh"] // 10 - 1),
                            min_size=k - 1,
                            max_size=k - 1,
                            unique=True,
                        )
                    )
                )
                if t["energy_wh"] >= 10 * k
                else []
            )
            bounds = [0, *[c * 10 for c in cuts], t["energy_wh"]]
            parts = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
            chain.tx("p1", "energy_tokens", "split_volume", serial, parts)
        elif op == "period":
            chain.tx(
                "p1",
                "energy_tokens",
                "split_period",
                serial,
                data.draw(st.integers(t["first_period"], t["last_period"] + 1)),
            )
        else:
            tokens = open_tokens()
            same_range = [
                [
                    y["serial"]
                    for y in tokens
                    if (y["first_period"], y["last_period"])
                    == (x["first_period"], x["last_period"])
                ]
                for x in tokens
            ]
            adjacent = [
                [x["serial"], y["serial"]]
                for x in tokens
                for y in tokens
                if y["first_period"] == x["last_period"] + 1
                and (x["energy_wh"], x["co2_mg"]) == (y["energy_wh"], y["co2_mg"])
            ]
            choices = [g for g in same_range if len(g) > 1] + adjacent
            if choices and data.draw(st.booleans()):
                group = data.draw(st.sampled_from(choices))
                serials = data.draw(st.permutations(group))[: data.draw(st.integers(2, len(group)))]
            else:
                serials = [
                    serial,
                    *data.draw(
                        st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True)
                    ),
                ]
            chain.tx("p1", "energy_tokens", "merge", serials)
        assert totals() == expected
