"""How a shard takes in a relayer's delivery: verify everything, then hand packets to the flow.

A delivery (``shards.packets.Delivery``) is checked entirely before anything changes:
the bridge is not frozen, the packets are on the channel with consecutive sequence
numbers, every proof matches the header's state root, the order fits (duplicates are
skipped, a gap refuses), and the light client of the source accepts the header and
learns from its schedule proofs. Then the new packets go, in order, to the flow state
machine (:meth:`shards.flow.FlowModule.receive`).

Two outcomes freeze the bridge instead of refusing: two certified headers of the source
at one height (equivocation), and a certified packet no honest shard sends (a protocol
violation). The delivery then succeeds, so that the evidence is recorded on chain
(``evidence[neighbour]``), and nothing more from that neighbour is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import codec
from ledger.crypto import tagged_hash
from shards.errors import LightClientError, PacketError, ProtocolViolation
from shards.lightclient import Equivocation, LightClient, encode_certificate
from shards.packets import Delivery, verify_packet_proof

__all__ = ["DeliveryIntake", "DeliveryReport"]


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    processed: int  # packets handled now
    duplicates: int  # packets already handled before (skipped)
    frozen: bool = False  # the delivery froze the bridge (equivocation or violation)


class DeliveryIntake:
    """The delivery side of :class:`shards.flow.FlowModule` (which provides ``storage``,
    ``shard``, ``light_client`` and ``receive``)."""

    def submit_evidence(self, neighbour: str, evidence: Equivocation) -> None:
        """Anyone submits two conflicting certified headers of a neighbour: the bridge freezes."""
        client = self.light_client(neighbour)
        client.submit_evidence(evidence)
        self.storage.put("client", [neighbour], client.to_fields())
        self.storage.put("evidence", [neighbour], ["equivocation", evidence.to_fields()])

    # ================================================================== deliveries

    def deliver(self, now: int, delivery: Delivery) -> DeliveryReport:
        """A relayer's delivery of packets from a neighbour, with their proofs.

        Verifies the header with the light client of the source (learning validator-set
        changes from the schedule proofs), every packet's proof, then handles the packets
        in sequence order: those already handled are skipped (another relayer was first),
        a gap refuses the delivery (a relayer reordered; the missing packet comes first).
        Refusals raise and change nothing. Equivocation or a protocol violation by the
        source freezes the bridge: the delivery then succeeds, records the evidence, and
        handles nothing more.
        """
        delivery.check_shape()
        src = delivery.src
        if delivery.dst != self.shard:
            raise PacketError("wrong_channel", f"delivery is for {delivery.dst!r}, not {self.shard!r}")
        client = self.light_client(src)
        if client.frozen is not None:
            raise LightClientError("bridge_frozen", f"the bridge to {src} is frozen by the evidence recorded against it")
        items = delivery.items
        # Every check before any change: the proofs (against the header's root), the order,
        # then the header itself (accept verifies it and raises before changing the client).
        for packet, proof in items:
            verify_packet_proof(delivery.header, packet, proof)
        expected = self.next_recv(src)
        fresh = [(p, proof) for p, proof in items if p.seq >= expected]
        if items and not fresh:
            raise PacketError("already_delivered", f"packets up to #{items[-1][0].seq} from {src} were handled before")
        if fresh and fresh[0][0].seq != expected:
            raise PacketError("out_of_order", f"the next packet from {src} is #{expected}; this delivery starts at #{fresh[0][0].seq}")
        recent_before = set(client.recent)
        conflict = client.accept(delivery.header, delivery.certificate, delivery.schedule)
        if conflict is not None:
            self._record_equivocation(src, client, conflict, delivery)
            return DeliveryReport(0, len(items) - len(fresh), frozen=True)
        self._remember_header(src, client, recent_before, delivery)
        self.storage.put("client", [src], client.to_fields())
        processed = 0
        for packet, _ in fresh:
            try:
                self.receive(now, packet)
            except ProtocolViolation as exc:
                self._freeze(src, ["violation", packet.to_fields(), f"{exc.code}: {exc.message}"])
                return DeliveryReport(processed, len(items) - len(fresh), frozen=True)
            processed += 1
        return DeliveryReport(processed, len(items) - len(fresh))

    def _remember_header(self, src: str, client: LightClient, before: set[int], delivery: Delivery) -> None:
        height = delivery.header.height
        if height not in before:
            self.storage.put("seen", [src, height], [delivery.header.to_fields(), encode_certificate(delivery.certificate)])
        for old in before - set(client.recent):
            self.storage.delete("seen", [src, old])

    def _record_equivocation(self, src: str, client: LightClient, previous_hash: bytes, delivery: Delivery) -> None:
        earlier = self.storage.get("seen", [src, delivery.header.height])
        evidence = [
            "equivocation",
            [src, earlier[0] if earlier else previous_hash, earlier[1] if earlier else None,
             delivery.header.to_fields(), encode_certificate(delivery.certificate)],
        ]
        self.storage.put("client", [src], client.to_fields())
        self.storage.put("evidence", [src], evidence)

    def _freeze(self, src: str, evidence: list) -> None:
        client = self.light_client(src)
        client.frozen = tagged_hash(b"gridledger/violation", codec.encode(evidence))
        self.storage.put("client", [src], client.to_fields())
        self.storage.put("evidence", [src], evidence)
