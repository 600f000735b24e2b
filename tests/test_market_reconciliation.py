"""Reconciliation (MARKET.md 8): the four cases, edge cases, bounded steps, and
property tests against the reference model.

``Twin`` (also used by the grid-fee, settlement and traceability tests) drives a chain
through the real executor and the reference model with the same operations and checks
that both accept or refuse each one with the same code.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import Chain, error_code, ref
from market_model import ModelError

from ledger.crypto import Address

P = 8  # the delivery period of most tests (gate closure and emission happen before it)


def txt(address: bytes) -> str:
    return str(Address(address))


class Twin:
    """A chain and the reference model, driven by the same named operations."""

    def __init__(self, *, params: dict | None = None, step: int = 0, **kw) -> None:
        self.chain = Chain(params=params, **kw)
        self.m = self.chain.model()
        self.step = step  # max_work of bounded-step calls (0 = whole)
        self.names: set[str] = {"grid_operator", "bank", "co2_authority"}
        self.account = self.chain.view("market_config", "get", "settlement_account")

    # -------------------------------------------------------- plumbing

    def t(self, name: str | None) -> str | None:
        return None if name is None else self.chain.text(name)

    def a(self, name: str | None) -> bytes | None:
        return None if name is None else self.chain.addr(name)

    def both(self, sender: str, contract: str, function: str, args: tuple, model_call) -> tuple:
        """Run one operation on both; the outcome (ok or error code) must agree."""
        receipt = self.chain.tx(sender, contract, function, *args)
        try:
            expected = model_call()
            code = None
        except ModelError as e:
            expected, code = None, e.code
        assert error_code(receipt) == code, f"{contract}.{function}: chain {receipt.error}, model {code}"
        return receipt.result, expected, code

    def set_time(self, t: int) -> None:
        self.chain.set_time(t)
        self.m.set_time(t)

    def at_period_end(self, p: int) -> None:
        self.set_time(max(self.chain.time, self.chain.period_end(p)))

    # -------------------------------------------------------- set-up

    def member(self, name: str, roles: list[str], *, money: int = 0, rating: int = 100, limit: int | None = None) -> None:
        self.names.add(name)
        self.both("grid_operator", "membership", "admit", (self.a(name), roles, ref(("legal", name)), limit, rating),
                  lambda: self.m.admit(self.t("grid_operator"), self.t(name), tuple(roles), ref(("legal", name)), limit, rating))
        if money:
            self.mint(name, money)
        self.both(name, "fiat", "approve", ("CHF", self.account, 10**12),
                  lambda: self.m.approve(self.t(name), "CHF", self.m.p.settlement_account, 10**12))

    def mint(self, name: str, amount: int) -> None:
        r = ref(("deposit", name, amount, len(self.chain.receipts)))
        self.both("bank", "fiat", "mint", ("CHF", self.a(name), amount, r),
                  lambda: self.m.mint(self.t("bank"), "CHF", self.t(name), amount, r))

    def meter(self, mid: str, owner: str, kind: str, category: str = "other", capacity_wh: int = 100_000, co2: int = 0, attest: bool = True) -> None:
        self.names.add(mid)
        cap = capacity_wh * 3600 // int(self.chain.params["period_s"])
        self.register(mid, owner, kind, category, cap, co2)
        if attest:
            self.attest(owner, mid)

    def register(self, mid, owner, kind, category, cap, co2=0, sender="grid_operator") -> str | None:
        return self.both(sender, "meters", "register_meter", (self.a(mid), self.a(owner), kind, category, "loc:" + mid, cap, co2),
                         lambda: self.m.register_meter(self.t(sender), self.t(mid), self.t(owner), kind, category, "loc:" + mid, cap, co2))[2]

    def attest(self, sender: str, mid: str) -> str | None:
        return self.both(sender, "meters", "attest_meter", (self.a(mid),), lambda: self.m.attest_meter(self.t(sender), self.t(mid)))[2]

    # -------------------------------------------------------- tokens

    def emit(self, sender: str, first: int, last: int, wh: int, face: int, *, category: str = "other", co2: int = 0,
             term: int = 0, ppoint: str | None = None, cpoint: str | None = None) -> int | None:
        result, expected, code = self.both(
            sender, "energy_tokens", "emit", (first, last, wh, category, co2, face, "CHF", term, self.a(ppoint), self.a(cpoint), None, None, None),
            lambda: self.m.emit(self.t(sender), first_period=first, last_period=last, energy_wh=wh, category=category,
                                co2_g_per_kwh=co2, face_value=face, currency="CHF", payment_term_s=term,
                                producer_point=self.t(ppoint), consumer_point=self.t(cpoint)))
        assert code is not None or result == expected
        return result

    def offer(self, sender: str, serial: int, side: str, price: int | None) -> str | None:
        cur = None if price is None else "CHF"
        return self.both(sender, "energy_tokens", "offer_side", (serial, side, price, cur),
                         lambda: self.m.offer_side(self.t(sender), serial, side, price, cur))[2]

    def buy(self, sender: str, serial: int, side: str, price: int, point: str | None = None) -> str | None:
        return self.both(sender, "energy_tokens", "buy_side", (serial, side, price, "CHF", self.a(point)),
                         lambda: self.m.buy_side(self.t(sender), serial, side, price, "CHF", self.t(point)))[2]

    def sell(self, seller: str, serial: int, side: str, price: int, buyer: str, point: str | None = None) -> str | None:
        return self.offer(seller, serial, side, price) or self.buy(buyer, serial, side, price, point)

    # -------------------------------------------------------- delivery and after

    def reading(self, mid: str, period: int, wh: int) -> str | None:
        return self.both(mid, "meters", "submit_reading", (period, wh), lambda: self.m.submit_reading(self.t(mid), period, wh))[2]

    def correct(self, mid: str, period: int, wh: int, sender: str = "grid_operator") -> str | None:
        r = ref(("correction", mid, period, wh))
        return self.both(sender, "meters", "correct_reading", (self.a(mid), period, wh, r),
                         lambda: self.m.correct_reading(self.t(sender), self.t(mid), period, wh, r))[2]

    def stepped(self, contract: str, function: str, *args, sender: str = "grid_operator") -> tuple[list, str | None]:
        """Call a bounded-step function until done; returns (results, error code)."""
        results = []
        for _ in range(100_000):
            receipt = self.chain.tx(sender, contract, function, *args, self.step)
            if not receipt.ok:
                return results, error_code(receipt)
            results.append(receipt.result)
            if receipt.result[0]:
                return results, None
        raise AssertionError("never finished")

    def reconcile(self, period: int, sender: str = "grid_operator") -> str | None:
        results, code = self.stepped("reconciliation", "reconcile_period", period, sender=sender)
        try:
            expected, want = self.m.reconcile_period(self.t(sender), period), None
        except ModelError as e:
            expected, want = None, e.code
        assert code == want, f"reconcile {period}: chain {code}, model {want}"
        if code is None:
            assert [s for r in results for s in r[1]] == expected
        return code

    def publish(self, period: int, cost: int, sender: str = "grid_operator") -> str | None:
        _, code = self.stepped("grid_fees", "publish_transmission_cost", period, cost, sender=sender)
        try:
            self.m.publish_transmission_cost(self.t(sender), period, cost)
            want = None
        except ModelError as e:
            want = e.code
        assert code == want, f"publish {period}: chain {code}, model {want}"
        return code

    def sos(self, first: int, last: int, amount: int, sender: str = "grid_operator") -> str | None:
        _, code = self.stepped("grid_fees", "charge_security_of_supply", first, last, amount, sender=sender)
        try:
            self.m.charge_security_of_supply(self.t(sender), first, last, amount)
            want = None
        except ModelError as e:
            want = e.code
        assert code == want, f"security of supply: chain {code}, model {want}"
        return code

    def run(self, sender: str = "grid_operator") -> str | None:
        results, code = self.stepped("settlement", "run_settlement", sender=sender)
        try:
            expected, want = self.m.run_settlement(self.t(sender)), None
        except ModelError as e:
            expected, want = None, e.code
        assert code == want, f"settlement run: chain {code}, model {want}"
        if code is None:
            got = results[-1]
            assert sorted((c, txt(a), txt(b)) for c, a, b in got[1]) == sorted(expected["failed"])
            assert sorted(txt(a) for a in got[2]) == expected["in_default"]
        return code

    # -------------------------------------------------------- comparison

    def check(self) -> None:
        """Balances, supply, tokens, obligations and settlement state equal the model's."""
        c, m = self.chain, self.m
        for name in self.names:
            assert c.balance(name) == m.balance("CHF", self.t(name)), name
            assert c.view("settlement", "escrow_of", "CHF", self.a(name)) == m.escrow.get(("CHF", self.t(name)), 0), name
            assert c.view("settlement", "failures_of", self.a(name)) == m.failures.get(self.t(name), 0), name
            assert c.view("settlement", "is_in_default", self.a(name)) == (self.t(name) in m.in_default), name
        assert c.view("fiat", "balance_of", "CHF", self.account) == m.balance("CHF", m.p.settlement_account)
        assert c.view("fiat", "supply_of", "CHF") == m.supply["CHF"] == m.total_balances("CHF")
        assert c.view("energy_tokens", "next_serial") == m.next_serial
        for serial, t in m.tokens.items():
            got = c.token(serial)
            assert (got["status"], got["first_period"], got["last_period"], got["energy_wh"], got["category"], got["co2_mg"],
                    got["face_value"], got["purpose"], got["grid_fee"], got["obligated"]) == (
                t.status, t.first_period, t.last_period, t.energy_wh, t.category, t.co2_mg,
                t.face_value, t.purpose, t.grid_fee, t.obligated), serial
            for side in ("producer", "consumer"):
                assert (txt(got[side]["owner"]), txt(got[side]["point"])) == (t.side(side).owner, t.side(side).point)
        assert c.view("settlement", "obligation_count") == len(m.obligations)
        for o in m.obligations.values():
            rec = c.view("settlement", "obligation_of", o.oid)
            assert [rec[0], txt(rec[1]), txt(rec[2]), rec[3], rec[4], rec[5], rec[6], rec[7], rec[8]] == [
                o.kind, o.payer, o.payee, o.currency, o.amount, o.due_time, o.token, o.status, o.into], o.oid

    def accounted(self, period: int) -> None:
        """MARKET.md 8 'afterwards': every non-GO point's measured energy equals its
        position including offsets; the BA's position equals the sum of imbalances."""
        m = self.m
        go = m.p.grid_operator
        pos = m.positions_at(period)
        points = set(pos) | {mid for mid in m.meters if m.reading(mid, period) is not None}
        for point in points:
            if m._owner_of_point(point) == go:
                continue
            assert m.measured_injection(point, period) == pos.get(point, 0), point
        summary = self.chain.view("reconciliation", "period_summary", period)
        assert summary[3] == m.ba_position(period) == sum(m.reconciled[period]["imbalances"].values())
        for point, imb in m.reconciled[period]["imbalances"].items():
            assert self.chain.view("reconciliation", "imbalance_at", period, Address.parse(point).raw) == imb


