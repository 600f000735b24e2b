"""A shared test harness for the market system contracts.

    from market_harness import Chain, error_code, REF
    chain = Chain()                                   # genesis: every system contract deployed
    chain.ok("grid_operator", "membership", "admit", chain.addr("solar"), ["producer"], REF, None, 80)
    code = chain.fails("solar", "fiat", "transfer", "CHF", chain.addr("x"), 5)
    chain.view("fiat", "balance_of", "CHF", chain.addr("solar"))

Participants are names; each name's key is derived from the name, so ``chain.addr(name)``
is stable across runs. ``Chain(exclude=(...), extra_contracts=[(name, source)])`` swaps a
system contract for a test double (e.g. a stand-in "settlement" calling fiat.pay_from). Every transaction is signed and executed in its own block by the
real executor and runtime (metered), at the chain's current block time
(``set_time``/``advance``). ``chain.model()`` builds the reference model
(tests/market_model.py) with the same parameters, accounts named by their Bech32m text.

Contract refusals read ``("contract_error", "<code>: <text>")``; :func:`error_code`
returns ``<code>`` (or the runtime's own code: ``out_of_gas``, ``bad_args``...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from contracts.executor import BlockContext, Executor, GenesisContract, apply_genesis
from contracts.runtime.engine import contract_address
from contracts.runtime.errors import ContractError
from contracts.runtime.storage import decode_value
from contracts.system.genesis import CurrencySpec, genesis_contracts
from ledger.crypto import Address, PrivateKey
from ledger.statekeys import state_key
from ledger.tx import Event, Receipt, Transaction

try:  # pytest puts tests/ on sys.path (rootdir-relative import mode)
    import market_model as mm
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests import market_model as mm

__all__ = [
    "Chain",
    "GENESIS_TIME",
    "REF",
    "SHARD",
    "TEST_PARAMS",
    "error_code",
    "event_fields",
    "ref",
]

SHARD = "ch/test"
GENESIS_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
REF = b"r" * 32
TX_GAS = 9_000_000

# The model's defaults (tests/market_model.py Params), so a Chain and chain.model() agree.
TEST_PARAMS: dict[str, int | str] = {
    "period_s": 900,
    "energy_unit_wh": 1,
    "gate_closure_lead_s": 3600,
    "reading_grace_s": 0,
    "max_token_periods": 96 * 366,
    "imbalance_spread_bp": 1000,
    "reference_price_per_kwh": 10,
    "balancing_co2_g_per_kwh": 400,
    "co2_price_per_t": 0,
    "offset_payment_term_s": 0,
    "late_fee_bp": 500,
    "postpone_s": 86_400,
    "default_after_failures": 3,
    "rating_threshold": 0,
    "min_collateral": 0,
    "sos_mode": "fixed",
}
# (code, issuer name, fee_mode, fee_value)
TEST_CURRENCIES = (("CHF", "bank", "bps", 10), ("EUR", "bank", "none", 0))


def ref(value: object) -> bytes:
    """A 32-byte reference (deposit, redemption, legal entity) derived from any value."""
    return hashlib.sha256(repr(value).encode()).digest()


def error_code(receipt: Receipt) -> str | None:
    """The MARKET.md error code of a failed receipt (None if it succeeded)."""
    if receipt.ok:
        return None
    code, message = receipt.error
    if code == "contract_error" and ":" in message:
        head = message.split(":", 1)[0]
        if head and all(c.islower() or c.isdigit() or c == "_" for c in head):
            return head
    return code


def event_fields(event: Event) -> dict:
    return dict(event.fields)


# Executors keep compiled contracts; genesis writes depend only on the set-up. Both are
# shared between chains (a chain's state is its own dict).
_EXECUTORS: dict = {}
_GENESIS: dict = {}


def _executor(metered: bool, admission) -> Executor:
    key = (metered, admission)
    if key not in _EXECUTORS:
        _EXECUTORS[key] = Executor(metered=metered, admission=admission)
    return _EXECUTORS[key]


class _Reader:
    def __init__(self, data: dict) -> None:
        self.data = data

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


class Chain:
    """One shard's state with the market deployed, driven by named participants."""

    def __init__(
        self,
        *,
        params: Mapping[str, int | str] | None = None,
        currencies: Iterable[tuple[str, str, str, int]] = TEST_CURRENCIES,
        members: Iterable[tuple[str, Iterable[str]]] = (),
        grid_operator: str = "grid_operator",
        co2_authority: str = "co2_authority",
        settlement_currency: str = "CHF",
        admission=None,
        shard: str = SHARD,
        genesis_time: int = GENESIS_TIME,
        metered: bool = True,
        exclude: Iterable[str] = (),
        extra_contracts: Iterable[tuple[str, str]] = (),
    ) -> None:
        """``exclude`` drops system contracts from genesis; ``extra_contracts`` ([(name,
        source)], no constructor arguments) are deployed after them, e.g. test doubles."""
        self.shard = shard
        self.genesis_time = genesis_time
        self.params = dict(TEST_PARAMS)
        self.params.update(params or {})
        self.currencies = tuple(currencies)
        self.go_name, self.co2_name = grid_operator, co2_authority
        self.settlement_currency = settlement_currency
        self.extra_members = tuple((n, tuple(r)) for n, r in members)
        self._keys: dict[str, PrivateKey] = {}
        self._names: dict[bytes, str] = {}
        self.executor = _executor(metered, admission)
        self.state: dict[bytes, bytes] = {}
        self.height = 0
        self.time = genesis_time
        self._nonces: dict[str, int] = {}
        self.receipts: list[Receipt] = []
        go, co2 = self.addr(grid_operator), self.addr(co2_authority)
        specs = tuple(
            CurrencySpec(code, self.addr(issuer), mode, value)
            for code, issuer, mode, value in self.currencies
        )
        extra = tuple((self.addr(n), r) for n, r in self.extra_members)
        exclude, extra_contracts = tuple(exclude), tuple(extra_contracts)
        cache_key = (
            go,
            co2,
            specs,
            extra,
            settlement_currency,
            tuple(sorted(self.params.items())),
            shard,
            genesis_time,
            metered,
            exclude,
            extra_contracts,
        )
        cached = _GENESIS.get(cache_key)
        if cached is None:
            contracts = genesis_contracts(
                go,
                co2,
                specs,
                genesis_time,
                settlement_currency=settlement_currency,
                members=extra,
                params=self.params,
            )
            contracts = [c for c in contracts if c.name not in exclude]
            contracts += [GenesisContract(n, src) for n, src in extra_contracts]
            result = apply_genesis(
                _Reader({}),
                BlockContext(shard, 0, genesis_time),
                contracts=contracts,
                executor=self.executor,
            )
            cached = _GENESIS[cache_key] = (
                {k: v for k, v in result.writes.items() if v is not None},
                result.receipts,
            )
        self.state.update(cached[0])
        self.genesis_receipts = cached[1]

    # ------------------------------------------------------------ participants

    def key(self, name: str) -> PrivateKey:
        k = self._keys.get(name)
        if k is None:
            k = PrivateKey(hashlib.sha256(b"gridledger/market-harness/" + name.encode()).digest())
            self._keys[name] = k
            self._names[k.address.raw] = name
        return k

    def addr(self, name: str) -> bytes:
        """The 20-byte address of a named participant (or meter)."""
        return self.key(name).address.raw

    def text(self, name: str) -> str:
        """The Bech32m text of a name's address (the model's account name)."""
        return str(self.key(name).address)

    def name_of(self, address: bytes) -> str | None:
        return self._names.get(address)

    @staticmethod
    def contract_text(name: str) -> str:
        return str(Address(contract_address(name)))

    # ------------------------------------------------------------ time

    def set_time(self, t: int) -> None:
        if t < self.time:
            raise ValueError(f"block time goes backwards: {t} < {self.time}")
        self.time = t

    def advance(self, seconds: int) -> None:
        self.set_time(self.time + seconds)

    def period_start(self, p: int) -> int:
        return self.genesis_time + p * int(self.params["period_s"])

    def period_end(self, p: int) -> int:
        return self.period_start(p + 1)

    def gate_closure(self, p: int) -> int:
        return self.period_start(p) - int(self.params["gate_closure_lead_s"])

    # ------------------------------------------------------------ transactions

    def _apply(self, writes: Mapping[bytes, bytes | None]) -> None:
        for k, v in writes.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v

    def transaction(
        self, name: str, contract: str, function: str, *args: Any, gas: int = TX_GAS
    ) -> Transaction:
        """A signed transaction with the sender's next nonce, reserved: execute it with
        :meth:`block` (several may share a block)."""
        nonce = self._nonces.get(name, 0)
        self._nonces[name] = nonce + 1
        return Transaction.create(
            self.key(name),
            chain_id=self.shard,
            nonce=nonce,
            contract=contract,
            function=function,
            args=list(args),
            gas_limit=gas,
        )

    def tx(self, name: str, contract: str, function: str, *args: Any, gas: int = TX_GAS) -> Receipt:
        """Sign and execute one transaction in its own block; returns its receipt."""
        self._nonces[name] = self.stored("accounts", "nonce", self.addr(name)) or 0
        transaction = self.transaction(name, contract, function, *args, gas=gas)
        return self.block([(name, transaction)])[0]

    def block(self, signed: list[tuple[str, Transaction]]) -> list[Receipt]:
        """Execute already-built transactions (from :meth:`transaction`) as one block."""
        self.height += 1
        result = self.executor.execute_block(
            _Reader(self.state),
            BlockContext(self.shard, self.height, self.time),
            [t for _, t in signed],
        )
        self._apply(result.writes)
        for name, _ in signed:  # the executor advances a nonce only for executed transactions
            self._nonces[name] = self.stored("accounts", "nonce", self.addr(name)) or 0
        self.receipts.extend(result.receipts)
        return list(result.receipts)

    def ok(self, name: str, contract: str, function: str, *args: Any, gas: int = TX_GAS) -> Any:
        """Execute and assert success; returns the call's result."""
        receipt = self.tx(name, contract, function, *args, gas=gas)
        assert receipt.ok, f"{name} {contract}.{function}{args!r} failed: {receipt.error}"
        return receipt.result

    def fails(self, name: str, contract: str, function: str, *args: Any, gas: int = TX_GAS) -> str:
        """Execute and assert failure; returns the error code."""
        receipt = self.tx(name, contract, function, *args, gas=gas)
        assert not receipt.ok, f"{name} {contract}.{function}{args!r} succeeded but should fail"
        return error_code(receipt)  # type: ignore[return-value]

    # ------------------------------------------------------------ reads

    def view(self, contract: str, function: str, *args: Any) -> Any:
        """Call a view at the current time (read-only)."""
        return self.executor.query(
            _Reader(self.state),
            BlockContext(self.shard, self.height + 1, self.time),
            contract,
            function,
            list(args),
        )

    def view_error(self, contract: str, function: str, *args: Any) -> str:
        try:
            self.view(contract, function, *args)
        except ContractError as exc:
            return exc.message.split(":", 1)[0] if exc.code == "contract_error" else exc.code
        raise AssertionError(f"{contract}.{function}{args!r} did not fail")

    def stored(self, contract: str, variable: str, *parts: Any) -> Any:
        raw = self.state.get(state_key(contract, variable, list(parts)))
        return None if raw is None else decode_value(raw)

    def deployed(self, contract: str) -> bool:
        return self.stored("system", "contracts", contract) is not None

    def balance(self, name: str, code: str = "CHF") -> int:
        return self.view("fiat", "balance_of", code, self.addr(name))

    def token(self, serial: int) -> dict | None:
        return self.view("energy_tokens", "token", serial)

    # ------------------------------------------------------------ common set-ups

    def admit(
        self, name: str, roles: Iterable[str], *, limit: int | None = None, rating: int = 0
    ) -> None:
        self.ok(
            self.go_name,
            "membership",
            "admit",
            self.addr(name),
            list(roles),
            ref(("legal", name)),
            limit,
            rating,
        )

    def mint(self, name: str, amount: int, code: str = "CHF", issuer: str = "bank") -> None:
        self.ok(
            issuer,
            "fiat",
            "mint",
            code,
            self.addr(name),
            amount,
            ref(("deposit", name, amount, self.height)),
        )

    # ------------------------------------------------------------ the reference model

    def model(self) -> mm.Market:
        """The reference model with this chain's parameters, at genesis state."""
        fields = {k: v for k, v in self.params.items() if k in mm.Params.__dataclass_fields__}
        params = mm.Params(
            grid_operator=self.text(self.go_name),
            co2_authority=self.text(self.co2_name),
            settlement_currency=self.settlement_currency,
            shard_id=self.shard,
            genesis_time=self.genesis_time,
            settlement_account=self.contract_text("settlement"),
            **fields,
        )
        members: dict[str, list[str]] = {}
        for n, roles in (
            (self.go_name, ("grid_operator",)),
            (self.co2_name, ("co2_authority",)),
            *((c[1], ("bank",)) for c in self.currencies),
            *self.extra_members,
        ):
            held = members.setdefault(self.text(n), [])
            held.extend(r for r in roles if r not in held)
        currencies = [
            mm.Currency(code, self.text(issuer), mode, value)
            for code, issuer, mode, value in self.currencies
        ]
        return mm.Market(params, [(a, tuple(r)) for a, r in members.items()], currencies)
