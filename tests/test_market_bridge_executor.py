"""The executor's hook for native modules (the node's ``bridge`` module runs on it).

A native module runs inside the transaction's own layer: its writes and events, and
those of the contracts it calls, stand or fall together; it is charged a fixed cost per
operation plus per argument byte plus what it touches; contracts see it as a caller
named after it.
"""

from __future__ import annotations

import pytest

from contracts.executor import (
    NATIVE_ARG_BYTE,
    BlockContext,
    Executor,
    GenesisContract,
    apply_genesis,
)
from contracts.runtime import gas as G
from contracts.runtime.engine import contract_address
from contracts.runtime.errors import ContractError
from ledger import codec
from ledger.crypto import PrivateKey
from ledger.statekeys import state_key
from ledger.tx import Transaction

SHARD = "ch/test"
ALICE = PrivateKey(bytes([3]) * 32)
PROBE = '''
from gridledger import Event, Map, ctx, export, require, view

seen = Map(default=None)
Called = Event("sender", "caller")


@export
def record(tag: str):
    """Remember who called."""
    seen[tag] = [ctx.sender, ctx.caller_contract, ctx.signer]
    Called.emit(sender=ctx.sender, caller=ctx.caller_contract)


@export
def only_module(tag: str):
    require(ctx.caller_contract == "mod" and ctx.sender == contract_address("mod"), "not_allowed: the module only")
    seen[tag] = True


@view
def get(tag: str):
    return seen[tag]
'''.replace("from gridledger import Event", "from gridledger import contract_address, Event")


class Module:
    """A native test module: each function exercises one host capability."""

    def gas(self, function: str) -> int | None:
        return {"write": 111, "call": 222, "fail_after_write": 333, "foreign": 1, "twice": 1, "emit": 5}.get(function)

    def run(self, host, function: str, args: list):
        if function == "write":
            host.put(state_key("mod", "v", [args[0]]), codec.encode(args[1]))
            return codec.decode(host.get(state_key("mod", "v", [args[0]])))
        if function == "call":
            host.call("probe", "record", args[0])
            host.call("probe", "only_module", args[0] + "!")
            return [host.sender, host.address, host.time]
        if function == "fail_after_write":
            host.put(state_key("mod", "v", ["x"]), codec.encode(1))
            host.call("probe", "record", "before-failure")
            host.emit("Wrote", key="x")
            raise ContractError("refused on purpose", code="some_refusal")
        if function == "foreign":
            host.put(state_key("probe", "seen", ["forged"]), codec.encode(True))
        if function == "twice":
            try:
                host.call("probe", "only_module", 5)  # bad_args: tag is text
            except ContractError:
                pass
            host.call("probe", "record", "after")
        if function == "emit":
            host.emit("Hello", who=host.sender)
        return None


@pytest.fixture
def env():
    executor = Executor(natives={"mod": Module()})
    genesis = apply_genesis(None, BlockContext(SHARD, 0, 100), contracts=[GenesisContract("probe", PROBE)], executor=executor)
    state = {k: v for k, v in genesis.writes.items() if v is not None}
    return executor, state


def run(env, function: str, *args, nonce: int | None = None, height: int = 1):
    executor, state = env
    if nonce is None:
        raw = state.get(state_key("accounts", "nonce", [ALICE.address.raw]))
        nonce = 0 if raw is None else codec.decode(raw)
    tx = Transaction.create(ALICE, chain_id=SHARD, nonce=nonce, contract="mod", function=function, args=list(args),
                            gas_limit=1_000_000)
    result = executor.execute_block(_Reader(state), BlockContext(SHARD, height, 1_000 + height), [tx])
    for k, v in result.writes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return result.receipts[0], tx


class _Reader:
    def __init__(self, data):
        self.data = data

    def get(self, key):
        return self.data.get(key)


def test_a_native_module_reads_and_writes_its_own_keys_in_the_transaction_layer(env):
    receipt, _ = run(env, "write", "a", [1, b"x"])
    assert receipt.ok and receipt.result == [1, b"x"]
    assert codec.decode(env[1][state_key("mod", "v", ["a"])]) == [1, b"x"]


def test_contracts_see_the_module_as_caller_named_after_it(env):
    receipt, _ = run(env, "call", "t")
    assert receipt.ok
    executor, state = env
    seen = executor.query(_Reader(state), BlockContext(SHARD, 2, 2000), "probe", "get", ["t"])
    assert seen == [contract_address("mod"), "mod", ALICE.address.raw]
    assert executor.query(_Reader(state), BlockContext(SHARD, 2, 2000), "probe", "get", ["t!"]) is True
    assert receipt.result == [ALICE.address.raw, contract_address("mod"), 1_001]
    # nobody else passes the module-only check
    tx = Transaction.create(ALICE, chain_id=SHARD, nonce=1, contract="probe", function="only_module", args=["z"])
    failed = executor.execute_block(_Reader(state), BlockContext(SHARD, 2, 2000), [tx]).receipts[0]
    assert not failed.ok and "the module only" in failed.error[1]


def test_a_native_failure_drops_every_write_and_event_of_the_transaction(env):
    before = dict(env[1])
    receipt, _ = run(env, "fail_after_write")
    assert not receipt.ok and receipt.error == ("some_refusal", "refused on purpose") and receipt.events == ()
    after = env[1]
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # only the nonce and the sender's gas account move, as for any failed transaction
    assert changed == {state_key("accounts", "nonce", [ALICE.address.raw]), state_key("accounts", "gas_used", [ALICE.address.raw])}


def test_a_native_module_cannot_write_another_contracts_keys(env):
    receipt, _ = run(env, "foreign")
    assert not receipt.ok and receipt.error[0] == "not_allowed"
    assert state_key("probe", "seen", ["forged"]) not in env[1]


def test_a_module_cannot_call_on_after_a_failed_contract_call(env):
    receipt, _ = run(env, "twice")
    assert not receipt.ok and receipt.error[0] == "not_allowed"


def test_unknown_native_function_is_not_found_and_costs_only_the_base(env):
    receipt, tx = run(env, "nothing")
    assert receipt.error[0] == "not_found"
    assert receipt.gas_used == G.TX_BASE + G.TX_ARG_BYTE * len(tx.body_bytes)


def test_native_gas_is_the_fixed_cost_plus_argument_bytes_plus_what_it_touches(env):
    receipt, tx = run(env, "emit")
    base = G.TX_BASE + G.TX_ARG_BYTE * len(tx.body_bytes) + 5 + NATIVE_ARG_BYTE * len(codec.encode([]))
    assert receipt.ok and receipt.gas_used > base  # plus the event
    event_bytes = len(codec.encode([ALICE.address.raw]))
    event_cost = G.EVENT + event_bytes * G.EVENT_BYTE
    assert event_cost <= receipt.gas_used - base <= event_cost + 2 * G.CONTAINER_VISIT  # + the value walk
    again, _ = run(env, "emit")
    assert again.gas_used == receipt.gas_used  # deterministic
    assert again.events[0].contract == "mod" and again.events[0].name == "Hello"


def test_native_names_are_contract_names_and_the_module_name_cannot_be_deployed():
    with pytest.raises(ValueError):
        Executor(natives={"system": Module()})
    with pytest.raises(ValueError):
        Executor(natives={"Bad-Name": Module()})
    with pytest.raises(ContractError) as refused:
        apply_genesis(None, BlockContext(SHARD, 0, 100), contracts=[GenesisContract("bridge", "x = 1\n")])
    assert refused.value.code == "name_taken"
