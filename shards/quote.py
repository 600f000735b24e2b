"""The quote a consumer sees before a cross-shard purchase: path, fees per level, capacity.

The paper's rule [P 4.4]: the consumer is shown a conservative estimate of the
cumulative grid fees of every level on the path, due at the moment of purchase, and a
purchase is possible only if every bridge on the path has margin [P 4.2]. The consumer's
client computes the quote from each path shard's bridge registrations and reservations,
read with proofs (``ledger.client.verify_read``), and refuses a purchase that would
exceed a bridge *before anything is locked*. The quote is then the purchase's
``fee_budget``.

The client's check is an early refusal against state read moments before; the binding
check is each hop's own, when the RESERVE packet reaches it (a concurrent flow may have
taken the margin meanwhile; then every hop is refunded). The fee a hop charges is its
registration at that moment, refused if it exceeds what is left of the budget, so the
estimate is conservative: the consumer never pays more than the quote, and what no
level charged comes back when the flow commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shards.errors import FlowRefused
from shards.flow import MAX_FLOW_PERIODS, edge_fee
from shards.topology import Topology

__all__ = ["HopQuote", "Quote", "quote_flow"]

# (parent, child) -> (capacity_wh, fee_per_kwh), or None when the bridge is unregistered
ReadLink = Callable[[str, str], "tuple[int, int] | None"]
# (parent, child, period) -> Wh already reserved on that bridge in that period
ReadReserved = Callable[[str, str, int], int]


@dataclass(frozen=True, slots=True)
class HopQuote:
    shard: str
    edges: tuple[tuple[str, str], ...]  # the bridges this hop reserves and charges
    fee: int  # minor units, collected by this shard's grid operator


@dataclass(frozen=True, slots=True)
class Quote:
    path: tuple[str, ...]
    hops: tuple[HopQuote, ...]
    total_fee: int  # the fee budget the consumer pays at purchase

    @property
    def shards(self) -> int:
        return len(self.path)


def quote_flow(
    topology: Topology,
    origin: str,
    destination: str,
    *,
    energy_wh: int,
    first_period: int,
    last_period: int,
    read_link: ReadLink,
    read_reserved: ReadReserved,
) -> Quote:
    """The path, each level's fee and their sum for a flow; raises :class:`FlowRefused`
    (``capacity_exceeded``, ``bridge_not_registered``, ``bad_periods``, ``bad_energy``)
    naming the first bridge without margin."""
    if type(energy_wh) is not int or energy_wh <= 0:
        raise FlowRefused("bad_energy", "energy per period is a positive integer (Wh)")
    if not 0 <= first_period <= last_period or last_period - first_period + 1 > MAX_FLOW_PERIODS:
        raise FlowRefused("bad_periods", f"periods are 0 <= first <= last, at most {MAX_FLOW_PERIODS} of them")
    if origin == destination:
        raise FlowRefused("same_shard", "a purchase inside one shard is an ordinary buy_side")
    path = topology.path(origin, destination)
    total_energy = energy_wh * (last_period - first_period + 1)
    hops = []
    for index, shard in enumerate(path):
        edges = tuple(topology.edges_reserved_at(path, index))
        fee = 0
        for parent, child in edges:
            link = read_link(parent, child)
            if link is None:
                raise FlowRefused("bridge_not_registered", f"the bridge {parent} -> {child} is not registered")
            capacity, fee_per_kwh = link
            for period in range(first_period, last_period + 1):
                left = capacity - read_reserved(parent, child, period)
                if energy_wh > left:
                    raise FlowRefused(
                        "capacity_exceeded",
                        f"bridge {parent} -> {child} has {max(left, 0)} Wh left in period {period}; "
                        f"the purchase needs {energy_wh}",
                    )
            fee += edge_fee(total_energy, fee_per_kwh)
        hops.append(HopQuote(shard, edges, fee))
    return Quote(path, tuple(hops), sum(h.fee for h in hops))
