"""A simulated shard's market: balances, roles and energy tokens, as the flow's Effects.

:class:`SimLedger` implements :class:`shards.records.Effects` in memory with the rules the
market contracts follow (MARKET.md): fiat balances whose supply equals their sum in the
shard (bridge accounts included), tokens with a producer and a consumer side, offers of
the consumer side at a price. Money crosses a bridge by :func:`shards.flow.split_transfer`:
released out of the receiver's bridge account when it goes back where it was minted,
else locked in the sender's bridge account and minted by the receiver.

Every change is journaled so that a refused transaction is undone, as the node's
executor reverts one. Indexes kept for the checker: the money outside bridge accounts
(conserved across shards together with the money in flight), and per neighbour the
flows whose tokens cross each bridge account (energy conservation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from contracts.runtime.engine import contract_address
from shards.errors import FlowRefused
from shards.flow import split_transfer
from shards.records import FlowSpec
from shards.topology import Topology, bridge_address

__all__ = ["SimLedger", "Token"]

_CATEGORIES = ("solar", "wind", "hydro", "biomass", "other")


@dataclass(frozen=True, slots=True)
class Token:
    serial: int
    producer: bytes
    consumer: bytes
    point: bytes
    energy_wh: int
    first_period: int
    last_period: int
    currency: str
    price: int | None = None  # consumer side offered at this price (None: not for sale)
    category: str = "other"
    co2_mg: int = 0  # per period, as the market's tokens store it
    status: str = "open"  # open | cancelled
    flow_id: bytes | None = None  # a hop token of this flow (or sold to a bridge for it)


class SimLedger:
    def __init__(self, shard: str, topology: Topology, grid_operator: bytes, currency: str = "CHF") -> None:
        self.shard = shard
        self.currency = currency
        self.go = grid_operator
        self.escrow = contract_address("bridge")
        self.bridges = {bridge_address(shard, n): n for n in topology.neighbours(shard)}
        self.balances: dict[bytes, int] = {}
        self.supply = 0
        self.outside = 0  # sum of balances outside bridge accounts
        self.minted_from: dict[str, int] = {}
        self.roles: dict[bytes, frozenset[str]] = {}
        self.limits: dict[bytes, int] = {}  # account -> position limit, Wh per period
        self.tokens: dict[int, Token] = {}
        self.next_serial = 1
        self.locked: dict[bytes, int] = {}  # flow -> money taken from the consumer here
        self.paid: dict[bytes, int] = {}  # flow -> money paid out of escrow here
        # flow opened here, unanswered -> (consumer, energy_wh, first_period, last_period) it holds
        self.flow_holds: dict[bytes, tuple[bytes, int, int, int]] = {}
        self.payments: list[tuple[bytes, bytes, int, str]] = []
        self.out_flows: dict[str, frozenset[bytes]] = {n: frozenset() for n in topology.neighbours(shard)}
        self.in_flows: dict[str, frozenset[bytes]] = {n: frozenset() for n in topology.neighbours(shard)}
        self.now = 0  # block time of the transaction being executed
        self.problems: list[str] = []  # rule breaches seen inside effects (checked by the checker)
        self._undo: list | None = None

    # ------------------------------------------------------------------ journal

    def begin(self) -> None:
        self._undo = []

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        assert self._undo is not None
        for restore in reversed(self._undo):
            restore()
        self._undo = None

    def _set(self, attr: str, key, value) -> None:
        table = getattr(self, attr)
        old = table.get(key, _ABSENT)
        if self._undo is not None:
            self._undo.append(lambda: table.pop(key, None) if old is _ABSENT else table.__setitem__(key, old))
        table[key] = value

    def _drop(self, attr: str, key) -> None:
        table = getattr(self, attr)
        old = table.pop(key)
        if self._undo is not None:
            self._undo.append(lambda: table.__setitem__(key, old))

    def _scalar(self, attr: str, value) -> None:
        old = getattr(self, attr)
        if self._undo is not None:
            self._undo.append(lambda: setattr(self, attr, old))
        setattr(self, attr, value)

    def _log(self, entry) -> None:
        self.payments.append(entry)
        if self._undo is not None:
            self._undo.append(self.payments.pop)

    # ------------------------------------------------------------------ money

    def balance(self, account: bytes) -> int:
        return self.balances.get(account, 0)

    def _move(self, account: bytes, delta: int) -> None:
        new = self.balance(account) + delta
        if new < 0:
            raise AssertionError(f"{self.shard}: balance of {account.hex()[:8]} would be {new}")
        self._set("balances", account, new)
        if account not in self.bridges:
            self._scalar("outside", self.outside + delta)

    def mint(self, account: bytes, amount: int) -> None:
        """Genesis money (a bank's deposit)."""
        self._move(account, amount)
        self._scalar("supply", self.supply + amount)

    def admit(self, account: bytes, roles: set[str], limit: int | None = None) -> None:
        self._set("roles", account, frozenset(roles))
        if limit is not None:
            self._set("limits", account, limit)

    def position(self, account: bytes, period: int) -> int:
        """Energy ``account`` takes in ``period`` on its open tokens (its consumer sides)."""
        return sum(
            t.energy_wh for t in self.tokens.values()
            if t.consumer == account and t.status == "open" and t.first_period <= period <= t.last_period
        )

    def held(self, account: bytes, period: int) -> int:
        """Energy the flows ``account`` opened here and that are not answered yet hold in ``period``."""
        return sum(e for c, e, first, last in self.flow_holds.values() if c == account and first <= period <= last)

    # ------------------------------------------------------------------ Effects

    def grid_operator(self) -> bytes:
        return self.go

    def check_buyer(self, consumer: bytes, point: bytes, energy_wh: int, first_period: int, last_period: int) -> str | None:
        roles = self.roles.get(consumer)
        if roles is None:
            return "not_member"
        if "consumer" not in roles:
            return "role_missing"
        if point != consumer:
            return "bad_point"  # meters are not simulated: the consumer's own address only
        limit = self.limits.get(consumer)
        if limit is not None:
            for period in range(first_period, last_period + 1):
                # a held flow may still commit: its energy counts (MARKET.md section 12)
                if self.position(consumer, period) + self.held(consumer, period) + energy_wh > limit:
                    return "position_limit_exceeded"
        return None

    def hold_buyer(self, flow_id: bytes, consumer: bytes, energy_wh: int, first_period: int, last_period: int) -> None:
        if flow_id in self.flow_holds:
            self.problems.append(f"{self.shard}: flow {flow_id.hex()[:8]} holds its energy twice")
        self._set("flow_holds", flow_id, (consumer, energy_wh, first_period, last_period))

    def release_buyer(self, flow_id: bytes) -> None:
        if flow_id not in self.flow_holds:  # every simulated flow holds from its opening
            self.problems.append(f"{self.shard}: flow {flow_id.hex()[:8]} releases a hold it does not have")
            return
        self._drop("flow_holds", flow_id)

    def lock(self, flow_id: bytes, payer: bytes, currency: str, amount: int) -> None:
        if currency != self.currency:
            raise FlowRefused("unknown_currency", f"{self.shard} settles in {self.currency}")
        if self.balance(payer) < amount:
            raise FlowRefused("insufficient_funds", f"the consumer holds {self.balance(payer)}; the purchase locks {amount}")
        self._move(payer, -amount)
        self._move(self.escrow, amount)
        self._set("locked", flow_id, self.locked.get(flow_id, 0) + amount)

    def pay(self, flow_id: bytes, payee: bytes, currency: str, amount: int, reason: str) -> None:
        if amount <= 0:
            self.problems.append(f"{self.shard}: pay of {amount} for {reason}")
            return
        if self.balance(self.escrow) < amount:
            self.problems.append(f"{self.shard}: escrow holds {self.balance(self.escrow)}, cannot pay {amount} ({reason})")
            raise AssertionError("escrow short")
        self._move(self.escrow, -amount)
        self._move(payee, amount)
        self._set("paid", flow_id, self.paid.get(flow_id, 0) + amount)
        self._log((flow_id, payee, amount, reason))

    def send(self, flow_id: bytes, neighbour: str, currency: str, amount: int) -> tuple[int, int]:
        release, mint = split_transfer(self.minted_from.get(neighbour, 0), amount)
        self._move(self.escrow, -amount)
        if release:
            self._set("minted_from", neighbour, self.minted_from.get(neighbour, 0) - release)
            self._scalar("supply", self.supply - release)
        if mint:
            self._move(bridge_address(self.shard, neighbour), mint)
        return release, mint

    def receive(self, flow_id: bytes, neighbour: str, currency: str, release: int, mint: int) -> None:
        if release:
            account = bridge_address(self.shard, neighbour)
            if self.balance(account) < release:
                self.problems.append(f"{self.shard}: release of {release} from the bridge to {neighbour} holding {self.balance(account)}")
                raise AssertionError("bridge escrow short")
            self._move(account, -release)
            self._move(self.escrow, release)
        if mint:
            self._move(self.escrow, mint)
            self._scalar("supply", self.supply + mint)
            self._set("minted_from", neighbour, self.minted_from.get(neighbour, 0) + mint)

    def check_offer(self, spec: FlowSpec) -> str | None:
        token = self.tokens.get(spec.token)
        if token is None:
            return "unknown_token"
        if token.status != "open" or token.price is None:
            return "not_for_sale"
        if token.price != spec.price or token.currency != spec.currency:
            return "price_changed"
        if (token.energy_wh, token.first_period, token.last_period) != (spec.energy_wh, spec.first_period, spec.last_period):
            return "token_changed"
        return None

    def buy_offer(self, flow_id: bytes, spec: FlowSpec, buyer: bytes) -> tuple[int, bytes, tuple[str, int]]:
        if self.now >= spec.deadline:
            self.problems.append(f"{self.shard}: committed flow {flow_id.hex()[:8]} at {self.now}, deadline {spec.deadline}")
        token = self.tokens[spec.token]
        seller = token.consumer
        self._set("tokens", token.serial, replace(token, consumer=buyer, point=buyer, price=None, flow_id=flow_id))
        self._index("out_flows", self.bridges[buyer], flow_id, +1)
        return token.serial, seller, (token.category, token.co2_mg)

    def revert_offer(self, flow_id: bytes, spec: FlowSpec, token: int, seller: bytes) -> None:
        current = self.tokens[token]
        self._set("tokens", token, replace(current, consumer=seller, point=seller, price=None, flow_id=None))
        self._index("out_flows", self.bridges[current.consumer], flow_id, -1)

    def create_hop_token(
        self, flow_id: bytes, spec: FlowSpec, producer: bytes, consumer: bytes, point: bytes, energy: tuple[str, int]
    ) -> int:
        serial = self.next_serial
        self._scalar("next_serial", serial + 1)
        token = Token(
            serial, producer, consumer, point, spec.energy_wh, spec.first_period, spec.last_period, spec.currency,
            category=energy[0], co2_mg=energy[1], flow_id=flow_id,
        )
        self._set("tokens", serial, token)
        self._index("in_flows", self.bridges[producer], flow_id, +1)
        if consumer in self.bridges:
            self._index("out_flows", self.bridges[consumer], flow_id, +1)
        return serial

    def cancel_hop_token(self, flow_id: bytes, token: int) -> None:
        current = self.tokens[token]
        if current.status != "open" or current.flow_id != flow_id:
            self.problems.append(f"{self.shard}: cancelling token {token} that is {current.status} of another flow")
        self._set("tokens", token, replace(current, status="cancelled"))
        self._index("in_flows", self.bridges[current.producer], flow_id, -1)
        if current.consumer in self.bridges:
            self._index("out_flows", self.bridges[current.consumer], flow_id, -1)

    def _index(self, attr: str, neighbour: str, flow_id: bytes, sign: int) -> None:
        current = getattr(self, attr)[neighbour]
        if (flow_id in current) == (sign > 0):
            self.problems.append(f"{self.shard}: {attr}[{neighbour}] already {'has' if sign > 0 else 'lacks'} a flow")
        self._set(attr, neighbour, current | {flow_id} if sign > 0 else current - {flow_id})

    # ------------------------------------------------------------------ local market

    def emit_offer(self, producer: bytes, energy_wh: int, first: int, last: int, price: int) -> int:
        serial = self.next_serial
        self._scalar("next_serial", serial + 1)
        # Categories and CO2 vary by serial (no draw from the run's random stream).
        category = _CATEGORIES[serial % len(_CATEGORIES)]
        co2_mg = energy_wh * (serial * 37 % 500)  # 0..499 g/kWh
        self._set("tokens", serial, Token(
            serial, producer, producer, producer, energy_wh, first, last, self.currency, price=price,
            category=category, co2_mg=co2_mg,
        ))
        return serial

    def local_buy(self, serial: int, buyer: bytes) -> None:
        """A local participant buys an offered consumer side (competition for the offer)."""
        token = self.tokens.get(serial)
        if token is None or token.status != "open" or token.price is None:
            raise FlowRefused("not_for_sale", "the side is not for sale")
        if self.balance(buyer) < token.price:
            raise FlowRefused("insufficient_funds", "the buyer cannot pay")
        if token.price:
            self._move(buyer, -token.price)
            self._move(token.consumer, token.price)
        self._set("tokens", serial, replace(token, consumer=buyer, point=buyer, price=None))

    def open_offers(self) -> list[Token]:
        return [t for t in self.tokens.values() if t.status == "open" and t.price is not None and t.flow_id is None]


_ABSENT = object()