def four_cases(step: int = 0) -> Twin:
    """MARKET.md 8's worked example: P1 (solar) -> C1 10,000 Wh at 20; P2 (wind) -> C2
    6,000 Wh at 10; readings M_P1 11,000, M_P2 5,000, M_C1 9,500, M_C2 6,800."""
    w = Twin(step=step)
    for name, role in (("p1", "producer"), ("p2", "producer"), ("c1", "consumer"), ("c2", "consumer")):
        w.member(name, [role], money=10_000)
    w.meter("m_p1", "p1", "production", "solar", co2=40)
    w.meter("m_p2", "p2", "production", "wind", co2=11)
    w.meter("m_c1", "c1", "consumption")
    w.meter("m_c2", "c2", "consumption")
    s1 = w.emit("p1", P, P, 10_000, 20, category="solar", co2=40, ppoint="m_p1")
    s2 = w.emit("p2", P, P, 6_000, 10, category="wind", co2=11, ppoint="m_p2")
    assert w.sell("p1", s1, "consumer", 0, "c1", "m_c1") is None
    assert w.sell("p2", s2, "consumer", 0, "c2", "m_c2") is None
    w.at_period_end(P)
    for mid, wh in (("m_p1", 11_000), ("m_p2", 5_000), ("m_c1", 9_500), ("m_c2", 6_800)):
        assert w.reading(mid, P, wh) is None
    return w


