"""Flow modules wired directly, without proofs: the protocol alone, step by step.

``Net`` runs one :class:`~shards.flow.FlowModule` per shard of a topology over the
simulator's storage and in-memory ledger, and moves packets by calling
:meth:`FlowModule.receive` (what a delivery does after its proofs verified). Each call is
one atomic transaction at a block time the caller chooses per shard, so a test can put
any interleaving, duplicate, delay or clock on the table and look at every hop. The
simulator (``shards.sim.runner``) adds proofs, certificates, relayers and faults.
"""

from __future__ import annotations

from typing import Any

from ledger.validators import ValidatorSet
from shards.errors import BridgeError
from shards.flow import FlowModule, install_genesis
from shards.packets import Packet
from shards.sim.ledger import SimLedger
from shards.sim.state import SimStorage
from shards.sim.world import account, validator_keys
from shards.topology import Topology

__all__ = ["Hop", "Net"]


class Hop:
    """One shard of a :class:`Net`: storage, ledger, module and its block time."""

    def __init__(self, shard: str, topology: Topology) -> None:
        self.id = shard
        self.go = account(shard, "grid_operator")
        self.storage = SimStorage()
        self.ledger = SimLedger(shard, topology, self.go)
        self.module = FlowModule(shard, topology, self.storage, self.ledger)
        self.time = topology.genesis_time

    def tx(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` atomically at this hop's time; a refusal is raised after the rollback."""
        self.storage.begin()
        self.ledger.begin()
        self.ledger.now = self.time
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self.storage.rollback()
            self.ledger.rollback()
            raise
        self.storage.commit()
        self.ledger.commit()
        self.storage.seal()
        return result

    def snapshot(self) -> tuple:
        """Everything a refused transaction must leave unchanged."""
        return (dict(self.storage.values), dict(self.ledger.balances), dict(self.ledger.tokens), self.ledger.supply)


class Net:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.hops = {s: Hop(s, topology) for s in topology.ids}
        sets = {s: ValidatorSet((validator_keys(s, 0)[2],)) for s in topology.ids}
        for hop in self.hops.values():
            hop.tx(install_genesis, hop.storage, topology, hop.id, {n: sets[n] for n in topology.neighbours(hop.id)})
            hop.tx(hop.ledger.admit, hop.go, {"grid_operator"})
            hop.tx(hop.ledger.mint, hop.go, 100_000)

    def __getitem__(self, shard: str) -> Hop:
        return self.hops[shard]

    def at(self, time: int) -> Net:
        """Set every shard's block time."""
        for hop in self.hops.values():
            hop.time = time
        return self

    def pending(self, src: str, dst: str) -> list[Packet]:
        """Packets written by ``src`` for ``dst`` and not yet handled there."""
        source, target = self.hops[src], self.hops[dst]
        return [
            Packet.from_fields(source.storage.values[("bridge", "outbox", (dst, seq))])
            for seq in range(target.module.next_recv(src), source.module.next_send(dst))
        ]

    def deliver(self, src: str, dst: str, packet: Packet | None = None) -> str:
        """Hand ``packet`` (default: the next pending one) from ``src`` to ``dst``."""
        if packet is None:
            packet = self.pending(src, dst)[0]
        target = self.hops[dst]
        return target.tx(target.module.receive, target.time, packet)

    def channels(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.topology.ids for b in self.topology.neighbours(a)]

    def pump(self, limit: int = 10_000) -> int:
        """Deliver every pending packet, in order, until none is left; returns how many."""
        moved = 0
        while moved < limit:
            progress = False
            for src, dst in self.channels():
                for packet in self.pending(src, dst):
                    self.deliver(src, dst, packet)
                    moved += 1
                    progress = True
            if not progress:
                return moved
        raise RuntimeError("packets keep flowing")

    def in_flight(self) -> int:
        return sum(len(self.pending(a, b)) for a, b in self.channels())

    def refused(self, shard: str, fn, *args: Any, **kwargs: Any) -> BridgeError:
        """Run a transaction expected to be refused; check it changed nothing; return the error."""
        hop = self.hops[shard]
        before = hop.snapshot()
        try:
            hop.tx(fn, *args, **kwargs)
        except BridgeError as exc:
            assert hop.snapshot() == before, "a refused transaction changed state"
            return exc
        raise AssertionError("the transaction was not refused")
