"""The market's system contracts and the genesis entries of one shard's consortium.

``SYSTEM_CONTRACTS`` is the deployment-order table of every system contract: a
contract whose constructor calls another must come after it. ``system_contracts()``
returns ``[(name, source)]`` read from ``contracts/system/contracts/<file>``.

``market_genesis(...)`` builds the ``contracts`` and ``app_state`` entries of a genesis
document (JSON-ready: addresses as 40 hex digits, which the constructors accept), so
``apply_genesis_document`` deploys the whole market with its parameters;
``genesis_contracts(...)`` gives the same as :class:`GenesisContract` records for
``apply_genesis`` (addresses as bytes). The contracts themselves refuse an invalid
consortium with ``bad_genesis`` (MARKET.md section 3); this module only shapes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from contracts.executor import GenesisContract
from contracts.runtime.engine import contract_address
from ledger.crypto import Address

__all__ = [
    "CONSTRUCTOR_ARGS",
    "CurrencySpec",
    "DEFAULT_PARAMS",
    "MarketSetup",
    "SYSTEM_CONTRACTS",
    "genesis_contracts",
    "market_genesis",
    "system_contracts",
]

SOURCE_DIR = Path(__file__).parent / "contracts"

# (name, source file) in deployment order. Each part of the market appends its own.
SYSTEM_CONTRACTS: list[tuple[str, str]] = [
    ("market_config", "market_config.contract"),
    ("membership", "membership.contract"),
    ("fiat", "fiat.contract"),
    ("energy_tokens", "energy_tokens.contract"),
    # part 2: meters, reconciliation, grid fees, settlement, traceability (no constructors)
    ("meters", "meters.contract"),
    ("reconciliation", "reconciliation.contract"),
    ("grid_fees", "grid_fees.contract"),
    ("settlement", "settlement.contract"),
    ("traceability", "traceability.contract"),
]

# MARKET.md section 3's example values; genesis overrides any of them. The four
# addresses and the settlement currency come from the consortium itself.
DEFAULT_PARAMS: dict[str, int | str] = {
    "period_s": 900,
    "energy_unit_wh": 1,
    "gate_closure_lead_s": 3600,
    "reading_grace_s": 0,
    "max_token_periods": 35136,
    "imbalance_spread_bp": 1000,
    "reference_price_per_kwh": 10,
    "balancing_co2_g_per_kwh": 128,
    "co2_price_per_t": 12000,
    "offset_payment_term_s": 0,
    "late_fee_bp": 500,
    "postpone_s": 86400,
    "default_after_failures": 3,
    "rating_threshold": 50,
    "min_collateral": 500,
    "sos_mode": "pro_rata",
}

AddressLike = bytes | Address | str


def _raw(value: AddressLike) -> bytes:
    if isinstance(value, Address):
        return value.raw
    if isinstance(value, bytes) and len(value) == 20:
        return value
    if isinstance(value, str):
        return Address.parse(value).raw
    raise ValueError(f"an address is 20 bytes, an Address or its grid1... text, not {value!r}")


@dataclass(frozen=True)
class CurrencySpec:
    """A currency and its issuing bank; fee_mode none | bps (fee_value <= 10000) | fixed."""

    code: str
    issuer: bytes
    fee_mode: str = "none"
    fee_value: int = 0


@dataclass(frozen=True)
class MarketSetup:
    """One shard's consortium: who operates the grid, who issues money, the parameters."""

    grid_operator: bytes
    co2_authority: bytes
    currencies: tuple[CurrencySpec, ...]
    genesis_time: int
    settlement_currency: str = ""  # default: the first currency
    members: tuple[tuple[bytes, tuple[str, ...]], ...] = ()  # further genesis members
    params: Mapping[str, int | str] = field(default_factory=dict)  # overrides of DEFAULT_PARAMS

    def market_params(self) -> dict:
        """Every market_config parameter (MARKET.md section 3), addresses as bytes."""
        params: dict = dict(DEFAULT_PARAMS)
        params.update(self.params)
        params.update(
            grid_operator=self.grid_operator,
            co2_authority=self.co2_authority,
            settlement_currency=self.settlement_currency or self.currencies[0].code,
            settlement_account=contract_address("settlement"),
            genesis_time=self.genesis_time,
        )
        return params

    def genesis_members(self) -> list[tuple[bytes, list[str]]]:
        """The grid operator, the CO2 authority, the issuing banks and ``members``, roles merged."""
        roles: dict[bytes, list[str]] = {}

        def add(address: bytes, *names: str) -> None:
            held = roles.setdefault(address, [])
            held.extend(n for n in names if n not in held)

        add(self.grid_operator, "grid_operator")
        add(self.co2_authority, "co2_authority")
        for c in self.currencies:
            add(c.issuer, "bank")
        for address, names in self.members:
            add(address, *names)
        return [(a, sorted(r)) for a, r in roles.items()]


