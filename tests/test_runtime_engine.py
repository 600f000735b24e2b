"""The runtime's contract model: storage, context, events, calls, views, deployment, errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from contracts.executor import BlockContext, Executor, GenesisContract, apply_genesis
from contracts.runtime.engine import contract_address
from contracts.runtime.errors import ContractError
from contracts.runtime.storage import decode_value
from ledger.crypto import PrivateKey
from ledger.statekeys import state_key
from ledger.tx import Receipt, Transaction

SHARD = "ch/test"
LANGUAGE_MD = Path(__file__).resolve().parent.parent / "contracts" / "runtime" / "LANGUAGE.md"


class DictReader:
    def __init__(self, data: dict) -> None:
        self.data = data

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


class Chain:
    """A shard's state plus an executor, advancing one block per call."""

    def __init__(self, contracts: dict, *, metered: bool = True) -> None:
        self.keys = [PrivateKey(bytes([i + 1]) * 32) for i in range(3)]
        self.key = self.keys[0]
        self.state: dict[bytes, bytes] = {}
        self.executor = Executor(metered=metered)
        specs = []
        for name, spec in contracts.items():
            source, args = (spec, ()) if isinstance(spec, str) else spec
            specs.append(GenesisContract(name, source, tuple(args), self.key.address.raw))
        genesis = apply_genesis(
            DictReader(self.state), BlockContext(SHARD, 0, 1000), deployers=[self.key.address.raw], contracts=specs, executor=self.executor
        )
        self.apply(genesis.writes)
        self.height = 1
        self.nonces: dict[bytes, int] = {}
        self.writes: dict = {}

    def apply(self, writes: dict) -> None:
        for k, v in writes.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v

    def send(self, contract: str, function: str, *args, key: PrivateKey | None = None, gas: int = 2_000_000) -> Receipt:
        key = key or self.key
        address = key.address.raw
        nonce = self.nonces.get(address, 0)
        tx = Transaction(SHARD, key.public_key.raw, nonce, contract, function, tuple(args), gas, 10**6, bytes(64))
        result = self.executor.execute_block(DictReader(self.state), BlockContext(SHARD, self.height, 1000 + self.height), [tx])
        self.height += 1
        self.nonces[address] = nonce + 1
        self.writes = result.writes
        self.apply(result.writes)
        return result.receipts[0]

    def ok(self, contract: str, function: str, *args, **kw):
        receipt = self.send(contract, function, *args, **kw)
        assert receipt.ok, receipt.error
        return receipt.result

    def stored(self, contract: str, name: str, *parts):
        raw = self.state.get(state_key(contract, name, list(parts)))
        return None if raw is None else decode_value(raw)

    def query(self, contract: str, function: str, *args):
        return self.executor.query(DictReader(self.state), BlockContext(SHARD, self.height, 1000), contract, function, list(args))


STORE = '''
counts = Map(default=0)
pairs = Map(default=None, key_parts=2)
records = Map(default={})
history = Value(default=[])
owner = Value(default=None)


@export
def put(k: str, v: int) -> int:
    counts[k] = v
    return counts[k]


@export
def bump(k: str) -> int:
    counts[k] += 1
    return counts[k]


@export
def pair(a: str, b: int, v: str) -> bool:
    pairs[a, b] = v
    return (a, b) in pairs


@export
def record(k: str) -> dict:
    r = records[k]
    r["z"] = 1
    r["a"] = (1, 2)
    records[k] = r
    return [list(records[k].keys()), records[k]["a"]]


@export
def fresh_copy() -> list:
    xs = history.get()
    xs.append(1)
    return [history.get(), xs]


@export
def remove(k: str) -> bool:
    del counts[k]
    return k in counts


@export
def store_bad(kind: str) -> int:
    if kind == "fixed":
        owner.set(Fixed("1.5"))
    elif kind == "big":
        owner.set(2 ** 64)
    elif kind == "key":
        counts[(1, 2)] = 1
    return 1
'''