def test_reconciliation_four_cases():
    w = four_cases()
    assert w.reconcile(P) is None
    c = w.chain
    assert c.view("reconciliation", "period_summary", P)[:4] == [16, 14, 18, -300]
    by_point = {}
    for serial in c.view("reconciliation", "period_summary", P)[4]:
        t = c.token(serial)
        mine = t["producer"] if t["consumer"]["owner"] == c.addr("grid_operator") else t["consumer"]
        by_point[c.name_of(mine["point"])] = (t["energy_wh"], t["face_value"], t["category"], t["co2_mg"] // t["energy_wh"],
                                              c.name_of(t["producer"]["owner"]), c.name_of(t["consumer"]["owner"]))
    assert by_point == {
        "m_c1": (500, 14, "other", 400, "c1", "grid_operator"),  # under-consumption
        "m_c2": (800, 18, "other", 400, "grid_operator", "c2"),  # over-consumption
        "m_p1": (1_000, 14, "solar", 40, "p1", "grid_operator"),  # over-production
        "m_p2": (1_000, 18, "other", 400, "grid_operator", "p2"),  # under-production
    }
    w.accounted(P)
    w.check()


def test_reconciliation_with_no_tokens_uses_the_reference_price():
    w = Twin()
    w.member("c1", ["consumer"])
    w.meter("m_c1", "c1", "consumption")
    w.at_period_end(P)
    w.reading("m_c1", P, 700)
    assert w.reconcile(P) is None
    assert w.chain.view("reconciliation", "period_summary", P)[:4] == [10, 9, 11, -700]
    (serial,) = w.chain.view("reconciliation", "period_summary", P)[4]
    assert w.chain.token(serial)["face_value"] == 11
    w.accounted(P)
    w.check()