def _setup(
    grid_operator: AddressLike,
    co2_authority: AddressLike,
    currencies: Iterable[CurrencySpec | tuple],
    genesis_time: int,
    settlement_currency: str,
    members: Iterable[tuple[AddressLike, Iterable[str]]],
    params: Mapping[str, int | str] | None,
) -> MarketSetup:
    specs = []
    for c in currencies:
        c = c if isinstance(c, CurrencySpec) else CurrencySpec(*c)
        specs.append(CurrencySpec(c.code, _raw(c.issuer), c.fee_mode, c.fee_value))
    if not specs:
        raise ValueError("a market needs at least one currency")
    return MarketSetup(
        _raw(grid_operator),
        _raw(co2_authority),
        tuple(specs),
        genesis_time,
        settlement_currency,
        tuple((_raw(a), tuple(r)) for a, r in members),
        dict(params or {}),
    )


def _hexify(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    return value


# Constructor arguments per contract (default: none). Values may hold bytes; the
# JSON form hexes them.
CONSTRUCTOR_ARGS: dict[str, Callable[[MarketSetup], list]] = {
    "market_config": lambda s: [
        s.market_params(),
        [[c.code, c.issuer, c.fee_mode, c.fee_value] for c in s.currencies],
    ],
    "membership": lambda s: [[[a, r] for a, r in s.genesis_members()]],
}


@cache
def _source(filename: str) -> str:
    return (SOURCE_DIR / filename).read_text(encoding="utf-8")


def system_contracts() -> list[tuple[str, str]]:
    """``[(name, source)]`` of every system contract, in deployment order."""
    return [(name, _source(filename)) for name, filename in SYSTEM_CONTRACTS]


def genesis_contracts(
    grid_operator: AddressLike,
    co2_authority: AddressLike,
    currencies: Iterable[CurrencySpec | tuple],
    genesis_time: int,
    *,
    settlement_currency: str = "",
    members: Iterable[tuple[AddressLike, Iterable[str]]] = (),
    params: Mapping[str, int | str] | None = None,
) -> list[GenesisContract]:
    """The system contracts with their constructor arguments, for ``apply_genesis``."""
    setup = _setup(
        grid_operator, co2_authority, currencies, genesis_time, settlement_currency, members, params
    )
    return [
        GenesisContract(
            name, source, tuple(CONSTRUCTOR_ARGS[name](setup)) if name in CONSTRUCTOR_ARGS else ()
        )
        for name, source in system_contracts()
    ]


def market_genesis(
    grid_operator: AddressLike,
    co2_authority: AddressLike,
    currencies: Iterable[CurrencySpec | tuple],
    genesis_time: int,
    *,
    settlement_currency: str = "",
    members: Iterable[tuple[AddressLike, Iterable[str]]] = (),
    params: Mapping[str, int | str] | None = None,
) -> dict:
    """``{"contracts": [{"name", "source"}], "app_state": {name: [args]}}`` for a genesis
    document (JSON-ready). ``genesis_time`` must be the document's own."""
    setup = _setup(
        grid_operator, co2_authority, currencies, genesis_time, settlement_currency, members, params
    )
    contracts = [{"name": n, "source": s} for n, s in system_contracts()]
    app_state = {
        n: _hexify(CONSTRUCTOR_ARGS[n](setup))
        for n, _ in system_contracts()
        if n in CONSTRUCTOR_ARGS
    }
    return {"contracts": contracts, "app_state": app_state}
