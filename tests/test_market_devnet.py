"""Item 14 through real node processes: the market's whole story on a devnet.

Four validators (BFT, n = 4) and a regulator's observer run as processes on loopback;
``cli.market_story`` plays MARKET.md section 13 over the public HTTP API (a grid
operator, a bank, a CO2 authority, solar and wind producers, a trader, two consumers
and four meters: mint, emit, trade both sides, split and merge, freeze, deliver with
readings deviating in all four directions, reconcile, grid fees, settlement with one
consumer short of funds). Time is the wall clock, with a 3-second elementary period.

The oracle is ``market_model.run_scenario`` run independently with the devnet's real
addresses (netting order and remainder ties follow their Bech32m text) and the same
first period and time parameters. Every figure is read from the OBSERVER and verified
(commit certificate of the genesis validators, header, state proof) before it is
compared, to the unit. The participants' keys are drawn so that their addresses sort
like their names: the devnet must then also end with MARKET.md section 13's table.

Long form (``GRIDLEDGER_MARKET_DEVNET_LONG=1``, about a minute more): the same story
again on Raft (3 validators and an observer) with random keys, so the oracle's outcome
follows other address orders. ``GRIDLEDGER_MARKET_DEVNET_PERIOD=N`` sets the period.
"""

from __future__ import annotations

import os

import pytest
from market_model import SCENARIO_NAMES, run_scenario
from nodeproc import logs, wait_ready

from cli.market_story import CURRENCY, READINGS, MarketStory, create_market_devnet
from ledger.crypto import Address
from ledger.httpclient import SyncClient

pytestmark = pytest.mark.slow

PERIOD_S = int(os.environ.get("GRIDLEDGER_MARKET_DEVNET_PERIOD", "3"))
# (protocol, validators, keys whose addresses sort like the names)
NETWORKS = {"bft4-documented": ("bft", 4, True)}
if os.environ.get("GRIDLEDGER_MARKET_DEVNET_LONG"):
    NETWORKS["raft3-random"] = ("raft", 3, False)
# MARKET.md section 13's expected final balances (addresses in name order)
DOCUMENTED = {
    "grid_operator": 51_975, "bank": 16, "co2_authority": 99, "solar": 4_066, "wind": 3_806,
    "trader": 2_757, "consumer1": 17_162, "consumer2": 119,
    "meter_solar": 0, "meter_wind": 0, "meter_c1": 0, "meter_c2": 0, "settlement_account": 0,
}


def txt(raw: bytes | None) -> str | None:
    return None if raw is None else str(Address(raw))


@pytest.fixture(scope="module", params=list(NETWORKS))
def story(request, tmp_path_factory):
    protocol, validators, documented = NETWORKS[request.param]
    root = tmp_path_factory.mktemp("market") / "net"
    net = create_market_devnet(root, period_s=PERIOD_S, validators=validators, observers=1, protocol=protocol,
                               documented_order=documented)
    lines: list[str] = []
    try:
        net.start()
        wait_ready(net)
        with MarketStory(net, say=lines.append) as s:
            balances = s.run()
            t = s.timing
            addresses = {n: s.text(n) for n in SCENARIO_NAMES}
            expected = run_scenario(addresses, first_period=s.P, genesis_time=t.genesis_time, period_s=t.period_s,
                                    gate_closure_lead_s=t.gate_closure_lead_s, postpone_s=t.postpone_s)
            expected["documented"] = documented
            yield s, balances, expected, lines
    except BaseException:
        print("\n".join(lines))
        print(logs(net))
        raise
    finally:
        net.stop(timeout_s=5.0)


def test_devnet_scenario_balances_match_the_model_to_the_unit(story):
    s, balances, expected, _ = story
    assert set(balances) == set(SCENARIO_NAMES)
    assert balances == expected["balances"]
    supply, _ = s.read("fiat", "supply", [CURRENCY])
    assert supply == expected["supply"] == sum(balances.values()) == 80_000
    if expected["documented"]:
        assert balances == DOCUMENTED


def test_devnet_scenario_leaves_consumer2_in_default_owing_the_documented_debt(story):
    s, _, expected, _ = story
    if not expected["documented"]:
        pytest.skip("the documented debt needs addresses in name order")
    assert expected["open_obligations"] == [("postponed", s.text("consumer2"), s.text("grid_operator"), 1_934)]


def test_devnet_scenario_gate_closure_refuses_the_offer_of_a_frozen_token(story):
    s, _, expected, _ = story
    assert expected["frozen_refused"]
    assert s.frozen_refusal == "token_frozen"


def test_devnet_scenario_token_lineage_is_proven_by_the_observer(story):
    s, _, expected, _ = story
    assert s.tokens == expected["tokens"]
    t = s.tokens
    s1, _ = s.read("energy_tokens", "records", [t["s1"]])
    w1, _ = s.read("energy_tokens", "records", [t["w1"]])
    w3, _ = s.read("energy_tokens", "records", [t["w3"]])
    assert s1["children"] == [t["s1a"], t["s1b"]] and s1["status"] == "retired"
    assert w3["parents"] == [t["w1"], t["w2"]] and w1["status"] == "retired"
    for serial, wh in ((t["s1a"], 25_000), (t["s1b"], 15_000)):
        child, _ = s.read("energy_tokens", "records", [serial])
        assert (child["energy_wh"], child["co2_mg"], child["parents"]) == (wh, wh * 40, [t["s1"]])


