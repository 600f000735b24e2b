"""Item 14 end to end, in-process: the market contracts through the real executor.

The story of MARKET.md section 13 (a grid operator, a bank, a CO2 authority, solar and
wind producers, a trader, two consumers and four meters) is signed transaction by
transaction and executed in blocks by the metered runtime; the expected outcome comes
from the reference model's ``run_scenario`` with the chain's real addresses (netting
order and remainder ties follow their Bech32m text). Balances are compared to the unit.
"""

from __future__ import annotations

import pytest
from market_harness import Chain, error_code, ref
from market_model import SCENARIO_NAMES, run_scenario

from ledger.crypto import Address

P = 8
TERM = 3600
PARAMS = {
    "period_s": 900,
    "gate_closure_lead_s": 1800,
    "imbalance_spread_bp": 1000,
    "reference_price_per_kwh": 10,
    "balancing_co2_g_per_kwh": 128,
    "co2_price_per_t": 12_000,
    "late_fee_bp": 500,
    "postpone_s": 3600,
    "default_after_failures": 2,
    "rating_threshold": 50,
    "min_collateral": 500,
    "sos_mode": "pro_rata",
    "offset_payment_term_s": 0,
}
READINGS = {
    "meter_solar": [44_000, 37_000, 40_000, 40_000],
    "meter_wind": [30_000, 32_000, 29_000, 30_000],
    "meter_c1": [25_000, 23_000, 25_000, 28_000],
    "meter_c2": [45_000, 48_000, 41_000, 45_000],
}
COSTS = [650, 700, 720, 699]


def txt(address: bytes) -> str:
    """The Bech32m text of a 20-byte address (the model's account names)."""
    return str(Address(address))


def capacity_w(max_wh: int) -> int:
    return max_wh * 3600 // 900 + 1


class Aliased(Chain):
    """A chain whose participants are keyed by alias: ``addr("solar")`` is the key of
    ``alias["solar"]`` (so a test can choose keys whose addresses sort like the names)."""

    def __init__(self, alias: dict[str, str], **kw) -> None:
        self.alias = alias
        super().__init__(**kw)

    def key(self, name: str):
        return super().key(self.alias.get(name, name))


def ordered_aliases() -> dict[str, str]:
    """Key names whose addresses sort (by Bech32m text) like the scenario's names, so the
    chain must reproduce MARKET.md section 13's figures, which use the names as addresses."""
    probe = Chain.__new__(Chain)
    probe._keys, probe._names = {}, {}
    alias, last = {}, ""
    for name in sorted(n for n in SCENARIO_NAMES if n != "settlement_account"):
        texts = {f"{name}~{k}": probe.text(f"{name}~{k}") for k in range(64)}
        pick = min((t, a) for a, t in texts.items() if t > last)
        alias[name], last = pick[1], pick[0]
    return alias


