"""A day of the energy market on one shard: ``python -m bench.market``.

In-process: the market's system contracts (genesis as a node applies it) run in the
real executor with the metered runtime, and every block is committed to the real LMDB
store (a temporary directory; state tree, block, receipts index, one durable write per
block). Transactions are signed beforehand and not verified again (a node verifies a
signature when it admits a transaction to its mempool, before execution), and there is
no consensus or network.

``--devnet`` plays the same day on a local devnet of real node processes (``cli.devnet``:
``--validators`` of ``--protocol``, LMDB with sync on, consensus, the node's admission
checks and signature verification), every transaction submitted over the HTTP API and
waited for until committed. Block time is the validators' clock there, so the
elementary period is ``--period`` seconds (the day's 96 periods take 96 x period) and
gate closure is one period ahead; the day's first period is placed after the time the
trading phase needs at the rate the set-up phase measured.

The day: ``--participants`` (producers 20 %, traders 10 %, consumers the rest; every
producer and consumer with one meter) trade ``--tokens`` energy tokens emitted by the
producers at their meters over 96 periods of 15 minutes (1 to 4 periods each); 80 % of
the consumer sides are sold to consumers at their meters, 10 % to traders, 10 % stay
unsold. Every meter signs a reading per period (``--reading-batch`` periods per
transaction, as the meter gateway batches them); 10 % of the readings deviate from the
schedule. Each period is reconciled and its transmission cost published in bounded
steps (``--step`` units of work per transaction), security of supply is charged for
the day, and one settlement run (in bounded steps) settles the day; 1 % of the
consumers are short of money.

Prints one JSON line: participants, tokens (including the offsets reconciliation
created), trades_per_s (purchases per second over the offer and purchase
transactions), readings_per_s, reconcile_s_per_period, settle_s, and figures that
explain them (transactions, blocks, the largest gas of one transaction, grid fees per
period, failed settlement pairs). Times are wall-clock seconds of execution plus
commit; the machine is shared, so compare ratios within a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict

from contracts.executor import BlockContext, Executor, apply_genesis
from contracts.runtime import gas as G
from contracts.runtime.engine import contract_address
from contracts.system.genesis import CurrencySpec, genesis_contracts
from ledger import codec
from ledger.block import Block, BlockHeader, receipts_root, tx_root
from ledger.crypto import PrivateKey
from ledger.statekeys import state_key
from ledger.store import Store
from ledger.tx import Transaction

SHARD = "ch/bench"
GENESIS_TIME = 1_767_225_600
PERIOD_S = 900
FIRST = 8  # the day's first period (after the gate closure of the trading phase)
PERIODS = 96
TX_GAS = G.MAX_TX_GAS
BLOCK_TXS = 500
# Gas of emitting, offering and buying one token (measured: ~89k, ~26k, ~113k), to place
# the day after the trading phase on a devnet.
TRADE_GAS_PER_TOKEN = 230_000


def bench_keys(names: list[str]) -> dict[str, PrivateKey]:
    return {n: PrivateKey(hashlib.sha256(b"gridledger/bench-market/" + n.encode()).digest()) for n in names}


class BenchChain:
    """One shard: executor, LMDB store, block time, nonces."""

    def __init__(self, path: str, names: list[str], params: dict) -> None:
        self.keys = bench_keys(names)
        self.genesis_time = GENESIS_TIME
        self.period_s = PERIOD_S
        self.store = Store.open(path, SHARD)
        self.executor = Executor()
        self.height = 0
        self.time = GENESIS_TIME
        self.nonces: dict[str, int] = defaultdict(int)
        self.prev_hash = bytes(32)
        self.txs = 0
        self.max_gas = 0
        self.gas_by_function: dict[str, int] = defaultdict(int)  # the largest gas of one transaction
        a = self.addr
        contracts = genesis_contracts(
            a("grid_operator"), a("co2_authority"), [CurrencySpec("CHF", a("bank"), "bps", 10)], GENESIS_TIME,
            params=params,
        )
        result = apply_genesis(self.store, BlockContext(SHARD, 0, GENESIS_TIME), contracts=contracts, executor=self.executor)
        self._commit(0, result.writes, [], [])

    def addr(self, name: str) -> bytes:
        return self.keys[name].address.raw

    def tx(self, name: str, contract: str, function: str, *args) -> Transaction:
        nonce = self.nonces[name]
        self.nonces[name] = nonce + 1
        return Transaction.create(self.keys[name], chain_id=SHARD, nonce=nonce, contract=contract, function=function, args=list(args), gas_limit=TX_GAS)

    def _commit(self, height: int, writes: dict, txs: list, receipts: list) -> None:
        prepared = self.store.prepare_state(writes)
        encoded = [r.encode() for r in receipts]
        header = BlockHeader(SHARD, height, self.prev_hash, tx_root([t.encode() for t in txs]), prepared.root,
                             receipts_root(encoded), self.time, b"", bytes(32))
        block = Block(header, tuple(txs))
        self.store.apply_block(height, block.hash, block.encode(), None, prepared, [(t.tx_id, e) for t, e in zip(txs, encoded, strict=True)])
        self.prev_hash = block.hash

    def run(self, txs: list[Transaction], *, must_succeed: bool = True) -> list:
        """Execute ``txs`` in blocks of BLOCK_TXS and commit each; returns the receipts."""
        receipts = []
        for i in range(0, len(txs), BLOCK_TXS):
            chunk = txs[i:i + BLOCK_TXS]
            self.height += 1
            result = self.executor.execute_block(self.store, BlockContext(SHARD, self.height, self.time), chunk)
            self._commit(self.height, result.writes, chunk, list(result.receipts))
            for t, r in zip(chunk, result.receipts, strict=True):
                if must_succeed and not r.ok:
                    raise RuntimeError(f"{t.contract}.{t.function} failed: {r.error}")
                self.max_gas = max(self.max_gas, r.gas_used)
                name = f"{t.contract}.{t.function}"
                self.gas_by_function[name] = max(self.gas_by_function[name], r.gas_used)
            receipts.extend(result.receipts)
            self.txs += len(chunk)
        return receipts

    def view(self, contract: str, function: str, *args):
        return self.executor.query(self.store, BlockContext(SHARD, self.height + 1, self.time), contract, function, list(args))

    def read(self, contract: str, name: str, *parts):
        """A contract's stored value (None when absent: the declaration's default applies)."""
        raw = self.store.get(state_key(contract, name, list(parts)))
        return None if raw is None else codec.decode(raw, allow_maps=True)

    def first_period(self, coming_gas: int) -> int:
        """The day's first period: block time here is the bench's, so a fixed one."""
        return FIRST

    def reach(self, t: int) -> None:
        """Let block time reach ``t`` (here: the next block's time)."""
        self.time = max(self.time, t)

    def close(self) -> None:
        self.store.close()

    def until_done(self, contract: str, function: str, *args) -> int:
        """A bounded-step function of the grid operator, one transaction per block; returns the steps."""
        for steps in range(1, 1_000_000):
            (receipt,) = self.run([self.tx("grid_operator", contract, function, *args)], must_succeed=False)
            if not receipt.ok:
                progress = self.view("settlement", "run_progress") if contract == "settlement" else None
                raise RuntimeError(f"{contract}.{function} step {steps} failed: {receipt.error}; progress {progress}")
            if receipt.result[0]:
                return steps
        raise RuntimeError("never finished")


def note(start: float, what: str) -> None:
    print(f"[{time.perf_counter() - start:8.1f} s] {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--reading-batch", type=int, default=4, help="periods per reading transaction")
    ap.add_argument("--step", type=int, default=200, help="max_work per reconciliation/fee/settlement transaction")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--devnet", action="store_true", help="play the day on a devnet of real node processes")
    ap.add_argument("--protocol", choices=("bft", "raft"), default="bft", help="--devnet: consensus protocol")
    ap.add_argument("--validators", type=int, default=4, help="--devnet: validators")
    ap.add_argument("--period", type=int, default=4, help="--devnet: seconds per elementary period")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    n_prod = max(1, args.participants * 2 // 10)
    n_trad = max(1, args.participants // 10)
    n_cons = max(1, args.participants - n_prod - n_trad)
    producers = [f"p{i}" for i in range(n_prod)]
    traders = [f"t{i}" for i in range(n_trad)]
    consumers = [f"c{i}" for i in range(n_cons)]
    meters = {n: "m_" + n for n in producers + consumers}
    names = ["grid_operator", "bank", "co2_authority", *producers, *traders, *consumers, *meters.values()]
    tmp = tempfile.mkdtemp(prefix="bench-market-")
    figures: dict = {}
    begin = time.perf_counter()
    chain = None
    try:
        if args.devnet:
            from bench.market_devnet import DevnetChain

            params = {"period_s": args.period, "gate_closure_lead_s": args.period, "postpone_s": 3600, "rating_threshold": 0}
            chain = DevnetChain(tmp, names, params, protocol=args.protocol, validators=args.validators, note=lambda w: note(begin, w))
            figures.update(mode="devnet", protocol=args.protocol, validators=args.validators, period_s=args.period)
        else:
            params = {"period_s": PERIOD_S, "gate_closure_lead_s": 3600, "postpone_s": 3600, "rating_threshold": 0}
            chain = BenchChain(tmp, names, params)
            figures.update(mode="in-process")
        a = chain.addr
        settlement_account = contract_address("settlement")
        categories = ("solar", "wind", "hydro", "biomass")
        cap_w = 1_000_000 * 3600 // chain.period_s  # 1,000 kWh per period: room for any schedule of the day
        # ---- admission, meters, money
        chain.run([chain.tx("grid_operator", "membership", "admit", a(n), [role], hashlib.sha256(n.encode()).digest(), None, 80)
                   for role, group in (("producer", producers), ("trader", traders), ("consumer", consumers)) for n in group])
        chain.run([chain.tx("grid_operator", "meters", "register_meter", a(m), a(n), "production" if n in producers else "consumption",
                            categories[i % 4] if n in producers else "other", f"loc:{m}", cap_w, 20)
                   for i, (n, m) in enumerate(meters.items())])
        chain.run([chain.tx(n, "meters", "attest_meter", a(m)) for n, m in meters.items()])
        short = set(rng.sample(consumers, max(1, n_cons // 100)))
        chain.run([chain.tx("bank", "fiat", "mint", "CHF", a(n), 10**9, hashlib.sha256(b"deposit" + n.encode()).digest())
                   for n in ["grid_operator", *producers, *traders, *consumers]])
        chain.run([chain.tx(n, "fiat", "approve", "CHF", settlement_account, 10**12) for n in ["grid_operator", *producers, *traders, *consumers]])
        note(begin, f"{len(names)} accounts admitted, metered and funded")
        # ---- emission and trading (before the gate closure of the first period)
        # every token's sides are offered and bought before the gate closure of its first period
        first_p = chain.first_period(args.tokens * TRADE_GAS_PER_TOKEN)
        plan = []
        schedule: dict = defaultdict(int)  # (meter, period) -> scheduled Wh
        for i in range(args.tokens):
            who = producers[i % n_prod]
            first = first_p + rng.randrange(PERIODS)
            last = min(first_p + PERIODS - 1, first + rng.randrange(4))
            wh = rng.randrange(1, 50) * 100
            plan.append((who, first, last, wh, categories[producers.index(who) % 4], rng.randrange(5, 30)))
        emits = [chain.tx(who, "energy_tokens", "emit", first, last, wh, cat, 20, face, "CHF", 0, a(meters[who]), None, None, None, None)
                 for who, first, last, wh, cat, face in plan]
        serials = [r.result for r in chain.run(emits)]
        note(begin, f"{len(serials)} tokens emitted")
        offers, buys = [], []
        for serial, (who, first, last, wh, _, _) in zip(serials, plan, strict=True):
            for p in range(first, last + 1):
                schedule[(meters[who], p)] += wh
            roll = rng.random()
            if roll < 0.9:
                buyer = rng.choice(consumers) if roll < 0.8 else rng.choice(traders)
                price = rng.randrange(0, 200)
                offers.append(chain.tx(who, "energy_tokens", "offer_side", serial, "consumer", price, "CHF"))
                point = a(meters[buyer]) if buyer in meters else None
                buys.append(chain.tx(buyer, "energy_tokens", "buy_side", serial, "consumer", price, "CHF", point))
                if buyer in meters:
                    for p in range(first, last + 1):
                        schedule[(meters[buyer], p)] += wh
        t0 = time.perf_counter()
        chain.run(offers)
        chain.run(buys)
        trade_s = time.perf_counter() - t0
        figures["trades"] = len(buys)
        note(begin, f"{len(buys)} trades in {trade_s:.1f} s")
        # the short consumers spend what they hold before settlement
        chain.run([chain.tx(n, "fiat", "transfer", "CHF", a(traders[0]), (chain.read("fiat", "balance", "CHF", a(n)) or 0) * 9 // 10)
                   for n in sorted(short)])
        # ---- delivery: readings in batches, each period reconciled and published
        readings = 0
        reading_s = reconcile_s = fees_s = 0.0
        batch = max(1, args.reading_batch)
        for start in range(first_p, first_p + PERIODS, batch):
            periods = list(range(start, min(start + batch, first_p + PERIODS)))
            chain.reach(chain.genesis_time + (periods[-1] + 1) * chain.period_s)
            txs = []
            for m in meters.values():
                values = []
                for p in periods:
                    wh = schedule.get((m, p), 0)
                    if rng.random() < 0.1:
                        wh = max(0, wh + rng.randrange(-2_000, 2_001, 100))
                    values.append([p, wh, 0])
                txs.append(chain.tx(m, "meters", "submit_readings", values))
                readings += len(values)
            t0 = time.perf_counter()
            chain.run(txs)
            reading_s += time.perf_counter() - t0
            for p in periods:
                t0 = time.perf_counter()
                chain.until_done("reconciliation", "reconcile_period", p, args.step)
                t1 = time.perf_counter()
                cost = rng.randrange(50_000, 150_000)
                if any(schedule.get((meters[c], p)) for c in consumers):  # no delivery, nothing to allocate
                    chain.until_done("grid_fees", "publish_transmission_cost", p, cost, args.step)
                reconcile_s += t1 - t0
                fees_s += time.perf_counter() - t1
            note(begin, f"periods up to {periods[-1]}: {readings} readings ({reading_s:.1f} s), reconciliation {reconcile_s:.1f} s, fees {fees_s:.1f} s")
        t0 = time.perf_counter()
        chain.until_done("grid_fees", "charge_security_of_supply", first_p, first_p + PERIODS - 1, 1_000_000, args.step)
        sos_s = time.perf_counter() - t0
        note(begin, f"security of supply charged in {sos_s:.1f} s")
        # ---- settlement of the day
        t0 = time.perf_counter()
        settle_steps = chain.until_done("settlement", "run_settlement", args.step)
        settle_s = time.perf_counter() - t0
        note(begin, f"settled in {settle_s:.1f} s ({settle_steps} steps)")
        obligations = (chain.read("settlement", "next_obligation") or 1) - 1
        tokens = (chain.read("energy_tokens", "next_serial_value") or 1) - 1
        in_default = chain.read("settlement", "defaulters") or []
        figures.update(
            participants=args.participants,
            tokens=tokens,
            trades_per_s=round(len(buys) / trade_s, 1),
            readings_per_s=round(readings / reading_s, 1),
            reconcile_s_per_period=round(reconcile_s / PERIODS, 4),
            settle_s=round(settle_s, 3),
            meters=len(meters),
            readings=readings,
            fees_s_per_period=round(fees_s / PERIODS, 4),
            security_of_supply_s=round(sos_s, 3),
            settle_steps=settle_steps,
            obligations=obligations,
            short_consumers=len(short),
            in_default=len(in_default),
            transactions=chain.txs,
            blocks=chain.height,
            max_tx_gas=chain.max_gas,
        )
        print("largest gas per function: " + json.dumps(dict(sorted(chain.gas_by_function.items()))), file=sys.stderr)
    finally:
        if chain is not None:
            chain.close()
        shutil.rmtree(tmp, ignore_errors=True)
    order = ["participants", "tokens", "trades_per_s", "readings_per_s", "reconcile_s_per_period", "settle_s"]
    out = {k: figures[k] for k in order} | {k: v for k, v in figures.items() if k not in order}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
