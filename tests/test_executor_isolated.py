"""Defence in depth: blocks executed in a child process under rlimits.

The limits protect the node and never decide an outcome: hitting one raises
ExecutorUnavailable (no receipt), and the next block runs in a fresh worker.
"""

from __future__ import annotations

import time

import pytest

from contracts.executor import BlockContext, Executor, GenesisContract, apply_genesis
from contracts.runtime.worker import ExecutorUnavailable, IsolatedExecutor
from ledger.crypto import PrivateKey
from ledger.tx import Transaction

SHARD = "ch/test"
KEY = PrivateKey(bytes([5]) * 32)
TOKEN = '''
balances = Map(default=0)


@constructor
def setup():
    balances[ctx.sender] = 10 ** 6


@export
def transfer(to: Address, amount: int) -> int:
    require(balances[ctx.sender] >= amount, "insufficient balance")
    balances[ctx.sender] -= amount
    balances[to] += amount
    return balances[to]


@export
def spin() -> int:
    while True:
        pass
    return 0
'''


class DictReader:
    def __init__(self, data: dict) -> None:
        self.data = data
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.data.get(key)


@pytest.fixture(scope="module")
def state() -> dict:
    data: dict = {}
    genesis = apply_genesis(
        DictReader(data), BlockContext(SHARD, 0, 0), deployers=[KEY.address.raw],
        contracts=[GenesisContract("token", TOKEN, (), KEY.address.raw)],
    )
    data.update({k: v for k, v in genesis.writes.items() if v is not None})
    return data


def block(n: int, start: int = 0) -> list[Transaction]:
    txs = [Transaction(SHARD, KEY.public_key.raw, start + i, "token", "transfer", (bytes([i % 7]) * 20, 3), 200_000, 10**6, bytes(64)) for i in range(n)]
    txs.append(Transaction(SHARD, KEY.public_key.raw, start + n, "token", "spin", (), 100_000, 10**6, bytes(64)))
    return txs


@pytest.fixture
def isolated():
    executor = IsolatedExecutor(memory_limit=1 << 30, cpu_seconds_per_block=20, wall_seconds_per_block=60)
    yield executor
    executor.close()


def test_isolated_execution_gives_the_same_result_as_in_process(state, isolated):
    txs = block(40)
    reader = DictReader(state)
    remote = isolated.execute_block(reader, BlockContext(SHARD, 1, 10), txs)
    local = Executor().execute_block(DictReader(state), BlockContext(SHARD, 1, 10), txs)
    assert remote == local
    assert remote.receipts[-1].error[0] == "out_of_gas"
    assert reader.reads > 0  # the child read state through the parent


def test_a_memory_limit_hit_is_not_an_outcome_and_the_worker_restarts(state, isolated):
    first = isolated.probe("sleep", 0)
    assert first == 0
    pid = isolated.pid
    with pytest.raises(ExecutorUnavailable, match="memory"):
        isolated.probe("memory", 2 << 30)
    result = isolated.execute_block(DictReader(state), BlockContext(SHARD, 1, 10), block(3))
    assert result.receipts[0].ok and isolated.pid != pid


def test_the_wall_clock_limit_kills_a_stuck_worker(state, isolated):
    isolated.wall_seconds = 1.0
    started = time.monotonic()
    with pytest.raises(ExecutorUnavailable, match="wall-clock"):
        isolated.probe("sleep", 30)
    assert time.monotonic() - started < 10
    isolated.wall_seconds = 60.0
    assert isolated.execute_block(DictReader(state), BlockContext(SHARD, 1, 10), block(2)).receipts[0].ok


@pytest.mark.slow
def test_the_cpu_limit_kills_a_spinning_worker():
    with IsolatedExecutor(cpu_seconds_per_block=1, wall_seconds_per_block=60) as isolated:
        started = time.monotonic()
        with pytest.raises(ExecutorUnavailable, match="died"):
            isolated.probe("cpu")
        assert time.monotonic() - started < 30
