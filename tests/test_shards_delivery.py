"""Deliveries with real headers, certificates and proofs: what a relayer can and cannot do."""

from __future__ import annotations

import dataclasses
import random

import pytest

from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind
from shards.errors import LightClientError, PacketError
from shards.packets import Delivery, Packet
from shards.relay import SourceEpoch, build_delivery, plan_channel
from shards.sim.world import SimShard, Tx, validator_keys
from shards.topology import BridgeSpec, ShardSpec, Topology

T0 = 1_767_225_600
PARENT, CHILD = "ch", "ch/x"


def pair(protocol: str = "bft") -> tuple[SimShard, SimShard]:
    topology = Topology.build(
        [ShardSpec(PARENT, "bft", 4), ShardSpec(CHILD, protocol, 4)], [BridgeSpec(CHILD, 10_000, 1)], genesis_time=T0
    )
    rng = random.Random(7)
    size = 4 if protocol == "bft" else 3
    parent = SimShard(topology.shard(PARENT), topology, genesis_size=4, pool=6, skew_s=0, rng=rng)
    child = SimShard(topology.shard(CHILD), topology, genesis_size=size, pool=size + 2, skew_s=0, rng=rng)
    parent.install({CHILD: child.genesis_set})
    child.install({PARENT: parent.genesis_set})
    return parent, child


def write_packet(shard: SimShard, dst: str, kind: str = "settle", body=None, *, at_ms: int = 1000) -> None:
    shard.submit(Tx("raw", lambda s, now: s.module._send(dst, kind, bytes(32), body or [])))
    shard.produce(at_ms)


def delivery_from(source: SimShard, dst: str, *, first: int = 0) -> Delivery:
    items = []
    for seq in range(first, source.module.next_send(dst)):
        fields, proof = source.packet_proof(dst, seq)
        items.append((Packet.from_fields(fields), proof))
    height = source.height
    schedule = source.schedule_proofs(len(source.epochs))
    return build_delivery(source.id, dst, source.headers[height], source.certificate(height), schedule, items)


def deliver(target: SimShard, delivery: Delivery, now: int = T0 + 10):
    target.storage.begin()
    target.ledger.begin()
    try:
        report = target.module.deliver(now, Delivery.decode(delivery.encode()))
    except BaseException:
        target.storage.rollback()
        target.ledger.rollback()
        raise
    target.storage.commit()
    target.ledger.commit()
    target.storage.seal()
    return report


def test_a_packet_no_honest_shard_sends_freezes_the_bridge_and_is_recorded():
    parent, child = pair()
    write_packet(parent, CHILD, "settle")  # a settle for a flow the child never saw
    report = deliver(child, delivery_from(parent, CHILD))
    assert report.frozen and report.processed == 0
    assert child.module.is_frozen(PARENT)
    evidence = child.storage.get("evidence", [PARENT])
    assert evidence[0] == "violation" and "bad_packet" in evidence[2]
    write_packet(parent, CHILD, "settle", at_ms=2000)
    with pytest.raises(LightClientError) as refused:
        deliver(child, delivery_from(parent, CHILD, first=1))
    assert refused.value.code == "bridge_frozen"


def open_flows(child: SimShard, parent: SimShard, count: int) -> None:
    """``count`` purchases by a consumer of the child from offers of the parent."""
    consumer, producer = b"c" * 20, b"p" * 20
    child.genesis_tx(lambda: (child.ledger.admit(consumer, {"consumer"}), child.ledger.mint(consumer, 10_000)))
    for _ in range(count):
        token = parent.ledger.emit_offer(producer, 100, 40, 40, 5)
        child.submit(Tx("buy", lambda s, now, t=token: s.module.open_flow(
            now, consumer, destination=PARENT, token=t, price=5, currency="CHF", energy_wh=100,
            first_period=40, last_period=40, fee_budget=10, deadline=now + 60)))
    child.produce(1000)


