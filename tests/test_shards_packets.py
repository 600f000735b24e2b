"""Packets and deliveries: canonical round trips, refusal of every mutation, proofs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.block import ZERO_HASH, BlockHeader
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind
from ledger.merkle import merkle_root
from ledger.validators import ValidatorSet
from shards.errors import BridgeError, LightClientError, PacketError
from shards.lightclient import LightClient
from shards.packets import (
    KINDS,
    MAX_PACKET_SIZE,
    Delivery,
    Packet,
    outbox_key,
    verify_packet,
    verify_packet_proof,
)
from shards.packets import (
    PACKET_VERSION as V,
)
from shards.records import FlowSpec
from shards.sim.state import SimStorage
from shards.sim.world import validator_keys

SRC, DST = "ch/zurich", "ch/zurich/oerlikon"
PATH = ["ch/zurich/oerlikon", "ch/zurich", "ch", "ch/bern", "ch/bern/breitenrain"]

amounts = st.integers(min_value=0, max_value=(1 << 62) - 1)
addresses = st.binary(min_size=20, max_size=20)


@st.composite
def specs(draw) -> FlowSpec:
    first = draw(st.integers(0, 10_000))
    return FlowSpec(
        PATH[0], draw(amounts), PATH[-1], tuple(PATH), draw(addresses), draw(addresses), draw(amounts),
        draw(amounts), draw(st.sampled_from(["CHF", "EUR"])), draw(st.integers(1, 10**9)), first,
        first + draw(st.integers(0, 96)), draw(amounts), draw(amounts), draw(amounts),
    )


@st.composite
def packets(draw) -> Packet:
    kind = draw(st.sampled_from(KINDS))
    flow_id = draw(st.binary(min_size=32, max_size=32))
    if kind == "reserve":
        spec = draw(specs())
        body = [spec.to_fields(), draw(amounts), draw(amounts)]
        flow_id = spec.flow_id
    elif kind == "result":
        outcome = draw(st.sampled_from(["committed", "aborted"]))
        reason = "" if outcome == "committed" else draw(st.text(min_size=1, max_size=50))
        energy = None
        if outcome == "committed":
            energy = [draw(st.text(min_size=1, max_size=16)), draw(amounts)]
        body = [outcome, reason, energy, draw(amounts), draw(amounts)]
    elif kind == "cancel_request":
        body = [draw(st.sampled_from(PATH))]
    elif kind == "cancel_done":
        body = [draw(amounts), draw(amounts)]
    else:
        body = []
    return Packet.make(SRC, DST, draw(st.integers(0, 1 << 40)), draw(st.integers(0, 1 << 40)), kind, flow_id, body)


@given(packets())
def test_packet_round_trips_through_its_canonical_encoding(packet):
    data = packet.encode()
    assert len(data) <= MAX_PACKET_SIZE
    again = Packet.decode(data)
    assert again == packet
    assert again.encode() == data


@settings(max_examples=200)
@given(packets(), st.data())
def test_any_changed_byte_is_refused_or_breaks_the_proof(packet, data):
    """A relayer cannot alter a packet: the altered bytes do not decode, or decode to a
    packet whose proof fails against the source's certified root."""
    storage = SimStorage()
    storage.begin()
    storage.put("outbox", [packet.dst, packet.seq], packet.to_fields())
    storage.commit()
    root = storage.seal()
    _, proof, _ = storage.prove("bridge", "outbox", [packet.dst, packet.seq])
    header = BlockHeader(SRC, 3, ZERO_HASH, merkle_root([]), root, merkle_root([]), 0, b"", ZERO_HASH)
    verify_packet_proof(header, packet, proof)
    raw = packet.encode()
    at = data.draw(st.integers(0, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = raw[:at] + bytes([raw[at] ^ flip]) + raw[at + 1 :]
    try:
        altered = Packet.decode(mutated)
    except PacketError:
        return
    with pytest.raises(PacketError):
        verify_packet_proof(header, altered, proof)


@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_packet_error(blob):
    try:
        Packet.decode(blob)
    except PacketError:
        pass


def test_non_canonical_and_oversized_packets_are_refused():
    packet = Packet.make(SRC, DST, 1, 0, "settle", bytes(32), [])
    fields = packet.to_fields()
    import msgpack

    loose = msgpack.packb(fields[:3] + [msgpack.ExtType(1, b"")] + fields[4:], use_bin_type=True)
    with pytest.raises(PacketError):
        Packet.decode(loose)
    with pytest.raises(PacketError):
        Packet.decode(packet.encode() + b"\x00")
    with pytest.raises(PacketError) as refused:
        Packet.decode(b"\x91" + codec.encode("x" * MAX_PACKET_SIZE))
    assert refused.value.code == "too_large"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([V, SRC, SRC, 0, 0, "settle", bytes(32), []], "another shard"),
        ([V, SRC, DST, 0, 0, "teleport", bytes(32), []], "unknown packet kind"),
        ([V, SRC, DST, -1, 0, "settle", bytes(32), []], "sequence"),
        ([V, SRC, DST, 0, 0, "settle", bytes(31), []], "32 bytes"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["aborted", "", None, 0, 0]], "reason"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["solar", 0], 0]], "fields"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", None, 0, 0]], "[category, co2_mg]"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["solar"], 0, 0]], "[category, co2_mg]"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["", 5], 0, 0]], "category"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["s" * 17, 5], 0, 0]], "category"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["solar", -1], 0, 0]], "CO2"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["solar", 1 << 64], 0, 0]], "CO2"),
        ([V, SRC, DST, 0, 0, "result", bytes(32), ["aborted", "refused", ["solar", 5], 0, 0]], "no energy"),
        ([1, SRC, DST, 0, 0, "settle", bytes(32), []], "version"),
        ([V + 1, SRC, DST, 0, 0, "settle", bytes(32), []], "version"),
        ([V, "Ch/Zurich", DST, 0, 0, "settle", bytes(32), []], "segment"),
    ],
)
def test_malformed_packets_are_refused_with_a_reason(fields, reason):
    with pytest.raises(PacketError) as refused:
        Packet.from_fields(fields)
    assert reason in refused.value.message


