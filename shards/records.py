"""The records of a cross-shard flow, and the two interfaces the flow module runs on.

* :class:`FlowSpec`: the immutable terms of one flow, fixed by the consumer's purchase at
  the origin and carried by the first packet to every hop; its hash is the flow id.
* :class:`HopRecord`: what one shard on the path knows and holds for a flow.
* :class:`Storage`: the module's keyed state (the ledger's contract storage in a node,
  a dict in the simulator). Values are canonical-codec values; the authenticated state
  holds ``codec.encode(value)`` under ``state_key("bridge", name, parts)``.
* :class:`Effects`: the money and token operations the shard's market contracts perform
  for the module (escrow, pay, move money across a bridge, hop tokens, the destination
  sale). The simulator implements them in memory; the node against the real contracts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

from ledger import codec
from ledger.crypto import ADDRESS_LEN, tagged_hash
from shards.errors import PacketError, TopologyError
from shards.topology import MAX_DEPTH, check_shard_id

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "COMMITTED",
    "Effects",
    "FINAL_PHASES",
    "FlowSpec",
    "HopRecord",
    "LOCKED",
    "MAX_AMOUNT",
    "PHASES",
    "REFUNDED",
    "RESERVED",
    "SETTLED",
    "Storage",
]

FLOW_VERSION = 1
# Money in minor units and energy in Wh stay below 2**62 so every sum of a few of them
# (price + budget, held + returned) still fits a signed 64-bit integer.
MAX_AMOUNT = 1 << 62
# A path through a tree of depth MAX_DEPTH has at most 2 * MAX_DEPTH - 1 shards.
MAX_PATH = 2 * MAX_DEPTH - 1
MAX_CURRENCY_LEN = 16

# The phases of a hop record (DESIGN.md, "the per-hop state machine").
LOCKED = "locked"  # origin: consumer's money in escrow, RESERVE sent, waiting for the result
RESERVED = "reserved"  # intermediate hop: capacity reserved, fee held, RESERVE forwarded
COMMITTED = "committed"  # the destination committed and this hop knows it; its token exists
CANCELLING = "cancelling"  # a redispatch cancelled the chain here; waiting for the money behind
SETTLED = "settled"  # delivery began: the fee went to the grid operator (and the price to the seller)
CANCELLED = "cancelled"  # the chain is cancelled and this hop's money went back toward the consumer
REFUNDED = "refunded"  # aborted (refused, capacity, timeout): this hop's money went back
PHASES = (LOCKED, RESERVED, COMMITTED, CANCELLING, SETTLED, CANCELLED, REFUNDED)
FINAL_PHASES = frozenset({SETTLED, CANCELLED, REFUNDED})


def _address(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != ADDRESS_LEN:
        raise PacketError("bad_flow", f"{what} must be a {ADDRESS_LEN}-byte address")
    return value


def _amount(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value < MAX_AMOUNT:
        raise PacketError("bad_flow", f"{what} must be an integer in {low}..2**62-1, got {value!r}")
    return value


@dataclass(frozen=True)
class FlowSpec:
    """The terms of a flow: the consumer in ``origin`` buys the consumer side of token
    ``token`` offered in ``destination`` at ``price``, through ``path``."""

    origin: str
    number: int  # the origin's flow counter: makes every flow id unique
    destination: str
    path: tuple[str, ...]
    consumer: bytes
    point: bytes  # where the consumer takes the energy (a meter id or its own address)
    token: int  # serial of the destination token whose consumer side is bought
    price: int  # the side price the consumer accepted, minor units, >= 0
    currency: str
    energy_wh: int  # per elementary period, constant load
    first_period: int
    last_period: int
    fee_budget: int  # the conservative fee estimate the consumer accepted and paid
    deadline: int  # block time of the destination by which it must commit
    created: int  # block time of the origin when the consumer's money was locked

    def to_fields(self) -> list:
        return [
            FLOW_VERSION, self.origin, self.number, self.destination, list(self.path), self.consumer,
            self.point, self.token, self.price, self.currency, self.energy_wh, self.first_period,
            self.last_period, self.fee_budget, self.deadline, self.created,
        ]

    @classmethod
    def from_fields(cls, fields: Any) -> FlowSpec:
        if not isinstance(fields, list) or len(fields) != 16:
            raise PacketError("bad_flow", "a flow spec is an array of 16 fields")
        version, origin, number, destination, path, consumer, point, token, price, currency = fields[:10]
        energy_wh, first, last, budget, deadline, created = fields[10:]
        if version != FLOW_VERSION or type(version) is not int:
            raise PacketError("bad_flow", f"unsupported flow version {version!r}")
        if not isinstance(path, list) or not 2 <= len(path) <= MAX_PATH:
            raise PacketError("bad_flow", f"a flow path lists 2..{MAX_PATH} shards")
        try:
            for shard in (origin, destination, *path):
                check_shard_id(shard)
        except TopologyError as exc:
            raise PacketError("bad_flow", exc.message) from None
        if path[0] != origin or path[-1] != destination or len(set(path)) != len(path):
            raise PacketError("bad_flow", "a flow path runs from the origin to the destination without repeats")
        if type(currency) is not str or not 0 < len(currency) <= MAX_CURRENCY_LEN:
            raise PacketError("bad_flow", f"currency is a code of 1..{MAX_CURRENCY_LEN} characters")
        spec = cls(
            origin, _amount(number, "flow number"), destination, tuple(path), _address(consumer, "consumer"),
            _address(point, "point"), _amount(token, "token serial"), _amount(price, "price"), currency,
            _amount(energy_wh, "energy_wh", 1), _amount(first, "first period"), _amount(last, "last period"),
            _amount(budget, "fee budget"), _amount(deadline, "deadline"), _amount(created, "created"),
        )
        if last < first:
            raise PacketError("bad_flow", "last period is before the first")
        return spec

    @classmethod
    def from_stored(cls, fields: list) -> FlowSpec:
        """A spec from this shard's own storage, where only checked specs are written."""
        return cls(fields[1], fields[2], fields[3], tuple(fields[4]), *fields[5:])

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @cached_property
    def flow_id(self) -> bytes:
        return tagged_hash(b"gridledger/flow", self.encode())

    @property
    def periods(self) -> int:
        return self.last_period - self.first_period + 1

    @property
    def energy_total_wh(self) -> int:
        return self.energy_wh * self.periods

    @property
    def locked_amount(self) -> int:
        """What the origin takes from the consumer: the price and the whole fee budget."""
        return self.price + self.fee_budget

    def index_of(self, shard: str) -> int:
        try:
            return self.path.index(shard)
        except ValueError:
            raise PacketError("bad_flow", f"shard {shard!r} is not on the flow's path") from None


