"""Packets between neighbouring shards, and the deliveries that carry them with proofs.

**A packet is a state entry.** A shard sends a packet by writing it into its own
authenticated state, in its outbox toward the neighbour::

    state_key("bridge", "outbox", [dst, seq])  ->  encode(packet fields)

so the packet exists exactly when a block that wrote it is committed, and its bytes are
proven like any other value: a state proof (``ledger.state``) against the state root of
a header certified for the source shard (commit or checkpoint certificate, checked by
the destination's :class:`~shards.lightclient.LightClient` of the source). Nobody signs
a packet; the source's validators certify it by certifying the block. A relayer
therefore cannot forge, alter or redirect one: any change breaks the proof.

**Fields** (canonical ``ledger.codec`` array, fixed order)::

    [version, src, dst, seq, acked, kind, flow_id, body]

``seq`` numbers the packets of one directed channel (src -> dst) from 0; the receiver
processes them strictly in order, so duplicates and reordering by relayers are harmless
(DESIGN.md, "idempotence"). ``acked`` is the sender's count of packets it has processed
from ``dst``: the receiver may prune its outbox below it. ``body`` by ``kind``:

==================  ====================================  ==============================
kind                body                                  direction along the flow path
==================  ====================================  ==============================
``reserve``         [flow spec, release, mint]            forward (origin -> destination)
``result``          [outcome, reason, energy, release,    backward
                    mint]
``settle``          []                                    forward
``cancel_request``  [requesting shard]                    backward
``cancel``          []                                    forward
``cancel_done``     [release, mint]                       backward
==================  ====================================  ==============================

``release + mint`` is money travelling with the packet (see ``shards.flow``). A committed
result's ``energy`` is ``[category, co2_mg]`` of the destination token whose side was
bought (CO2 in mg per elementary period, as tokens store it), so every hop token of the
flow carries what the producer's token delivers; an aborted result's is nil.

**A delivery** is what a relayer submits to the destination shard: one certified header
of the source, the proofs of the source's validator-set records needed to follow its
set (:class:`~shards.lightclient.ScheduleProof`), and consecutive packets each with its
proof under that header (none in a schedule-only delivery, which only updates the light
client: a hand-over bundle, or a refresh of an idle bridge)::

    [version, src, dst, header, certificate, [schedule proof...], [[packet, proof]...]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger import codec
from ledger.block import BlockError, BlockHeader
from ledger.state import MAX_PROOF_SIZE, ProofError, verify_proof
from ledger.statekeys import state_key
from shards.errors import LightClientError, PacketError, TopologyError
from shards.lightclient import (
    Certificate,
    LightClient,
    ScheduleProof,
    decode_certificate,
    encode_certificate,
)
from shards.records import MAX_AMOUNT, FlowSpec
from shards.topology import check_shard_id

__all__ = [
    "Delivery",
    "KINDS",
    "MAX_DELIVERY_ITEMS",
    "MAX_DELIVERY_SIZE",
    "MAX_PACKET_SIZE",
    "Packet",
    "outbox_key",
    "verify_packet",
    "verify_packet_proof",
]

# Version 2: a result carries the energy's category and CO2 (version 1 had neither).
PACKET_VERSION = 2
DELIVERY_VERSION = 1

RESERVE = "reserve"
RESULT = "result"
SETTLE = "settle"
CANCEL_REQUEST = "cancel_request"
CANCEL = "cancel"
CANCEL_DONE = "cancel_done"
KINDS = (RESERVE, RESULT, SETTLE, CANCEL_REQUEST, CANCEL, CANCEL_DONE)
OUTCOMES = ("committed", "aborted")

# The largest packet is a reserve carrying a flow spec with a path of 15 shards of up
# to 128 characters (~2 KB) and fixed fields (~200 bytes): 4 KiB leaves room and keeps
# a delivery of MAX_DELIVERY_ITEMS packets far below the transaction size limit.
MAX_PACKET_SIZE = 4096
# A reason is a short error code with its message, shown to the consumer.
MAX_REASON_LEN = 200
# An energy category is a short name ("solar", "wind", ...: the market's categories).
MAX_CATEGORY_LEN = 16
# CO2 is not money: a token stores any amount the codec encodes (2**64 - 1 at most).
MAX_CO2_MG = (1 << 64) - 1
# Packets per delivery: a relayer catches up on a backlog in batches of this many,
# each packet with its own ~0.7 KB proof.
MAX_DELIVERY_ITEMS = 64
# 64 x (4 KiB packet + 9 KiB proof) + header, certificate and schedule proofs.
MAX_DELIVERY_SIZE = 1 << 20


def outbox_key(dst: str, seq: int) -> bytes:
    """The state key of packet ``seq`` of the channel toward ``dst`` in the sender's state."""
    return state_key("bridge", "outbox", [dst, seq])


