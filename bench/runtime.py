"""Token transfers: plain Python vs. the contract runtime, unmetered and metered.

    .venv/bin/python -m bench.runtime [--calls N]

One line of JSON: ``plain_calls_per_s`` (the transfer as a Python function on a
dict, the reference), ``unmetered_calls_per_s`` (the same transfer as a contract in
the runtime, against the state overlays, with gas accounting off: no charges and no
size-checking helpers), ``metered_calls_per_s`` (the runtime as validators run it),
and ``metering_overhead_ratio`` = unmetered / metered.

A runtime call is what the executor does for a transaction minus nonce and gas
bookkeeping: start a transaction layer, check the arguments, run ``transfer`` (two
storage reads, two writes, one event), encode the result, and commit the layer into
the block's overlay. Every block of 1,000 calls starts a fresh block overlay over a
state of 1,000 funded accounts. The three measurements alternate in rounds and the
best round of each counts, because this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import time

from contracts.runtime.engine import BlockContext, Runtime
from contracts.runtime.storage import BlockState
from ledger import codec
from ledger.statekeys import state_key

TOKEN = '''"""A fungible token: the benchmark's transfer."""
balances = Map(default=0)
Transfer = Event("sender", "to", "amount", indexed=["sender", "to"])


@export
def transfer(to: Address, amount: int) -> bool:
    require(amount > 0, "amount must be positive")
    sender = ctx.sender
    balance = balances[sender]
    require(balance >= amount, "insufficient balance")
    balances[sender] = balance - amount
    balances[to] = balances[to] + amount
    Transfer.emit(sender=sender, to=to, amount=amount)
    return True
'''

ACCOUNTS = 1000
BLOCK = 1000


class DictReader:
    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


def _accounts() -> list[bytes]:
    return [i.to_bytes(20, "big") for i in range(1, ACCOUNTS + 1)]


def _plan(n: int) -> list[tuple[bytes, bytes]]:
    accounts = _accounts()
    return [(accounts[i % ACCOUNTS], accounts[(i * 7 + 3) % ACCOUNTS]) for i in range(n)]


def bench_plain(plan: list[tuple[bytes, bytes]]) -> float:
    balances = {a: 10**12 for a in _accounts()}
    events = []

    def transfer(sender: bytes, to: bytes, amount: int) -> bool:
        if amount <= 0:
            raise ValueError("amount must be positive")
        balance = balances.get(sender, 0)
        if balance < amount:
            raise ValueError("insufficient balance")
        balances[sender] = balance - amount
        balances[to] = balances.get(to, 0) + amount
        events.append(("Transfer", sender, to, amount))
        return True

    start = time.perf_counter()
    for sender, to in plan:
        transfer(sender, to, 5)
    return len(plan) / (time.perf_counter() - start)


def _runtime(metered: bool) -> tuple[Runtime, DictReader]:
    runtime = Runtime(metered=metered)
    state: dict[bytes, bytes] = {}
    reader = DictReader(state)
    block = BlockState(reader)
    runtime.begin(block, BlockContext("bench", 0, 0), bytes(20), bytes(32), 50_000_000)
    runtime.deploy("token", TOKEN, [], bytes(20))
    writes, _ = runtime.finish()
    state.update({k: v for k, v in writes.items() if v is not None})
    for account in _accounts():
        state[state_key("token", "balances", [account])] = codec.encode(10**12)
    return runtime, reader


def bench_runtime(runtime: Runtime, reader: DictReader, plan: list[tuple[bytes, bytes]]) -> float:
    context = BlockContext("bench", 1, 1_700_000_000)
    tx_hash = bytes(32)
    start = time.perf_counter()
    block = BlockState(reader)
    for i, (sender, to) in enumerate(plan):
        if i % BLOCK == 0:
            block = BlockState(reader)
        runtime.begin(block, context, sender, tx_hash, 1_000_000)
        result = runtime.call_from_transaction("token", "transfer", (to, 5))
        writes, events = runtime.finish()
        block.writes.update(writes)
        if result is not True or len(events) != 1:
            raise AssertionError("transfer failed in the benchmark")
    return len(plan) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per measurement round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plan = _plan(args.calls)
    unmetered = _runtime(False)
    metered = _runtime(True)
    best = {"plain": 0.0, "unmetered": 0.0, "metered": 0.0}
    bench_runtime(*unmetered, plan[:2000])  # warm caches
    bench_runtime(*metered, plan[:2000])
    for _ in range(args.rounds):
        best["plain"] = max(best["plain"], bench_plain(plan))
        best["unmetered"] = max(best["unmetered"], bench_runtime(*unmetered, plan))
        best["metered"] = max(best["metered"], bench_runtime(*metered, plan))
    print(
        json.dumps(
            {
                "plain_calls_per_s": round(best["plain"]),
                "unmetered_calls_per_s": round(best["unmetered"]),
                "metered_calls_per_s": round(best["metered"]),
                "metering_overhead_ratio": round(best["unmetered"] / best["metered"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
