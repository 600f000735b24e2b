"""The energy market's story on a devnet, told for a grid operator (MARKET.md section 13).

A grid operator, a bank, a CO2 authority, a solar and a wind producer, a trader, two
consumers and four meters play one day of the market on real node processes, over
the public HTTP API only: the bank mints francs, producers emit energy tokens, both
sides are traded, tokens are split and merged, gate closure freezes them, the meters
sign readings that deviate in all four directions, the grid operator reconciles,
charges grid fees and runs settlement, one consumer cannot pay and defaults. Every
money movement is printed from the receipts' events: who paid whom, and why. ::

    net = create_market_devnet(root, period_s=4)      # keys, genesis with the market
    net.start(); net.wait_ready()
    with MarketStory(net, say=print) as story:
        balances = story.run()                         # every step, then verified balances
    net.stop()

``python -m cli.market_story [--dir DIR] [--keep] [--period 4]`` runs it standalone.

Time on a devnet is the wall clock, so the story waits for real: emission and trading
happen before the gate closure of the first delivery period (chosen when trading
starts), readings after the fourth period ends, settlement a payment term later, each
further run ``postpone_s`` after the previous one. The balances do not depend on the
period length (``tests/market_model.py`` proves it); names and numbers are those of
MARKET.md section 13, and the final balances are read from the regulator's observer,
each one verified (certificate, header, state proof) against the genesis validators.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.devnet import Devnet
from contracts.runtime.engine import contract_address
from contracts.system.genesis import CurrencySpec, market_genesis
from ledger.client import Account, StateRead, verify_read
from ledger.crypto import Address, PrivateKey
from ledger.genesis import Genesis
from ledger.httpclient import ApiError, SyncClient, TxResult
from ledger.keystore import save_key
from ledger.tx import Event, Receipt
from meters.nodeapi import build_submission
from meters.readings import Reading

__all__ = [
    "ACCOUNTS",
    "NAMES",
    "MarketStory",
    "StoryError",
    "Timing",
    "create_market_devnet",
    "market_params",
    "main",
]

CURRENCY = "CHF"
GAS = 9_000_000
# Every participant of the story; the three authorities are genesis members, the others
# are admitted (with ratings and limits) or registered as meters during the story.
ACCOUNTS: dict[str, list[str]] = {
    "grid_operator": ["grid_operator"],
    "bank": ["bank"],
    "co2_authority": ["co2_authority"],
    "solar": [],
    "wind": [],
    "trader": [],
    "consumer1": [],
    "consumer2": [],
    "meter_solar": [],
    "meter_wind": [],
    "meter_c1": [],
    "meter_c2": [],
}
NAMES = tuple(ACCOUNTS)
LABELS = {
    "grid_operator": "the grid operator",
    "bank": "the bank",
    "co2_authority": "the CO2 authority",
    "solar": "the solar producer",
    "wind": "the wind producer",
    "trader": "the trader",
    "consumer1": "consumer 1",
    "consumer2": "consumer 2",
    "meter_solar": "the solar meter",
    "meter_wind": "the wind meter",
    "meter_c1": "consumer 1's meter",
    "meter_c2": "consumer 2's meter",
    "settlement_account": "the settlement escrow",
}
# (name, roles, rating, position limit in Wh)
ADMISSIONS = (
    ("solar", ["producer"], 80, 100_000),
    ("wind", ["producer"], 80, 100_000),
    ("trader", ["trader"], 70, 50_000),
    ("consumer1", ["consumer"], 90, None),
    ("consumer2", ["consumer"], 40, None),
)
# (meter, owner, kind, category, most Wh in a period, CO2 g/kWh)
METERS = (
    ("meter_solar", "solar", "production", "solar", 50_000, 40),
    ("meter_wind", "wind", "production", "wind", 40_000, 11),
    ("meter_c1", "consumer1", "consumption", "other", 40_000, 0),
    ("meter_c2", "consumer2", "consumption", "other", 60_000, 0),
)
MINTS = (("grid_operator", 50_000), ("solar", 2_000), ("wind", 2_000), ("trader", 3_000),
         ("consumer1", 20_000), ("consumer2", 3_000))
READINGS = {
    "meter_solar": (44_000, 37_000, 40_000, 40_000),
    "meter_wind": (30_000, 32_000, 29_000, 30_000),
    "meter_c1": (25_000, 23_000, 25_000, 28_000),
    "meter_c2": (45_000, 48_000, 41_000, 45_000),
}
TRANSMISSION_COSTS = (650, 700, 720, 699)
SECURITY_OF_SUPPLY = 1_000
COLLATERAL = 600
OBLIGATION_KINDS = {
    "face_value": "energy",
    "grid_fee": "grid fee",
    "co2_fee": "CO2 fee",
    "security_of_supply": "security of supply",
    "postponed": "postponed debt",
    "late_fee": "late fee",
}


class StoryError(RuntimeError):
    """A step did not do what the story needs; the message says which and why."""


def market_params(period_s: int) -> dict[str, int | str]:
    """MARKET.md section 13's parameters with the time scaled to a ``period_s`` period.

    Gate closure stays two periods ahead of delivery and the payment term four periods
    (as at 15 minutes); a failed obligation is retried one period later.
    """
    return {
        "gate_closure_lead_s": 2 * period_s,
        "imbalance_spread_bp": 1000,
        "reference_price_per_kwh": 10,
        "balancing_co2_g_per_kwh": 128,
        "co2_price_per_t": 12_000,
        "late_fee_bp": 500,
        "postpone_s": period_s,
        "default_after_failures": 2,
        "rating_threshold": 50,
        "min_collateral": 500,
        "sos_mode": "pro_rata",
        "offset_payment_term_s": 0,
    }


def create_market_devnet(
    root: str | Path,
    *,
    period_s: int = 4,
    validators: int = 4,
    observers: int = 1,
    protocol: str = "bft",
    chain_id: str = "ch/market",
    params: dict[str, int | str] | None = None,
    documented_order: bool = False,
) -> Devnet:
    """A devnet (not started) whose genesis deploys the market for the story's accounts.

    The bank's francs carry a 10 bp issuer fee, as in MARKET.md section 13:
    ``Devnet.create`` deploys a fee-less currency, so the market's genesis entries are
    rebuilt here with the fee (same accounts, same genesis time, same parameters).

    Netting order and remainder ties follow the addresses' Bech32m text. With
    ``documented_order`` the participants get keys whose addresses sort like their
    names, so the story ends with exactly MARKET.md section 13's table; otherwise the
    keys are random and the outcome is the reference model's for those addresses.
    """
    chosen = {**market_params(period_s), **(params or {})}
    net = Devnet.create(root, validators=validators, observers=observers, protocol=protocol, chain_id=chain_id,
                        accounts=ACCOUNTS, params={"period_seconds": period_s}, market=True, market_params=chosen)
    path = net.root / "genesis.json"
    doc = json.loads(path.read_text())
    if documented_order:
        keys = _keys_in_name_order(NAMES)
        for account in doc["accounts"]:
            key = keys[account["label"]]
            save_key(net.root / net.accounts[account["label"]], kind="ed25519", secret=key.seed,
                     public_key=key.public_key.raw, password=None, label=account["label"],
                     address=str(key.address), dev_plaintext=True)
            account["address"] = str(key.address)
    address = {a["label"]: a["address"] for a in doc["accounts"]}
    entries = market_genesis(address["grid_operator"], address["co2_authority"],
                             [CurrencySpec(CURRENCY, Address.parse(address["bank"]).raw, "bps", 10)],
                             doc["genesis_time"], params={"period_s": period_s, **chosen})
    doc["contracts"], doc["app_state"] = entries["contracts"], entries["app_state"]
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return net


def _keys_in_name_order(names: Sequence[str]) -> dict[str, PrivateKey]:
    """Fresh keys whose Bech32m addresses sort like ``names`` (the smallest of 64 that
    follows the previous one, so the ordering always leaves room for the next name)."""
    keys, last = {}, ""
    for name in sorted(names):
        candidates = [k for k in (PrivateKey.generate() for _ in range(64)) if str(k.address) > last]
        if not candidates:
            raise StoryError("could not draw keys in name order; try again")
        keys[name] = min(candidates, key=lambda k: str(k.address))
        last = str(keys[name].address)
    return keys


@dataclass(frozen=True)
class Timing:
    """The shard's clock: elementary periods from genesis, gate closure, retries."""

    genesis_time: int
    period_s: int
    gate_closure_lead_s: int
    postpone_s: int

    @property
    def payment_term_s(self) -> int:
        """The tokens' payment term: four periods (an hour at 15 minutes)."""
        return 4 * self.period_s

    def start(self, period: int) -> int:
        return self.genesis_time + period * self.period_s

    def end(self, period: int) -> int:
        return self.start(period + 1)

    def gate_closure(self, period: int) -> int:
        return self.start(period) - self.gate_closure_lead_s

    @classmethod
    def of(cls, genesis: Genesis) -> Timing:
        config = genesis.app_state["market_config"][0]
        return cls(genesis.genesis_time, int(config["period_s"]), int(config["gate_closure_lead_s"]),
                   int(config["postpone_s"]))