def test_reconciliation_waits_for_the_end_of_the_period_and_the_grace():
    w = Twin(params={"reading_grace_s": 300})
    w.member("c1", ["consumer"])
    w.meter("m_c1", "c1", "consumption")
    w.set_time(w.chain.period_end(P) - 1)
    assert w.reconcile(P) == "period_not_closed"
    w.set_time(w.chain.period_end(P) + 299)
    assert w.reading("m_c1", P, 5) is None
    assert w.reconcile(P) == "period_not_closed"
    w.set_time(w.chain.period_end(P) + 300)
    assert w.reconcile(P) is None
    assert w.reconcile(-1) == "period_not_closed"


def test_reconciliation_is_for_the_grid_operator_once_per_period():
    w = Twin()
    w.member("c1", ["consumer"])
    w.at_period_end(P)
    assert w.reconcile(P, sender="c1") == "not_grid_operator"
    assert w.reconcile(P, sender="stranger") == "not_member"
    assert w.reconcile(P) is None
    assert w.reconcile(P) == "already_reconciled"


def test_missing_reading_names_the_first_meter_in_point_order_and_a_substitute_fixes_it():
    w = Twin()
    w.member("c1", ["consumer"])
    for mid in ("ma", "mb", "mc"):
        w.meter(mid, "c1", "consumption")
    w.at_period_end(P)
    w.reading("ma", P, 10)
    receipt = w.chain.tx("grid_operator", "reconciliation", "reconcile_period", P, 0)
    missing = sorted(w.t(m) for m in ("mb", "mc"))[0]
    assert error_code(receipt) == "missing_reading"
    assert Address.parse(missing).raw.hex() in receipt.error[1]
    assert w.reconcile(P) == "missing_reading"
    assert w.correct("mb", P, 20) is None  # a substitute value: no original
    assert w.correct("mc", P, 30) is None
    assert w.chain.view("meters", "reading_record", w.a("mb"), P)[0] is None
    assert w.reconcile(P) is None
    w.accounted(P)
    w.check()


