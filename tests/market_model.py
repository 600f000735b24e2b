"""An independent reference model of the energy market's rules (the oracle for tests).

This is the executable twin of ``contracts/system/MARKET.md``: plain Python, integers
only, no contract code and no project imports. A test drives the contracts on a node
and the same operations through :class:`Market`, then compares every balance, token and
obligation to the unit. Each public method is one transaction: it either applies all of
its effects or raises :class:`ModelError` with the stable error code named in MARKET.md
and changes nothing (every method validates completely before it mutates).

Conventions (MARKET.md section 2):
- energy in Wh, money in minor units, CO2 stored in mg (1 g/kWh == 1 mg/Wh, so a
  token's CO2 is exact in mg), time in integer seconds of block time;
- ``payment(energy_wh, price_per_kwh)`` truncates toward zero (the payer never pays a
  fraction); issuer fees, late fees and the imbalance spread round up (ceil);
  pro-rata splits use the largest-remainder method with a stated tie-break.
- accounts are opaque strings (Bech32m addresses on a node); a "point" (the delivery
  point of a token side) is either a registered meter's address or the side owner's own
  address (a virtual meter that always measures zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = [
    "CATEGORIES",
    "Currency",
    "Market",
    "ModelError",
    "Params",
    "ROLES",
    "ceil_div",
    "largest_remainder",
    "payment",
    "run_scenario",
    "trunc_div",
]

CATEGORIES = ("solar", "wind", "hydro", "nuclear", "coal", "methane", "biomass", "other")
ROLES = (
    "grid_operator",
    "producer",
    "consumer",
    "trader",
    "retailer",
    "bank",
    "meter",
    "regulator",
    "co2_authority",
)
MARKET_ROLES = frozenset({"producer", "consumer", "trader", "retailer"})
SIDES = ("producer", "consumer")
QUALIFICATION_KINDS = ("primary", "secondary", "tertiary", "redispatch")
BP = 10_000  # basis points in one
MG_PER_TONNE = 1_000_000_000
MAX_TRACE_DEPTH = 16


class ModelError(Exception):
    """A refused operation. ``code`` is the stable error code of MARKET.md."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ integer arithmetic


