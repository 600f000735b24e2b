"""The hostile suite: every contract in tests/hostile/ gets exactly its stated outcome.

See tests/hostile/README.md for the header format. Each contract is deployed by a
transaction (so a refusal is a receipt, as on a real chain) next to the fixture
contract ``victim``, then ``main`` (or the function its header names) is called by
a second transaction. Besides the stated outcome, every case proves isolation: no
write ever touches another contract's storage, and a refused or failed transaction
writes nothing but the sender's nonce and gas account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.executor import (
    BlockContext,
    Executor,
    GenesisContract,
    apply_genesis,
    gas_used_key,
    nonce_key,
)
from contracts.runtime.engine import contract_address
from contracts.runtime.gas import MAX_TX_GAS
from ledger import codec
from ledger.crypto import PrivateKey
from ledger.statekeys import split_state_key, state_key
from ledger.tx import Transaction

HOSTILE = Path(__file__).parent / "hostile"
SHARD = "ch/test"
DEPLOY_GAS = MAX_TX_GAS
CALL_GAS = 2_000_000

VICTIM = (HOSTILE / "victim.source").read_text()


@dataclass(frozen=True)
class Expectation:
    outcome: str  # "rejected", "ok", or a receipt error code
    rule: str | None
    result: object
    call: str
    rolled_back: bool


def expectation(text: str) -> Expectation:
    header = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(":")
        header[key.strip()] = value.strip()
    expect = header["expect"]
    outcome, _, rest = expect.partition(" ")
    rule = rest.split("=", 1)[1] if outcome == "rejected" else None
    result = json.loads(rest.split("=", 1)[1]) if outcome == "ok" and rest else None
    return Expectation(outcome, rule, result, header.get("call", "main"), header.get("rolled-back") == "yes")


class DictReader:
    def __init__(self, data: dict) -> None:
        self.data = data

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


@pytest.fixture(scope="module")
def world():
    key = PrivateKey(bytes(range(32)))
    executor = Executor()
    state: dict[bytes, bytes] = {}
    funded = [key.address.raw, contract_address("hostile")]
    genesis = apply_genesis(
        DictReader(state),
        BlockContext(SHARD, 0, 1_767_225_600),
        deployers=[key.address.raw],
        contracts=[GenesisContract("victim", VICTIM, (funded,), key.address.raw)],
        executor=executor,
    )
    state.update({k: v for k, v in genesis.writes.items() if v is not None})
    return key, executor, state


def _tx(key: PrivateKey, nonce: int, contract: str, function: str, args: tuple, gas: int) -> Transaction:
    # Signatures are the node's business (the executor does not re-check by default).
    return Transaction(SHARD, key.public_key.raw, nonce, contract, function, args, gas, 10**6, bytes(64))


def _only_accounting(writes: dict, address: bytes) -> bool:
    return set(writes) <= {nonce_key(address), gas_used_key(address)}


def _contracts_written(writes: dict) -> set[str]:
    return {split_state_key(k)[0] for k in writes}


CASES = sorted(HOSTILE.glob("*.contract"))


def test_suite_has_at_least_sixty_hostile_contracts():
    assert len(CASES) >= 60


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hostile_contract_gets_its_stated_outcome(path: Path, world) -> None:
    key, executor, genesis_state = world
    source = path.read_text()
    expect = expectation(source)
    address = key.address.raw
    state = dict(genesis_state)
    victim_before = {k: v for k, v in state.items() if split_state_key(k)[0] == "victim"}

    deploy = executor.execute_block(
        DictReader(state), BlockContext(SHARD, 1, 1_767_225_700), [_tx(key, 0, "system", "deploy", ("hostile", source), DEPLOY_GAS)]
    )
    receipt = deploy.receipts[0]
    if expect.outcome == "rejected":
        assert not receipt.ok, f"{path.name} was deployed but must be rejected"
        code, message = receipt.error
        assert code == "rejected", receipt.error
        assert f"[{expect.rule}]" in message, message
        assert _only_accounting(deploy.writes, address), "a refused deployment wrote state"
        assert receipt.events == ()
        return
    assert receipt.ok, f"{path.name} must deploy: {receipt.error}"
    state.update({k: v for k, v in deploy.writes.items() if v is not None})

    block = executor.execute_block(
        DictReader(state), BlockContext(SHARD, 2, 1_767_225_800), [_tx(key, 1, "hostile", expect.call, (), CALL_GAS)]
    )
    receipt = block.receipts[0]
    assert 0 < receipt.gas_used <= CALL_GAS
    assert block.writes[nonce_key(address)] == codec.encode(2)
    assert _contracts_written(block.writes) <= {"hostile", "accounts"}, "wrote another contract's storage"
    if expect.outcome == "ok":
        assert receipt.ok, receipt.error
        assert receipt.result == expect.result
        return
    assert not receipt.ok, f"{path.name} must fail with {expect.outcome}, returned {receipt.result!r}"
    assert receipt.error[0] == expect.outcome, receipt.error
    assert expect.rolled_back, f"{path.name}: header must state rolled-back: yes"
    assert _only_accounting(block.writes, address), f"not rolled back: {sorted(_contracts_written(block.writes))}"
    assert receipt.events == ()
    assert receipt.result is None
    if expect.outcome == "out_of_gas":
        assert receipt.gas_used == CALL_GAS
    state.update({k: v for k, v in block.writes.items() if v is not None})
    assert {k: v for k, v in state.items() if split_state_key(k)[0] == "victim"} == victim_before


def test_victim_fixture_transfers_when_called_honestly(world) -> None:
    key, executor, genesis_state = world
    to = bytes(20)
    block = executor.execute_block(
        DictReader(dict(genesis_state)), BlockContext(SHARD, 1, 1), [_tx(key, 0, "victim", "transfer", (to, 7), CALL_GAS)]
    )
    assert block.receipts[0].ok, block.receipts[0].error
    assert block.writes[state_key("victim", "balances", [to])] == codec.encode(7)