def test_writing_the_default_deletes_the_key():
    chain = Chain({"store": STORE})
    assert chain.ok("store", "put", "a", 5) == 5
    assert chain.stored("store", "counts", "a") == 5
    assert chain.ok("store", "put", "a", 0) == 0
    assert state_key("store", "counts", ["a"]) in chain.writes and chain.writes[state_key("store", "counts", ["a"])] is None
    assert chain.stored("store", "counts", "a") is None


def test_augmented_assignment_on_storage_reads_and_writes_once_each():
    chain = Chain({"store": STORE})
    assert [chain.ok("store", "bump", "k") for _ in range(3)] == [1, 2, 3]


def test_multi_part_keys_and_membership():
    chain = Chain({"store": STORE})
    assert chain.ok("store", "pair", "grid", 7, "x") is True
    assert chain.stored("store", "pairs", "grid", 7) == "x"


def test_dicts_are_stored_with_sorted_keys_and_tuples_as_lists():
    chain = Chain({"store": STORE})
    assert chain.ok("store", "record", "r") == [["a", "z"], [1, 2]]


def test_reads_return_fresh_copies():
    chain = Chain({"store": STORE})
    assert chain.ok("store", "fresh_copy") == [[], [1]]


def test_del_and_membership():
    chain = Chain({"store": STORE})
    chain.ok("store", "put", "gone", 3)
    assert chain.ok("store", "remove", "gone") is False


@pytest.mark.parametrize(("kind", "message"), [("fixed", "Fixed"), ("big", "storable integers"), ("key", "key part")])
def test_values_outside_the_storage_model_are_refused(kind, message):
    chain = Chain({"store": STORE})
    receipt = chain.send("store", "store_bad", kind)
    assert receipt.error[0] == "contract_error" and message in receipt.error[1]


CONTEXT = '''
@export
def who() -> list:
    return [ctx.sender, ctx.signer, ctx.caller_contract, ctx.this, ctx.contract, ctx.height, ctx.time, ctx.shard, ctx.tx_hash]


@export
def relay() -> list:
    return call("inner", "who")
'''


def test_context_of_a_transaction_and_of_a_call_between_contracts():
    chain = Chain({"outer": CONTEXT, "inner": CONTEXT})
    signer = chain.key.address.raw
    direct = chain.ok("inner", "who")
    assert direct[:5] == [signer, signer, None, contract_address("inner"), "inner"]
    assert direct[5:8] == [1, 1001, SHARD] and len(direct[8]) == 32
    relayed = chain.ok("outer", "relay")
    assert relayed[:5] == [contract_address("outer"), signer, "outer", contract_address("inner"), "inner"]


def test_contract_addresses_are_tagged_hashes_of_names():
    assert contract_address("fiat") == hashlib.sha256(b"gridledger/contractfiat").digest()[:20]


EVENTS = '''
Paid = Event("payer", "amounts", indexed=["payer"])


@export
def pay() -> int:
    amounts = [1, 2]
    Paid.emit(ctx.sender, amounts=amounts)
    amounts.append(3)
    Paid.emit(payer=ctx.sender, amounts=(4,))
    return 2


@export
def wrong() -> int:
    Paid.emit(payer=ctx.sender)
    return 1
'''


def test_events_carry_copies_of_their_fields_in_declaration_order():
    chain = Chain({"ev": EVENTS})
    receipt = chain.send("ev", "pay")
    first, second = receipt.events
    assert first.contract == "ev" and first.name == "Paid"
    assert first.fields == (("payer", chain.key.address.raw), ("amounts", [1, 2]))
    assert second.fields[1] == ("amounts", [4])
    receipt.encode()  # receipts stay canonical


def test_event_fields_are_checked():
    chain = Chain({"ev": EVENTS})
    assert "needs amounts" in chain.send("ev", "wrong").error[1]


def test_event_schema_with_indexed_fields_is_published():
    chain = Chain({"ev": EVENTS})
    info = chain.executor.contract_info(DictReader(chain.state), "ev")
    assert info["events"] == {"Paid": {"fields": ["payer", "amounts"], "indexed": ["payer"]}}
    assert info["functions"]["pay"]["kind"] == "export"


