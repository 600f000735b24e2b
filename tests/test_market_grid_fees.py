"""Grid fees (MARKET.md 9): transmission cost over final consumption, security of supply."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_market_reconciliation import CONSUMERS, PRODUCERS, P, Twin, market_day


def delivered(step: int = 0, **params) -> tuple[Twin, dict]:
    """MARKET.md 9's worked example: final consumption 25,000 + 15,000 + 30,000 Wh of
    tokens plus a 3,000 Wh BA top-up (an over-consumption offset) in one period."""
    w = Twin(step=step, params=params or None)
    w.member("p1", ["producer"])
    w.member("c1", ["consumer"])
    w.member("c2", ["consumer"])
    w.member("tr", ["trader"])
    w.meter("m_p1", "p1", "production", "solar", capacity_wh=200_000)
    w.meter("m_c1", "c1", "consumption", capacity_wh=200_000)
    w.meter("m_c2", "c2", "consumption", capacity_wh=200_000)
    serials = {}
    for key, wh, buyer in (("a", 25_000, "c1"), ("b", 15_000, "c2"), ("c", 30_000, "c2"), ("d", 5_000, "tr")):
        s = w.emit("p1", P, P, wh, 12, category="solar", ppoint="m_p1")
        assert w.sell("p1", s, "consumer", 0, buyer, None if buyer == "tr" else "m_" + buyer) is None
        serials[key] = s
    w.at_period_end(P)
    w.reading("m_p1", P, 75_000)
    w.reading("m_c1", P, 25_000)
    w.reading("m_c2", P, 48_000)  # 3,000 Wh more than c2's tokens: the BA supplies it
    assert w.reconcile(P) is None
    return w, serials


def test_transmission_cost_worked_example():
    w, s = delivered()
    assert w.publish(P, 700) is None
    (offset,) = [x for x in w.chain.view("reconciliation", "period_summary", P)[4] if w.chain.token(x)["consumer"]["owner"] == w.a("c2")]
    fees = {k: w.chain.token(v)["grid_fee"] for k, v in s.items()}
    assert fees == {"a": 240, "b": 144, "c": 287, "d": 0}  # the trader's purchase ends at a virtual point
    assert w.chain.token(offset)["grid_fee"] == 29
    assert w.chain.view("grid_fees", "fee_of", s["a"], P) == 240
    assert w.chain.view("grid_fees", "cost_of", P) == 700
    event = next(e for e in w.chain.receipts[-1].events if e.name == "TransmissionCostAllocated")
    assert dict(event.fields) == {"period": P, "cost": 700, "tokens": 4}
    w.check()


def test_a_cost_of_zero_marks_the_period_published():
    w, s = delivered()
    assert w.publish(P, 0) is None
    assert w.chain.view("grid_fees", "is_published", P)
    assert all(w.chain.token(v)["grid_fee"] == 0 for v in s.values())
    assert w.publish(P, 5) == "already_published"


def test_publication_needs_a_reconciled_period_and_the_grid_operator():
    w, _ = delivered()
    assert w.publish(P + 1, 10) == "period_not_reconciled"
    assert w.publish(P, 10, sender="c1") == "not_grid_operator"
    assert w.publish(P, -1) == "bad_amount"
    assert w.publish(P, 10) is None
    assert w.publish(P, 10) == "already_published"


def test_a_positive_cost_over_no_final_consumption_is_refused():
    w = Twin()
    w.member("tr", ["trader"])
    w.emit("tr", P, P, 1_000, 10)
    w.at_period_end(P)
    assert w.reconcile(P) is None
    assert w.publish(P, 10) == "no_delivered_energy"
    assert w.publish(P, 0) is None


def test_remainders_go_to_the_largest_fractions_then_the_smaller_serial():
    w = Twin()
    w.member("p1", ["producer"])
    w.member("c1", ["consumer"])
    w.meter("m_c1", "c1", "consumption")
    serials = []
    for _ in range(3):
        s = w.emit("p1", P, P, 1_000, 10)
        w.sell("p1", s, "consumer", 0, "c1", "m_c1")
        serials.append(s)
    w.at_period_end(P)
    w.reading("m_c1", P, 3_000)
    assert w.reconcile(P) is None
    assert w.publish(P, 2) is None  # three equal shares of 2: 0.67 each, ties to the smaller serials
    assert [w.chain.token(s)["grid_fee"] for s in serials] == [1, 1, 0]
    w.check()


def test_bounded_steps_allocate_exactly_the_same_fees():
    whole, s = delivered()
    whole.publish(P, 701)
    for step in (1, 2):
        w, s2 = delivered(step=step)
        assert s2 == s
        assert w.publish(P, 701) is None
        assert w.chain.view("grid_fees", "progress", P) is None
        w.check()
        assert [w.chain.token(x)["grid_fee"] for x in range(1, whole.m.next_serial)] == [whole.chain.token(x)["grid_fee"] for x in range(1, whole.m.next_serial)]


def test_an_unfinished_publication_continues_only_with_its_own_cost():
    w, _ = delivered(step=1)
    assert w.chain.ok("grid_operator", "grid_fees", "publish_transmission_cost", P, 700, 1)[0] is False
    assert w.chain.fails("grid_operator", "grid_fees", "publish_transmission_cost", P, 701, 1) == "bad_amount"
    assert w.publish(P, 700) is None


# ------------------------------------------------------------------ security of supply


def two_consumers(mode: str, step: int = 0) -> Twin:
    """The scenario's consumption: consumer1 101,000 Wh and consumer2 179,000 Wh over four periods."""
    w = Twin(step=step, params={"sos_mode": mode})
    w.member("c1", ["consumer"])
    w.member("c2", ["consumer"])
    w.member("p1", ["producer"])
    w.meter("m_c1", "c1", "consumption", capacity_wh=100_000)
    w.meter("m_c2", "c2", "consumption", capacity_wh=100_000)
    w.meter("m_p1", "p1", "production", "hydro", capacity_wh=100_000)
    w.at_period_end(P + 3)
    for i, (a, b) in enumerate(zip([25_000, 23_000, 25_000, 28_000], [45_000, 48_000, 41_000, 45_000], strict=True)):
        w.reading("m_c1", P + i, a)
        w.reading("m_c2", P + i, b)
        w.reading("m_p1", P + i, 1_000)
        assert w.reconcile(P + i) is None
    return w