def _uint(value: Any, what: str, limit: int = MAX_AMOUNT) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise PacketError("malformed", f"{what} must be an integer in 0..{limit - 1}, got {value!r}")
    return value


def _money(body: list, at: int) -> tuple[int, int]:
    return _uint(body[at], "release amount"), _uint(body[at + 1], "mint amount")


def _energy(outcome: str, energy: Any) -> tuple[str, int] | None:
    """A result's energy: (category, CO2 in mg per period) when committed, None when aborted."""
    if outcome == "aborted":
        if energy is not None:
            raise PacketError("malformed", "an aborted result carries no energy")
        return None
    if not isinstance(energy, list) or len(energy) != 2:
        raise PacketError("malformed", "a committed result carries its energy as [category, co2_mg]")
    category, co2_mg = energy
    if type(category) is not str or not 0 < len(category) <= MAX_CATEGORY_LEN:
        raise PacketError("malformed", f"an energy category is a name of 1..{MAX_CATEGORY_LEN} characters")
    # Any CO2 a token can store (the codec's range): a result must never be unsendable.
    return category, _uint(co2_mg, "CO2 (mg per period)", MAX_CO2_MG + 1)


def _check_body(kind: str, body: Any) -> tuple:
    """Validate a body's shape for ``kind``; return it as a tuple of decoded values."""
    if not isinstance(body, list):
        raise PacketError("malformed", "a packet body is an array")
    sizes = {RESERVE: 3, RESULT: 5, SETTLE: 0, CANCEL_REQUEST: 1, CANCEL: 0, CANCEL_DONE: 2}
    if len(body) != sizes[kind]:
        raise PacketError("malformed", f"a {kind} packet body has {sizes[kind]} fields, got {len(body)}")
    if kind == RESERVE:
        return (FlowSpec.from_fields(body[0]), *_money(body, 1))
    if kind == RESULT:
        outcome, reason = body[0], body[1]
        if outcome not in OUTCOMES:
            raise PacketError("malformed", f"a result's outcome is one of {OUTCOMES}")
        if type(reason) is not str or len(reason) > MAX_REASON_LEN:
            raise PacketError("malformed", f"a result's reason is text of at most {MAX_REASON_LEN} characters")
        if (outcome == "aborted") != bool(reason):
            raise PacketError("malformed", "an aborted result names its reason; a committed one has none")
        return (outcome, reason, _energy(outcome, body[2]), *_money(body, 3))
    if kind == CANCEL_REQUEST:
        try:
            return (check_shard_id(body[0]),)
        except TopologyError as exc:
            raise PacketError("malformed", exc.message) from None
    if kind == CANCEL_DONE:
        return _money(body, 0)
    return ()


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    seq: int
    acked: int
    kind: str
    flow_id: bytes
    body: tuple  # decoded, checked body values (FlowSpec for a reserve)

    def body_fields(self) -> list:
        if self.kind == RESERVE:
            spec, release, mint = self.body
            return [spec.to_fields(), release, mint]
        if self.kind == RESULT:
            outcome, reason, energy, release, mint = self.body
            return [outcome, reason, None if energy is None else list(energy), release, mint]
        return list(self.body)

    def to_fields(self) -> list:
        return [PACKET_VERSION, self.src, self.dst, self.seq, self.acked, self.kind, self.flow_id, self.body_fields()]

    def encode(self) -> bytes:
        data = codec.encode(self.to_fields())
        if len(data) > MAX_PACKET_SIZE:
            raise PacketError("too_large", f"packet is {len(data)} bytes; at most {MAX_PACKET_SIZE}")
        return data

    @classmethod
    def make(cls, src: str, dst: str, seq: int, acked: int, kind: str, flow_id: bytes, body: list) -> Packet:
        """Build a packet from body fields, checking it as a receiver would."""
        return cls.from_fields([PACKET_VERSION, src, dst, seq, acked, kind, flow_id, body])

    @classmethod
    def from_fields(cls, fields: Any) -> Packet:
        if not isinstance(fields, list) or len(fields) != 8:
            raise PacketError("malformed", "a packet is [version, src, dst, seq, acked, kind, flow_id, body]")
        version, src, dst, seq, acked, kind, flow_id, body = fields
        if type(version) is not int or version != PACKET_VERSION:
            raise PacketError("malformed", f"unsupported packet version {version!r}")
        try:
            check_shard_id(src)
            check_shard_id(dst)
        except TopologyError as exc:
            raise PacketError("malformed", exc.message) from None
        if src == dst:
            raise PacketError("malformed", "a packet goes to another shard")
        if kind not in KINDS:
            raise PacketError("malformed", f"unknown packet kind {kind!r}; one of {KINDS}")
        if type(flow_id) is not bytes or len(flow_id) != 32:
            raise PacketError("malformed", "a packet's flow id is 32 bytes")
        decoded = _check_body(kind, body)
        if kind == RESERVE and decoded[0].flow_id != flow_id:
            raise PacketError("malformed", "a reserve packet's flow id is not the hash of its flow spec")
        return cls(src, dst, _uint(seq, "sequence number"), _uint(acked, "acknowledged count"), kind, flow_id, decoded)

    @classmethod
    def decode(cls, data: bytes) -> Packet:
        """Strictly decode a packet; raises :class:`PacketError`."""
        if not isinstance(data, bytes):
            raise PacketError("malformed", f"a packet is bytes, got {type(data).__name__}")
        if len(data) > MAX_PACKET_SIZE:
            raise PacketError("too_large", f"packet is {len(data)} bytes; at most {MAX_PACKET_SIZE}")
        try:
            fields = codec.decode(data, max_size=MAX_PACKET_SIZE, max_depth=4)
        except codec.CodecError as exc:
            raise PacketError("malformed", f"packet: {exc}") from None
        return cls.from_fields(fields)