def test_a_trader_virtual_point_is_reconciled_like_a_meter_reading_zero():
    w = Twin()
    w.member("p1", ["producer"], money=1_000)
    w.member("tr", ["trader"], money=1_000)
    w.meter("m_p1", "p1", "production", "wind")
    s = w.emit("p1", P, P, 4_000, 12, category="wind", ppoint="m_p1")
    assert w.sell("p1", s, "consumer", 0, "tr") is None  # the trader is long 4,000 Wh at its address
    w.at_period_end(P)
    w.reading("m_p1", P, 4_000)
    assert w.reconcile(P) is None
    (serial,) = w.chain.view("reconciliation", "period_summary", P)[4]
    t = w.chain.token(serial)
    assert (t["producer"]["owner"], t["producer"]["point"], t["energy_wh"]) == (w.a("tr"), w.a("tr"), 4_000)
    assert t["face_value"] == 12 - 2  # VWAP 12, spread ceil(1.2) = 2
    w.accounted(P)
    w.check()


def test_withdrawn_and_retired_tokens_do_not_count():
    w = Twin()
    w.member("p1", ["producer"])
    w.member("c1", ["consumer"])
    w.meter("m_p1", "p1", "production", "hydro")
    w.meter("m_c1", "c1", "consumption")
    gone = w.emit("p1", P, P, 1_000, 50, category="hydro", ppoint="m_p1")
    w.both("p1", "energy_tokens", "propose_withdrawal", (gone,), lambda: w.m.propose_withdrawal(w.t("p1"), gone))
    parent = w.emit("p1", P, P, 3_000, 10, category="hydro", ppoint="m_p1")
    kids, _, _ = w.both("p1", "energy_tokens", "split_volume", (parent, [1_000, 2_000]), lambda: w.m.split_volume(w.t("p1"), parent, [1_000, 2_000]))
    assert w.sell("p1", kids[0], "consumer", 0, "c1", "m_c1") is None
    w.at_period_end(P)
    w.reading("m_p1", P, 3_000)
    w.reading("m_c1", P, 1_000)
    assert w.reconcile(P) is None
    # VWAP from the sold child only (the withdrawn token at 50 and the unsold child do not
    # count); the meters match; the child p1 kept takes 2,000 Wh at p1's own address
    assert w.chain.view("reconciliation", "period_summary", P)[:4] == [10, 9, 11, 2_000]
    assert w.m.reconciled[P]["imbalances"] == {w.t("p1"): 2_000}
    w.accounted(P)
    w.check()


def test_a_token_with_equal_producer_and_consumer_points_nets_to_zero():
    w = Twin()
    w.member("tr", ["trader"])
    w.emit("tr", P, P, 5_000, 10)
    w.at_period_end(P)
    assert w.reconcile(P) is None
    assert w.chain.view("reconciliation", "period_summary", P)[3:] == [0, []]


def test_negative_vwap_still_penalises_both_directions():
    w = Twin()
    w.member("p1", ["producer"])
    w.member("c1", ["consumer"])
    w.meter("m_p1", "p1", "production", "solar")
    w.meter("m_c1", "c1", "consumption")
    s = w.emit("p1", P, P, 10_000, -25, category="solar", ppoint="m_p1")
    assert w.sell("p1", s, "consumer", 0, "c1", "m_c1") is None
    w.at_period_end(P)
    w.reading("m_p1", P, 11_000)
    w.reading("m_c1", P, 12_000)
    assert w.reconcile(P) is None
    vwap, low, high = w.chain.view("reconciliation", "period_summary", P)[:3]
    assert (vwap, low, high) == (-25, -28, -22) and low < vwap < high
    w.accounted(P)
    w.check()