def sos_obligations(w: Twin) -> list:
    out = []
    for oid in range(1, w.chain.view("settlement", "obligation_count") + 1):
        rec = w.chain.view("settlement", "obligation_of", oid)
        out.append((rec[0], w.chain.name_of(rec[1]), w.chain.name_of(rec[2]), rec[4]))
    return out


def test_security_of_supply_pro_rata_to_consumption():
    w = two_consumers("pro_rata")
    assert w.sos(P, P + 3, 1_000) is None
    assert sorted(sos_obligations(w)) == [
        ("security_of_supply", "c1", "grid_operator", 361),
        ("security_of_supply", "c2", "grid_operator", 639),
    ]
    w.check()


def test_security_of_supply_fixed_per_participant():
    w = two_consumers("fixed")
    assert w.sos(P, P + 1, 250) is None
    assert sorted(sos_obligations(w)) == [
        ("security_of_supply", "c1", "grid_operator", 250),
        ("security_of_supply", "c2", "grid_operator", 250),
    ]
    w.check()


def test_security_of_supply_checks_in_the_documented_order():
    w = two_consumers("pro_rata")
    assert w.sos(P, P, 10, sender="c1") == "not_grid_operator"
    assert w.sos(P + 1, P, 10) == "bad_periods"
    assert w.sos(P, P + 4, 10) == "period_not_reconciled"
    assert w.sos(P, P + 1, -1) == "bad_amount"
    assert w.sos(P, P + 1, 10) is None
    assert w.sos(P + 1, P + 2, 10) == "already_charged"
    assert w.sos(P + 2, P + 3, 0) is None  # nothing to charge: no obligation, but the range is taken
    assert w.sos(P + 3, P + 3, 5) == "already_charged"
    w.check()


def test_pro_rata_security_of_supply_needs_consumption():
    w = Twin(params={"sos_mode": "pro_rata"})
    w.member("c1", ["consumer"])
    w.meter("m_c1", "c1", "consumption")
    w.at_period_end(P)
    w.reading("m_c1", P, 0)
    assert w.reconcile(P) is None
    assert w.sos(P, P, 10) == "no_delivered_energy"
    assert w.chain.view("grid_fees", "sos_progress") is None
    assert w.sos(P, P, 0) is None