def test_a_committed_result_carries_the_energy_of_the_token_bought_through_encoding():
    packet = Packet.make(SRC, DST, 3, 1, "result", bytes(32), ["committed", "", ["wind", 1_200_000], 7, 5])
    again = Packet.decode(packet.encode())
    assert again == packet
    assert again.body == ("committed", "", ("wind", 1_200_000), 7, 5)
    aborted = Packet.make(SRC, DST, 4, 1, "result", bytes(32), ["aborted", "timeout at x", None, 7, 0])
    assert Packet.decode(aborted.encode()).body[2] is None


def test_reserve_whose_flow_id_is_not_its_specs_hash_is_refused():
    spec = FlowSpec(PATH[0], 0, PATH[-1], tuple(PATH), bytes(20), bytes(20), 1, 0, "CHF", 1, 0, 0, 0, 10, 0)
    with pytest.raises(PacketError):
        Packet.make(SRC, DST, 0, 0, "reserve", bytes(32), [spec.to_fields(), 0, 0])


def _signed(storage: SimStorage, height: int = 4):
    members = (0, 1, 2, 3)
    vset = ValidatorSet(tuple(validator_keys(SRC, i)[2] for i in members))
    header = BlockHeader(SRC, height, ZERO_HASH, merkle_root([]), storage.tree.root, merkle_root([]), 100, b"", vset.hash)
    payload = commit_vote_payload(height, 0, header.hash)
    sigs = tuple((i, validator_keys(SRC, i)[0].sign(SRC, Kind.COMMIT, payload)) for i in range(3))
    client = LightClient(SRC, "bft", 16, vset)
    return header, CommitCertificate("bft", height, 0, header.hash, sigs), client


def test_verify_packet_checks_certificate_header_and_proof():
    packet = Packet.make(SRC, DST, 0, 0, "cancel", bytes(32), [])
    storage = SimStorage()
    storage.begin()
    storage.put("outbox", [DST, 0], packet.to_fields())
    storage.commit()
    storage.seal()
    header, certificate, client = _signed(storage)
    _, proof, _ = storage.prove("bridge", "outbox", [DST, 0])
    verify_packet(client, header, certificate, proof, packet)
    other = Packet.make(SRC, DST, 1, 0, "cancel", bytes(32), [])
    with pytest.raises(PacketError):
        verify_packet(client, header, certificate, proof, other)
    bad_cert = CommitCertificate("bft", 4, 0, header.hash, certificate.signatures[:2])
    with pytest.raises(LightClientError):
        verify_packet(client, header, bad_cert, proof, packet)
    wrong_source = LightClient("ch/bern", "bft", 16, ValidatorSet(tuple(validator_keys("ch/bern", i)[2] for i in range(4))))
    with pytest.raises(PacketError):
        verify_packet(wrong_source, header, certificate, proof, packet)
    assert storage.tree.root == header.state_root
    assert outbox_key(DST, 0)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(packets(), min_size=1, max_size=4), st.data())
def test_delivery_round_trips_and_every_changed_byte_is_refused(items, data):
    items = [Packet.make(SRC, DST, i, p.acked, p.kind, p.flow_id, p.body_fields()) for i, p in enumerate(items)]
    storage = SimStorage()
    storage.begin()
    for p in items:
        storage.put("outbox", [DST, p.seq], p.to_fields())
    storage.commit()
    storage.seal()
    header, certificate, client = _signed(storage)
    proven = tuple((p, storage.prove("bridge", "outbox", [DST, p.seq])[1]) for p in items)
    delivery = Delivery(SRC, DST, header, certificate, (), proven)
    raw = delivery.encode()
    assert Delivery.decode(raw) == delivery

    def accepted(d: Delivery) -> bool:
        d.check_shape()
        client.verify(d.header, d.certificate)
        for packet, proof in d.items:
            verify_packet_proof(d.header, packet, proof)
        return True

    assert accepted(delivery)
    at = data.draw(st.integers(0, len(raw) - 1))
    mutated = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    try:
        altered = Delivery.decode(mutated)
    except PacketError:
        return
    if altered.dst != DST:
        return  # a delivery to another shard is refused by that shard's channel check
    with pytest.raises(BridgeError):
        accepted(altered)


def test_a_result_carries_any_co2_a_token_can_store():
    most = (1 << 64) - 1  # the codec's largest integer: no stored token has more
    packet = Packet.make(SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["coal", most], 0, 0])
    assert Packet.decode(packet.encode()).body[2] == ("coal", most)
    with pytest.raises(PacketError, match="CO2"):
        Packet.make(SRC, DST, 0, 0, "result", bytes(32), ["committed", "", ["coal", most + 1], 0, 0])


def test_the_destination_carries_an_unknown_long_category_as_other():
    from shards.flow import carried_energy

    assert carried_energy(("wind", 7)) == ("wind", 7)
    assert carried_energy(("x" * 17, 7)) == ("other", 7)