def test_grid_operator_points_are_not_reconciled():
    w = Twin()
    w.member("p1", ["producer"])
    w.member("c1", ["consumer"])
    w.mint("grid_operator", 10_000)
    w.meter("m_p1", "p1", "production", "wind")
    w.meter("m_c1", "c1", "consumption")
    s = w.emit("p1", P, P, 2_000, 10, category="wind", ppoint="m_p1")
    assert w.sell("p1", s, "consumer", 0, "c1", "m_c1") is None
    # the grid operator takes the consumer side over (redispatch) before the period
    w.both("grid_operator", "energy_tokens", "redispatch", (s, "consumer", 3, None, None),
           lambda: w.m.redispatch(w.t("grid_operator"), s, "consumer", 3))
    w.at_period_end(P)
    w.reading("m_p1", P, 2_000)
    w.reading("m_c1", P, 500)
    assert w.reconcile(P) is None
    imbalances = w.m.reconciled[P]["imbalances"]
    assert set(imbalances) == {w.t("m_c1")}  # the GO's own point is the system balance
    w.accounted(P)
    w.check()


def test_suspended_meters_with_a_reading_are_accounted_and_without_one_are_not_required():
    w = Twin()
    w.member("c1", ["consumer"])
    w.meter("m_read", "c1", "consumption")
    w.meter("m_quiet", "c1", "consumption")
    w.at_period_end(P)
    w.reading("m_read", P, 40)
    for mid in ("m_read", "m_quiet"):
        w.both("grid_operator", "meters", "suspend_meter", (w.a(mid),), lambda mid=mid: w.m.suspend_meter(w.t("grid_operator"), w.t(mid)))
    assert w.reconcile(P) is None
    assert set(w.m.reconciled[P]["imbalances"]) == {w.t("m_read")}
    w.check()


def test_a_meter_registered_after_the_period_is_not_required():
    w = Twin()
    w.member("c1", ["consumer"])
    w.at_period_end(P)
    w.meter("m_late", "c1", "consumption")
    assert w.reconcile(P) is None
    assert w.chain.view("reconciliation", "period_summary", P)[3:] == [0, []]


def test_readings_stop_when_reconciliation_starts_and_corrections_when_it_ends():
    w = four_cases(step=1)
    w.meter("m_extra", "c1", "consumption")  # registered after P: not among P's points
    c = w.chain
    assert c.ok("grid_operator", "reconciliation", "reconcile_period", P, 1)[0] is False
    assert c.view("meters", "closing_level", P) == 1
    assert error_code(c.tx("m_extra", "meters", "submit_reading", P, 5)) == "period_reconciled"
    corrected = ref("late correction")
    assert c.tx("grid_operator", "meters", "correct_reading", c.addr("m_c2"), P, 6_900, corrected).ok
    w.m.correct_reading(w.t("grid_operator"), w.t("m_c2"), P, 6_900, corrected)
    assert w.reconcile(P) is None  # continues the same reconciliation
    assert c.view("meters", "closing_level", P) == 2
    assert w.correct("m_c2", P, 7_000) == "period_reconciled"
    w.accounted(P)
    w.check()


def test_bounded_steps_create_the_same_offsets_as_one_transaction():
    whole = four_cases()
    whole.reconcile(P)
    for step in (1, 2, 3):
        w = four_cases(step=step)
        assert w.reconcile(P) is None
        assert w.chain.view("reconciliation", "period_summary", P) == whole.chain.view("reconciliation", "period_summary", P)
        assert w.chain.view("reconciliation", "progress", P) is None
        w.check()


def test_reconciliation_refuses_a_negative_step():
    w = four_cases()
    assert w.chain.fails("grid_operator", "reconciliation", "reconcile_period", P, -1) == "bad_batch"


# ------------------------------------------------------------------ property test

PRODUCERS = ("p1", "p2")
CONSUMERS = ("c1", "c2")
TRADER = "tr"


