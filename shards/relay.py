"""What an untrusted relayer delivers next on one channel (pure planning, no I/O).

A relayer watches a channel ``src -> dst``: the source's outbox (``send_seq`` and the
packets with proofs at the source's head), the destination's light client of the source
(``client``) and its ``recv_seq``. It may be slow, crash, deliver twice or out of order,
or run beside other relayers: the destination handles each packet once, in order, and
only with a valid proof (``shards.flow.FlowModule.deliver``). This module decides what a
well-behaved relayer submits; ``gridledger relay`` (the node's command) and the
simulator's relayers both use it, adding their own I/O and, in the simulator, faults.

Per round, for one channel:

1. If the source's validator set changed in a way the destination's client does not
   know, and the source's head is already certified by the new set, deliver the
   source's **hand-over bundle** of the first unknown epoch (a schedule-only delivery:
   the last header the old set certifies, with the proofs of the new epoch records).
2. Otherwise deliver the next packets (``recv_seq`` onward, at most
   ``MAX_DELIVERY_ITEMS``) proven at the source's head, with the schedule proofs of the
   epochs after the client's latest up to the first absent one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger.block import BlockHeader
from shards.lightclient import Certificate, LightClient, ScheduleProof
from shards.packets import MAX_DELIVERY_ITEMS, Delivery, Packet

__all__ = ["Handover", "RelayPlan", "SourceEpoch", "build_delivery", "plan_channel"]


@dataclass(frozen=True, slots=True)
class SourceEpoch:
    """What a relayer knows of one validator epoch of the source."""

    number: int
    after: int  # the new set certifies the heights above this one


@dataclass(frozen=True, slots=True)
class Handover:
    """A source shard's bundle for one epoch: the last header the old set certified, its
    certificate, and the schedule proofs under it (kept by the source's nodes)."""

    epoch: int
    header: BlockHeader
    certificate: Certificate
    schedule: tuple[ScheduleProof, ...]


@dataclass(frozen=True, slots=True)
class RelayPlan:
    handover_epoch: int | None  # deliver this epoch's hand-over bundle first
    seqs: range  # then these packets at the source's head
    schedule_epochs: tuple[int, ...]  # prove these epoch records under the head (the last absent)

    @property
    def idle(self) -> bool:
        return self.handover_epoch is None and not self.seqs


def plan_channel(
    client: LightClient,
    source_epochs: Sequence[SourceEpoch],
    head_height: int,
    next_recv: int,
    next_send: int,
    *,
    max_items: int = MAX_DELIVERY_ITEMS,
) -> RelayPlan:
    """Plan one round on a channel; see the module docstring."""
    known = client.latest.number
    unknown = sorted((e for e in source_epochs if e.number > known), key=lambda e: e.number)
    if unknown and head_height > unknown[0].after:
        return RelayPlan(unknown[0].number, range(0), ())
    last_epoch = max([known, *(e.number for e in unknown)])
    schedule = tuple(range(known + 1, last_epoch + 2))
    seqs = range(next_recv, min(next_send, next_recv + max_items))
    return RelayPlan(None, seqs, schedule)


def build_delivery(
    src: str,
    dst: str,
    header: BlockHeader,
    certificate: Certificate,
    schedule: Sequence[ScheduleProof],
    items: Sequence[tuple[Packet, bytes]],
) -> Delivery:
    """A delivery checked for shape (channel, consecutive seqs, sizes) before it is sent."""
    delivery = Delivery(src, dst, header, certificate, tuple(schedule), tuple(items))
    delivery.check_shape()
    delivery.encode()
    return delivery