def run_on_chain(step: int = 0, alias: dict[str, str] | None = None) -> tuple[Chain, dict]:
    """The scenario on a chain; ``step`` is max_work of the bounded-step calls (0 = all).

    Returns the chain and what the script observed (serials, refusals, run results)."""
    chain = Aliased(alias or {}, params=PARAMS, currencies=(("CHF", "bank", "bps", 10),))
    seen: dict = {}
    go = "grid_operator"
    for who, roles, rating, limit in (
        ("solar", ["producer"], 80, 100_000),
        ("wind", ["producer"], 80, 100_000),
        ("trader", ["trader"], 70, 50_000),
        ("consumer1", ["consumer"], 90, None),
        ("consumer2", ["consumer"], 40, None),
    ):
        chain.admit(who, roles, limit=limit, rating=rating)
    for mid, owner, kind, cat, cap, co2 in (
        ("meter_solar", "solar", "production", "solar", capacity_w(50_000), 40),
        ("meter_wind", "wind", "production", "wind", capacity_w(40_000), 11),
        ("meter_c1", "consumer1", "consumption", "other", capacity_w(40_000), 0),
        ("meter_c2", "consumer2", "consumption", "other", capacity_w(60_000), 0),
    ):
        chain.ok(go, "meters", "register_meter", chain.addr(mid), chain.addr(owner), kind, cat, "loc:" + mid, cap, co2)
        chain.ok(owner, "meters", "attest_meter", chain.addr(mid))
    settlement_account = chain.view("market_config", "get", "settlement_account")
    for who, amount in (("grid_operator", 50_000), ("solar", 2_000), ("wind", 2_000), ("trader", 3_000), ("consumer1", 20_000), ("consumer2", 3_000)):
        chain.ok("bank", "fiat", "mint", "CHF", chain.addr(who), amount, ref(("deposit", who)))
        chain.ok(who, "fiat", "approve", "CHF", settlement_account, 10**12)
    chain.ok("consumer2", "settlement", "deposit_collateral", "CHF", 600)

    def emit(who, first, last, wh, cat, co2, face, **kw):
        return chain.ok(who, "energy_tokens", "emit", first, last, wh, cat, co2, face, "CHF", TERM,
                        kw.get("producer_point"), kw.get("consumer_point"), None, kw.get("consumer_withdrawal"), None)

    s1 = emit("solar", P, P + 3, 40_000, "solar", 40, 12, producer_point=chain.addr("meter_solar"), consumer_withdrawal=[TERM, 2])
    w1 = emit("wind", P, P + 1, 30_000, "wind", 11, 10, producer_point=chain.addr("meter_wind"))
    w2 = emit("wind", P + 2, P + 3, 30_000, "wind", 11, 10, producer_point=chain.addr("meter_wind"))
    s1a, s1b = chain.ok("solar", "energy_tokens", "split_volume", s1, [25_000, 15_000])
    w3 = chain.ok("wind", "energy_tokens", "merge", [w1, w2])
    chain.ok("wind", "energy_tokens", "offer_side", w3, "consumer", 600, "CHF")
    chain.ok("trader", "energy_tokens", "buy_side", w3, "consumer", 600, "CHF", None)
    x = emit("trader", P, P + 3, 30_000, "wind", 11, 13)
    chain.ok("trader", "energy_tokens", "offer_side", x, "consumer", 0, "CHF")
    chain.ok("consumer2", "energy_tokens", "buy_side", x, "consumer", 0, "CHF", chain.addr("meter_c2"))
    chain.ok("solar", "energy_tokens", "offer_side", s1a, "consumer", 200, "CHF")
    chain.ok("consumer1", "energy_tokens", "buy_side", s1a, "consumer", 200, "CHF", chain.addr("meter_c1"))
    chain.ok("solar", "energy_tokens", "offer_side", s1b, "consumer", -50, "CHF")
    chain.ok("consumer2", "energy_tokens", "buy_side", s1b, "consumer", -50, "CHF", chain.addr("meter_c2"))
    seen["tokens"] = {"s1": s1, "s1a": s1a, "s1b": s1b, "w1": w1, "w2": w2, "w3": w3, "x": x}
    chain.set_time(chain.gate_closure(P))
    seen["frozen"] = chain.fails("consumer2", "energy_tokens", "offer_side", x, "consumer", 100, "CHF")
    chain.set_time(chain.period_end(P + 3))
    for mid, values in READINGS.items():
        chain.ok(mid, "meters", "submit_readings", [[P + i, e, 0] for i, e in enumerate(values)])
    seen["offsets"] = []
    for i in range(4):
        seen["offsets"] += until_done(chain, "reconciliation", "reconcile_period", P + i, step)
        until_done(chain, "grid_fees", "publish_transmission_cost", P + i, COSTS[i], step)
    until_done(chain, "grid_fees", "charge_security_of_supply", P, P + 3, 1_000, step)
    runs = []
    chain.set_time(chain.period_end(P + 3) + TERM)
    runs.append(until_done(chain, "settlement", "run_settlement", step))
    chain.advance(PARAMS["postpone_s"])
    runs.append(until_done(chain, "settlement", "run_settlement", step))
    chain.ok(go, "membership", "suspend", chain.addr("consumer2"))
    chain.advance(PARAMS["postpone_s"])
    runs.append(until_done(chain, "settlement", "run_settlement", step))
    seen["runs"] = runs
    return chain, seen