BANK = '''
deposits = Map(default=0)


@export
def deposit(amount: int) -> int:
    deposits[ctx.sender] += amount
    return deposits[ctx.sender]


@export
def deposit_and_fail(amount: int) -> int:
    deposits[ctx.sender] += amount
    fail("bank refuses")
    return 0


@export
def ring(target: str) -> int:
    return call(target, "ping")


@export(reentrant=True)
def ping() -> int:
    return 7


@export
def closed() -> int:
    return 8


@export
def depth(n: int) -> int:
    if n == 0:
        return 0
    return call("bank", "nested", n - 1) + 1


@export(reentrant=True)
def nested(n: int) -> int:
    if n == 0:
        return 0
    return call("bank", "nested", n - 1) + 1
'''

CLIENT = '''
@export
def save(amount: int) -> int:
    return call("bank", "deposit", amount)


@export
def save_then_fail(amount: int) -> int:
    call("bank", "deposit", amount)
    fail("client changed its mind")
    return 0


@export
def save_badly(amount: int) -> int:
    return call("bank", "deposit_and_fail", amount)


@export
def bounce() -> int:
    return call("bank", "ring", "client")


@export
def ping() -> int:
    return 1


@export
def bounce_open() -> int:
    return call("bank", "ring", "bank")
'''


def test_calls_between_contracts_pass_the_callers_address():
    chain = Chain({"bank": BANK, "client": CLIENT})
    assert chain.ok("client", "save", 5) == 5
    assert chain.stored("bank", "deposits", contract_address("client")) == 5
    assert chain.stored("bank", "deposits", chain.key.address.raw) is None


@pytest.mark.parametrize("function", ["save_then_fail", "save_badly"])
def test_a_failure_anywhere_reverts_every_contracts_writes(function):
    chain = Chain({"bank": BANK, "client": CLIENT})
    receipt = chain.send("client", function, 5)
    assert receipt.error[0] == "contract_error"
    assert chain.stored("bank", "deposits", contract_address("client")) is None


def test_reentry_is_refused_unless_the_callee_allows_it():
    chain = Chain({"bank": BANK, "client": CLIENT})
    receipt = chain.send("client", "bounce")
    assert receipt.error[0] == "reentrancy"
    assert chain.ok("client", "bounce_open") == 7  # bank.ping is reentrant


def test_contract_call_depth_is_limited():
    chain = Chain({"bank": BANK})
    assert chain.ok("bank", "depth", 6) == 6
    assert chain.send("bank", "depth", 8).error[0] == "limit"


VIEWS = '''
total = Value(default=3)


@view
def read() -> dict:
    return {"total": total.get()}


@view
def write() -> int:
    total.set(4)
    return 1
'''


def test_views_read_without_transactions_and_cannot_write():
    chain = Chain({"views": VIEWS})
    assert chain.query("views", "read") == {"total": 3}
    with pytest.raises(ContractError) as info:
        chain.query("views", "write")
    assert info.value.code == "not_allowed"
    assert chain.send("views", "write").error[0] == "not_allowed"
    assert chain.send("views", "read").error[1].startswith("cannot return a dict")


ARGS = '''
@export
def typed(a: int, b: bool, c: str, d: bytes, e: list, f: tuple, g: Fixed, h: Address, i: str | None = None) -> list:
    return [a, b, c, d, e, list(f), str(g), h, i]
'''


def test_arguments_are_checked_and_converted_before_the_call():
    chain = Chain({"args": ARGS})
    addr = bytes(20)
    assert chain.ok("args", "typed", 1, True, "x", b"y", [1], [2, 3], "1.25", addr) == [1, True, "x", b"y", [1], [2, 3], "1.25", addr, None]
    bad = [
        (True, True, "x", b"y", [], [], "1", addr),  # bool is not an int
        (1, 1, "x", b"y", [], [], "1", addr),
        (1, True, "x", b"y", [], [], "1.2.3", addr),
        (1, True, "x", b"y", [], [], "1", b"short"),
        (1, True, "x", b"y", [], []),
        (1, True, "x", b"y", [], [], "1", addr, 5),
    ]
    for args in bad:
        receipt = chain.send("args", "typed", *args)
        assert receipt.error[0] == "bad_args", (args, receipt.error)