@dataclass(frozen=True, slots=True)
class HopRecord:
    """One shard's state of one flow (stored under ``("flow", [flow_id])``)."""

    spec: FlowSpec
    index: int  # this shard's position on spec.path
    phase: str
    held: int = 0  # money this hop holds in the module's escrow for the flow
    fee: int = 0  # this hop's grid fee (its edges), part of ``held`` until settled
    reserved: bool = False  # this hop holds capacity reservations on its edges
    token_ref: int | None = None  # the hop token (or, at the destination, the sold token)
    seller: bytes | None = None  # destination: the side's owner before the sale
    reason: str = ""  # why the flow was refused or cancelled
    cancel_requested: bool = False

    def to_fields(self) -> list:
        return [
            self.spec.to_fields(), self.index, self.phase, self.held, self.fee, self.reserved,
            self.token_ref, self.seller, self.reason, self.cancel_requested,
        ]

    @classmethod
    def from_fields(cls, fields: list) -> HopRecord:
        """Rebuild a record this shard stored (its own state: checked when it was written)."""
        spec, index, phase, held, fee, reserved, token_ref, seller, reason, cancel_requested = fields
        return cls(FlowSpec.from_stored(spec), index, phase, held, fee, reserved, token_ref, seller, reason, cancel_requested)

    def but(self, **changes: Any) -> HopRecord:
        return replace(self, **changes)

    @property
    def is_origin(self) -> bool:
        return self.index == 0

    @property
    def is_destination(self) -> bool:
        return self.index == len(self.spec.path) - 1

    @property
    def previous(self) -> str | None:
        return None if self.is_origin else self.spec.path[self.index - 1]

    @property
    def next(self) -> str | None:
        return None if self.is_destination else self.spec.path[self.index + 1]