def until_done(chain: Chain, contract: str, function: str, *args):
    """Call a bounded-step function until it reports done; returns what it accumulated."""
    collected = []
    for _ in range(10_000):
        result = chain.ok("grid_operator", contract, function, *args)
        if function == "reconcile_period":
            collected += result[1]
        if result[0]:
            return collected if function != "run_settlement" else result
    raise AssertionError(f"{contract}.{function} never finished")


@pytest.fixture(scope="module")
def scenario():
    chain, seen = run_on_chain()
    addresses = {n: chain.text(n) for n in SCENARIO_NAMES if n != "settlement_account"}
    addresses["settlement_account"] = chain.contract_text("settlement")
    expected = run_scenario(addresses, first_period=P, genesis_time=chain.genesis_time)
    return chain, seen, expected


def balances(chain: Chain) -> dict:
    out = {n: chain.balance(n) for n in SCENARIO_NAMES if n != "settlement_account"}
    out["settlement_account"] = chain.view("fiat", "balance_of", "CHF", chain.view("market_config", "get", "settlement_account"))
    return out


def test_scenario_expected_balances(scenario):
    chain, _, expected = scenario
    assert balances(chain) == expected["balances"]
    assert chain.view("fiat", "supply_of", "CHF") == expected["supply"] == 80_000


def test_scenario_reproduces_the_documented_figures():
    """With addresses that sort like the names, the chain gives MARKET.md 13's table."""
    chain, _ = run_on_chain(alias=ordered_aliases())
    assert balances(chain) == {
        "grid_operator": 51_975, "bank": 16, "co2_authority": 99, "solar": 4_066, "wind": 3_806,
        "trader": 2_757, "consumer1": 17_162, "consumer2": 119,
        "meter_solar": 0, "meter_wind": 0, "meter_c1": 0, "meter_c2": 0, "settlement_account": 0,
    }
    open_ = chain.view("settlement", "open_obligations_of", "CHF", chain.addr("consumer2"), chain.addr("grid_operator"))
    assert [chain.view("settlement", "obligation_of", oid)[4] for oid in open_] == [1_934]


def test_scenario_gate_closure_refuses_the_offer_of_a_frozen_token(scenario):
    _, seen, expected = scenario
    assert expected["frozen_refused"] and seen["frozen"] == "token_frozen"


def test_scenario_token_lineage(scenario):
    chain, seen, _ = scenario
    t = seen["tokens"]
    assert chain.token(t["s1"])["children"] == [t["s1a"], t["s1b"]]
    assert chain.token(t["w3"])["parents"] == [t["w1"], t["w2"]]
    assert chain.token(t["s1"])["status"] == chain.token(t["w1"])["status"] == "retired"


def test_scenario_offsets_match_the_model(scenario):
    chain, seen, expected = scenario
    m = expected["market"]
    offsets = [t for t in m.tokens.values() if t.purpose == "offset"]
    assert seen["offsets"] == [t.serial for t in offsets] == list(range(8, 16))
    for t in offsets:
        got = chain.token(t.serial)
        assert (got["first_period"], got["energy_wh"], got["face_value"], got["category"], got["co2_mg"]) == (
            t.first_period, t.energy_wh, t.face_value, t.category, t.co2_mg)
        assert txt(got["producer"]["owner"]) == t.producer.owner
        assert txt(got["consumer"]["owner"]) == t.consumer.owner
        assert got["grid_fee"] == t.grid_fee


