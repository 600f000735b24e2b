"""Settlement (MARKET.md 10): obligations of due tokens, netting runs, postponement, late
fees, default, escrow, collateral; bounded steps; money conservation against the model."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_market_reconciliation import CONSUMERS, PRODUCERS, P, Twin, market_day

DAY = 86_400


def deliver(w: Twin, periods: list[int], readings: dict[str, list[int]] | None = None, cost: int = 0) -> None:
    """Readings (default: what the tokens scheduled, i.e. no imbalance), reconcile, publish."""
    w.at_period_end(max(periods))
    for p in periods:
        for mid, values in (readings or {}).items():
            if values[p - periods[0]] is not None:
                w.reading(mid, p, values[p - periods[0]])
        if w.reconcile(p) == "missing_reading":
            for mid in w.m.meters:
                if w.m.reading(mid, p) is None:
                    name = next(n for n in w.names if w.t(n) == mid)
                    w.correct(name, p, 0)
            assert w.reconcile(p) is None
        assert w.publish(p, cost) is None


def bilateral(*, face: int = 12, wh: int = 10_000, money: int = 10_000, params: dict | None = None, step: int = 0,
              term: int = 0, co2: int = 100) -> tuple[Twin, int]:
    """One token p1 (meter) -> c1 (meter) in period P, delivered exactly."""
    base = {"co2_price_per_t": 12_000}
    base.update(params or {})
    w = Twin(params=base, step=step)
    w.member("p1", ["producer"], money=money)
    w.member("c1", ["consumer"], money=money)
    w.meter("m_p1", "p1", "production", "solar", capacity_wh=100_000)
    w.meter("m_c1", "c1", "consumption", capacity_wh=100_000)
    s = w.emit("p1", P, P, wh, face, category="solar", co2=co2, ppoint="m_p1", term=term)
    assert w.sell("p1", s, "consumer", 0, "c1", "m_c1") is None
    deliver(w, [P], {"m_p1": [wh], "m_c1": [wh]})
    return w, s


def obligations(w: Twin) -> list:
    out = []
    for oid in range(1, w.chain.view("settlement", "obligation_count") + 1):
        r = w.chain.view("settlement", "obligation_of", oid)
        out.append((r[0], w.chain.name_of(r[1]), w.chain.name_of(r[2]), r[4], r[7]))
    return out


def transfers(w: Twin, since: int = 0) -> list:
    out = []
    for r in w.chain.receipts[since:]:
        for e in r.events:
            if e.contract == "fiat" and e.name == "Transferred":
                f = dict(e.fields)
                out.append((w.chain.name_of(f["frm"]), w.chain.name_of(f["to"]), f["amount"], f["reason"]))
    return out


def trader_of_both(w: Twin, name: str, money: int = 0) -> None:
    """A participant with a production and a consumption meter (mp_<name>, mc_<name>)."""
    w.member(name, ["producer", "consumer"], money=money)
    w.meter("mp_" + name, name, "production", "other", capacity_wh=100_000)
    w.meter("mc_" + name, name, "consumption", capacity_wh=100_000)


def trade(w: Twin, seller: str, buyer: str, wh: int, face: int, schedule: dict, first: int = P, last: int = P, term: int = 0) -> int:
    """A token from the seller's production meter to the buyer's consumption meter."""
    s = w.emit(seller, first, last, wh, face, ppoint="mp_" + seller, term=term)
    assert w.sell(seller, s, "consumer", 0, buyer, "mc_" + buyer) is None
    for p in range(first, last + 1):
        for mid in ("mp_" + seller, "mc_" + buyer):
            schedule[(mid, p)] = schedule.get((mid, p), 0) + wh
    return s


def deliver_exactly(w: Twin, schedule: dict, periods: list[int], cost: int = 0) -> None:
    """Every meter reads what its tokens scheduled (no offsets), then reconcile and publish."""
    meters = sorted({mid for mid, _ in schedule} | {n for n in w.names if n.startswith(("mp_", "mc_"))})
    deliver(w, periods, {mid: [schedule.get((mid, p), 0) for p in periods] for mid in meters}, cost)


# ------------------------------------------------------------------ obligations


def test_a_due_token_owes_face_value_grid_fee_and_co2_fee():
    w, s = bilateral()
    w.set_time(w.chain.period_end(P))
    assert w.run() is None
    # 10 kWh at 12 = 120; CO2 10,000 Wh x 100 g/kWh = 1 kg at 12,000 per tonne = 12
    assert obligations(w) == [
        ("face_value", "c1", "p1", 120, "paid"),
        ("co2_fee", "c1", "co2_authority", 12, "paid"),
    ]
    assert w.chain.token(s)["obligated"]
    w.check()


def test_a_negative_face_value_is_paid_by_the_producer_side():
    w, _ = bilateral(face=-7)
    assert w.run() is None
    assert obligations(w)[0] == ("face_value", "p1", "c1", 70, "paid")
    w.check()


def test_the_grid_fee_is_owed_to_the_grid_operator():
    w = Twin()
    w.member("p1", ["producer"], money=1_000)
    w.member("c1", ["consumer"], money=1_000)
    w.meter("m_c1", "c1", "consumption")
    s = w.emit("p1", P, P, 1_000, 0)
    w.sell("p1", s, "consumer", 0, "c1", "m_c1")
    deliver(w, [P], {"m_c1": [1_000]}, cost=55)
    assert w.run() is None
    assert obligations(w) == [("grid_fee", "c1", "grid_operator", 55, "paid")]
    w.check()


def test_no_face_value_when_one_participant_owns_both_sides_and_no_co2_fee_for_intermediaries():
    w = Twin(params={"co2_price_per_t": 1_000_000})
    w.member("p1", ["producer"], money=1_000)
    w.member("tr", ["trader"], money=1_000)
    unsold = w.emit("p1", P, P, 1_000, 10, co2=500)  # both sides p1's
    s = w.emit("p1", P, P, 2_000, 10, co2=500)
    w.sell("p1", s, "consumer", 0, "tr")  # ends at the trader's own address
    deliver(w, [P])
    assert w.run() is None
    by_token = {}
    for oid in range(1, w.chain.view("settlement", "obligation_count") + 1):
        r = w.chain.view("settlement", "obligation_of", oid)
        by_token.setdefault(r[6], []).append((r[0], w.chain.name_of(r[1]), w.chain.name_of(r[2]), r[4]))
    assert unsold not in by_token
    assert by_token[s] == [("face_value", "tr", "p1", 20)]
    w.check()


def test_a_token_is_due_only_after_its_payment_term_and_its_periods_are_published():
    w = Twin()
    trader_of_both(w, "p1", 1_000)
    trader_of_both(w, "c1", 1_000)
    plan: dict = {}
    long_ = trade(w, "p1", "c1", 1_000, 10, plan, P, P + 1)  # due at end(P+1)
    termed = trade(w, "p1", "c1", 1_000, 30, plan, P, P, term=DAY)  # due at end(P) + a day
    deliver_exactly(w, plan, [P])
    w.at_period_end(P + 1)
    assert w.run() is None  # `long_` is due by time, but P+1 is neither reconciled nor published
    assert obligations(w) == []
    deliver_exactly(w, plan, [P + 1])
    assert w.run() is None
    assert obligations(w) == [("face_value", "c1", "p1", 20, "paid")]
    w.set_time(w.chain.period_end(P) + DAY - 1)
    assert w.run() is None
    assert len(obligations(w)) == 1
    w.set_time(w.chain.period_end(P) + DAY)
    assert w.run() is None
    assert obligations(w)[1] == ("face_value", "c1", "p1", 30, "paid")
    assert w.run() is None  # obligations are created once
    assert len(obligations(w)) == 2
    assert w.chain.token(long_)["obligated"] and w.chain.token(termed)["obligated"]
    w.check()


def test_late_reconciliation_offsets_are_still_collected():
    """An offset reconciled days after its period is due at once and is found."""
    w = Twin()
    w.member("c1", ["consumer"], money=1_000)
    w.meter("m_c1", "c1", "consumption")
    w.at_period_end(P)
    w.reading("m_c1", P, 1_000)
    assert w.run() is None  # a run before the period is reconciled
    w.set_time(w.chain.period_end(P) + 3 * DAY)
    deliver(w, [P])
    assert w.run() is None
    assert obligations(w) == [("face_value", "c1", "grid_operator", 11, "paid")]
    w.check()


# ------------------------------------------------------------------ runs


def test_only_the_grid_operator_runs_settlement():
    w, _ = bilateral()
    assert w.run(sender="c1") == "not_grid_operator"
    assert w.run(sender="stranger") == "not_member"


def test_a_run_nets_each_pair_into_one_transfer_with_one_issuer_fee():
    w = Twin()
    trader_of_both(w, "a", 5_000)
    trader_of_both(w, "b", 5_000)
    plan: dict = {}
    trade(w, "a", "b", 10_000, 30, plan)  # b owes a 300
    trade(w, "b", "a", 10_000, 10, plan)  # a owes b 100
    deliver_exactly(w, plan, [P])
    since = len(w.chain.receipts)
    assert w.run() is None
    assert transfers(w, since) == [("b", "a", 200, "settlement:face_value#1,face_value#2")]
    assert w.chain.balance("b") == 5_000 - 200 - 1  # one fee of ceil(0.1 % x 200)
    w.check()


def test_a_pair_netting_to_zero_is_settled_without_movement():
    w = Twin()
    trader_of_both(w, "a", 10)
    trader_of_both(w, "b", 10)
    plan: dict = {}
    trade(w, "a", "b", 10_000, 10, plan)
    trade(w, "b", "a", 10_000, 10, plan)
    deliver_exactly(w, plan, [P])
    since = len(w.chain.receipts)
    assert w.run() is None
    assert transfers(w, since) == []
    assert [o[4] for o in obligations(w)] == ["paid", "paid"]
    assert any(e.name == "Netted" for r in w.chain.receipts[since:] for e in r.events)
    w.check()


def test_money_received_in_one_pair_pays_the_next_in_a_later_pass():
    """The first pair in netting order can pay only with what the last pair brings in."""
    w = Twin()
    names = ["x", "y", "z"]
    for n in names:
        trader_of_both(w, n)
    first, middle, last = sorted(names, key=w.t)
    w.mint(last, 1_000)
    plan: dict = {}
    trade(w, middle, first, 10_000, 50, plan)  # first owes middle 500: pair (first, middle) comes first
    trade(w, first, last, 10_000, 60, plan)  # last owes first 600: pair (first, last) comes second
    deliver_exactly(w, plan, [P])
    since = len(w.chain.receipts)
    assert w.run() is None
    assert [t[:3] for t in transfers(w, since)] == [(last, first, 600), (first, middle, 500)]
    assert all(o[4] == "paid" for o in obligations(w))
    w.check()


def short_consumer(step: int = 0, failures: int = 2) -> tuple[Twin, int]:
    w, s = bilateral(money=0, step=step, params={"default_after_failures": failures, "postpone_s": 3_600})
    w.mint("p1", 1_000)
    w.mint("c1", 50)
    return w, s


def test_a_shortfall_is_postponed_with_a_late_fee():
    w, _ = short_consumer()
    assert w.run() is None
    assert obligations(w) == [
        ("face_value", "c1", "p1", 120, "netted"),
        ("co2_fee", "c1", "co2_authority", 12, "paid"),
        ("postponed", "c1", "p1", 120, "open"),
        ("late_fee", "c1", "p1", 6, "open"),
    ]
    assert w.chain.view("settlement", "failures_of", w.a("c1")) == 1
    assert not w.chain.view("settlement", "is_in_default", w.a("c1"))
    w.check()


def test_repeated_failure_is_a_default_and_escrow_pays_first():
    w, _ = short_consumer()
    w.both("c1", "settlement", "deposit_collateral", ("CHF", 30), lambda: w.m.deposit_collateral(w.t("c1"), "CHF", 30))
    assert w.run() is None
    w.set_time(w.chain.time + 3_600)
    assert w.run() is None
    c1 = w.a("c1")
    assert w.chain.view("settlement", "is_in_default", c1)
    assert w.chain.view("settlement", "escrow_of", "CHF", c1) == 0
    postponed = [o for o in obligations(w) if o[0] == "postponed"]
    assert postponed[-1] == ("postponed", "c1", "p1", 126 - 30, "open")  # no new late fee in default
    assert [o for o in obligations(w) if o[0] == "late_fee"] == [("late_fee", "c1", "p1", 6, "netted")]
    assert w.both("c1", "settlement", "release_collateral", ("CHF", 1), lambda: w.m.release_collateral(w.t("c1"), "CHF", 1))[2] == "bad_amount"
    w.check()


def test_a_defaulter_who_pays_is_cured():
    w, _ = short_consumer(failures=1)
    assert w.run() is None
    assert w.chain.view("settlement", "is_in_default", w.a("c1"))
    w.mint("c1", 1_000)
    w.set_time(w.chain.time + 3_600)
    assert w.run() is None
    assert not w.chain.view("settlement", "is_in_default", w.a("c1"))
    assert w.chain.view("settlement", "failures_of", w.a("c1")) == 0
    assert any(e.name == "DefaultCured" for e in w.chain.receipts[-1].events)
    w.check()


def test_obligations_of_a_suspended_party_are_blocked_without_failure():
    w, _ = short_consumer()
    w.both("grid_operator", "membership", "suspend", (w.a("c1"),), lambda: w.m.suspend(w.t("grid_operator"), w.t("c1")))
    assert w.run() is None
    assert [o[4] for o in obligations(w)] == ["open", "open"]
    assert w.chain.view("settlement", "failures_of", w.a("c1")) == 0
    w.both("grid_operator", "membership", "reinstate", (w.a("c1"),), lambda: w.m.reinstate(w.t("grid_operator"), w.t("c1")))
    w.mint("c1", 500)
    assert w.run() is None
    assert [o[4] for o in obligations(w)] == ["paid", "paid"]
    w.check()


def test_a_payer_without_allowance_fails_like_one_without_funds():
    w, _ = bilateral()
    w.both("c1", "fiat", "approve", ("CHF", w.account, 0), lambda: w.m.approve(w.t("c1"), "CHF", w.m.p.settlement_account, 0))
    assert w.run() is None
    assert w.chain.view("settlement", "failures_of", w.a("c1")) == 1
    w.check()


# ------------------------------------------------------------------ collateral


def test_collateral_deposit_and_release_rules():
    w = Twin(params={"rating_threshold": 50, "min_collateral": 100})
    w.member("low", ["consumer"], money=1_000, rating=10)
    w.member("high", ["consumer"], money=1_000, rating=90)

    def deposit(name, amount, code="CHF"):
        return w.both(name, "settlement", "deposit_collateral", (code, amount), lambda: w.m.deposit_collateral(w.t(name), code, amount))[2]

    def release(name, amount, code="CHF"):
        return w.both(name, "settlement", "release_collateral", (code, amount), lambda: w.m.release_collateral(w.t(name), code, amount))[2]

    assert deposit("low", 0) == "bad_amount"
    assert deposit("low", 2_000) == "insufficient_funds"
    assert deposit("low", 100, "XYZ") == "unknown_currency"
    assert deposit("stranger", 5) == "not_member"
    assert deposit("low", 150) is None
    assert deposit("high", 150) is None
    assert release("low", 51) == "collateral_required"
    assert release("low", 50) is None
    assert release("high", 151) == "bad_amount"
    assert release("high", 150) is None
    w.both("grid_operator", "membership", "ban", (w.a("high"),), lambda: w.m.ban(w.t("grid_operator"), w.t("high")))
    assert deposit("high", 10) == "not_active"
    assert w.chain.balance("low") == 1_000 - 100  # deposits and releases pay no issuer fee
    w.check()


# ------------------------------------------------------------------ bounded steps and the model


def test_a_run_in_bounded_steps_gives_the_same_result():
    for step in (1, 2, 5):
        w, _ = short_consumer(step=step)
        w.both("c1", "settlement", "deposit_collateral", ("CHF", 20), lambda w=w: w.m.deposit_collateral(w.t("c1"), "CHF", 20))
        assert w.run() is None
        w.set_time(w.chain.time + 3_600)
        assert w.run() is None
        assert w.chain.view("settlement", "run_progress") is None
        w.check()


def settle_day(w: Twin, data, periods: int) -> None:
    market_day(w, data, periods)
    for p in range(P, P + periods):
        if w.reconcile(p) == "missing_reading":
            for name in PRODUCERS + CONSUMERS:
                if w.m.reading(w.t("m_" + name), p) is None:
                    w.correct("m_" + name, p, 0)
            assert w.reconcile(p) is None
        w.publish(p, data.draw(st.integers(0, 3_000), label="cost"))
    if data.draw(st.booleans(), label="sos"):
        w.sos(P, P + periods - 1, data.draw(st.integers(0, 2_000)))
    for _ in range(data.draw(st.integers(1, 3), label="runs")):
        if data.draw(st.booleans(), label="poor"):
            name = data.draw(st.sampled_from(CONSUMERS + (PRODUCERS[0],)))
            amount = data.draw(st.integers(1, 20_000))
            w.both(name, "fiat", "transfer", ("CHF", w.a("tr"), amount), lambda n=name, a=amount: w.m.transfer(w.t(n), "CHF", w.t("tr"), a))
        w.set_time(w.chain.time + data.draw(st.sampled_from([0, 3_600, DAY])))
        assert w.run() is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), step=st.sampled_from([0, 1, 4]))
def test_money_is_conserved_and_every_obligation_is_accounted(data, step):
    w = Twin(step=step, params={"co2_price_per_t": 50_000, "default_after_failures": 2, "postpone_s": 3_600})
    settle_day(w, data, 2)
    w.check()  # balances, supply = sum of balances, tokens, every obligation as in the model
    m = w.m
    assert all(v >= 0 for v in m.balances.values())
    minted = sum(mv.amount for mv in m.movements if mv.frm is None)
    assert m.supply["CHF"] == minted  # nothing burnt: only mint changed the supply
    assert sum(m.escrow.values()) == m.balance("CHF", m.p.settlement_account)
    for o in m.obligations.values():
        if o.status == "netted":
            assert m.obligations[o.into].oid > o.oid


def test_escrow_pays_several_creditors_pro_rata():
    """A defaulter owing two producers: its escrow is shared by largest remainder."""
    w = Twin(params={"default_after_failures": 1, "postpone_s": 3_600})
    trader_of_both(w, "p1")
    trader_of_both(w, "p2")
    trader_of_both(w, "c1")
    plan: dict = {}
    trade(w, "p1", "c1", 10_000, 30, plan)  # c1 owes p1 300
    trade(w, "p2", "c1", 10_000, 70, plan)  # c1 owes p2 700
    deliver_exactly(w, plan, [P])
    w.mint("c1", 5)
    w.both("c1", "settlement", "deposit_collateral", ("CHF", 5), lambda: w.m.deposit_collateral(w.t("c1"), "CHF", 5))
    assert w.run() is None
    assert w.chain.view("settlement", "is_in_default", w.a("c1"))
    escrow_moves = [t for t in transfers(w) if t[3].startswith("escrow:")]
    # 5 over 300:700 is 1.5 and 3.5: equal remainders, the unit goes to the smaller address
    first = min(("p1", "p2"), key=w.t)
    want = {"p1": 1, "p2": 3}
    want[first] += 1
    assert sorted((t[1], t[2]) for t in escrow_moves) == sorted(want.items())
    w.check()


def test_collateral_stays_in_escrow_while_in_default():
    w, _ = short_consumer(failures=1)
    assert w.run() is None
    assert w.chain.view("settlement", "is_in_default", w.a("c1"))
    w.mint("c1", 10)
    assert w.both("c1", "settlement", "deposit_collateral", ("CHF", 10), lambda: w.m.deposit_collateral(w.t("c1"), "CHF", 10))[2] is None
    code = w.both("c1", "settlement", "release_collateral", ("CHF", 10), lambda: w.m.release_collateral(w.t("c1"), "CHF", 10))[2]
    assert code == "in_default"
    w.check()
