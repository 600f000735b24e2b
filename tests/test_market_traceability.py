"""Traceability (MARKET.md 11): mix and CO2 of what a consumer took, with the path of
intermediaries, compared with the reference model."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_market_reconciliation import CONSUMERS, PRODUCERS, P, Twin, market_day, txt


def trace(w: Twin, name: str, first: int = P, last: int = P) -> dict:
    return w.chain.view("traceability", "traceability", w.a(name), first, last)


def same_as_model(w: Twin, name: str, first: int = P, last: int = P) -> dict:
    got = trace(w, name, first, last)
    want = w.m.traceability(w.t(name), first, last)
    assert {k: got[k] for k in ("energy_wh", "mix", "co2_mg", "co2_g", "measured_wh", "returned_wh")} == {
        k: want[k] for k in ("energy_wh", "mix", "co2_mg", "co2_g", "measured_wh", "returned_wh")}
    assert [[s["serial"], txt(s["producer"]), s["category"], s["energy_wh"], s["co2_mg"], [txt(a) for a in s["path"]]] for s in got["sources"]] == [
        [s["serial"], s["producer"], s["category"], s["energy_wh"], s["co2_mg"], s["path"]] for s in want["sources"]]
    return got


def producers_and_consumer() -> Twin:
    w = Twin()
    w.member("solar", ["producer"])
    w.member("wind", ["producer"])
    w.member("tr", ["trader"])
    w.member("tr2", ["trader"])
    w.member("c1", ["consumer"])
    w.meter("m_solar", "solar", "production", "solar", co2=40)
    w.meter("m_wind", "wind", "production", "wind", co2=11)
    w.meter("m_c1", "c1", "consumption")
    return w


def test_a_direct_purchase_is_traced_to_its_producer():
    w = producers_and_consumer()
    s = w.emit("solar", P, P, 3_000, 10, category="solar", co2=40, ppoint="m_solar")
    w.sell("solar", s, "consumer", 0, "c1", "m_c1")
    got = same_as_model(w, "c1")
    assert got["mix"] == {"solar": 3_000} and got["co2_mg"] == 120_000 and got["co2_g"] == 120
    assert got["sources"] == [{"serial": s, "producer": w.a("solar"), "category": "solar", "energy_wh": 3_000, "co2_mg": 120_000, "path": []}]


def test_energy_resold_by_a_trader_carries_the_trader_in_its_path():
    w = producers_and_consumer()
    bought = w.emit("wind", P, P, 4_000, 10, category="wind", co2=11, ppoint="m_wind")
    w.sell("wind", bought, "consumer", 0, "tr")
    resold = w.emit("tr", P, P, 4_000, 12, category="wind", co2=11)
    w.sell("tr", resold, "consumer", 0, "c1", "m_c1")
    got = same_as_model(w, "c1")
    assert [(s["serial"], s["path"]) for s in got["sources"]] == [(bought, [w.a("tr")])]
    assert got["mix"] == {"wind": 4_000}


def test_a_trader_supplied_by_several_tokens_splits_pro_rata_by_largest_remainder():
    w = producers_and_consumer()
    a = w.emit("solar", P, P, 1_000, 10, category="solar", co2=40, ppoint="m_solar")
    b = w.emit("wind", P, P, 2_000, 10, category="wind", co2=11, ppoint="m_wind")
    w.sell("solar", a, "consumer", 0, "tr")
    w.sell("wind", b, "consumer", 0, "tr")
    resold = w.emit("tr", P, P, 1_000, 12, category="other")
    w.sell("tr", resold, "consumer", 0, "c1", "m_c1")
    got = same_as_model(w, "c1")
    assert got["mix"] == {"solar": 333, "wind": 667}  # 1,000 over 1:2; the remainder to the larger fraction
    assert got["energy_wh"] == 1_000


def test_a_cycle_of_intermediaries_stops_the_trace():
    w = producers_and_consumer()
    x = w.emit("tr", P, P, 1_000, 10)
    w.sell("tr", x, "consumer", 0, "tr2")  # tr2 is supplied by tr ...
    y = w.emit("tr2", P, P, 1_000, 10)
    w.sell("tr2", y, "consumer", 0, "tr")  # ... and tr by tr2
    z = w.emit("tr", P, P, 500, 10)
    w.sell("tr", z, "consumer", 0, "c1", "m_c1")
    got = same_as_model(w, "c1")
    assert got["energy_wh"] == 500


def test_balancing_energy_and_returns_after_reconciliation():
    """energy supplied minus energy returned equals the measured consumption."""
    w = producers_and_consumer()
    s = w.emit("solar", P, P, 3_000, 10, category="solar", co2=40, ppoint="m_solar")
    w.sell("solar", s, "consumer", 0, "c1", "m_c1")
    s2 = w.emit("solar", P + 1, P + 1, 3_000, 10, category="solar", co2=40, ppoint="m_solar")
    w.sell("solar", s2, "consumer", 0, "c1", "m_c1")
    w.at_period_end(P + 1)
    for p, (prod, cons) in ((P, (3_000, 3_500)), (P + 1, (3_000, 2_000))):
        w.reading("m_solar", p, prod)
        w.reading("m_c1", p, cons)
        w.reading("m_wind", p, 0)
        assert w.reconcile(p) is None
    got = same_as_model(w, "c1", P, P + 1)
    assert got["mix"] == {"other": 500, "solar": 6_000}  # 500 Wh from the balancing authority
    assert got["returned_wh"] == 1_000 and got["measured_wh"] == 5_500
    assert got["energy_wh"] - got["returned_wh"] == got["measured_wh"]


def test_the_result_is_additive_over_periods():
    w = producers_and_consumer()
    for p, wh in ((P, 1_000), (P + 1, 2_500)):
        s = w.emit("wind", p, p, wh, 10, category="wind", co2=11, ppoint="m_wind")
        w.sell("wind", s, "consumer", 0, "c1", "m_c1")
    both = trace(w, "c1", P, P + 1)
    first, second = trace(w, "c1", P, P), trace(w, "c1", P + 1, P + 1)
    assert both["energy_wh"] == first["energy_wh"] + second["energy_wh"] == 3_500
    assert both["co2_mg"] == first["co2_mg"] + second["co2_mg"]


def test_a_participant_without_consumption_meters_took_nothing():
    w = producers_and_consumer()
    got = same_as_model(w, "tr")
    assert got["energy_wh"] == 0 and got["sources"] == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_days_trace_like_the_model(data):
    w = Twin()
    market_day(w, data, 2)
    for p in (P, P + 1):
        if w.reconcile(p) == "missing_reading":
            for name in PRODUCERS + CONSUMERS:
                if w.m.reading(w.t("m_" + name), p) is None:
                    w.correct("m_" + name, p, 0)
            assert w.reconcile(p) is None
    for name in CONSUMERS:
        got = same_as_model(w, name, P, P + 1)
        assert got["energy_wh"] - got["returned_wh"] == got["measured_wh"]