def test_scenario_every_meter_is_accounted_per_period(scenario):
    """After reconciliation each meter's reading equals its position including offsets."""
    chain, _, expected = scenario
    m = expected["market"]
    for i in range(4):
        pos = m.positions_at(P + i)
        for name, values in READINGS.items():
            sign = 1 if name in ("meter_solar", "meter_wind") else -1
            assert pos[chain.text(name)] == sign * values[i]
        summary = chain.view("reconciliation", "period_summary", P + i)
        assert summary[3] == m.reconciled[P + i]["ba_position"]
    assert [chain.view("reconciliation", "period_summary", P + i)[3] for i in range(4)] == [4_000, -2_000, 3_000, -3_000]


def test_scenario_obligations_and_default_match_the_model(scenario):
    chain, seen, expected = scenario
    m = expected["market"]
    assert chain.view("settlement", "obligation_count") == len(m.obligations)
    for o in m.obligations.values():
        rec = chain.view("settlement", "obligation_of", o.oid)
        assert [rec[0], txt(rec[1]), txt(rec[2]), rec[3], rec[4], rec[6], rec[7], rec[8]] == [
            o.kind, o.payer, o.payee, o.currency, o.amount, o.token, o.status, o.into]
    c2 = chain.addr("consumer2")
    assert chain.view("settlement", "is_in_default", c2)
    assert chain.view("settlement", "in_default_list") == [c2]
    assert [txt(a) for a in seen["runs"][-1][2]] == expected["in_default"]
    assert chain.view("settlement", "escrow_of", "CHF", c2) == 0
    still_open = []
    for oid in range(1, len(m.obligations) + 1):
        rec = chain.view("settlement", "obligation_of", oid)
        if rec[7] == "open":
            still_open.append((rec[0], txt(rec[1]), txt(rec[2]), rec[4]))
    assert still_open == expected["open_obligations"]


def test_scenario_transfers_match_the_model_movements(scenario):
    """Every Transferred event, in order, with the model's reason text."""
    chain, _, expected = scenario
    got = []
    for r in chain.receipts:
        for e in r.events:
            if e.contract == "fiat" and e.name == "Transferred":
                f = dict(e.fields)
                got.append((txt(f["frm"]), txt(f["to"]), f["amount"], f["reason"]))
    want = [(mv.frm, mv.to, mv.amount, mv.reason) for mv in expected["market"].movements
            if mv.frm is not None and mv.to is not None and mv.reason != "issuer_fee"]
    assert got == want


def test_scenario_traceability_of_consumer2(scenario):
    chain, _, expected = scenario
    want = expected["market"].traceability(chain.text("consumer2"), P, P + 3)
    got = chain.view("traceability", "traceability", chain.addr("consumer2"), P, P + 3)
    assert got["mix"] == want["mix"] == {"other": 3_000, "solar": 60_000, "wind": 120_000}
    assert (got["energy_wh"], got["co2_mg"], got["measured_wh"], got["returned_wh"]) == (
        want["energy_wh"], want["co2_mg"], want["measured_wh"], want["returned_wh"])
    assert [[s["serial"], [txt(a) for a in s["path"]], s["energy_wh"], s["co2_mg"]] for s in got["sources"]] == [
        [s["serial"], s["path"], s["energy_wh"], s["co2_mg"]] for s in want["sources"]]


@pytest.mark.parametrize("step", [1, 3])
def test_scenario_balances_do_not_depend_on_the_step_size(scenario, step):
    """Reconciliation, grid fees, security of supply and settlement in bounded steps
    give exactly the balances of single-transaction runs."""
    chain, _, expected = scenario
    stepped, _ = run_on_chain(step)
    assert balances(stepped) == balances(chain) == expected["balances"]
    assert stepped.view("settlement", "obligation_count") == len(expected["market"].obligations)


def test_scenario_readings_are_final_after_reconciliation(scenario):
    chain, _, _ = scenario
    assert error_code(chain.tx("meter_c1", "meters", "submit_reading", P + 4, 1)) is None
    assert error_code(chain.tx("meter_c1", "meters", "submit_reading", P, 1)) == "period_reconciled"