def market_day(w: Twin, data, periods: int) -> None:
    """A random small market over periods P .. P+periods-1: tokens emitted at meters or
    virtual points, sides sold to consumers and a trader, some withdrawn; random readings."""
    for name in PRODUCERS:
        w.member(name, ["producer"], money=50_000)
    for name in CONSUMERS:
        w.member(name, ["consumer"], money=50_000)
    w.member(TRADER, ["trader"], money=50_000)
    cats = {"p1": "solar", "p2": "wind"}
    for name in PRODUCERS:
        w.meter("m_" + name, name, "production", cats[name], capacity_wh=20_000, co2=30)
    for name in CONSUMERS:
        w.meter("m_" + name, name, "consumption", capacity_wh=20_000)
    n_tokens = data.draw(st.integers(1, 6), label="tokens")
    for _ in range(n_tokens):
        first = P + data.draw(st.integers(0, periods - 1))
        last = data.draw(st.integers(first, P + periods - 1))
        wh = data.draw(st.integers(1, 40)) * 100
        face = data.draw(st.integers(-5, 30))
        if data.draw(st.booleans(), label="producer emits"):
            who = data.draw(st.sampled_from(PRODUCERS))
            at_meter = data.draw(st.booleans())
            serial = w.emit(who, first, last, wh, face, category=cats[who], co2=30, ppoint="m_" + who if at_meter else None)
        else:
            who = TRADER
            serial = w.emit(who, first, last, wh, face, category="other")
        if serial is None:
            continue
        action = data.draw(st.sampled_from(["consumer", "trader", "withdraw", "keep"]))
        if action == "consumer":
            buyer = data.draw(st.sampled_from(CONSUMERS))
            w.sell(who, serial, "consumer", data.draw(st.integers(-100, 500)), buyer, "m_" + buyer if data.draw(st.booleans()) else None)
        elif action == "trader" and who != TRADER:
            w.sell(who, serial, "consumer", 0, TRADER)
        elif action == "withdraw":
            w.both(who, "energy_tokens", "propose_withdrawal", (serial,), lambda s=serial, who=who: w.m.propose_withdrawal(w.t(who), s))
    w.at_period_end(P + periods - 1)
    for name in PRODUCERS + CONSUMERS:
        for p in range(P, P + periods):
            if data.draw(st.integers(0, 9), label="skip reading") == 0:
                continue
            w.reading("m_" + name, p, data.draw(st.integers(0, 200)) * 100)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), step=st.sampled_from([0, 1, 2]))
def test_every_meter_is_accounted_after_reconciliation_and_the_ba_holds_the_imbalances(data, step):
    periods = 2
    w = Twin(step=step)
    market_day(w, data, periods)
    for p in range(P, P + periods):
        code = w.reconcile(p)
        if code == "missing_reading":
            for name in PRODUCERS + CONSUMERS:
                if w.m.reading(w.t("m_" + name), p) is None:
                    assert w.correct("m_" + name, p, 0) is None
            code = w.reconcile(p)
        assert code is None
        w.accounted(p)
    w.check()


def test_bounded_steps_keep_the_gas_of_each_transaction_bounded():
    """With many meters, one transaction reconciles everything only at a cost that grows
    with the meters; steps of a few points stay small whatever the count."""
    def gas_of_steps(step: int, meters: int) -> list[int]:
        w = Twin(step=step)
        w.member("c1", ["consumer"])
        for i in range(meters):
            w.meter(f"m{i}", "c1", "consumption")
        w.at_period_end(P)
        for i in range(meters):
            w.reading(f"m{i}", P, 10 + i)
        since = len(w.chain.receipts)
        assert w.reconcile(P) is None
        w.accounted(P)
        return [r.gas_used for r in w.chain.receipts[since:]]

    (whole_small,) = gas_of_steps(0, 10)
    (whole_large,) = gas_of_steps(0, 60)
    stepped_small = gas_of_steps(4, 10)
    stepped_large = gas_of_steps(4, 60)
    assert whole_large > 4 * whole_small
    assert len(stepped_large) > len(stepped_small)
    # the one step that orders every point grows with them; every other step does not
    assert sorted(stepped_large)[-2] < 2 * max(stepped_small)


def test_a_pending_meter_without_reading_is_not_required():
    w = Twin()
    w.member("c1", ["consumer"])
    w.meter("m_pending", "c1", "consumption", attest=False)
    w.at_period_end(P)
    assert w.reconcile(P) is None
    assert w.chain.view("reconciliation", "period_summary", P)[3:] == [0, []]