def verify_packet_proof(header: BlockHeader, packet: Packet, proof: bytes) -> None:
    """Raise :class:`PacketError` unless ``proof`` shows ``packet`` in the outbox under
    ``header``'s state root. The header itself must already be verified."""
    if packet.src != header.chain_id:
        raise PacketError("wrong_source", f"packet is from {packet.src!r}; the header is of {header.chain_id!r}")
    try:
        ok = verify_proof(header.state_root, outbox_key(packet.dst, packet.seq), packet.encode(), proof)
    except ProofError as exc:
        raise PacketError("bad_proof", f"packet {packet.src}->{packet.dst} #{packet.seq}: {exc}") from None
    if not ok:
        raise PacketError(
            "bad_proof", f"packet {packet.src}->{packet.dst} #{packet.seq} is not in the certified state of {packet.src}"
        )


def verify_packet(
    light_client: LightClient, header: BlockHeader, certificate: Certificate, proof: bytes, packet: Packet
) -> None:
    """Raise unless ``packet`` is certified by ``packet.src``: ``light_client`` (of the
    source) accepts ``header`` with ``certificate``, and ``proof`` shows the packet in the
    source's outbox under the header's state root. Changes nothing.

    Raises :class:`~shards.errors.LightClientError` for the header and certificate,
    :class:`PacketError` for the packet and its proof.
    """
    if packet.src != light_client.shard:
        raise PacketError("wrong_source", f"packet is from {packet.src!r}; the light client follows {light_client.shard!r}")
    light_client.verify(header, certificate)
    verify_packet_proof(header, packet, proof)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a relayer submits to ``dst``: packets of ``src`` proven under one header."""

    src: str
    dst: str
    header: BlockHeader
    certificate: Certificate
    schedule: tuple[ScheduleProof, ...]
    items: tuple[tuple[Packet, bytes], ...]  # (packet, its state proof), consecutive seqs

    def to_fields(self) -> list:
        return [
            DELIVERY_VERSION,
            self.src,
            self.dst,
            self.header.to_fields(),
            encode_certificate(self.certificate),
            [s.to_fields() for s in self.schedule],
            [[p.encode(), proof] for p, proof in self.items],
        ]

    def encode(self) -> bytes:
        data = codec.encode(self.to_fields())
        if len(data) > MAX_DELIVERY_SIZE:
            raise PacketError("too_large", f"delivery is {len(data)} bytes; at most {MAX_DELIVERY_SIZE}")
        return data

    @classmethod
    def decode(cls, data: bytes) -> Delivery:
        """Strictly decode a delivery (shapes and sizes only; proofs are checked on delivery)."""
        if not isinstance(data, bytes):
            raise PacketError("malformed", f"a delivery is bytes, got {type(data).__name__}")
        if len(data) > MAX_DELIVERY_SIZE:
            raise PacketError("too_large", f"delivery is {len(data)} bytes; at most {MAX_DELIVERY_SIZE}")
        try:
            fields = codec.decode(data, max_size=MAX_DELIVERY_SIZE, max_depth=8)
        except codec.CodecError as exc:
            raise PacketError("malformed", f"delivery: {exc}") from None
        if not isinstance(fields, list) or len(fields) != 7 or fields[0] != DELIVERY_VERSION:
            raise PacketError("malformed", "a delivery is [version 1, src, dst, header, certificate, schedule, items]")
        _, src, dst, header, certificate, schedule, items = fields
        try:
            check_shard_id(src)
            check_shard_id(dst)
            parsed_header = BlockHeader.from_fields(header)
            parsed_certificate = decode_certificate(certificate)
        except (TopologyError, BlockError, LightClientError) as exc:
            raise PacketError("malformed", f"delivery: {exc}") from None
        if not isinstance(schedule, list) or len(schedule) > 16:
            raise PacketError("malformed", "a delivery carries at most 16 schedule proofs")
        if not isinstance(items, list) or len(items) > MAX_DELIVERY_ITEMS:
            raise PacketError("malformed", f"a delivery carries at most {MAX_DELIVERY_ITEMS} packets")
        if not items and not schedule:
            raise PacketError("malformed", "a delivery carries packets, schedule proofs, or both")
        try:
            parsed_schedule = tuple(ScheduleProof.from_fields(s) for s in schedule)
        except LightClientError as exc:
            raise PacketError("malformed", f"delivery: {exc}") from None
        parsed_items = []
        for item in items:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], bytes):
                raise PacketError("malformed", "a delivery item is [packet, proof]")
            if len(item[1]) > MAX_PROOF_SIZE:
                raise PacketError("too_large", f"a proof is at most {MAX_PROOF_SIZE} bytes")
            parsed_items.append((Packet.decode(item[0]), item[1]))
        return cls(src, dst, parsed_header, parsed_certificate, parsed_schedule, tuple(parsed_items))

    def check_shape(self) -> None:
        """Raise :class:`PacketError` unless every packet goes ``src -> dst`` with consecutive seqs."""
        if not self.items and not self.schedule:
            raise PacketError("malformed", "a delivery carries packets, schedule proofs, or both")
        if len(self.items) > MAX_DELIVERY_ITEMS:
            raise PacketError("too_large", f"a delivery carries at most {MAX_DELIVERY_ITEMS} packets")
        first = self.items[0][0].seq if self.items else 0
        for i, (packet, _) in enumerate(self.items):
            if packet.src != self.src or packet.dst != self.dst:
                raise PacketError("wrong_channel", f"packet {i} is {packet.src}->{packet.dst}, not {self.src}->{self.dst}")
            if packet.seq != first + i:
                raise PacketError("malformed", "a delivery's packets have consecutive sequence numbers")
        if self.header.chain_id != self.src:
            raise PacketError("wrong_source", f"the header is of {self.header.chain_id!r}, not {self.src!r}")
