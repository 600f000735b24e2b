"""The market day of ``bench.market`` on a devnet of real node processes (``--devnet``).

:class:`DevnetChain` offers the day the same calls as the in-process chain (``tx``,
``run``, ``until_done``, ``read``, ``first_period``, ``reach``), carried out over the
public API of a local devnet: every transaction is signed here, admitted by a validator
(signature, nonce, membership and role checks), ordered by consensus, executed and
committed by every validator, and waited for until committed. The grid operator, the
bank and the CO2 authority are genesis accounts; every other participant is admitted by
the grid operator during the day, as on a real shard.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.market import SHARD, TX_GAS, bench_keys
from ledger.httpclient import SyncClient, TxResult
from ledger.tx import Receipt, Transaction

__all__ = ["DevnetChain"]

# Transactions in flight per sender and per request: under the mempool's per-sender cap
# and nonce window (1,000 each by default), and a request body well under the API's limit.
PER_SENDER = 400
PER_REQUEST = 500
COMMIT_WAIT_S = 120.0


class DevnetChain:
    """One shard as a devnet; see the module docstring."""

    def __init__(self, root: str, names: list[str], params: dict, *, protocol: str, validators: int,
                 note: Callable[[str], None]) -> None:
        from cli.devnet import Devnet

        self.keys = bench_keys(names)
        self.period_s = params["period_s"]
        self.note = note
        founders = {"grid_operator": ["grid_operator"], "bank": ["bank"], "co2_authority": ["co2_authority"]}
        self.net = Devnet.create(
            Path(root) / "net", validators=validators, observers=0, protocol=protocol, chain_id=SHARD,
            accounts=founders, params={"period_seconds": self.period_s}, market=True, market_params=params,
            currency_fee=("bps", 10), account_keys={n: self.keys[n] for n in founders},
        )
        self.genesis_time = int(json.loads((self.net.root / "genesis.json").read_text())["genesis_time"])
        self.net.start()
        self.net.wait_ready(120)
        self.clients = [SyncClient(v.url, timeout=COMMIT_WAIT_S + 30) for v in self.net.validators()]
        self.nonces: dict[str, int] = defaultdict(int)
        self.txs = 0
        self.height = 0
        self.max_gas = 0
        self.gas_total = 0
        self.gas_by_function: dict[str, int] = defaultdict(int)
        self.started = time.monotonic()
        self.busy_s = 0.0  # wall-clock seconds spent waiting for committed transactions

    def addr(self, name: str) -> bytes:
        return self.keys[name].address.raw

    def tx(self, name: str, contract: str, function: str, *args) -> Transaction:
        nonce = self.nonces[name]
        self.nonces[name] = nonce + 1
        return Transaction.create(self.keys[name], chain_id=SHARD, nonce=nonce, contract=contract, function=function,
                                  args=list(args), gas_limit=TX_GAS)

    # ------------------------------------------------------------------ submitting

    def _rounds(self, txs: list[Transaction]) -> list[list[int]]:
        """Indexes of ``txs`` in rounds with at most PER_SENDER of one sender each (in nonce order)."""
        rounds: list[list[int]] = []
        seen: dict[bytes, int] = defaultdict(int)
        for i, t in enumerate(txs):
            k = seen[t.sender] // PER_SENDER
            seen[t.sender] += 1
            while len(rounds) <= k:
                rounds.append([])
            rounds[k].append(i)
        return rounds

    def run(self, txs: list[Transaction], *, must_succeed: bool = True) -> list[Receipt]:
        """Submit ``txs``, wait until every one is committed; returns the receipts in order."""
        t0 = time.monotonic()
        results: list[TxResult | None] = [None] * len(txs)
        for round_ in self._rounds(txs):
            for j in range(0, len(round_), PER_REQUEST):
                part = round_[j:j + PER_REQUEST]
                client = self.clients[(j // PER_REQUEST) % len(self.clients)]
                answers = client.submit_many([txs[i] for i in part], wait=False)
                for i, answer in zip(part, answers, strict=True):
                    if answer.status == "rejected":
                        raise RuntimeError(f"{txs[i].contract}.{txs[i].function} refused at admission: {answer.error}")
            client = self.clients[0]
            for i in round_:
                results[i] = self._await(client, txs[i])
        self.busy_s += time.monotonic() - t0
        receipts = []
        for t, r in zip(txs, results, strict=True):
            assert r is not None and r.receipt is not None
            receipt = r.receipt
            if must_succeed and not receipt.ok:
                raise RuntimeError(f"{t.contract}.{t.function} failed: {receipt.error}")
            self.max_gas = max(self.max_gas, receipt.gas_used)
            self.gas_total += receipt.gas_used
            name = f"{t.contract}.{t.function}"
            self.gas_by_function[name] = max(self.gas_by_function[name], receipt.gas_used)
            self.height = max(self.height, r.height or 0)
            receipts.append(receipt)
        self.txs += len(txs)
        return receipts

    def _await(self, client: SyncClient, t: Transaction) -> TxResult:
        deadline = time.monotonic() + COMMIT_WAIT_S
        delay = 0.05
        while True:
            result = client.tx(t.tx_id)
            if result.status == "committed":
                return result
            if result.status == "rejected":
                raise RuntimeError(f"{t.contract}.{t.function} rejected: {result.error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{t.contract}.{t.function} not committed within {COMMIT_WAIT_S:.0f} s ({result.status})")
            time.sleep(delay)
            delay = min(0.5, delay * 1.5)

    def until_done(self, contract: str, function: str, *args) -> int:
        """A bounded-step function of the grid operator, one transaction at a time; returns the steps."""
        for steps in range(1, 1_000_000):
            (receipt,) = self.run([self.tx("grid_operator", contract, function, *args)], must_succeed=False)
            if not receipt.ok:
                raise RuntimeError(f"{contract}.{function} step {steps} failed: {receipt.error}")
            if receipt.result[0]:
                return steps
        raise RuntimeError("never finished")

    # ------------------------------------------------------------------ reading and time

    def read(self, contract: str, name: str, *parts):
        return self.clients[0].state(contract, name, list(parts))

    def first_period(self, coming_gas: int) -> int:
        """The first period whose gate closes after ``coming_gas`` more gas of transactions,
        with a margin of twice that, at the gas rate measured so far."""
        rate = self.gas_total / max(self.busy_s, 1e-3)
        needed_s = coming_gas / max(rate, 1.0) * 2 + 20
        start = time.time() + needed_s + self.period_s  # gate closure: one period ahead
        first = math.ceil((start - self.genesis_time) / self.period_s)
        self.note(f"measured {rate / 1e6:.1f} Mgas/s; the day starts at period {first}, in {needed_s:.0f} s")
        return first

    def reach(self, t: int) -> None:
        """Wait until the validators' block time is past ``t`` (their clocks are this machine's)."""
        left = t + 1 - time.time()
        if left > 0:
            time.sleep(left)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.net.stop()