def chf(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    minor = abs(minor)
    return f"{sign}CHF {minor // 100:,}.{minor % 100:02d}"


def wh(energy: int) -> str:
    return f"{energy:,} Wh"


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def ref(text: str) -> bytes:
    """A 32-byte reference (legal entity, deposit) derived from a text."""
    return hashlib.sha256(text.encode()).digest()


@dataclass
class Ledger:
    """What the story learnt from receipts, for telling later steps (and for tests)."""

    results: list[TxResult] = field(default_factory=list)  # every committed transaction, in commit order
    obligations: dict[int, tuple] = field(default_factory=dict)  # id -> (kind, payer, payee, amount, token)
    offsets: set[int] = field(default_factory=set)  # serials of offset tokens

    def events(self, contract: str | None = None, name: str | None = None) -> list[Event]:
        out = []
        for r in sorted(self.results, key=lambda r: (r.height, r.index)):
            out += [e for e in r.receipt.events
                    if (contract is None or e.contract == contract) and (name is None or e.name == name)]
        return out


class MarketStory:
    """The story against a running market devnet; one method per step, :meth:`run` for all."""

    def __init__(self, net: Devnet, *, say: Callable[[str], None] = print, trade_budget_s: float | None = None,
                 node_url: str | None = None, observer_url: str | None = None, first_section: int = 1) -> None:
        self.net = net
        self.say = say
        self.genesis = Genesis.load(net.root / "genesis.json")
        self.validators = self.genesis.validators
        self.timing = Timing.of(self.genesis)
        self.chain_id = self.genesis.chain_id
        self.trade_budget_s = trade_budget_s
        self.keys = {n: net.account_key(n) for n in NAMES}
        self.address: dict[str, Address] = {n: k.address for n, k in self.keys.items()}
        self.address["settlement_account"] = Address(contract_address("settlement"))
        self.names = {a.raw: n for n, a in self.address.items()}
        self.node = SyncClient(node_url or net.validators()[0].url, timeout=30.0)
        self.observer = SyncClient(observer_url or net.observers()[0].url, timeout=30.0)
        self.accounts = {n: Account(k, chain_id=self.chain_id, gas_limit=GAS) for n, k in self.keys.items()}
        self.ledger = Ledger()
        self.first_period: int | None = None
        self.tokens: dict[str, int] = {}
        self.frozen_refusal: str | None = None
        self.runs: list[dict] = []
        self.latencies: list[float] = []
        self.final_height = 0
        self._last_run_time = 0
        self.section = first_section

    def __enter__(self) -> MarketStory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.node.close()
        self.observer.close()

    # ------------------------------------------------------------ names

    def label(self, raw: bytes | None) -> str:
        if raw is None:
            return "nobody"
        name = self.names.get(bytes(raw))
        return LABELS.get(name, name) if name else str(Address(raw))

    def text(self, name: str) -> str:
        """The Bech32m text of a participant's address (what the reference model calls it)."""
        return str(self.address[name])

    @property
    def P(self) -> int:  # noqa: N802 - MARKET.md's name for the first delivery period
        if self.first_period is None:
            raise StoryError("the first delivery period is chosen when emission starts")
        return self.first_period

    # ------------------------------------------------------------ transactions

    def _sign(self, who: str, contract: str, function: str, args: Sequence[Any]):
        account = self.accounts[who]
        if account.next_nonce == 0:
            account.next_nonce = self.node.next_nonce(account.address)
        return account.call(contract, function, list(args))

    def send(self, who: str, contract: str, function: str, *args: Any, expect_ok: bool = True) -> TxResult:
        """Sign, submit and wait for one transaction; returns its committed result."""
        return self.send_all([(who, contract, function, args)], expect_ok=expect_ok)[0]

    def send_all(self, calls: Sequence[tuple[str, str, str, Sequence[Any]]], *, expect_ok: bool = True) -> list[TxResult]:
        """Independent transactions in one batch (one sender's in the order given); waits for all."""
        txs = [self._sign(who, contract, function, args) for who, contract, function, args in calls]
        started = time.monotonic()
        results = self.node.submit_many(txs, wait=True, timeout_s=30.0)
        final = []
        for (who, contract, function, _), tx, result in zip(calls, txs, results, strict=True):
            if result.status == "pending":
                result = self._await(tx.tx_id)
            if not result.committed:
                raise StoryError(f"{who} {contract}.{function} was not committed: {result.status} {result.error}")
            if expect_ok and not result.ok:
                raise StoryError(f"{who} {contract}.{function} failed: {result.receipt.error}")
            final.append(result)
        self.latencies.append(time.monotonic() - started)
        self.ledger.results.extend(final)
        for result in final:
            self._learn(result.receipt)
        return final

    def _await(self, tx_id: bytes, timeout_s: float = 60.0) -> TxResult:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.node.tx(tx_id)
            if result.status in ("committed", "rejected"):
                return result
            time.sleep(0.1)
        raise StoryError(f"transaction {tx_id.hex()[:16]} not committed within {timeout_s:.0f} s")

    def _learn(self, receipt: Receipt) -> None:
        for e in receipt.events:
            f = dict(e.fields)
            if (e.contract, e.name) == ("settlement", "ObligationCreated"):
                self.ledger.obligations[f["id"]] = (f["kind"], f["payer"], f["payee"], f["amount"], f["token"])
            elif (e.contract, e.name) == ("reconciliation", "OffsetCreated"):
                self.ledger.offsets.add(f["serial"])

    def wait_until(self, t: int, why: str) -> None:
        """Sleep until the wall clock (the block time of the next block) reaches ``t``."""
        left = t - time.time()
        if left > 0:
            self.say(f"   ... waiting {left:.0f} s for {why} ({clock(t)})")
            time.sleep(left + 0.05)

    # ------------------------------------------------------------ telling

    def tell(self, results: Sequence[TxResult]) -> None:
        """Print, in event order, every movement of money in these receipts (who paid whom,
        and why) and what settlement decided (postponements, late fees, defaults)."""
        for result in results:
            events = list(result.receipt.events)
            sold = {dict(e.fields)["serial"]: dict(e.fields) for e in events if e.name == "SideSold"}
            for i, e in enumerate(events):
                f = dict(e.fields)
                key = (e.contract, e.name)
                if key == ("fiat", "Minted"):
                    self.say(f"   the bank issues {chf(f['amount'])} to {self.label(f['to'])} against a deposit")
                elif key == ("fiat", "Transferred"):
                    fee = ""
                    if i + 1 < len(events) and events[i + 1].name == "FeePaid":
                        fee = f" (+ {chf(dict(events[i + 1].fields)['amount'])} fee to the bank)"
                    self.say(f"   {self.label(f['frm'])} paid {self.label(f['to'])} {chf(f['amount'])}{fee}: "
                             f"{self._why(f, sold)}")
                elif key == ("settlement", "Postponed"):
                    self.say(f"   {self.label(f['payer'])} cannot pay {self.label(f['payee'])} {chf(f['amount'])}: "
                             f"postponed as obligation #{f['id']}")
                elif key == ("settlement", "ObligationCreated") and f["kind"] == "late_fee":
                    self.say(f"      plus a late fee of {chf(f['amount'])} owed to {self.label(f['payee'])}")
                elif key == ("settlement", "Defaulted"):
                    self.say(f"   {self.label(f['participant'])} is in default after {f['failures']} failed runs: "
                             "its collateral pays what it can")
                elif key == ("settlement", "DefaultCured"):
                    self.say(f"   {self.label(f['participant'])} paid everything: no longer in default")
                elif key == ("settlement", "RunFinished"):
                    self.say(f"   the run settled {f['paid']} pairs; {f['failed']} failed; "
                             f"{f['in_default']} participant(s) in default")

    def _why(self, f: dict, sold: dict) -> str:
        reason: str = f["reason"]
        head, _, rest = reason.partition(":")
        if head == "side_purchase":
            serial_text, _, side = rest.partition(":")
            serial = int(serial_text)
            deal = sold.get(serial)
            if deal is not None and deal["seller"] == f["frm"]:
                return f"the seller pays the buyer to take the {side} side of token #{serial} (a negative price)"
            return f"the {side} side of token #{serial}"
        if head == "collateral_deposit":
            return "collateral held in escrow by the settlement contract"
        if head == "escrow":
            oid = int(rest)
            ob = self.ledger.obligations.get(oid)
            debtor = self.label(ob[1]) if ob else "a defaulter"
            return f"taken from {debtor}'s collateral for its unpaid obligation #{oid}"
        if head == "settlement":
            return "settles " + self._netting(rest, f["frm"])
        return reason

    def _netting(self, items: str, payer: bytes) -> str:
        owed, back = [], []
        for item in items.split(","):
            kind, _, oid_text = item.partition("#")
            ob = self.ledger.obligations.get(int(oid_text))
            if ob is None:
                owed.append(item)
                continue
            what = OBLIGATION_KINDS.get(kind, kind)
            if kind == "face_value" and ob[4] in self.ledger.offsets:
                what = "imbalance energy"
            if ob[4] is not None:
                what += f" of token #{ob[4]}"
            entry = f"{what} {chf(ob[3])}"
            (owed if ob[1] == payer else back).append(entry)
        text = ", ".join(owed)
        if back:
            text += "; less what the payee owed it: " + ", ".join(back)
        return text

    def heading(self, text: str) -> None:
        """A numbered section of the story (numbers continue from ``first_section``)."""
        self.say(f"\n{self.section}. {text}")
        self.section += 1

    # ------------------------------------------------------------ the steps

    def admit_participants(self) -> None:
        self.heading("The grid operator admits the market's participants")
        results = self.send_all([
            ("grid_operator", "membership", "admit", (self.address[n].raw, roles, ref("legal:" + n), limit, rating))
            for n, roles, rating, limit in ADMISSIONS
        ])
        for (n, roles, rating, limit), r in zip(ADMISSIONS, results, strict=True):
            cap = f", position limit {wh(limit)}" if limit is not None else ""
            note = " (below 50: must post collateral to trade)" if rating < 50 else ""
            self.say(f"   {LABELS[n]:<20} {', '.join(roles):<9} rating {rating}{note}{cap}  [height {r.height}]")

    def register_meters(self) -> None:
        self.heading("The grid operator registers four meters; each owner attests its own")
        period = self.timing.period_s
        self.send_all([
            ("grid_operator", "meters", "register_meter",
             (self.address[m].raw, self.address[owner].raw, kind, cat, "loc:" + m, most * 3600 // period + 1, co2))
            for m, owner, kind, cat, most, co2 in METERS
        ])
        self.send_all([(owner, "meters", "attest_meter", (self.address[m].raw,)) for m, owner, *_ in METERS])
        for m, owner, kind, cat, most, co2 in METERS:
            what = f"{kind}, {cat}, {co2} g CO2/kWh" if kind == "production" else kind
            self.say(f"   {LABELS[m]:<20} of {LABELS[owner]:<19} {what}; at most {wh(most)} per period")

    def fund_accounts(self) -> None:
        self.heading("The bank mints tokenised francs against deposits; everyone lets settlement debit them")
        minted = self.send_all([
            ("bank", "fiat", "mint", (CURRENCY, self.address[n].raw, amount, ref("deposit:" + n))) for n, amount in MINTS
        ])
        self.tell(minted)
        spender = self.address["settlement_account"].raw
        self.send_all([(n, "fiat", "approve", (CURRENCY, spender, 10**12)) for n, _ in MINTS])
        self.say("   every participant approves the settlement contract as spender (allowance for settlement runs)")
        self.heading("Consumer 2 (rating 40) posts collateral before it may trade")
        self.tell([self.send("consumer2", "settlement", "deposit_collateral", CURRENCY, COLLATERAL)])

    def choose_first_period(self) -> int:
        """The first delivery period: the first whose gate closure leaves time to trade."""
        budget = self.trade_budget_s
        if budget is None:
            typical = sorted(self.latencies)[len(self.latencies) // 2] if self.latencies else 0.5
            budget = max(8.0, 12 * 1.5 * typical + 4.0)
        t = self.timing
        now = time.time()
        p = max(0, int((now + budget + t.gate_closure_lead_s - t.genesis_time) // t.period_s) + 1)
        self.first_period = p
        return p

    def emit_tokens(self) -> None:
        P, t = self.choose_first_period(), self.timing
        term = t.payment_term_s
        self.heading(f"Producers emit energy tokens for periods {P}..{P + 3} "
                     f"({clock(t.start(P))}-{clock(t.end(P + 3))}, gate closure {clock(t.gate_closure(P))})")

        def emit(who, first, last, energy, cat, co2, face, point=None, withdrawal=None):
            return (who, "energy_tokens", "emit", (first, last, energy, cat, co2, face, CURRENCY, term,
                                                   point, None, None, withdrawal, None))

        [s1] = self.send_all([emit("solar", P, P + 3, 40_000, "solar", 40, 12, self.address["meter_solar"].raw, [term, 2])])
        w1, w2 = self.send_all([emit("wind", P, P + 1, 30_000, "wind", 11, 10, self.address["meter_wind"].raw),
                                emit("wind", P + 2, P + 3, 30_000, "wind", 11, 10, self.address["meter_wind"].raw)])
        self.tokens.update(s1=s1.receipt.result, w1=w1.receipt.result, w2=w2.receipt.result)
        tk = self.tokens
        self.say(f"   token #{tk['s1']}: the solar producer, 40,000 Wh per period at the solar meter, face value 12/kWh, "
                 f"40 g CO2/kWh; the consumer may withdraw with {term} s notice for 2/kWh")
        self.say(f"   tokens #{tk['w1']} (periods {P}..{P + 1}) and #{tk['w2']} ({P + 2}..{P + 3}): the wind producer, "
                 "30,000 Wh per period at the wind meter, face value 10/kWh, 11 g CO2/kWh")

    def split_and_merge(self) -> None:
        self.heading("Tokens are reshaped: Wh and CO2 are conserved exactly")
        tk = self.tokens
        [split] = self.send_all([("solar", "energy_tokens", "split_volume", (tk["s1"], [25_000, 15_000]))])
        tk["s1a"], tk["s1b"] = split.receipt.result
        [merged] = self.send_all([("wind", "energy_tokens", "merge", ([tk["w1"], tk["w2"]],))])
        tk["w3"] = merged.receipt.result
        self.say(f"   the solar producer splits #{tk['s1']} into #{tk['s1a']} (25,000 Wh) and #{tk['s1b']} (15,000 Wh)")
        self.say(f"   the wind producer merges #{tk['w1']} and #{tk['w2']} into #{tk['w3']} (periods {self.P}..{self.P + 3})")

    def trade(self) -> None:
        self.heading("Trading: each side is offered at a price and bought atomically")
        tk, P, term = self.tokens, self.P, self.timing.payment_term_s
        self.send_all([("wind", "energy_tokens", "offer_side", (tk["w3"], "consumer", 600, CURRENCY)),
                       ("solar", "energy_tokens", "offer_side", (tk["s1a"], "consumer", 200, CURRENCY)),
                       ("solar", "energy_tokens", "offer_side", (tk["s1b"], "consumer", -50, CURRENCY))])
        self.say(f"   offers: #{tk['w3']} consumer side {chf(600)}; #{tk['s1a']} {chf(200)}; "
                 f"#{tk['s1b']} {chf(-50)} (the solar producer pays to place it)")
        bought, made = self.send_all([
            ("trader", "energy_tokens", "buy_side", (tk["w3"], "consumer", 600, CURRENCY, None)),
            ("trader", "energy_tokens", "emit", (P, P + 3, 30_000, "wind", 11, 13, CURRENCY, term, None, None, None, None, None)),
        ])
        tk["x"] = made.receipt.result
        self.say(f"   the trader buys the consumer side of wind token #{tk['w3']} and resells the energy as its own "
                 f"token #{tk['x']} (30,000 Wh per period, face value 13/kWh)")
        self.tell([bought])
        self.send("trader", "energy_tokens", "offer_side", tk["x"], "consumer", 0, CURRENCY)
        steps = [("consumer2", tk["x"], 0, "meter_c2"), ("consumer1", tk["s1a"], 200, "meter_c1"),
                 ("consumer2", tk["s1b"], -50, "meter_c2")]
        for who, serial, price, meter in steps:
            r = self.send(who, "energy_tokens", "buy_side", serial, "consumer", price, CURRENCY, self.address[meter].raw)
            self.say(f"   {LABELS[who]} buys the consumer side of #{serial} for delivery at {LABELS[meter]}")
            self.tell([r])
        left = self.timing.gate_closure(P) - time.time()
        self.say(f"   trading done {left:.0f} s before gate closure")

    def gate_closure(self) -> None:
        P = self.P
        self.heading(f"Gate closure of period {P}: every token of the story is frozen")
        self.wait_until(self.timing.gate_closure(P), f"gate closure of period {P}")
        r = self.send("consumer2", "energy_tokens", "offer_side", self.tokens["x"], "consumer", 100, CURRENCY,
                      expect_ok=False)
        if r.ok:
            raise StoryError(f"an offer of token #{self.tokens['x']} after gate closure was accepted")
        code, message = r.receipt.error
        self.frozen_refusal = message.split(":", 1)[0] if code == "contract_error" else code
        self.say(f"   consumer 2 tries to resell token #{self.tokens['x']}: refused ({self.frozen_refusal}); "
                 "nothing changed but its nonce")

    def deliver(self) -> None:
        P, t = self.P, self.timing
        self.heading(f"Delivery: each meter signs its readings for periods {P}..{P + 3}")
        self.wait_until(t.end(P + 3), f"the end of period {P + 3}")
        txs, names = [], []
        for meter, values in READINGS.items():
            account = self.accounts[meter]
            if account.next_nonce == 0:
                account.next_nonce = self.node.next_nonce(account.address)
            readings = [Reading(meter, P + i, e) for i, e in enumerate(values)]
            txs.append(build_submission(self.keys[meter], readings, chain_id=self.chain_id, nonce=account.next_nonce,
                                        gas_limit=GAS, expiry=2**63 - 1))
            account.next_nonce += 1
            names.append(meter)
        results = self.node.submit_many(txs, wait=True, timeout_s=30.0)
        for meter, tx, r in zip(names, txs, results, strict=True):
            if r.status == "pending":
                r = self._await(tx.tx_id)
            if not r.ok:
                raise StoryError(f"{meter}'s readings were not recorded: {r.status} {r.error or r.receipt.error}")
            self.ledger.results.append(r)
            self.say(f"   {LABELS[meter]:<20} " + " / ".join(f"{e:,}" for e in READINGS[meter]) + " Wh")

    def reconcile(self) -> None:
        P = self.P
        self.heading("Reconciliation: measured energy against the tokens, imbalances become offset tokens")
        kind = {self.address[m].raw: k for m, _, k, *_ in METERS}
        for i in range(4):
            offsets = []
            for r in self._until_done("reconciliation", "reconcile_period", P + i):
                for e in r.receipt.events:
                    f = dict(e.fields)
                    if e.name == "PeriodReconciled":
                        self.say(f"   period {f['period']}: VWAP {f['vwap']}/kWh, imbalance prices {f['price_low']} / "
                                 f"{f['price_high']}; balancing authority position {f['ba_position']:+,} Wh")
                    elif e.name == "OffsetCreated":
                        offsets.append(f)
            for f in offsets:
                imb = f["imbalance_wh"]
                production = kind.get(f["point"]) == "production"
                case = ("over-production" if imb > 0 else "under-production") if production else (
                    "under-consumption" if imb > 0 else "over-consumption")
                direction = "to the grid operator" if imb > 0 else "from the grid operator"
                self.say(f"      {LABELS.get(self.names.get(f['point']), 'a point')}: {case} of {wh(abs(imb))} "
                         f"-> offset token #{f['serial']} {direction} at {f['face_value']}/kWh")

    def charge_grid_fees(self) -> None:
        P = self.P
        self.heading("Grid fees: each period's transmission cost spread over final consumption; security of supply")
        for i, cost in enumerate(TRANSMISSION_COSTS):
            self._until_done("grid_fees", "publish_transmission_cost", P + i, cost)
            self.say(f"   period {P + i}: transmission cost {chf(cost)} allocated to the consumers' tokens pro rata")
        for r in self._until_done("grid_fees", "charge_security_of_supply", P, P + 3, SECURITY_OF_SUPPLY):
            for e in r.receipt.events:
                f = dict(e.fields)
                if e.name == "ObligationCreated" and f["kind"] == "security_of_supply":
                    self.say(f"   {self.label(f['payer'])} owes {self.label(f['payee'])} {chf(f['amount'])} "
                             "security of supply (pro rata to its consumption)")

    def settle(self) -> None:
        P, t = self.P, self.timing
        self.heading("Settlement: due tokens become obligations; each run nets them per pair and pays")
        self.wait_until(t.end(P + 3) + t.payment_term_s, "the payment term")
        self._run("run 1")
        self.wait_until(self._last_run_time + t.postpone_s, "the postponed obligations to fall due")
        self._run("run 2")
        self.heading("The grid operator suspends consumer 2; its open obligations are blocked")
        self.send("grid_operator", "membership", "suspend", self.address["consumer2"].raw)
        self.wait_until(self._last_run_time + t.postpone_s, "the next settlement run")
        self._run("run 3")

    def _run(self, what: str) -> None:
        results = self._until_done("settlement", "run_settlement")
        self._last_run_time = self.node.block(results[-1].height).header.time
        done = results[-1].receipt.result
        self.runs.append({"failed": done[1], "in_default": done[2], "height": results[-1].height})
        created = sum(1 for r in results for e in r.receipt.events if e.name == "ObligationCreated")
        self.say(f"   settlement {what} (height {results[-1].height}): {created} obligations created; "
                 "netted per pair and paid:")
        self.tell(results)

    def _until_done(self, contract: str, function: str, *args: Any) -> list[TxResult]:
        results = []
        for _ in range(100):
            r = self.send("grid_operator", contract, function, *args, 0)
            results.append(r)
            if r.receipt.result[0]:
                return results
        raise StoryError(f"{contract}.{function} did not finish in 100 transactions")

    # ------------------------------------------------------------ verified reads

    def read(self, contract: str, name: str, parts: Sequence[Any]) -> tuple[Any, StateRead]:
        """A value from the observer, verified against the genesis validators."""
        read = self.observer.read_state(contract, name, list(parts))
        return verify_read(read, self.validators, protocol=self.genesis.protocol), read

    def wait_observer(self, timeout_s: float = 60.0) -> int:
        """Wait until the observer holds every block the story committed; returns that height."""
        target = max(r.height for r in self.ledger.results)
        deadline = time.monotonic() + timeout_s
        while True:
            height = int(self.observer.status().get("height") or 0)
            if height >= target:
                self.final_height = target
                return height
            if time.monotonic() > deadline:
                raise StoryError(f"the observer is at height {height}, not {target}, after {timeout_s:.0f} s")
            time.sleep(0.2)

    def final_balances(self) -> dict[str, int]:
        """Every account's francs, read from the observer with proofs; printed as a table."""
        self.heading("The regulator reads the final balances from its own observer and verifies each one")
        self.wait_observer()
        balances, heights = {}, set()
        for name in (*NAMES, "settlement_account"):
            value, read = self.read("fiat", "balance", [CURRENCY, self.address[name].raw])
            if read.header.height < self.final_height:
                raise StoryError(f"the observer proved {name}'s balance at height {read.header.height}, "
                                 f"before the story's last block {self.final_height}")
            balances[name] = value or 0
            heights.add(read.header.height)
        supply, _ = self.read("fiat", "supply", [CURRENCY])
        for name, value in balances.items():
            if not name.startswith("meter_"):
                self.say(f"   {LABELS[name]:<24} {chf(value):>12}")
        self.say(f"   {'in circulation':<24} {chf(supply):>12}  (= the sum: {chf(sum(balances.values()))})")
        quorum = self.validators.bft_quorum if self.genesis.protocol == "bft" else self.validators.majority
        self.say(f"   each proven at height {min(heights)}..{max(heights)} by a certificate of the "
                 f"{self.validators.n} validators (quorum {quorum})")
        c2 = self.address["consumer2"].raw
        debt = 0
        for oid, ob in sorted(self.ledger.obligations.items()):
            if ob[1] == c2:
                record, _ = self.read("settlement", "obligation", [oid])
                if record is not None and record[7] == "open":
                    debt += record[4]
        self.say(f"   consumer 2 is suspended and in default; it still owes {chf(debt)}: the open obligations "
                 "stay on chain as evidence")
        return balances

    def run(self) -> dict[str, int]:
        """Every step in order; returns the final balances (verified reads from the observer)."""
        for step in (self.admit_participants, self.register_meters, self.fund_accounts, self.emit_tokens,
                     self.split_and_merge, self.trade, self.gate_closure, self.deliver, self.reconcile,
                     self.charge_grid_fees, self.settle):
            step()
        return self.final_balances()


# ---------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.market_story", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="devnet directory (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="leave the devnet running at the end")
    parser.add_argument("--period", type=int, default=4, help="elementary period in seconds (default 4)")
    args = parser.parse_args(argv)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gridledger-market-"))
    if (root / "devnet.json").exists():
        Devnet.load(root).stop()
        shutil.rmtree(root)
    started = time.monotonic()
    net = create_market_devnet(root, period_s=args.period, documented_order=True)
    try:
        print(f"gridledger: the energy market on a devnet of {len(net.validators())} validators and an observer "
              f"({root}); elementary period {args.period} s", flush=True)
        net.start()
        net.wait_ready()
        with MarketStory(net, say=lambda s: print(s, flush=True)) as story:
            story.run()
        print(f"\nthe story took {time.monotonic() - started:.0f} s", flush=True)
        return 0
    except (StoryError, ApiError, SystemExit) as exc:
        print(f"\nthe story stopped: {exc}\nnode logs are in {root}/nodes/*/node.log", flush=True)
        return 1
    finally:
        if not args.keep:
            net.stop()
            if not args.dir:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