class Storage(Protocol):
    """The module's keyed state. ``parts`` are codec values; reads return what was put."""

    def get(self, name: str, parts: list) -> Any | None: ...

    def put(self, name: str, parts: list, value: Any) -> None: ...

    def delete(self, name: str, parts: list) -> None: ...


class Effects(Protocol):
    """The money and token operations of one shard, performed for the flow module.

    The module calls each operation only after its own checks passed, so the ones that
    move money out of the module's escrow never fail when the escrow invariant holds
    (escrow balance = the sum of ``held`` over the shard's hop records). Only
    :meth:`check_buyer`, :meth:`check_offer` (by returning a code) and :meth:`lock` (by
    raising) refuse, before anything changed.
    """

    def grid_operator(self) -> bytes:
        """The shard's grid operator (payee of this level's grid fees, may redispatch)."""
        ...

    def check_buyer(self, consumer: bytes, point: bytes, energy_wh: int, first_period: int, last_period: int) -> str | None:
        """Origin: None if ``consumer`` may take this energy at ``point`` through a flow, else
        the error code of the first rule it breaks: ``role_missing`` (only consumers buy from
        outside their shard), ``not_member`` / ``not_active``, ``bad_point`` and the meter
        codes, ``position_limit_exceeded``, ``collateral_required`` (the buyer's rules of
        ``buy_side``, MARKET.md 6.3). Changes nothing."""
        ...

    def hold_buyer(self, flow_id: bytes, consumer: bytes, energy_wh: int, first_period: int, last_period: int) -> None:
        """Origin, as the flow opens: hold its energy toward ``consumer``'s position limit in
        each period until :meth:`release_buyer`, so that flows opened before either is
        answered cannot together exceed the limit."""
        ...

    def release_buyer(self, flow_id: bytes) -> None:
        """Origin, when the flow's answer arrives: release what :meth:`hold_buyer` held for
        it (nothing if it held nothing). Never refuses."""
        ...

    def lock(self, flow_id: bytes, payer: bytes, currency: str, amount: int) -> None:
        """Move ``amount`` from ``payer`` into the module's escrow; raise ``FlowRefused``
        (``insufficient_funds``, ``not_active``, ...) and change nothing if it cannot."""
        ...

    def pay(self, flow_id: bytes, payee: bytes, currency: str, amount: int, reason: str) -> None:
        """Pay ``amount`` out of the module's escrow (a fee, a price, a refund)."""
        ...

    def send(self, flow_id: bytes, neighbour: str, currency: str, amount: int) -> tuple[int, int]:
        """Move ``amount`` out of the escrow across the bridge to ``neighbour``: returns
        ``(release, mint)``, what the neighbour releases from its bridge account and what it
        mints (see :func:`shards.flow.split_transfer`)."""
        ...

    def receive(self, flow_id: bytes, neighbour: str, currency: str, release: int, mint: int) -> None:
        """Take money arriving from ``neighbour`` into the escrow (``release`` out of the
        bridge account representing it, ``mint`` new)."""
        ...

    def check_offer(self, spec: FlowSpec) -> str | None:
        """Destination: None if the consumer side of ``spec.token`` is for sale exactly as
        ``spec`` says (price, currency, energy, periods, not frozen), else an error code."""
        ...

    def buy_offer(self, flow_id: bytes, spec: FlowSpec, buyer: bytes) -> tuple[int, bytes, tuple[str, int]]:
        """Destination: give the consumer side of ``spec.token`` to ``buyer`` (the bridge)
        without payment (the price is held in escrow); return (token, previous owner, its
        energy: (category, CO2 in mg per period))."""
        ...

    def revert_offer(self, flow_id: bytes, spec: FlowSpec, token: int, seller: bytes) -> None:
        """Destination, redispatch: give the consumer side back to ``seller``, not for sale."""
        ...

    def create_hop_token(
        self, flow_id: bytes, spec: FlowSpec, producer: bytes, consumer: bytes, point: bytes, energy: tuple[str, int]
    ) -> int:
        """A token for the flow's energy with ``producer`` and ``consumer`` holding its sides
        (bridge accounts, or the consumer at the origin); not tradable. It carries the
        destination token's ``energy`` (category, CO2 in mg per period), so the consumer's
        shard charges the CO2 fee and traces the mix. Never refuses. Returns its serial."""
        ...

    def cancel_hop_token(self, flow_id: bytes, token: int) -> None:
        """Delete a hop token (redispatch of its chain)."""
        ...