def test_duplicate_and_reordered_deliveries_change_nothing():
    parent, child = pair()
    open_flows(child, parent, 2)
    full = delivery_from(child, PARENT)
    assert [p.seq for p, _ in full.items] == [0, 1]
    second_only = dataclasses.replace(full, items=full.items[1:])
    before = dict(parent.storage.values)
    with pytest.raises(PacketError) as refused:
        deliver(parent, second_only)
    assert refused.value.code == "out_of_order"
    assert parent.storage.values == before
    report = deliver(parent, full)
    assert (report.processed, report.duplicates) == (2, 0)
    after = dict(parent.storage.values)
    with pytest.raises(PacketError) as refused:
        deliver(parent, full)
    assert refused.value.code == "already_delivered"
    assert parent.storage.values == after
    # Another relayer with an overlapping batch: the handled packet is skipped.
    open_flows(child, parent, 1)
    overlapping = delivery_from(child, PARENT, first=1)
    report = deliver(parent, overlapping)
    assert (report.processed, report.duplicates) == (1, 1)


def test_a_tampered_packet_or_proof_is_refused():
    parent, child = pair()
    open_flows(child, parent, 1)
    genuine = delivery_from(child, PARENT)
    packet, proof = genuine.items[0]
    spec, release, mint = packet.body
    richer = Packet.make(packet.src, packet.dst, packet.seq, packet.acked, packet.kind, packet.flow_id,
                         [spec.to_fields(), release + 1_000, mint])
    before = dict(parent.storage.values)
    for tampered in (
        dataclasses.replace(genuine, items=((richer, proof),)),
        dataclasses.replace(genuine, items=((packet, proof[:-1] + bytes([proof[-1] ^ 1])),)),
        dataclasses.replace(genuine, header=dataclasses.replace(genuine.header, time=genuine.header.time + 1)),
    ):
        with pytest.raises((PacketError, LightClientError)):
            deliver(parent, tampered)
    assert parent.storage.values == before


def test_two_certified_headers_at_one_height_freeze_the_bridge_with_both_recorded():
    parent, child = pair()
    write_packet(child, PARENT, "settle")
    genuine = delivery_from(child, PARENT)
    # A quorum of the child's validators signs a second block at the same height.
    forged_header = dataclasses.replace(genuine.header, time=genuine.header.time + 1)
    members = child.epochs[0].members
    payload = commit_vote_payload(forged_header.height, 0, forged_header.hash)
    sigs = tuple((i, validator_keys(CHILD, members[i])[0].sign(CHILD, Kind.COMMIT, payload)) for i in range(3))
    forged = dataclasses.replace(genuine, header=forged_header, certificate=CommitCertificate("bft", forged_header.height, 0, forged_header.hash, sigs))
    # The first delivery's packet is a violation too (settle of an unknown flow): use a
    # schedule-only delivery to plant the genuine header first.
    deliver(parent, dataclasses.replace(genuine, items=()))
    report = deliver(parent, dataclasses.replace(forged, items=()))
    assert report.frozen
    kind, (shard, first, first_cert, second, second_cert) = parent.storage.get("evidence", [CHILD])
    assert kind == "equivocation" and shard == CHILD
    assert first == genuine.header.to_fields() and second == forged_header.to_fields()


def test_validator_set_change_needs_the_hand_over_once_the_new_set_certifies_the_head():
    parent, child = pair("raft")
    child.change_validators()
    write_packet(child, PARENT, "settle", at_ms=1000)  # the change is written in this block
    epoch = child.epochs[-1]
    assert epoch.number == 1 and epoch.after == child.height  # Raft: effective right after
    write_packet(child, PARENT, "settle", at_ms=2000)  # certified by the new set
    client = parent.module.light_client(CHILD)
    stale = delivery_from(child, PARENT)
    with pytest.raises(LightClientError) as refused:
        deliver(parent, stale)
    assert refused.value.code == "unknown_validator_set"
    plan = plan_channel(client, [SourceEpoch(e.number, e.after) for e in child.epochs[1:]], child.height, 0, 2)
    assert plan.handover_epoch == 1
    handover = child.handovers[1]
    report = deliver(parent, build_delivery(CHILD, PARENT, handover.header, handover.certificate, handover.schedule, ()))
    assert report.processed == 0 and not report.frozen
    assert parent.module.light_client(CHILD).latest.number == 1
    plan = plan_channel(parent.module.light_client(CHILD), [SourceEpoch(1, epoch.after)], child.height, 0, 2)
    assert plan.handover_epoch is None and list(plan.seqs) == [0, 1]
    # Now the packets verify under the new set (they are violations here, which freezes:
    # what matters is that the header was accepted).
    report = deliver(parent, delivery_from(child, PARENT))
    assert report.frozen and parent.storage.get("evidence", [CHILD])[0] == "violation"