def test_unknown_functions_and_contracts_are_not_found():
    chain = Chain({"args": ARGS})
    assert chain.send("args", "nope").error[0] == "not_found"
    assert chain.send("nobody", "typed").error[0] == "not_found"


def test_constructor_runs_once_with_the_deployer_as_sender_and_is_not_callable():
    source = '''
owner = Value(default=None)


@constructor
def setup(note: str):
    owner.set([ctx.sender, note])


@export
def get() -> list:
    return owner.get()
'''
    chain = Chain({"owned": (source, ["hello"])})
    assert chain.ok("owned", "get", key=chain.keys[1]) == [chain.key.address.raw, "hello"]
    assert chain.send("owned", "setup", "again").error[0] == "not_found"


def test_deployment_records_the_code_hash_and_deployer():
    chain = Chain({"args": ARGS})
    record = chain.stored("system", "contracts", "args")
    assert record[0] == hashlib.sha256(ARGS.encode()).digest()
    assert record[1] == chain.key.address.raw


FAILS = '''
def divide(a, b):
    return a // b


@export
def crash(b: int) -> int:
    values = {"a": 1}
    total = (
        divide(10, b)
        + values["a"]
    )
    return total


@export
def missing() -> int:
    values = {"a": 1}
    return values[
        "b"
    ]
'''


def test_python_errors_are_reported_by_kind_function_and_statement_line():
    chain = Chain({"fails": FAILS})
    assert chain.send("fails", "crash", 0).error == ("contract_error", "ZeroDivisionError in fails.divide at line 3")
    assert chain.send("fails", "missing").error == ("contract_error", "KeyError in fails.missing at line 19")


def test_unmetered_runtime_gives_the_same_results_and_state():
    metered, unmetered = Chain({"store": STORE, "bank": BANK, "client": CLIENT}), Chain({"store": STORE, "bank": BANK, "client": CLIENT}, metered=False)
    for chain in (metered, unmetered):
        chain.ok("store", "put", "a", 5)
        chain.ok("store", "record", "r")
        chain.ok("client", "save", 9)
        chain.send("client", "bounce")
    assert {k: v for k, v in metered.state.items() if b"accounts" not in k} == {k: v for k, v in unmetered.state.items() if b"accounts" not in k}


def language_guide_example() -> str:
    return re.search(r"```python\n(.*?)```", LANGUAGE_MD.read_text(), re.S).group(1)  # type: ignore[union-attr]


FIAT = '''
balances = Map(default=0)
allowances = Map(default=0, key_parts=2)


@constructor
def setup(holders: list):
    for holder in holders:
        balances[holder] = 1_000_000


@export
def approve(spender: Address, amount: int) -> bool:
    allowances[ctx.sender, spender] = amount
    return True


@export
def transfer_from(payer: Address, payee: Address, amount: int) -> bool:
    require(allowances[payer, ctx.sender] >= amount, "allowance too low")
    require(balances[payer] >= amount, "balance too low")
    allowances[payer, ctx.sender] -= amount
    balances[payer] -= amount
    balances[payee] += amount
    return True
'''


def test_the_language_guide_example_trades_energy_for_fiat():
    holders = [PrivateKey(bytes([i + 1]) * 32).address.raw for i in range(3)]
    chain = Chain({"fiat": (FIAT, [holders]), "market": (language_guide_example(), [holders[0]])})
    seller, buyer = chain.keys[1], chain.keys[2]
    offer_id = chain.ok("market", "offer", 12_500, "21.50", key=seller)
    assert offer_id == 1
    assert chain.send("market", "buy", offer_id, key=buyer).error == ("contract_error", "allowance too low")
    chain.ok("fiat", "approve", contract_address("market"), 10_000, key=buyer)
    paid = chain.ok("market", "buy", offer_id, key=buyer)
    assert paid == 269  # 12.5 kWh at 21.50 cents = 268.75 cents, rounded up
    assert chain.stored("fiat", "balances", seller.address.raw) == 1_000_000 + paid
    assert chain.stored("fiat", "balances", buyer.address.raw) == 1_000_000 - paid
    assert chain.query("market", "sold_by", seller.address.raw) == 12_500
    assert chain.send("market", "buy", offer_id, key=buyer).error == ("contract_error", "no offer 1")