def trunc_div(a: int, b: int) -> int:
    """a / b rounded toward zero (b > 0)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up, for a >= 0 and b > 0."""
    return -(-a // b)


def payment(energy_wh: int, price_per_kwh: int) -> int:
    """Money for ``energy_wh`` at ``price_per_kwh`` (signed), truncated toward zero."""
    return trunc_div(energy_wh * price_per_kwh, 1000)


def largest_remainder(amount: int, weights: list[tuple[object, int]]) -> dict[object, int]:
    """Split ``amount`` (>= 0) pro rata to ``weights`` [(key, weight >= 0)], exactly.

    Each key gets floor(amount * w / W); the units left over go one each to the keys
    with the largest remainder (amount * w mod W), ties to the smaller key.
    """
    total = sum(w for _, w in weights)
    if total <= 0:
        raise ValueError("largest_remainder needs a positive total weight")
    shares = {k: amount * w // total for k, w in weights}
    left = amount - sum(shares.values())
    order = sorted(weights, key=lambda kw: (-(amount * kw[1] % total), kw[0]))
    for k, _ in order[:left]:
        shares[k] += 1
    return shares


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Currency:
    code: str
    issuer: str
    fee_mode: str = "none"  # "none" | "bps" | "fixed"
    fee_value: int = 0  # basis points, or minor units per transfer


@dataclass(frozen=True)
class Params:
    """Genesis parameters of one shard (MARKET.md section 3)."""

    grid_operator: str
    co2_authority: str
    settlement_currency: str
    shard_id: str = "ch/demo"
    genesis_time: int = 0
    period_s: int = 900
    energy_unit_wh: int = 1
    gate_closure_lead_s: int = 3600
    reading_grace_s: int = 0
    max_token_periods: int = 96 * 366
    imbalance_spread_bp: int = 1000
    reference_price_per_kwh: int = 10
    balancing_co2_g_per_kwh: int = 400
    co2_price_per_t: int = 0
    offset_payment_term_s: int = 0
    late_fee_bp: int = 500
    postpone_s: int = 86_400
    default_after_failures: int = 3
    rating_threshold: int = 0
    min_collateral: int = 0
    sos_mode: str = "fixed"  # "fixed" | "pro_rata"
    settlement_account: str = "contract:settlement"


@dataclass
class Member:
    address: str
    roles: frozenset
    legal_ref_hash: bytes | None
    status: str = "active"  # active | suspended | banned
    position_limit_wh: int | None = None
    rating: int = 0


@dataclass
class Meter:
    meter_id: str
    owner: str
    kind: str  # production | consumption
    category: str
    location_ref: str
    capacity_w: int
    co2_g_per_kwh: int
    registered_period: int
    status: str = "pending"  # pending | active | suspended


@dataclass
class Reading:
    original: int | None
    corrections: list = field(default_factory=list)  # [(energy_wh, reason_ref)]

    @property
    def energy_wh(self) -> int:
        return self.corrections[-1][0] if self.corrections else self.original


@dataclass
class Side:
    owner: str
    point: str
    price: int | None = None
    price_currency: str | None = None


@dataclass
class Token:
    serial: int
    first_period: int
    last_period: int
    energy_wh: int  # per period, constant load
    category: str
    co2_mg: int  # per period
    face_value: int  # minor units per kWh, any sign
    currency: str
    payment_term_s: int
    withdrawal: dict  # side -> (notice_s, fee_per_kwh) or None
    qualification: tuple  # ((kind, mobilisation_s, price_per_kwh), ...) sorted, or ()
    origin_shard: str
    purpose: str  # market | balancing | grid_loss | offset
    producer: Side
    consumer: Side
    status: str = "open"  # open | withdrawn | retired
    grid_fee: int = 0
    obligated: bool = False
    withdrawal_proposal: tuple | None = None  # (side, owner)
    parents: tuple = ()
    children: tuple = ()

    def side(self, name: str) -> Side:
        return self.producer if name == "producer" else self.consumer

    @property
    def periods(self) -> int:
        return self.last_period - self.first_period + 1

    @property
    def total_wh(self) -> int:
        return self.energy_wh * self.periods

    @property
    def total_co2_mg(self) -> int:
        return self.co2_mg * self.periods

    def covers(self, p: int) -> bool:
        return self.first_period <= p <= self.last_period


@dataclass
class Obligation:
    oid: int
    kind: str  # face_value | grid_fee | co2_fee | security_of_supply | postponed | late_fee
    payer: str
    payee: str
    currency: str
    amount: int
    due_time: int
    token: int | None = None
    status: str = "open"  # open | paid | netted
    into: int | None = None


@dataclass
class Movement:
    currency: str
    frm: str | None  # None: mint
    to: str | None  # None: burn
    amount: int
    reason: str


# ------------------------------------------------------------------ the market


class Market:
    """The whole shard-local market as one state machine. See MARKET.md for every rule."""

    def __init__(
        self,
        params: Params,
        members: list[tuple[str, tuple[str, ...]]],
        currencies: list[Currency],
    ) -> None:
        self.p = params
        self.now = params.genesis_time
        self.members: dict[str, Member] = {}
        for address, roles in members:
            self.members[address] = Member(address, frozenset(roles), None)
        go = self.members.get(params.grid_operator)
        if go is None or "grid_operator" not in go.roles:
            raise ModelError("bad_genesis", "the grid operator must be a genesis member")
        if sum("grid_operator" in m.roles for m in self.members.values()) != 1:
            raise ModelError("bad_genesis", "exactly one grid operator per shard")
        co2 = self.members.get(params.co2_authority)
        if co2 is None or "co2_authority" not in co2.roles:
            raise ModelError("bad_genesis", "the CO2 authority must be a genesis member")
        self.currencies = {c.code: c for c in currencies}
        for c in currencies:
            issuer = self.members.get(c.issuer)
            if issuer is None or "bank" not in issuer.roles:
                raise ModelError("bad_genesis", f"issuer of {c.code} must be a genesis bank")
            if c.fee_mode not in ("none", "bps", "fixed") or c.fee_value < 0:
                raise ModelError("bad_genesis", "fee_mode none|bps|fixed, fee_value >= 0")
            if c.fee_mode == "bps" and c.fee_value > BP:
                raise ModelError("bad_genesis", "fee above 10000 bp")
        if params.settlement_currency not in self.currencies:
            raise ModelError("bad_genesis", "settlement currency must be registered")
        if params.period_s <= 0 or params.energy_unit_wh <= 0:
            raise ModelError("bad_genesis", "period_s and energy_unit_wh must be positive")
        self.balances: dict[tuple[str, str], int] = {}
        self.supply: dict[str, int] = {c: 0 for c in self.currencies}
        self.allowances: dict[tuple[str, str, str], int] = {}
        self.deposit_refs: set = set()
        self.redemption_refs: set = set()
        self.escrow: dict[tuple[str, str], int] = {}
        self.tokens: dict[int, Token] = {}
        self.next_serial = 1
        self.meters: dict[str, Meter] = {}
        self.readings: dict[tuple[str, int], Reading] = {}
        self.reconciled: dict[int, dict] = {}
        self.transmission_cost: dict[int, int] = {}
        self.sos_charged: list[tuple[int, int]] = []
        self.obligations: dict[int, Obligation] = {}
        self.next_oid = 1
        self.failures: dict[str, int] = {}
        self.in_default: set = set()
        self.events: list[tuple[str, str, dict]] = []
        self.movements: list[Movement] = []

    # ---------------------------------------------------------------- time

    def set_time(self, t: int) -> None:
        """Advance block time (block times never go backwards)."""
        if t < self.now:
            raise ModelError("time_goes_backwards", f"{t} < {self.now}")
        self.now = t

    def period_start(self, period: int) -> int:
        return self.p.genesis_time + period * self.p.period_s

    def period_end(self, period: int) -> int:
        return self.period_start(period + 1)

    def gate_closure(self, period: int) -> int:
        return self.period_start(period) - self.p.gate_closure_lead_s

    def frozen(self, t: Token) -> bool:
        return self.now >= self.gate_closure(t.first_period)

    # ---------------------------------------------------------------- helpers

    def _emit(self, contract: str, name: str, **fields) -> None:
        self.events.append((contract, name, fields))

    def _member(self, address: str) -> Member:
        m = self.members.get(address)
        if m is None:
            raise ModelError("not_member", f"{address} is not a member of this shard")
        return m

    def _active(self, address: str, roles: frozenset | set | None = None) -> Member:
        m = self._member(address)
        if m.status != "active":
            raise ModelError("not_active", f"{address} is {m.status}")
        if roles is not None and not (m.roles & roles):
            raise ModelError("role_missing", f"{address} needs one of {sorted(roles)}")
        return m

    def _require_go(self, sender: str) -> None:
        self._member(sender)
        if sender != self.p.grid_operator:
            raise ModelError("not_grid_operator", "only the grid operator may do this")

    def _currency(self, code: str) -> Currency:
        c = self.currencies.get(code)
        if c is None:
            raise ModelError("unknown_currency", f"{code} is not issued on this shard")
        return c

    def _token(self, serial: int) -> Token:
        t = self.tokens.get(serial)
        if t is None:
            raise ModelError("unknown_token", f"no token {serial}")
        return t

    def _open_token(self, serial: int) -> Token:
        t = self._token(serial)
        if t.status != "open":
            raise ModelError("token_not_open", f"token {serial} is {t.status}")
        return t

    def _unfrozen(self, t: Token) -> None:
        if self.frozen(t):
            raise ModelError("token_frozen", f"token {t.serial} is past gate closure")

    def _check_side(self, side: str) -> None:
        if side not in SIDES:
            raise ModelError("bad_side", "side must be producer or consumer")

    def _check_energy(self, wh: int, what: str = "energy") -> None:
        if not isinstance(wh, int) or wh <= 0:
            raise ModelError("bad_energy", f"{what} must be a positive integer of Wh")
        if wh % self.p.energy_unit_wh:
            raise ModelError(
                "bad_energy", f"{what} must be a multiple of {self.p.energy_unit_wh} Wh"
            )

    def _check_point(self, owner: str, side: str, point: str, category: str) -> None:
        if point == owner:
            return
        meter = self.meters.get(point)
        if meter is None:
            raise ModelError(
                "bad_point", "a side's point is the owner's address or one of its meters"
            )
        if meter.owner != owner:
            raise ModelError("meter_not_owned", f"meter {point} belongs to {meter.owner}")
        if meter.status != "active":
            raise ModelError("meter_not_active", f"meter {point} is {meter.status}")
        want = "production" if side == "producer" else "consumption"
        if meter.kind != want:
            raise ModelError("meter_kind_mismatch", f"a {side} side needs a {want} meter")
        if want == "production" and meter.category != category:
            raise ModelError("category_mismatch", f"meter is {meter.category}, token is {category}")

    def _fee(self, cur: str, frm: str, to: str, amount: int) -> int:
        c = self.currencies[cur]
        exempt = {c.issuer, self.p.settlement_account}
        if amount <= 0 or frm in exempt or to in exempt or c.fee_mode == "none":
            return 0
        if c.fee_mode == "bps":
            return ceil_div(amount * c.fee_value, BP)
        return c.fee_value

    def balance(self, cur: str, address: str) -> int:
        return self.balances.get((cur, address), 0)

    def _move(self, cur: str, frm: str, to: str, amount: int, reason: str) -> None:
        """Move ``amount`` + issuer fee from ``frm``; the caller has checked the funds."""
        if amount == 0:
            return
        fee = self._fee(cur, frm, to, amount)
        assert self.balance(cur, frm) >= amount + fee and amount > 0
        self.balances[(cur, frm)] = self.balance(cur, frm) - amount - fee
        self.balances[(cur, to)] = self.balance(cur, to) + amount
        self.movements.append(Movement(cur, frm, to, amount, reason))
        self._emit(
            "fiat", "Transferred", currency=cur, frm=frm, to=to, amount=amount, reason=reason
        )
        if fee:
            issuer = self.currencies[cur].issuer
            self.balances[(cur, issuer)] = self.balance(cur, issuer) + fee
            self.movements.append(Movement(cur, frm, issuer, fee, "issuer_fee"))
            self._emit("fiat", "FeePaid", currency=cur, payer=frm, issuer=issuer, amount=fee)

    def _need_funds(self, cur: str, payer: str, to: str, amount: int) -> None:
        need = amount + self._fee(cur, payer, to, amount)
        if self.balance(cur, payer) < need:
            raise ModelError("insufficient_funds", f"{payer} needs {need} {cur}")

    def _live(self) -> list[Token]:
        return [t for t in self.tokens.values() if t.status == "open"]

    def _covering(self, period: int) -> list[Token]:
        return sorted((t for t in self._live() if t.covers(period)), key=lambda t: t.serial)

    def _is_meter(self, point: str, kind: str | None = None) -> bool:
        m = self.meters.get(point)
        return m is not None and (kind is None or m.kind == kind)

    # ---------------------------------------------------------------- membership

    def admit(
        self,
        sender: str,
        address: str,
        roles: tuple[str, ...],
        legal_ref_hash: bytes,
        position_limit_wh: int | None = None,
        rating: int = 0,
    ) -> None:
        self._require_go(sender)
        if address in self.members:
            raise ModelError("already_member", f"{address} is already a member")
        self._check_roles(roles)
        if not isinstance(legal_ref_hash, bytes) or len(legal_ref_hash) != 32:
            raise ModelError("bad_legal_ref", "legal-entity reference is a 32-byte hash")
        self._check_limit(position_limit_wh)
        self.members[address] = Member(
            address,
            frozenset(roles),
            legal_ref_hash,
            position_limit_wh=position_limit_wh,
            rating=rating,
        )
        self._emit("membership", "Admitted", address=address, roles=sorted(roles))

    def _check_roles(self, roles) -> None:
        if not roles or any(r not in ROLES for r in roles):
            raise ModelError("bad_role", f"roles must be a non-empty subset of {ROLES}")
        if "grid_operator" in roles or "meter" in roles:
            raise ModelError(
                "bad_role", "grid_operator is set by genesis; meters by register_meter"
            )

    def _check_limit(self, limit) -> None:
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ModelError("bad_limit", "position limit is an integer >= 0 Wh or None")

    def set_roles(self, sender: str, address: str, roles: tuple[str, ...]) -> None:
        self._require_go(sender)
        m = self._member(address)
        if "meter" in m.roles or address == self.p.grid_operator:
            raise ModelError("bad_role", "roles of meters and the grid operator are fixed")
        self._check_roles(roles)
        if "bank" not in roles and any(c.issuer == address for c in self.currencies.values()):
            raise ModelError("bad_role", "a currency issuer keeps the bank role")
        if "co2_authority" not in roles and address == self.p.co2_authority:
            raise ModelError("bad_role", "the shard's CO2 authority keeps its role")
        m.roles = frozenset(roles)
        self._emit("membership", "RolesChanged", address=address, roles=sorted(roles))

    def suspend(self, sender: str, address: str) -> None:
        self._set_status(sender, address, "suspended", ("active",))

    def reinstate(self, sender: str, address: str) -> None:
        self._set_status(sender, address, "active", ("suspended",))

    def ban(self, sender: str, address: str) -> None:
        self._set_status(sender, address, "banned", ("active", "suspended"))

    def _set_status(self, sender: str, address: str, status: str, allowed_from) -> None:
        self._require_go(sender)
        m = self._member(address)
        if address == self.p.grid_operator:
            raise ModelError("cannot_suspend_grid_operator", "governance replaces a grid operator")
        if address in self.meters:
            raise ModelError("bad_role", "meters are suspended with suspend_meter")
        if m.status not in allowed_from:
            raise ModelError("bad_status", f"{address} is {m.status}")
        m.status = status
        self._emit("membership", "StatusChanged", address=address, status=status)

    def set_position_limit(self, sender: str, address: str, limit_wh: int | None) -> None:
        self._require_go(sender)
        m = self._member(address)
        self._check_limit(limit_wh)
        m.position_limit_wh = limit_wh
        self._emit("membership", "PositionLimitSet", address=address, limit_wh=limit_wh)

    def set_rating(self, sender: str, address: str, rating: int) -> None:
        self._require_go(sender)
        self._member(address).rating = rating
        self._emit("membership", "RatingSet", address=address, rating=rating)

    # ---------------------------------------------------------------- fiat

    def mint(self, sender: str, cur: str, to: str, amount: int, deposit_ref: bytes) -> None:
        c = self._currency(cur)
        self._active(sender)
        if sender != c.issuer:
            raise ModelError("not_issuer", f"only {c.issuer} issues {cur}")
        if amount <= 0:
            raise ModelError("bad_amount", "amount must be a positive integer")
        if self._member(to).status == "banned":
            raise ModelError("not_active", f"{to} is banned")
        if not isinstance(deposit_ref, bytes) or len(deposit_ref) != 32:
            raise ModelError("bad_reference", "deposit reference is a 32-byte hash")
        if (cur, deposit_ref) in self.deposit_refs:
            raise ModelError("duplicate_reference", "this deposit was already minted")
        self.deposit_refs.add((cur, deposit_ref))
        self.supply[cur] += amount
        self.balances[(cur, to)] = self.balance(cur, to) + amount
        self.movements.append(Movement(cur, None, to, amount, "mint"))
        self._emit("fiat", "Minted", currency=cur, to=to, amount=amount)

    def redeem(self, sender: str, cur: str, amount: int, redemption_ref: bytes) -> None:
        self._currency(cur)
        self._member(sender)  # any status: exclusion from the market is not confiscation
        if amount <= 0:
            raise ModelError("bad_amount", "amount must be a positive integer")
        if not isinstance(redemption_ref, bytes) or len(redemption_ref) != 32:
            raise ModelError("bad_reference", "redemption reference is a 32-byte hash")
        if (cur, redemption_ref) in self.redemption_refs:
            raise ModelError("duplicate_reference", "this redemption reference was used")
        if self.balance(cur, sender) < amount:
            raise ModelError("insufficient_funds", f"{sender} holds less than {amount} {cur}")
        self.redemption_refs.add((cur, redemption_ref))
        self.supply[cur] -= amount
        self.balances[(cur, sender)] -= amount
        self.movements.append(Movement(cur, sender, None, amount, "redeem"))
        self._emit("fiat", "Redeemed", currency=cur, holder=sender, amount=amount)

    def transfer(self, sender: str, cur: str, to: str, amount: int) -> None:
        self._currency(cur)
        self._active(sender)
        if self._member(to).status == "banned":
            raise ModelError("not_active", f"{to} is banned")
        if amount <= 0:
            raise ModelError("bad_amount", "amount must be a positive integer")
        if to == sender:
            raise ModelError("self_transfer", "sender and recipient are the same account")
        self._need_funds(cur, sender, to, amount)
        self._move(cur, sender, to, amount, "transfer")

    def approve(self, sender: str, cur: str, spender: str, amount: int) -> None:
        self._currency(cur)
        self._member(sender)
        if amount < 0:
            raise ModelError("bad_amount", "an allowance is an integer >= 0")
        self.allowances[(cur, sender, spender)] = amount
        self._emit("fiat", "Approved", currency=cur, owner=sender, spender=spender, amount=amount)

    def allowance(self, cur: str, owner: str, spender: str) -> int:
        return self.allowances.get((cur, owner, spender), 0)

    # ---------------------------------------------------------------- tokens: emission

    def emit(
        self,
        sender: str,
        *,
        first_period: int,
        last_period: int,
        energy_wh: int,
        category: str,
        co2_g_per_kwh: int,
        face_value: int,
        currency: str,
        payment_term_s: int = 0,
        producer_point: str | None = None,
        consumer_point: str | None = None,
        producer_withdrawal: tuple | None = None,
        consumer_withdrawal: tuple | None = None,
        qualification: dict | None = None,
    ) -> int:
        self._active(sender, MARKET_ROLES)
        if not (0 <= first_period <= last_period):
            raise ModelError("bad_periods", "0 <= first_period <= last_period")
        if last_period - first_period + 1 > self.p.max_token_periods:
            raise ModelError("bad_periods", f"at most {self.p.max_token_periods} periods")
        if self.now >= self.gate_closure(first_period):
            raise ModelError("gate_closed", f"period {first_period} is past gate closure")
        self._check_energy(energy_wh, "energy per period")
        if category not in CATEGORIES:
            raise ModelError("bad_category", f"category must be one of {CATEGORIES}")
        if not isinstance(co2_g_per_kwh, int) or co2_g_per_kwh < 0:
            raise ModelError("bad_co2", "lifecycle CO2 is an integer >= 0 g/kWh")
        self._currency(currency)
        if payment_term_s < 0:
            raise ModelError("bad_payment_term", "payment term is >= 0 seconds")
        withdrawal = {}
        for side, terms in (("producer", producer_withdrawal), ("consumer", consumer_withdrawal)):
            if terms is not None and (len(terms) != 2 or terms[0] < 0 or terms[1] < 0):
                raise ModelError("bad_withdrawal_terms", "(notice_s >= 0, fee_per_kwh >= 0)")
            withdrawal[side] = tuple(terms) if terms is not None else None
        qual = self._check_qualification(qualification)
        self._require_collateral(sender)
        producer_point = producer_point or sender
        consumer_point = consumer_point or sender
        self._check_point(sender, "producer", producer_point, category)
        self._check_point(sender, "consumer", consumer_point, category)
        t = Token(
            serial=self.next_serial,
            first_period=first_period,
            last_period=last_period,
            energy_wh=energy_wh,
            category=category,
            co2_mg=energy_wh * co2_g_per_kwh,
            face_value=face_value,
            currency=currency,
            payment_term_s=payment_term_s,
            withdrawal=withdrawal,
            qualification=qual,
            origin_shard=self.p.shard_id,
            purpose="market",
            producer=Side(sender, producer_point),
            consumer=Side(sender, consumer_point),
        )
        self.next_serial += 1
        self.tokens[t.serial] = t
        self._emit("energy_tokens", "Emitted", serial=t.serial, creator=sender)
        return t.serial

    def _check_qualification(self, q: dict | None) -> tuple:
        if not q:
            return ()
        out = []
        for kind, terms in q.items():
            if kind not in QUALIFICATION_KINDS or len(terms) != 2 or terms[0] < 0:
                raise ModelError(
                    "bad_qualification",
                    f"kinds {QUALIFICATION_KINDS}: (mobilisation_s >= 0, price)",
                )
            out.append((kind, terms[0], terms[1]))
        return tuple(sorted(out))

    def _require_collateral(self, address: str) -> None:
        m = self.members[address]
        if m.rating < self.p.rating_threshold:
            held = self.escrow.get((self.p.settlement_currency, address), 0)
            if held < self.p.min_collateral:
                raise ModelError(
                    "collateral_required",
                    f"rating below threshold: escrow {self.p.min_collateral} first",
                )

    # ---------------------------------------------------------------- tokens: trading

    def offer_side(
        self, sender: str, serial: int, side: str, price: int | None, currency: str | None = None
    ) -> None:
        self._check_side(side)
        self._active(sender)
        t = self._open_token(serial)
        if t.side(side).owner != sender:
            raise ModelError("not_side_owner", f"{sender} does not own the {side} side")
        if t.purpose == "offset":
            raise ModelError("not_tradable", "offset tokens are not traded")
        self._unfrozen(t)
        if price is not None:
            self._currency(currency)
        s = t.side(side)
        s.price, s.price_currency = (price, currency) if price is not None else (None, None)
        self._emit(
            "energy_tokens",
            "Offered",
            serial=serial,
            side=side,
            price=price,
            currency=s.price_currency,
        )

    def buy_side(
        self,
        sender: str,
        serial: int,
        side: str,
        expected_price: int,
        expected_currency: str,
        point: str | None = None,
        *,
        _purpose: str | None = None,
    ) -> None:
        self._check_side(side)
        buyer_roles = frozenset({"grid_operator"}) if _purpose else MARKET_ROLES
        self._active(sender, buyer_roles)
        t = self._open_token(serial)
        self._unfrozen(t)
        s = t.side(side)
        seller = s.owner
        if s.price is None:
            raise ModelError("not_for_sale", f"the {side} side of {serial} is not offered")
        if (s.price, s.price_currency) != (expected_price, expected_currency):
            raise ModelError("price_changed", f"offer is {s.price} {s.price_currency}")
        if seller == sender:
            raise ModelError("self_trade", "buyer already owns this side")
        if self.members[seller].status != "active":
            raise ModelError("seller_not_active", f"{seller} is {self.members[seller].status}")
        point = point or sender
        self._check_point(sender, side, point, t.category)
        if not _purpose:
            self._require_collateral(sender)
        sign = 1 if side == "consumer" else -1  # a consumer side makes its owner long
        delta = {sender: sign * t.energy_wh, seller: -sign * t.energy_wh}
        for who, d in delta.items():
            self._check_position(who, t, d)
        price, cur = s.price, s.price_currency
        payer, payee = (sender, seller) if price > 0 else (seller, sender)
        if price:
            self._need_funds(cur, payer, payee, abs(price))
        self._move(cur, payer, payee, abs(price), f"side_purchase:{serial}:{side}")
        s.owner, s.point, s.price, s.price_currency = sender, point, None, None
        if t.withdrawal_proposal is not None:
            t.withdrawal_proposal = None
        if _purpose:
            t.purpose = _purpose
        self._emit(
            "energy_tokens",
            "SideSold",
            serial=serial,
            side=side,
            seller=seller,
            buyer=sender,
            price=price,
            currency=cur,
        )

    def net_position(self, address: str, period: int) -> int:
        """Consumer sides minus producer sides owned, Wh in ``period`` (offsets excluded)."""
        net = 0
        for t in self._covering(period):
            if t.purpose == "offset":
                continue
            if t.consumer.owner == address:
                net += t.energy_wh
            if t.producer.owner == address:
                net -= t.energy_wh
        return net

    def _check_position(self, address: str, t: Token, delta: int) -> None:
        m = self.members[address]
        if address == self.p.grid_operator or m.position_limit_wh is None:
            return
        for p in range(t.first_period, t.last_period + 1):
            before = self.net_position(address, p)
            after = before + delta
            if abs(after) > m.position_limit_wh and abs(after) > abs(before):
                raise ModelError(
                    "position_limit_exceeded", f"{address} would hold {after} Wh in period {p}"
                )

    def allocate_side(self, sender: str, serial: int, side: str, point: str) -> None:
        self._check_side(side)
        self._active(sender)
        t = self._open_token(serial)
        if t.side(side).owner != sender:
            raise ModelError("not_side_owner", f"{sender} does not own the {side} side")
        self._unfrozen(t)
        self._check_point(sender, side, point, t.category)
        t.side(side).point = point
        self._emit("energy_tokens", "SideAllocated", serial=serial, side=side, point=point)

    def offers(
        self,
        *,
        side: str | None = None,
        first_period: int | None = None,
        last_period: int | None = None,
        category: str | None = None,
        max_co2_g_per_kwh: int | None = None,
        min_price: int | None = None,
        max_price: int | None = None,
        currency: str | None = None,
    ) -> list[dict]:
        """Open offers by serial, producer side first; a period filter keeps overlapping tokens."""
        out = []
        for t in sorted(self._live(), key=lambda t: t.serial):
            if self.frozen(t) or t.purpose == "offset":
                continue
            if first_period is not None and t.last_period < first_period:
                continue
            if last_period is not None and t.first_period > last_period:
                continue
            if category is not None and t.category != category:
                continue
            if max_co2_g_per_kwh is not None and t.co2_mg > max_co2_g_per_kwh * t.energy_wh:
                continue
            for name in SIDES:
                s = t.side(name)
                if s.price is None or (side is not None and name != side):
                    continue
                if self.members[s.owner].status != "active":
                    continue
                if currency is not None and s.price_currency != currency:
                    continue
                if min_price is not None and s.price < min_price:
                    continue
                if max_price is not None and s.price > max_price:
                    continue
                out.append(
                    {
                        "serial": t.serial,
                        "side": name,
                        "owner": s.owner,
                        "price": s.price,
                        "currency": s.price_currency,
                    }
                )
        return out

    # ---------------------------------------------------------------- split and merge

    def _owns_both(self, sender: str, t: Token) -> None:
        if t.producer.owner != sender or t.consumer.owner != sender:
            raise ModelError(
                "not_owner_of_both_sides", "split and merge need one owner of both sides"
            )
        if t.purpose == "offset":
            raise ModelError("not_tradable", "offset tokens are not split or merged")

    def _child(self, t: Token, **changes) -> Token:
        c = replace(
            t,
            serial=self.next_serial,
            producer=replace(t.producer, price=None, price_currency=None),
            consumer=replace(t.consumer, price=None, price_currency=None),
            withdrawal=dict(t.withdrawal),
            withdrawal_proposal=None,
            parents=(t.serial,),
            children=(),
            status="open",
            **changes,
        )
        self.next_serial += 1
        self.tokens[c.serial] = c
        return c

    def split_volume(self, sender: str, serial: int, parts_wh: list[int]) -> list[int]:
        self._active(sender)
        t = self._open_token(serial)
        self._owns_both(sender, t)
        self._unfrozen(t)
        if len(parts_wh) < 2:
            raise ModelError("bad_split", "a split makes at least two tokens")
        for e in parts_wh:
            self._check_energy(e, "each part")
        if sum(parts_wh) != t.energy_wh:
            raise ModelError("bad_split", f"parts must sum to {t.energy_wh} Wh per period")
        co2 = [t.co2_mg * e // t.energy_wh for e in parts_wh[:-1]]
        co2.append(t.co2_mg - sum(co2))  # the last part takes the rounding remainder
        kids = [self._child(t, energy_wh=e, co2_mg=c) for e, c in zip(parts_wh, co2, strict=True)]
        return self._retire(t, kids, "SplitByVolume")

    def split_period(self, sender: str, serial: int, at_period: int) -> list[int]:
        self._active(sender)
        t = self._open_token(serial)
        self._owns_both(sender, t)
        self._unfrozen(t)
        if not (t.first_period < at_period <= t.last_period):
            raise ModelError("bad_split", f"cut must be in ({t.first_period}, {t.last_period}]")
        kids = [self._child(t, last_period=at_period - 1), self._child(t, first_period=at_period)]
        return self._retire(t, kids, "SplitByPeriod")

    def _retire(self, t: Token, kids: list[Token], event: str) -> list[int]:
        t.status = "retired"
        t.children = tuple(k.serial for k in kids)
        self._emit("energy_tokens", event, serial=t.serial, children=list(t.children))
        return list(t.children)

    _MERGE_KEYS = (
        "category",
        "face_value",
        "currency",
        "payment_term_s",
        "withdrawal",
        "qualification",
        "origin_shard",
        "purpose",
    )

    def merge(self, sender: str, serials: list[int]) -> int:
        self._active(sender)
        if len(serials) < 2 or len(set(serials)) != len(serials):
            raise ModelError("bad_merge", "merge needs at least two distinct tokens")
        ts = [self._open_token(s) for s in serials]
        for t in ts:
            self._owns_both(sender, t)
            self._unfrozen(t)
        a = ts[0]
        for t in ts[1:]:
            for k in self._MERGE_KEYS:
                if getattr(t, k) != getattr(a, k):
                    raise ModelError("not_mergeable", f"tokens differ in {k}")
            if (t.producer.point, t.consumer.point) != (a.producer.point, a.consumer.point):
                raise ModelError("not_mergeable", "tokens differ in their points")
        if all((t.first_period, t.last_period) == (a.first_period, a.last_period) for t in ts):
            changes = {
                "energy_wh": sum(t.energy_wh for t in ts),
                "co2_mg": sum(t.co2_mg for t in ts),
            }
        else:
            ts_sorted = sorted(ts, key=lambda t: t.first_period)
            for x, y in zip(ts_sorted, ts_sorted[1:], strict=False):
                if y.first_period != x.last_period + 1:
                    raise ModelError("not_mergeable", "period ranges are not contiguous")
            if any((t.energy_wh, t.co2_mg) != (a.energy_wh, a.co2_mg) for t in ts):
                raise ModelError("not_mergeable", "a period merge needs equal energy and CO2")
            first, last = ts_sorted[0].first_period, ts_sorted[-1].last_period
            if last - first + 1 > self.p.max_token_periods:
                raise ModelError("bad_periods", f"at most {self.p.max_token_periods} periods")
            changes = {"first_period": first, "last_period": last}
        merged = self._child(a, **changes)
        merged.parents = tuple(serials)
        for t in ts:
            t.status, t.children = "retired", (merged.serial,)
        self._emit("energy_tokens", "Merged", parents=list(serials), serial=merged.serial)
        return merged.serial

    # ---------------------------------------------------------------- incidents (withdrawal)

    def propose_withdrawal(self, sender: str, serial: int) -> None:
        self._active(sender)
        t = self._open_token(serial)
        if t.purpose == "offset":
            raise ModelError("not_tradable", "offset tokens cannot be withdrawn")
        sides = [s for s in SIDES if t.side(s).owner == sender]
        if not sides:
            raise ModelError("not_side_owner", f"{sender} owns no side of {serial}")
        self._unfrozen(t)
        if len(sides) == 2:
            self._withdraw(t, "mutual")
            return
        t.withdrawal_proposal = (sides[0], sender)
        self._emit("energy_tokens", "WithdrawalProposed", serial=serial, by=sender)

    def accept_withdrawal(self, sender: str, serial: int) -> None:
        self._active(sender)
        t = self._open_token(serial)
        prop = t.withdrawal_proposal
        if prop is None or t.side(prop[0]).owner != prop[1]:
            raise ModelError("no_withdrawal_proposal", f"nothing to accept on {serial}")
        other = "consumer" if prop[0] == "producer" else "producer"
        if t.side(other).owner != sender:
            raise ModelError("not_side_owner", f"{sender} does not own the {other} side")
        self._unfrozen(t)
        self._withdraw(t, "mutual")

    def withdraw_unilateral(self, sender: str, serial: int, side: str) -> None:
        self._check_side(side)
        self._active(sender)
        t = self._open_token(serial)
        if t.side(side).owner != sender:
            raise ModelError("not_side_owner", f"{sender} does not own the {side} side")
        self._unfrozen(t)
        other = t.side("consumer" if side == "producer" else "producer").owner
        if other == sender:
            self._withdraw(t, "mutual")
            return
        terms = t.withdrawal.get(side)
        if terms is None:
            raise ModelError("no_withdrawal_terms", f"the {side} side has no withdrawal terms")
        notice_s, fee_per_kwh = terms
        if self.now > self.period_start(t.first_period) - notice_s:
            raise ModelError("withdrawal_notice_passed", f"needs {notice_s} s notice")
        fee = payment(t.total_wh, fee_per_kwh)
        self._need_funds(t.currency, sender, other, fee)
        self._move(t.currency, sender, other, fee, f"withdrawal_fee:{serial}")
        self._withdraw(t, f"unilateral:{side}")

    def _withdraw(self, t: Token, how: str) -> None:
        t.status = "withdrawn"
        t.withdrawal_proposal = None
        for s in SIDES:
            t.side(s).price = t.side(s).price_currency = None
        self._emit("energy_tokens", "Withdrawn", serial=t.serial, how=how)

    # ---------------------------------------------------------------- pre-delivery (grid operator)

    def procure(
        self,
        sender: str,
        serial: int,
        side: str,
        purpose: str,
        expected_price: int,
        expected_currency: str,
    ) -> None:
        self._require_go(sender)
        if purpose not in ("balancing", "grid_loss"):
            raise ModelError("bad_purpose", "purpose is balancing or grid_loss")
        t = self._open_token(serial)
        if purpose == "balancing" and not t.qualification:
            raise ModelError("not_qualified", "balancing needs a token with a qualification")
        if purpose == "grid_loss" and side != "consumer":
            raise ModelError("bad_side", "grid losses are covered by buying consumer sides")
        if t.purpose != "market":
            raise ModelError("not_tradable", f"token is already flagged {t.purpose}")
        self.buy_side(
            sender, serial, side, expected_price, expected_currency, sender, _purpose=purpose
        )

    def redispatch(
        self,
        sender: str,
        serial: int,
        side: str,
        compensation_per_kwh: int,
        first_period: int | None = None,
        last_period: int | None = None,
    ) -> int:
        """Move a side (or a period range of it) to the grid operator, paying compensation.

        Returns the serial of the token whose side was taken (a child when a range is cut).
        """
        self._require_go(sender)
        self._check_side(side)
        t = self._open_token(serial)
        if t.purpose == "offset":
            raise ModelError("not_tradable", "offset tokens are not redispatched")
        first = t.first_period if first_period is None else first_period
        last = t.last_period if last_period is None else last_period
        if not (t.first_period <= first <= last <= t.last_period):
            raise ModelError("bad_periods", "range must lie within the token")
        if self.now >= self.period_start(first):
            raise ModelError("period_started", f"period {first} has started")
        prev = t.side(side).owner
        if prev == sender:
            raise ModelError("already_owned", "the grid operator already owns this side")
        if compensation_per_kwh < 0:
            raise ModelError("bad_price", "compensation is >= 0 per kWh")
        for kind, _, price in t.qualification:
            if kind == "redispatch" and compensation_per_kwh < price:
                raise ModelError("compensation_below_qualified_price", f"at least {price}")
        amount = payment(t.energy_wh * (last - first + 1), compensation_per_kwh)
        self._need_funds(t.currency, sender, prev, amount)
        target = t
        if (first, last) != (t.first_period, t.last_period):
            kids = []
            if first > t.first_period:
                kids.append(self._child(t, last_period=first - 1))
            target = self._child(t, first_period=first, last_period=last)
            kids.append(target)
            if last < t.last_period:
                kids.append(self._child(t, first_period=last + 1))
            self._retire(t, kids, "SplitByPeriod")
        self._move(t.currency, sender, prev, amount, f"redispatch:{target.serial}:{side}")
        s = target.side(side)
        s.owner, s.point, s.price, s.price_currency = sender, sender, None, None
        target.withdrawal_proposal = None
        self._emit(
            "energy_tokens",
            "Redispatched",
            serial=target.serial,
            side=side,
            previous_owner=prev,
            compensation=amount,
        )
        return target.serial

    # ---------------------------------------------------------------- meters

    def register_meter(
        self,
        sender: str,
        meter_id: str,
        owner: str,
        kind: str,
        category: str,
        location_ref: str,
        capacity_w: int,
        co2_g_per_kwh: int = 0,
    ) -> None:
        self._require_go(sender)
        if meter_id in self.members or meter_id in self.meters:
            raise ModelError("already_member", f"{meter_id} is already registered")
        o = self._member(owner)
        if o.status == "banned":
            raise ModelError("not_active", f"{owner} is banned")
        if kind not in ("production", "consumption"):
            raise ModelError("bad_meter_kind", "kind is production or consumption")
        need = {"producer"} if kind == "production" else {"consumer", "retailer"}
        if not (o.roles & need):
            raise ModelError("role_missing", f"{owner} needs one of {sorted(need)}")
        if category not in CATEGORIES or (kind == "consumption" and category != "other"):
            raise ModelError("bad_category", "production: a category; consumption: other")
        if capacity_w <= 0 or co2_g_per_kwh < 0:
            raise ModelError("bad_meter", "capacity_w > 0 and co2_g_per_kwh >= 0")
        period = (self.now - self.p.genesis_time) // self.p.period_s
        self.meters[meter_id] = Meter(
            meter_id, owner, kind, category, location_ref, capacity_w, co2_g_per_kwh, period
        )
        self.members[meter_id] = Member(meter_id, frozenset({"meter"}), None)
        self._emit("meters", "MeterRegistered", meter=meter_id, owner=owner, kind=kind)

    def _meter(self, meter_id: str) -> Meter:
        m = self.meters.get(meter_id)
        if m is None:
            raise ModelError("unknown_meter", f"{meter_id} is not a registered meter")
        return m

    def attest_meter(self, sender: str, meter_id: str) -> None:
        self._active(sender)
        m = self._meter(meter_id)
        if m.owner != sender:
            raise ModelError("not_meter_owner", f"{meter_id} belongs to {m.owner}")
        if m.status != "pending":
            raise ModelError("bad_status", f"meter is {m.status}")
        m.status = "active"
        self._emit("meters", "MeterAttested", meter=meter_id)

    def suspend_meter(self, sender: str, meter_id: str) -> None:
        self._require_go(sender)
        m = self._meter(meter_id)
        if m.status != "active":
            raise ModelError("bad_status", f"meter is {m.status}")
        m.status = "suspended"
        self._emit("meters", "MeterSuspended", meter=meter_id)

    def reinstate_meter(self, sender: str, meter_id: str) -> None:
        self._require_go(sender)
        m = self._meter(meter_id)
        if m.status != "suspended":
            raise ModelError("bad_status", f"meter is {m.status}")
        m.status = "active"
        self._emit("meters", "MeterReinstated", meter=meter_id)

    def _max_reading(self, m: Meter) -> int:
        return m.capacity_w * self.p.period_s // 3600

    def _check_reading(self, m: Meter, period: int, energy_wh: int) -> None:
        if period < 0 or self.now < self.period_end(period):
            raise ModelError("period_not_ended", f"period {period} has not ended")
        if period in self.reconciled:
            raise ModelError("period_reconciled", f"period {period} is reconciled")
        if not isinstance(energy_wh, int) or energy_wh < 0 or energy_wh % self.p.energy_unit_wh:
            raise ModelError("bad_energy", "a reading is >= 0 Wh, a multiple of the energy unit")
        if energy_wh > self._max_reading(m):
            raise ModelError("reading_exceeds_capacity", f"at most {self._max_reading(m)} Wh")

    def submit_reading(self, sender: str, period: int, energy_wh: int) -> None:
        """A transaction signed by the meter's own key (``sender`` is the meter)."""
        m = self._meter(sender)
        if m.status != "active":
            raise ModelError("meter_not_active", f"meter is {m.status}")
        self._check_reading(m, period, energy_wh)
        if (sender, period) in self.readings:
            raise ModelError("duplicate_reading", f"period {period} already has a reading")
        self.readings[(sender, period)] = Reading(energy_wh)
        self._emit("meters", "ReadingRecorded", meter=sender, period=period, energy_wh=energy_wh)

    def correct_reading(
        self, sender: str, meter_id: str, period: int, energy_wh: int, reason_ref: bytes
    ) -> None:
        self._require_go(sender)
        m = self._meter(meter_id)
        self._check_reading(m, period, energy_wh)
        if not isinstance(reason_ref, bytes) or len(reason_ref) != 32:
            raise ModelError("bad_reference", "reason reference is a 32-byte hash")
        r = self.readings.setdefault((meter_id, period), Reading(None))
        r.corrections.append((energy_wh, reason_ref))
        self._emit(
            "meters",
            "ReadingCorrected",
            meter=meter_id,
            period=period,
            original=r.original,
            energy_wh=energy_wh,
        )

    def reading(self, meter_id: str, period: int) -> int | None:
        r = self.readings.get((meter_id, period))
        return None if r is None else r.energy_wh

    # ---------------------------------------------------------------- reconciliation

    def vwap(self, period: int) -> int:
        """Volume-weighted face value of traded market tokens in ``period``, rounded to the
        nearest minor unit per kWh (ties toward +infinity); the reference price if none."""
        num = den = 0
        for t in self._covering(period):
            if t.purpose not in ("market", "grid_loss"):
                continue
            if t.currency != self.p.settlement_currency or t.producer.owner == t.consumer.owner:
                continue
            num += t.energy_wh * t.face_value
            den += t.energy_wh
        return (2 * num + den) // (2 * den) if den else self.p.reference_price_per_kwh

    def imbalance_prices(self, vwap: int) -> tuple[int, int]:
        spread = ceil_div(abs(vwap) * self.p.imbalance_spread_bp, BP)
        return vwap - spread, vwap + spread

    def _owner_of_point(self, point: str) -> str:
        m = self.meters.get(point)
        return m.owner if m is not None else point

    def positions_at(self, period: int, include_offsets: bool = True) -> dict[str, int]:
        """Net scheduled injection per point: producer sides minus consumer sides, Wh."""
        pos: dict[str, int] = {}
        for t in self._covering(period):
            if t.purpose == "offset" and not include_offsets:
                continue
            pos[t.producer.point] = pos.get(t.producer.point, 0) + t.energy_wh
            pos[t.consumer.point] = pos.get(t.consumer.point, 0) - t.energy_wh
        return pos

    def measured_injection(self, point: str, period: int) -> int:
        m = self.meters.get(point)
        if m is None:
            return 0
        e = self.reading(point, period) or 0
        return e if m.kind == "production" else -e

    def _reconciled_points(self, period: int) -> list[str]:
        go = self.p.grid_operator
        pts = set(self.positions_at(period, include_offsets=False))
        for m in self.meters.values():
            active = m.status == "active" and m.registered_period <= period
            if active or (m.meter_id, period) in self.readings:
                pts.add(m.meter_id)
        return sorted(p for p in pts if self._owner_of_point(p) != go)

    def reconcile_period(self, sender: str, period: int) -> list[int]:
        self._require_go(sender)
        if period < 0 or self.now < self.period_end(period) + self.p.reading_grace_s:
            raise ModelError("period_not_closed", f"period {period} is still open for readings")
        if period in self.reconciled:
            raise ModelError("already_reconciled", f"period {period} is reconciled")
        points = self._reconciled_points(period)
        missing = [p for p in points if p in self.meters and self.reading(p, period) is None]
        if missing:
            raise ModelError("missing_reading", f"no reading for {missing[0]} in {period}")
        vwap = self.vwap(period)
        low, high = self.imbalance_prices(vwap)
        pos = self.positions_at(period, include_offsets=False)
        go, sc = self.p.grid_operator, self.p.settlement_currency
        imbalances, created = {}, []
        for point in points:
            imb = self.measured_injection(point, period) - pos.get(point, 0)
            if imb == 0:
                continue
            imbalances[point] = imb
            owner = self._owner_of_point(point)
            meter = self.meters.get(point)
            if imb > 0 and meter is not None and meter.kind == "production":
                category, co2 = meter.category, meter.co2_g_per_kwh
            else:
                category, co2 = "other", self.p.balancing_co2_g_per_kwh
            prod, cons = (
                (Side(owner, point), Side(go, go))
                if imb > 0
                else (Side(go, go), Side(owner, point))
            )
            t = Token(
                serial=self.next_serial,
                first_period=period,
                last_period=period,
                energy_wh=abs(imb),
                category=category,
                co2_mg=abs(imb) * co2,
                face_value=low if imb > 0 else high,
                currency=sc,
                payment_term_s=self.p.offset_payment_term_s,
                withdrawal={"producer": None, "consumer": None},
                qualification=(),
                origin_shard=self.p.shard_id,
                purpose="offset",
                producer=prod,
                consumer=cons,
            )
            self.next_serial += 1
            self.tokens[t.serial] = t
            created.append(t.serial)
            self._emit(
                "reconciliation",
                "OffsetCreated",
                serial=t.serial,
                point=point,
                imbalance_wh=imb,
                face_value=t.face_value,
            )
        self.reconciled[period] = {
            "vwap": vwap,
            "price_low": low,
            "price_high": high,
            "imbalances": imbalances,
            "offsets": created,
            "ba_position": sum(imbalances.values()),
        }
        self._emit(
            "reconciliation",
            "PeriodReconciled",
            period=period,
            vwap=vwap,
            ba_position=sum(imbalances.values()),
        )
        return created

    def ba_position(self, period: int) -> int:
        """Energy the balancing authority bought minus sold through offset tokens."""
        go, net = self.p.grid_operator, 0
        for t in self._covering(period):
            if t.purpose != "offset":
                continue
            if t.consumer.owner == go:
                net += t.energy_wh
            if t.producer.owner == go:
                net -= t.energy_wh
        return net

    # ---------------------------------------------------------------- grid fees

    def _final_consumption(self, t: Token) -> bool:
        return self._is_meter(t.consumer.point, "consumption")

    def publish_transmission_cost(self, sender: str, period: int, cost: int) -> dict[int, int]:
        self._require_go(sender)
        if period not in self.reconciled:
            raise ModelError("period_not_reconciled", f"reconcile period {period} first")
        if period in self.transmission_cost:
            raise ModelError("already_published", f"period {period} already has its cost")
        if not isinstance(cost, int) or cost < 0:
            raise ModelError("bad_amount", "transmission cost is an integer >= 0")
        base = [
            (t.serial, t.energy_wh) for t in self._covering(period) if self._final_consumption(t)
        ]
        if cost > 0 and not base:
            raise ModelError("no_delivered_energy", f"no final consumption in period {period}")
        shares = largest_remainder(cost, base) if cost else {}
        for serial, fee in shares.items():
            self.tokens[serial].grid_fee += fee
        self.transmission_cost[period] = cost
        self._emit(
            "grid_fees", "TransmissionCostAllocated", period=period, cost=cost, tokens=len(shares)
        )
        return shares

    def _consumption_of(self, address: str, first: int, last: int) -> int:
        return sum(
            self.reading(m.meter_id, p) or 0
            for m in self.meters.values()
            if m.owner == address and m.kind == "consumption"
            for p in range(first, last + 1)
        )

    def charge_security_of_supply(
        self, sender: str, first_period: int, last_period: int, amount: int
    ) -> dict[str, int]:
        self._require_go(sender)
        if not (0 <= first_period <= last_period):
            raise ModelError("bad_periods", "0 <= first_period <= last_period")
        for p in range(first_period, last_period + 1):
            if p not in self.reconciled:
                raise ModelError("period_not_reconciled", f"reconcile period {p} first")
        for a, b in self.sos_charged:
            if a <= last_period and first_period <= b:
                raise ModelError("already_charged", f"periods {a}..{b} were charged")
        if not isinstance(amount, int) or amount < 0:
            raise ModelError("bad_amount", "amount is an integer >= 0")
        payers = sorted(
            {
                m.owner
                for m in self.meters.values()
                if m.kind == "consumption"
                and m.registered_period <= last_period
                and self.members[m.owner].status != "banned"
                and m.owner != self.p.grid_operator
            }
        )
        if self.p.sos_mode == "fixed":
            shares = {a: amount for a in payers}
        else:
            weights = [(a, self._consumption_of(a, first_period, last_period)) for a in payers]
            if amount and sum(w for _, w in weights) == 0:
                raise ModelError("no_delivered_energy", "no consumption in these periods")
            shares = largest_remainder(amount, weights) if amount else {}
        self.sos_charged.append((first_period, last_period))
        for a, fee in shares.items():
            if fee:
                self._obligation(
                    "security_of_supply",
                    a,
                    self.p.grid_operator,
                    self.p.settlement_currency,
                    fee,
                    None,
                )
        self._emit(
            "grid_fees",
            "SecurityOfSupplyCharged",
            first=first_period,
            last=last_period,
            amount=amount,
        )
        return shares

    # ---------------------------------------------------------------- settlement

    def deposit_collateral(self, sender: str, cur: str, amount: int) -> None:
        self._currency(cur)
        m = self._member(sender)
        if m.status == "banned":
            raise ModelError("not_active", f"{sender} is banned")
        if amount <= 0:
            raise ModelError("bad_amount", "amount must be a positive integer")
        self._need_funds(cur, sender, self.p.settlement_account, amount)
        self._move(cur, sender, self.p.settlement_account, amount, "collateral_deposit")
        self.escrow[(cur, sender)] = self.escrow.get((cur, sender), 0) + amount

    def release_collateral(self, sender: str, cur: str, amount: int) -> None:
        self._currency(cur)
        m = self._active(sender)
        held = self.escrow.get((cur, sender), 0)
        if amount <= 0 or amount > held:
            raise ModelError("bad_amount", f"release between 1 and {held}")
        if sender in self.in_default:
            raise ModelError("in_default", "collateral stays in escrow while in default")
        if (
            cur == self.p.settlement_currency
            and m.rating < self.p.rating_threshold
            and held - amount < self.p.min_collateral
        ):
            raise ModelError("collateral_required", f"keep at least {self.p.min_collateral}")
        self.escrow[(cur, sender)] = held - amount
        self._move(cur, self.p.settlement_account, sender, amount, "collateral_release")

    def _obligation(self, kind, payer, payee, cur, amount, token, due_time=None) -> Obligation:
        o = Obligation(
            self.next_oid,
            kind,
            payer,
            payee,
            cur,
            amount,
            self.now if due_time is None else due_time,
            token,
        )
        self.next_oid += 1
        self.obligations[o.oid] = o
        self._emit(
            "settlement",
            "ObligationCreated",
            id=o.oid,
            kind=kind,
            payer=payer,
            payee=payee,
            currency=cur,
            amount=amount,
            token=token,
        )
        return o

    def token_due(self, t: Token) -> bool:
        if t.status != "open" or t.obligated:
            return False
        for p in range(t.first_period, t.last_period + 1):
            if p not in self.reconciled or p not in self.transmission_cost:
                return False
        return self.now >= self.period_end(t.last_period) + t.payment_term_s

    def co2_fee(self, t: Token) -> int:
        if not (self._final_consumption(t) or t.purpose == "grid_loss"):
            return 0
        return t.total_co2_mg * self.p.co2_price_per_t // MG_PER_TONNE

    def _create_due_obligations(self) -> None:
        go, co2 = self.p.grid_operator, self.p.co2_authority
        sc = self.p.settlement_currency
        for t in sorted(self.tokens.values(), key=lambda t: t.serial):
            if not self.token_due(t):
                continue
            t.obligated = True
            cons, prod = t.consumer.owner, t.producer.owner
            face = payment(t.total_wh, t.face_value)
            if face and cons != prod:
                payer, payee = (cons, prod) if face > 0 else (prod, cons)
                self._obligation("face_value", payer, payee, t.currency, abs(face), t.serial)
            if t.grid_fee and cons != go:
                self._obligation("grid_fee", cons, go, sc, t.grid_fee, t.serial)
            fee = self.co2_fee(t)
            if fee and cons != co2:
                self._obligation("co2_fee", cons, co2, sc, fee, t.serial)

    def _can_pay(self, cur: str, payer: str, payee: str, amount: int) -> bool:
        need = amount + self._fee(cur, payer, payee, amount)
        return (
            self.balance(cur, payer) >= need
            and self.allowance(cur, payer, self.p.settlement_account) >= need
        )

    def run_settlement(self, sender: str) -> dict:
        """Create due obligations, net per pair and currency, pay, postpone, default."""
        self._require_go(sender)
        self._create_due_obligations()
        groups: dict[tuple[str, str, str], list[Obligation]] = {}
        for o in sorted(self.obligations.values(), key=lambda o: o.oid):
            if o.status != "open" or o.due_time > self.now:
                continue
            if any(self.members[x].status != "active" for x in (o.payer, o.payee)):
                continue  # blocked while a party is suspended or banned
            a, b = sorted((o.payer, o.payee))
            groups.setdefault((o.currency, a, b), []).append(o)
        pending = []
        for (cur, a, b), obs in sorted(groups.items()):
            net = sum(o.amount if o.payer == a else -o.amount for o in obs)
            if net == 0:
                for o in obs:
                    o.status = "paid"
                self._emit("settlement", "Netted", currency=cur, a=a, b=b, ids=[o.oid for o in obs])
                continue
            payer, payee = (a, b) if net > 0 else (b, a)
            pending.append((cur, payer, payee, abs(net), obs))
        attempted = {g[1] for g in pending}
        progress = True
        while progress:  # passes until no payment succeeds: incoming funds enable later pairs
            progress = False
            still = []
            for g in pending:
                cur, payer, payee, amount, obs = g
                if self._can_pay(cur, payer, payee, amount):
                    fee = self._fee(cur, payer, payee, amount)
                    key = (cur, payer, self.p.settlement_account)
                    self.allowances[key] -= amount + fee
                    self._move(
                        cur,
                        payer,
                        payee,
                        amount,
                        "settlement:" + ",".join(f"{o.kind}#{o.oid}" for o in obs),
                    )
                    for o in obs:
                        o.status = "paid"
                    progress = True
                else:
                    still.append(g)
            pending = still
        failed_payers = {g[1] for g in pending}
        for who in sorted(attempted):
            self.failures[who] = self.failures.get(who, 0) + 1 if who in failed_payers else 0
        for who in sorted(failed_payers):
            if self.failures[who] >= self.p.default_after_failures and who not in self.in_default:
                self.in_default.add(who)
                self._emit("settlement", "Defaulted", participant=who, failures=self.failures[who])
        postponed = [self._postpone(*g) for g in pending]
        self._escrow_pays(postponed)
        for who in sorted(self.in_default):
            if not any(o.status == "open" and o.payer == who for o in self.obligations.values()):
                self.in_default.discard(who)
                self.failures[who] = 0
                self._emit("settlement", "DefaultCured", participant=who)
        return {
            "failed": sorted((g[0], g[1], g[2]) for g in pending),
            "in_default": sorted(self.in_default),
        }

    def _postpone(self, cur: str, payer: str, payee: str, amount: int, obs: list) -> Obligation:
        """Fold a failed pair into one postponed obligation; add a late fee unless the
        payer is in default (its claim is then fixed and its escrow pays)."""
        due = self.now + self.p.postpone_s
        o = self._obligation("postponed", payer, payee, cur, amount, None, due)
        for x in obs:
            x.status, x.into = "netted", o.oid
        self._emit("settlement", "Postponed", id=o.oid, payer=payer, payee=payee, amount=amount)
        late = ceil_div(amount * self.p.late_fee_bp, BP)
        if late and payer not in self.in_default:
            self._obligation("late_fee", payer, payee, cur, late, None, due)
        return o

    def _escrow_pays(self, postponed: list[Obligation]) -> None:
        """A defaulter's escrow pays its failed pairs of this run, pro rata to the amounts
        (largest remainder, ties to the smaller payee address), per currency."""
        by_payer: dict[tuple[str, str], list[Obligation]] = {}
        for o in postponed:
            if o.payer in self.in_default:
                by_payer.setdefault((o.currency, o.payer), []).append(o)
        for (cur, payer), obs in sorted(by_payer.items()):
            held = self.escrow.get((cur, payer), 0)
            pot = min(held, sum(o.amount for o in obs))
            if not pot:
                continue
            shares = largest_remainder(pot, [(o.payee, o.amount) for o in obs])
            self.escrow[(cur, payer)] = held - pot
            for o in obs:
                take = shares[o.payee]
                if not take:
                    continue
                self._move(cur, self.p.settlement_account, o.payee, take, f"escrow:{o.oid}")
                o.amount -= take
                if o.amount == 0:
                    o.status = "paid"
                self._emit("settlement", "EscrowPaid", id=o.oid, payer=payer, amount=take)

    def open_obligations(self, address: str | None = None) -> list[Obligation]:
        return [
            o
            for o in sorted(self.obligations.values(), key=lambda o: o.oid)
            if o.status == "open" and (address is None or address in (o.payer, o.payee))
        ]

    # ---------------------------------------------------------------- traceability

    def traceability(self, consumer: str, first_period: int, last_period: int) -> dict:
        """Mix and CO2 of what ``consumer`` took at its consumption meters, traced through
        intermediaries' virtual points pro rata (largest remainder, ties by serial)."""
        meters = {
            m.meter_id
            for m in self.meters.values()
            if m.owner == consumer and m.kind == "consumption"
        }
        leaves: dict[tuple, list[int]] = {}
        for p in range(first_period, last_period + 1):
            for t in self._covering(p):
                if t.consumer.point in meters:
                    self._trace(t, p, t.energy_wh, (), leaves)
        mix: dict[str, int] = {}
        co2_mg = 0
        sources = []
        for (serial, path), (wh, mg) in sorted(leaves.items()):
            cat = self.tokens[serial].category
            mix[cat] = mix.get(cat, 0) + wh
            co2_mg += mg
            sources.append(
                {
                    "serial": serial,
                    "producer": self.tokens[serial].producer.owner,
                    "category": cat,
                    "energy_wh": wh,
                    "co2_mg": mg,
                    "path": list(path),
                }
            )
        measured = sum(
            self.reading(mid, p) or 0
            for mid in meters
            for p in range(first_period, last_period + 1)
        )
        returned = sum(
            t.energy_wh
            for p in range(first_period, last_period + 1)
            for t in self._covering(p)
            if t.producer.point in meters
        )
        return {
            "energy_wh": sum(mix.values()),
            "mix": dict(sorted(mix.items())),
            "co2_mg": co2_mg,
            "co2_g": co2_mg // 1000,
            "sources": sources,
            "measured_wh": measured,
            "returned_wh": returned,
        }

    def _trace(self, t: Token, p: int, wh: int, path: tuple, leaves: dict) -> None:
        point = t.producer.point
        virtual = point not in self.meters and point != self.p.grid_operator
        if virtual and point not in path and len(path) < MAX_TRACE_DEPTH:
            supplies = [s for s in self._covering(p) if s.consumer.point == point and s is not t]
            if supplies:
                shares = largest_remainder(wh, [(s.serial, s.energy_wh) for s in supplies])
                for s in supplies:
                    if shares[s.serial]:
                        self._trace(s, p, shares[s.serial], path + (point,), leaves)
                return
        acc = leaves.setdefault((t.serial, path), [0, 0])
        acc[0] += wh
        acc[1] += wh * t.co2_mg // t.energy_wh

    # ---------------------------------------------------------------- audit views

    def total_balances(self, cur: str) -> int:
        return sum(v for (c, _), v in self.balances.items() if c == cur)


# ------------------------------------------------------------------ the end-to-end scenario

SCENARIO_NAMES = (
    "grid_operator",
    "bank",
    "co2_authority",
    "solar",
    "wind",
    "trader",
    "consumer1",
    "consumer2",
    "meter_solar",
    "meter_wind",
    "meter_c1",
    "meter_c2",
    "settlement_account",
)


def _ref(text: str) -> bytes:
    return text.encode().ljust(32, b"\0")[:32]


def scenario_params(a: dict[str, str], **overrides) -> Params:
    base = dict(
        grid_operator=a["grid_operator"],
        co2_authority=a["co2_authority"],
        settlement_currency="CHF",
        period_s=900,
        gate_closure_lead_s=1800,
        imbalance_spread_bp=1000,
        reference_price_per_kwh=10,
        balancing_co2_g_per_kwh=128,
        co2_price_per_t=12_000,
        late_fee_bp=500,
        postpone_s=3600,
        default_after_failures=2,
        rating_threshold=50,
        min_collateral=500,
        sos_mode="pro_rata",
        settlement_account=a["settlement_account"],
        offset_payment_term_s=0,
    )
    base.update(overrides)
    return Params(**base)


def run_scenario(
    addresses: dict[str, str] | None = None, first_period: int = 8, **param_overrides
) -> dict:
    """Item 14's story, step by step (MARKET.md section 13); returns the expected outcome.

    ``addresses`` maps the names in ``SCENARIO_NAMES`` to the accounts used on the node
    (netting order and remainder tie-breaks depend on address order, so the oracle must
    use the real ones). Delivery runs over periods ``first_period .. first_period + 3``.
    Time parameters (``period_s``, ``gate_closure_lead_s``, ``postpone_s``,
    ``genesis_time``) may be overridden for a fast devnet: the balances do not depend on
    them. A node test must keep this order: every emission and trade before the gate
    closure of ``first_period``; readings after the last period ends; settlement run 1
    at least ``payment_term`` (4 periods) after that; each later run at least
    ``postpone_s`` after the previous one.
    """
    a = {n: n for n in SCENARIO_NAMES}
    a.update(addresses or {})
    P = first_period
    params = scenario_params(a, **param_overrides)
    term = 4 * params.period_s  # an hour at 15-minute periods

    def capacity_w(max_wh_per_period: int) -> int:
        return max_wh_per_period * 3600 // params.period_s + 1

    go, bank, co2, sol, wnd, tr, c1, c2 = (a[n] for n in SCENARIO_NAMES[:8])
    m = Market(
        params,
        [(go, ("grid_operator",)), (bank, ("bank",)), (co2, ("co2_authority",))],
        [Currency("CHF", bank, "bps", 10)],
    )
    # -- admission (ratings: consumer2 is below the threshold and must post collateral)
    for who, roles, rating, limit in (
        (sol, ("producer",), 80, 100_000),
        (wnd, ("producer",), 80, 100_000),
        (tr, ("trader",), 70, 50_000),
        (c1, ("consumer",), 90, None),
        (c2, ("consumer",), 40, None),
    ):
        m.admit(go, who, roles, _ref("legal:" + who), limit, rating)
    # -- meters: registered by the grid operator, attested by their owners
    for mid, owner, kind, cat, cap, co2g in (
        (a["meter_solar"], sol, "production", "solar", capacity_w(50_000), 40),
        (a["meter_wind"], wnd, "production", "wind", capacity_w(40_000), 11),
        (a["meter_c1"], c1, "consumption", "other", capacity_w(40_000), 0),
        (a["meter_c2"], c2, "consumption", "other", capacity_w(60_000), 0),
    ):
        m.register_meter(go, mid, owner, kind, cat, "loc:" + mid, cap, co2g)
        m.attest_meter(owner, mid)
    # -- fiat: the bank mints against deposits; everyone lets settlement debit them
    for who, amount in (
        (go, 50_000),
        (sol, 2_000),
        (wnd, 2_000),
        (tr, 3_000),
        (c1, 20_000),
        (c2, 3_000),
    ):
        m.mint(bank, "CHF", who, amount, _ref("deposit:" + who))
        m.approve(who, "CHF", a["settlement_account"], 10**12)
    m.deposit_collateral(c2, "CHF", 600)
    # -- emission (time 0; delivery P..P+3; gate closure 1800 s before each period)
    s1 = m.emit(
        sol,
        first_period=P,
        last_period=P + 3,
        energy_wh=40_000,
        category="solar",
        co2_g_per_kwh=40,
        face_value=12,
        currency="CHF",
        payment_term_s=term,
        producer_point=a["meter_solar"],
        consumer_withdrawal=(term, 2),
    )
    w1 = m.emit(
        wnd,
        first_period=P,
        last_period=P + 1,
        energy_wh=30_000,
        category="wind",
        co2_g_per_kwh=11,
        face_value=10,
        currency="CHF",
        payment_term_s=term,
        producer_point=a["meter_wind"],
    )
    w2 = m.emit(
        wnd,
        first_period=P + 2,
        last_period=P + 3,
        energy_wh=30_000,
        category="wind",
        co2_g_per_kwh=11,
        face_value=10,
        currency="CHF",
        payment_term_s=term,
        producer_point=a["meter_wind"],
    )
    # -- split and merge
    s1a, s1b = m.split_volume(sol, s1, [25_000, 15_000])
    w3 = m.merge(wnd, [w1, w2])
    # -- trading: the trader buys wind and resells it; consumers buy both
    m.offer_side(wnd, w3, "consumer", 600, "CHF")
    m.buy_side(tr, w3, "consumer", 600, "CHF")
    x = m.emit(
        tr,
        first_period=P,
        last_period=P + 3,
        energy_wh=30_000,
        category="wind",
        co2_g_per_kwh=11,
        face_value=13,
        currency="CHF",
        payment_term_s=term,
    )
    m.offer_side(tr, x, "consumer", 0, "CHF")
    m.buy_side(c2, x, "consumer", 0, "CHF", a["meter_c2"])
    m.offer_side(sol, s1a, "consumer", 200, "CHF")
    m.buy_side(c1, s1a, "consumer", 200, "CHF", a["meter_c1"])
    m.offer_side(sol, s1b, "consumer", -50, "CHF")  # a negative price: the seller pays
    m.buy_side(c2, s1b, "consumer", -50, "CHF", a["meter_c2"])
    # -- gate closure of the first period freezes every token of the story
    m.set_time(m.gate_closure(P))
    frozen_refused = False
    try:
        m.offer_side(c2, x, "consumer", 100, "CHF")
    except ModelError as e:
        frozen_refused = e.code == "token_frozen"
    # -- delivery: readings in all four directions
    readings = {
        a["meter_solar"]: [44_000, 37_000, 40_000, 40_000],  # over-, under-production
        a["meter_wind"]: [30_000, 32_000, 29_000, 30_000],
        a["meter_c1"]: [25_000, 23_000, 25_000, 28_000],  # under-, over-consumption
        a["meter_c2"]: [45_000, 48_000, 41_000, 45_000],
    }
    m.set_time(m.period_end(P + 3))
    for mid, values in readings.items():
        for i, e in enumerate(values):
            m.submit_reading(mid, P + i, e)
    # -- reconciliation and grid fees
    costs = [650, 700, 720, 699]
    for i in range(4):
        m.reconcile_period(go, P + i)
        m.publish_transmission_cost(go, P + i, costs[i])
    m.charge_security_of_supply(go, P, P + 3, 1_000)
    # -- settlement: consumer2 is short; two failed runs put it in default
    runs = []
    m.set_time(m.period_end(P + 3) + term)
    runs.append(m.run_settlement(go))
    m.set_time(m.now + params.postpone_s)
    runs.append(m.run_settlement(go))
    # -- the grid operator suspends the defaulter: its remaining obligations are blocked
    m.suspend(go, c2)
    m.set_time(m.now + params.postpone_s)
    runs.append(m.run_settlement(go))
    return {
        "market": m,
        "frozen_refused": frozen_refused,
        "tokens": {"s1": s1, "s1a": s1a, "s1b": s1b, "w1": w1, "w2": w2, "w3": w3, "x": x},
        "runs": runs,
        "balances": {n: m.balance("CHF", a[n]) for n in SCENARIO_NAMES},
        "escrow": {n: m.escrow.get(("CHF", a[n]), 0) for n in SCENARIO_NAMES},
        "supply": m.supply["CHF"],
        "open_obligations": [(o.kind, o.payer, o.payee, o.amount) for o in m.open_obligations()],
        "in_default": sorted(m.in_default),
    }