def test_devnet_scenario_offsets_and_grid_fees_match_the_model(story):
    s, _, expected, _ = story
    m = expected["market"]
    offsets = sorted(t.serial for t in m.tokens.values() if t.purpose == "offset")
    assert sorted(s.ledger.offsets) == offsets and len(offsets) == 8
    for t in m.tokens.values():
        record, _ = s.read("energy_tokens", "records", [t.serial])
        assert (record["first_period"], record["last_period"], record["energy_wh"], record["face_value"],
                record["co2_mg"], record["purpose"]) == (
            t.first_period, t.last_period, t.energy_wh, t.face_value, t.co2_mg, t.purpose), t.serial
        for side in ("producer", "consumer"):
            got, _ = s.read("energy_tokens", "sides", [t.serial, side])
            assert txt(got[0]) == t.side(side).owner, (t.serial, side)
        fee, _ = s.read("energy_tokens", "grid_fees", [t.serial])
        assert (fee or 0) == t.grid_fee, t.serial


def test_devnet_scenario_every_meter_is_accounted_per_period(story):
    """The readings on chain are the meters' signed values; each imbalance is the model's."""
    s, _, expected, _ = story
    m = expected["market"]
    for i in range(4):
        period = s.P + i
        for meter, values in READINGS.items():
            record, _ = s.read("meters", "reading", [s.address[meter].raw, period])
            assert record[0] == values[i] and record[1] == [], (meter, period)
            imbalance, _ = s.read("reconciliation", "imbalance", [period, s.address[meter].raw])
            assert (imbalance or 0) == m.reconciled[period]["imbalances"].get(s.text(meter), 0), (meter, period)
        summary, _ = s.read("reconciliation", "summary", [period])
        assert summary[:4] == [12, 10, 14, m.reconciled[period]["ba_position"]]
    bas = [s.read("reconciliation", "summary", [s.P + i])[0][3] for i in range(4)]
    assert bas == [4_000, -2_000, 3_000, -3_000]


def test_devnet_scenario_obligations_and_default_match_the_model(story):
    s, _, expected, _ = story
    m = expected["market"]
    count, _ = s.read("settlement", "next_obligation", [])
    assert count - 1 == len(m.obligations)
    for o in m.obligations.values():
        rec, _ = s.read("settlement", "obligation", [o.oid])
        assert [rec[0], txt(rec[1]), txt(rec[2]), rec[3], rec[4], rec[6], rec[7], rec[8]] == [
            o.kind, o.payer, o.payee, o.currency, o.amount, o.token, o.status, o.into], o.oid
    open_ = []
    for oid in range(1, count):
        rec, _ = s.read("settlement", "obligation", [oid])
        if rec[7] == "open":
            open_.append((rec[0], txt(rec[1]), txt(rec[2]), rec[4]))
    assert open_ == expected["open_obligations"] and open_
    c2 = s.address["consumer2"].raw
    assert s.read("settlement", "in_default", [c2])[0] is True
    assert [txt(a) for a in s.read("settlement", "defaulters", [])[0]] == expected["in_default"] == [s.text("consumer2")]
    assert (s.read("settlement", "escrow", [CURRENCY, c2])[0] or 0) == expected["escrow"]["consumer2"] == 0
    assert s.read("membership", "member", [c2])[0][1] == "suspended"
    assert [[txt(a) for a in r["in_default"]] for r in s.runs] == [r["in_default"] for r in expected["runs"]]


def test_devnet_scenario_transfers_match_the_model_movements(story):
    """Every Transferred event, in commit order, is the model's movement with its reason."""
    s, _, expected, _ = story
    got = [(txt(f["frm"]), txt(f["to"]), f["amount"], f["reason"])
           for f in (dict(e.fields) for e in s.ledger.events("fiat", "Transferred"))]
    want = [(mv.frm, mv.to, mv.amount, mv.reason) for mv in expected["market"].movements
            if mv.frm is not None and mv.to is not None and mv.reason != "issuer_fee"]
    assert got == want


def test_devnet_scenario_story_tells_who_paid_whom_for_every_transfer(story):
    s, _, _, lines = story
    transfers = s.ledger.events("fiat", "Transferred")
    told = [line for line in lines if " paid " in line and ": " in line]
    assert len(told) == len(transfers) > 10
    assert any("settles security of supply" in line for line in told)
    assert any("taken from consumer 2's collateral" in line for line in told)
    assert any("is in default" in line for line in lines)
    assert any("refused (token_frozen)" in line for line in lines)


def test_devnet_scenario_every_node_holds_the_same_state(story):
    s, _, _, _ = story
    roots = set()
    for node in s.net.nodes:
        with SyncClient(node.url, timeout=10.0) as c:
            roots.add(c.block(s.final_height, verify_with=s.validators).header.state_root)
    assert len(roots) == 1