def test_payers_exclude_the_grid_operator_banned_members_and_later_meters():
    w = Twin(params={"sos_mode": "fixed"})
    for name in ("c1", "c2", "c3", "r1"):
        w.member(name, ["retailer" if name == "r1" else "consumer"])
    for name in ("c1", "c2", "r1"):
        w.meter("m_" + name, name, "consumption")
    w.both("grid_operator", "membership", "ban", (w.a("c2"),), lambda: w.m.ban(w.t("grid_operator"), w.t("c2")))
    w.at_period_end(P)
    w.meter("m_c3", "c3", "consumption")  # registered after the charged range
    for name in ("c1", "c2", "r1"):
        w.reading("m_" + name, P, 10)
    assert w.reconcile(P) is None
    assert w.sos(P, P, 7) is None
    assert sorted(sos_obligations(w)) == [("security_of_supply", "c1", "grid_operator", 7), ("security_of_supply", "r1", "grid_operator", 7)]
    w.check()


def test_pro_rata_ties_go_to_the_smaller_address():
    w = Twin(params={"sos_mode": "pro_rata"})
    for name in ("c1", "c2", "c3"):
        w.member(name, ["consumer"])
        w.meter("m_" + name, name, "consumption")
    w.at_period_end(P)
    for name in ("c1", "c2", "c3"):
        w.reading("m_" + name, P, 100)
    assert w.reconcile(P) is None
    assert w.sos(P, P, 2) is None
    first_two = sorted(("c1", "c2", "c3"), key=w.t)[:2]
    assert sorted(x[1] for x in sos_obligations(w)) == sorted(first_two)
    w.check()


def test_security_of_supply_over_whole_buckets_of_periods_matches_the_readings():
    """A range over several 16-period buckets sums whole buckets from reconciliation and
    the edges from the meters; the shares equal the model's."""
    w = Twin(params={"sos_mode": "pro_rata"})
    w.member("c1", ["consumer"])
    w.member("c2", ["consumer"])
    w.meter("m_c1", "c1", "consumption", capacity_wh=10_000)
    w.meter("m_c2", "c2", "consumption", capacity_wh=10_000)
    first, last = 90, 200
    w.at_period_end(last)
    for p in range(first, last + 1):
        w.chain.ok("m_c1", "meters", "submit_reading", p, p)
        w.m.submit_reading(w.t("m_c1"), p, p)
        w.chain.ok("m_c2", "meters", "submit_reading", p, 300 - p)
        w.m.submit_reading(w.t("m_c2"), p, 300 - p)
        assert w.reconcile(p) is None
    assert w.chain.view("reconciliation", "bucket_consumption", w.a("c1"), 6, 7) == sum(range(96, 128))
    assert w.sos(first, last, 100_001) is None
    w.check()


def test_security_of_supply_in_bounded_steps_and_abandoning_an_unfinished_charge():
    whole = two_consumers("pro_rata")
    whole.sos(P, P + 3, 1_000)
    w = two_consumers("pro_rata", step=1)
    c = w.chain
    assert c.ok("grid_operator", "grid_fees", "charge_security_of_supply", P, P + 3, 1_000, 1)[0] is False
    assert c.fails("grid_operator", "grid_fees", "charge_security_of_supply", P, P + 2, 1_000, 1) == "charge_in_progress"
    assert c.fails("c1", "grid_fees", "abandon_security_of_supply") == "not_grid_operator"
    c.ok("grid_operator", "grid_fees", "abandon_security_of_supply")
    assert c.fails("grid_operator", "grid_fees", "abandon_security_of_supply") == "no_charge"
    assert w.sos(P, P + 3, 1_000) is None
    assert sos_obligations(w) == sos_obligations(whole)
    w.check()


# ------------------------------------------------------------------ against the model


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), step=st.sampled_from([0, 1, 3]), mode=st.sampled_from(["fixed", "pro_rata"]))
def test_random_days_allocate_grid_fees_like_the_model(data, step, mode):
    periods = 2
    w = Twin(step=step, params={"sos_mode": mode})
    market_day(w, data, periods)
    for p in range(P, P + periods):
        if w.reconcile(p) == "missing_reading":
            for name in PRODUCERS + CONSUMERS:
                if w.m.reading(w.t("m_" + name), p) is None:
                    w.correct("m_" + name, p, 0)
            assert w.reconcile(p) is None
        w.publish(p, data.draw(st.integers(0, 5_000), label="cost"))
    w.sos(P, P + periods - 1, data.draw(st.integers(0, 3_000), label="sos"))
    w.check()
