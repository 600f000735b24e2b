"""The meters contract (MARKET.md 7): registry, attestation, signed readings, corrections,
and compatibility with the meter gateway (meters/nodeapi.py, meters/readings.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import error_code, ref
from test_market_reconciliation import P, Twin

from meters.nodeapi import DUPLICATE_READING_CODES, build_submission
from meters.readings import Flag, Reading

CAP_WH = 10_000  # capacity of the test meters per 15-minute period
CAP_W = CAP_WH * 4


def world(**params) -> Twin:
    w = Twin(params=params or None)
    w.member("prod", ["producer"])
    w.member("cons", ["consumer"])
    w.member("retail", ["retailer"])
    w.member("trader", ["trader"])
    return w


# ------------------------------------------------------------------ registry


def test_the_grid_operator_registers_a_pending_meter_that_becomes_a_member():
    w = world()
    assert w.register("m1", "prod", "production", "solar", CAP_W, 40) is None
    c = w.chain
    record = c.view("meters", "meter", c.addr("m1"))
    assert record == [c.addr("prod"), "production", "solar", "loc:m1", CAP_W, 40, 0, "pending"]
    assert c.view("membership", "member_record", c.addr("m1"))[:2] == [["meter"], "active"]
    event = next(e for e in c.receipts[-1].events if e.name == "MeterRegistered")
    assert dict(event.fields) == {"meter": c.addr("m1"), "owner": c.addr("prod"), "kind": "production"}


def test_registered_period_is_the_current_period():
    w = world()
    w.set_time(w.chain.period_start(7) + 5)
    w.register("m1", "cons", "consumption", "other", CAP_W)
    assert w.chain.view("meters", "meter", w.a("m1"))[6] == 7


def test_only_the_grid_operator_registers_meters():
    w = world()
    assert w.register("m1", "prod", "production", "solar", CAP_W, sender="prod") == "not_grid_operator"
    assert w.register("m1", "prod", "production", "solar", CAP_W, sender="nobody") == "not_member"


@pytest.mark.parametrize(
    ("meter_id", "owner", "kind", "category", "cap", "co2", "code"),
    [
        ("prod", "prod", "production", "solar", CAP_W, 0, "already_member"),  # an existing member
        ("m1", "nobody", "production", "solar", CAP_W, 0, "not_member"),
        ("m1", "prod", "storage", "solar", CAP_W, 0, "bad_meter_kind"),
        ("m1", "cons", "production", "solar", CAP_W, 0, "role_missing"),
        ("m1", "trader", "consumption", "other", CAP_W, 0, "role_missing"),
        ("m1", "prod", "production", "plutonium", CAP_W, 0, "bad_category"),
        ("m1", "cons", "consumption", "solar", CAP_W, 0, "bad_category"),
        ("m1", "prod", "production", "solar", 0, 0, "bad_meter"),
        ("m1", "prod", "production", "solar", CAP_W, -1, "bad_meter"),
        ("m1", "nobody", "storage", "plutonium", 0, -1, "not_member"),  # the first check wins
        ("m1", "cons", "storage", "plutonium", 0, -1, "bad_meter_kind"),
    ],
)
def test_register_meter_checks_in_the_documented_order(meter_id, owner, kind, category, cap, co2, code):
    w = world()
    assert w.register(meter_id, owner, kind, category, cap, co2) == code


def test_a_meter_id_is_registered_once():
    w = world()
    w.register("m1", "prod", "production", "solar", CAP_W)
    assert w.register("m1", "cons", "consumption", "other", CAP_W) == "already_member"


def test_a_retailer_registers_consumption_meters_and_a_banned_owner_none():
    w = world()
    assert w.register("m1", "retail", "consumption", "other", CAP_W) is None
    w.both("grid_operator", "membership", "ban", (w.a("cons"),), lambda: w.m.ban(w.t("grid_operator"), w.t("cons")))
    assert w.register("m2", "cons", "consumption", "other", CAP_W) == "not_active"


def test_only_the_owner_attests_a_pending_meter_once():
    w = world()
    w.register("m1", "prod", "production", "wind", CAP_W)
    assert w.attest("cons", "m1") == "not_meter_owner"
    assert w.attest("prod", "unknown") == "unknown_meter"
    assert w.attest("prod", "m1") is None
    assert w.chain.view("meters", "meter", w.a("m1"))[7] == "active"
    assert w.attest("prod", "m1") == "bad_status"


def test_a_suspended_owner_cannot_attest():
    w = world()
    w.register("m1", "prod", "production", "wind", CAP_W)
    w.both("grid_operator", "membership", "suspend", (w.a("prod"),), lambda: w.m.suspend(w.t("grid_operator"), w.t("prod")))
    assert w.attest("prod", "m1") == "not_active"


def suspend(w: Twin, mid: str, sender: str = "grid_operator") -> str | None:
    return w.both(sender, "meters", "suspend_meter", (w.a(mid),), lambda: w.m.suspend_meter(w.t(sender), w.t(mid)))[2]


def reinstate(w: Twin, mid: str, sender: str = "grid_operator") -> str | None:
    return w.both(sender, "meters", "reinstate_meter", (w.a(mid),), lambda: w.m.reinstate_meter(w.t(sender), w.t(mid)))[2]


def test_the_grid_operator_suspends_and_reinstates_meters():
    w = world()
    w.register("m1", "prod", "production", "wind", CAP_W)
    assert suspend(w, "m1") == "bad_status"  # pending
    w.attest("prod", "m1")
    assert suspend(w, "m1", sender="prod") == "not_grid_operator"
    assert reinstate(w, "m1") == "bad_status"
    assert suspend(w, "m1") is None
    assert suspend(w, "m1") == "bad_status"
    assert reinstate(w, "m1") is None
    assert suspend(w, "unknown") == "unknown_meter"


def test_a_meter_is_suspended_through_meters_not_membership():
    w = world()
    w.meter("m1", "prod", "production", "wind")
    code = w.both("grid_operator", "membership", "suspend", (w.a("m1"),), lambda: w.m.suspend(w.t("grid_operator"), w.t("m1")))[2]
    assert code == "bad_role"


# ------------------------------------------------------------------ readings


def metered(**params) -> Twin:
    w = world(**params)
    w.meter("m1", "prod", "production", "solar", capacity_wh=CAP_WH)
    w.meter("m2", "cons", "consumption", capacity_wh=CAP_WH)
    return w


def test_a_reading_is_signed_by_the_meter_itself():
    w = metered()
    w.at_period_end(P)
    assert w.reading("m1", P, 1_234) is None
    assert w.chain.view("meters", "get_reading", w.a("m1"), P) == 1_234
    assert w.chain.view("meters", "reading_record", w.a("m1"), P) == [1_234, [], 0]
    assert w.reading("prod", P, 5) == "unknown_meter"  # the owner is not the meter


def test_readings_of_pending_or_suspended_meters_are_refused():
    w = metered()
    w.meter("m3", "prod", "production", "solar", attest=False)
    w.at_period_end(P)
    assert w.reading("m3", P, 1) == "meter_not_active"
    suspend(w, "m1")
    assert w.reading("m1", P, 1) == "meter_not_active"
    reinstate(w, "m1")
    assert w.reading("m1", P, 1) is None


def test_a_reading_waits_for_the_end_of_its_period():
    w = metered()
    w.set_time(w.chain.period_end(P) - 1)
    assert w.reading("m1", P, 10) == "period_not_ended"
    assert w.reading("m1", -1, 10) == "period_not_ended"
    w.set_time(w.chain.period_end(P))
    assert w.reading("m1", P, 10) is None


@pytest.mark.parametrize(("wh", "code"), [(-1, "bad_energy"), (0, None), (CAP_WH, None), (CAP_WH + 1, "reading_exceeds_capacity")])
def test_a_reading_is_at_least_zero_and_at_most_the_capacity(wh, code):
    w = metered()
    w.at_period_end(P)
    assert w.reading("m2", P, wh) == code


def test_a_reading_is_a_multiple_of_the_energy_unit():
    w = metered(energy_unit_wh=10)
    w.at_period_end(P)
    assert w.reading("m1", P, 15) == "bad_energy"
    assert w.reading("m1", P, 20) is None


def test_a_second_reading_for_the_same_period_is_a_duplicate():
    w = metered()
    w.at_period_end(P)
    w.reading("m1", P, 100)
    assert w.reading("m1", P, 100) == "duplicate_reading"
    assert w.reading("m1", P, 200) == "duplicate_reading"
    assert w.chain.view("meters", "get_reading", w.a("m1"), P) == 100


# ------------------------------------------------------------------ corrections


def test_only_the_grid_operator_corrects_and_the_original_stays_visible():
    w = metered()
    w.at_period_end(P)
    w.reading("m2", P, 500)
    assert w.correct("m2", P, 450, sender="cons") == "not_grid_operator"
    assert w.correct("m2", P, 450) is None
    assert w.correct("m2", P, 470) is None
    c = w.chain
    original, corrections, flags = c.view("meters", "reading_record", c.addr("m2"), P)
    assert original == 500 and [x[0] for x in corrections] == [450, 470] and flags == 0
    assert corrections[0][1] == ref(("correction", "m2", P, 450))
    assert c.view("meters", "get_reading", c.addr("m2"), P) == 470
    event = next(e for e in c.receipts[-1].events if e.name == "ReadingCorrected")
    assert dict(event.fields)["original"] == 500


def test_a_correction_without_original_is_a_substitute_value_for_any_meter_status():
    w = metered()
    w.at_period_end(P)
    suspend(w, "m1")
    assert w.correct("m1", P, 300) is None
    assert w.chain.view("meters", "reading_record", w.a("m1"), P)[0] is None
    assert w.chain.view("meters", "get_reading", w.a("m1"), P) == 300


def test_corrections_obey_the_reading_checks_and_need_a_reference():
    w = metered()
    w.set_time(w.chain.period_end(P) - 1)
    assert w.correct("m1", P, 5) == "period_not_ended"
    w.at_period_end(P)
    assert w.correct("m1", P, CAP_WH + 1) == "reading_exceeds_capacity"
    assert w.correct("nope", P, 1) == "unknown_meter"
    assert w.chain.fails("grid_operator", "meters", "correct_reading", w.a("m1"), P, 5, b"short") == "bad_reference"


def test_no_reading_or_correction_after_reconciliation():
    w = metered()
    w.at_period_end(P)
    w.reading("m1", P, 10)
    w.reading("m2", P, 10)
    assert w.reconcile(P) is None
    assert w.reading("m1", P + 100, 1) == "period_not_ended"
    w.at_period_end(P + 1)
    assert w.correct("m1", P, 20) == "period_reconciled"
    assert w.reading("m1", P, 20) == "period_reconciled"
    assert w.reading("m1", P + 1, 20) is None


# ------------------------------------------------------------------ the gateway's batch


def test_submit_readings_records_a_batch_with_its_flags():
    w = metered()
    w.at_period_end(P + 2)
    c = w.chain
    flags = int(Flag.ESTIMATED | Flag.PARTIAL)
    assert c.ok("m1", "meters", "submit_readings", [[P, 10, 0], [P + 1, 20, flags], [P + 2, 30, int(Flag.RESET)]]) == 3
    assert [c.view("meters", "reading_record", c.addr("m1"), p) for p in (P, P + 1, P + 2)] == [[10, [], 0], [20, [], flags], [30, [], 1]]
    assert [dict(e.fields)["flags"] for e in c.receipts[-1].events if e.name == "ReadingRecorded"] == [0, flags, 1]


def test_a_batch_is_refused_whole_with_duplicate_reading():
    w = metered()
    w.at_period_end(P + 2)
    c = w.chain
    c.ok("m1", "meters", "submit_readings", [[P + 1, 20, 0]])
    assert c.fails("m1", "meters", "submit_readings", [[P, 10, 0], [P + 1, 20, 0]]) == "duplicate_reading"
    assert c.view("meters", "get_reading", c.addr("m1"), P) is None  # nothing of the batch stays
    assert c.fails("m1", "meters", "submit_readings", [[P, 10, 0], [P, 11, 0]]) == "duplicate_reading"


@pytest.mark.parametrize(
    "batch",
    [[], [[P, 10]], [[P, 10, 16]], [[P, 10, -1]], [[P, "10", 0]], [[P, True, 0]], [P, 10, 0], [[P, 10, 0]] * 400],
)
def test_a_malformed_batch_is_refused_with_bad_reading(batch):
    w = metered()
    w.at_period_end(P)
    assert w.chain.fails("m1", "meters", "submit_readings", batch) == "bad_reading"


def test_a_batch_checks_each_reading_like_a_single_one():
    w = metered()
    w.at_period_end(P)
    c = w.chain
    assert c.fails("m1", "meters", "submit_readings", [[P, 10, 0], [P + 1, 10, 0]]) == "period_not_ended"
    assert c.fails("m1", "meters", "submit_readings", [[P, CAP_WH + 1, 0]]) == "reading_exceeds_capacity"
    assert c.fails("cons", "meters", "submit_readings", [[P, 1, 0]]) == "unknown_meter"


def test_the_meter_gateway_submission_executes_and_a_resend_reads_as_already_there():
    """The exact transaction meters/nodeapi.py builds, signed by the meter's key; its
    second copy (new nonce) fails with a code the gateway treats as a duplicate."""
    w = metered()
    w.at_period_end(P + 3)
    c = w.chain
    readings = [Reading("m1", p, 100 * p, int(Flag.ESTIMATED) if p == P else 0) for p in range(P, P + 4)]
    for nonce in (0, 1):
        tx = build_submission(c.key("m1"), readings, chain_id=c.shard, nonce=nonce, gas_limit=1_000_000, expiry=10**9)
        (receipt,) = c.block([("m1", tx)])
        if nonce == 0:
            assert receipt.ok, receipt.error
            assert receipt.gas_used < 1_000_000
        else:
            assert error_code(receipt) in DUPLICATE_READING_CODES
    assert [c.view("meters", "get_reading", c.addr("m1"), p) for p in range(P, P + 4)] == [100 * p for p in range(P, P + 4)]


def test_a_full_day_batch_fits_the_gateway_gas_limit():
    w = world()
    w.meter("m1", "prod", "production", "solar", capacity_wh=CAP_WH)
    w.at_period_end(95)
    c = w.chain
    readings = [Reading("m1", p, p, 0) for p in range(96)]
    tx = build_submission(c.key("m1"), readings, chain_id=c.shard, nonce=0, gas_limit=1_000_000, expiry=10**9)
    (receipt,) = c.block([("m1", tx)])
    assert receipt.ok, receipt.error


# ------------------------------------------------------------------ against the model

OPS = st.lists(
    st.tuples(
        st.sampled_from(["reading", "correct", "suspend", "reinstate", "attest", "time"]),
        st.sampled_from(["m1", "m2", "m3"]),
        st.integers(P - 1, P + 2),
        st.sampled_from([0, 1, 500, CAP_WH, CAP_WH + 1, -5]),
    ),
    max_size=25,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_random_meter_operations_match_the_model(ops):
    w = metered()
    w.meter("m3", "cons", "consumption", capacity_wh=CAP_WH, attest=False)
    w.set_time(w.chain.period_start(P))
    for op, mid, period, wh in ops:
        if op == "reading":
            w.reading(mid, period, wh)
        elif op == "correct":
            w.correct(mid, period, wh)
        elif op == "suspend":
            suspend(w, mid)
        elif op == "reinstate":
            reinstate(w, mid)
        elif op == "attest":
            w.attest(w.chain.name_of(w.chain.view("meters", "meter", w.a(mid))[0]), mid)
        else:
            w.set_time(w.chain.time + 450)
    for mid in ("m1", "m2", "m3"):
        record = w.chain.view("meters", "meter", w.a(mid))
        assert record[7] == w.m.meters[w.t(mid)].status
        for period in range(P - 1, P + 3):
            assert w.chain.view("meters", "get_reading", w.a(mid), period) == w.m.reading(w.t(mid), period)
