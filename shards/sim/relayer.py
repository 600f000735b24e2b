"""Simulated relayers: the planning of ``shards.relay`` plus every fault an untrusted relayer has.

A relayer polls the channels it serves, plans with :func:`shards.relay.plan_channel`,
builds a delivery with real proofs at the source's head (sometimes under a checkpoint
certificate) and submits its bytes to the destination's mempool after a network delay.
Faults, all drawn from the seeded generator:

* **crash**: the relayer stops (for a while or until the end of the fault phase), also
  between building a delivery and submitting it;
* **delay**: a submission arrives up to a few seconds late (and so proves stale state);
* **duplicate**: a delivery is submitted twice; several relayers serve one channel;
* **reorder**: a batch is split into single packets submitted in a random order;
* **mangle** (a Byzantine relayer): one byte of the delivery is changed, or it is sent to
  the wrong shard; the destination must refuse it and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shards.errors import BridgeError
from shards.packets import Delivery, Packet
from shards.relay import SourceEpoch, build_delivery, plan_channel

__all__ = ["RelayerFaults", "SimRelayer"]


@dataclass
class RelayerFaults:
    max_delay_ms: int = 1500
    duplicate: float = 0.1
    reorder: float = 0.1
    mangle: float = 0.0
    misroute: float = 0.0
    checkpoint: float = 0.0  # share of deliveries proven with a checkpoint certificate
    drop_in_flight: float = 0.02  # crash between building and submitting one delivery


@dataclass
class SimRelayer:
    name: str
    channels: list[tuple[str, str]]
    faults: RelayerFaults
    crashed_until_ms: int = 0
    retry_ms: int = 2500
    # channel -> (highest seq submitted, time): do not resubmit before retry_ms without progress
    submitted: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def poll(self, world, now_ms: int) -> None:
        if now_ms < self.crashed_until_ms:
            return
        order = list(self.channels)
        world.rng.shuffle(order)
        for src, dst in order:
            self._relay(world, src, dst, now_ms)

    def _relay(self, world, src: str, dst: str, now_ms: int) -> None:
        source = world.shards[src]
        target = world.shards[dst]
        next_send = source.storage.values.get(("bridge", "send_seq", (dst,)), 0)
        next_recv = target.storage.values.get(("bridge", "recv_seq", (src,)), 0)
        if next_recv >= next_send or source.height == 0:
            return  # nothing to carry (cheap check before decoding the light client)
        last = self.submitted.get((src, dst))
        if last is not None and last[0] >= next_recv and now_ms - last[1] < self.retry_ms:
            return  # a delivery is on its way; give it time
        client = target.module.light_client(src)
        epochs = [SourceEpoch(e.number, e.after) for e in source.epochs[1:]]
        plan = plan_channel(client, epochs, source.height, next_recv, next_send)
        rng = world.rng
        if plan.handover_epoch is not None:
            handover = source.handovers[plan.handover_epoch]
            delivery = build_delivery(src, dst, handover.header, handover.certificate, handover.schedule, ())
            self._submit(world, dst, delivery, now_ms, split=False)
            return
        height = source.height
        header = source.headers[height]
        use_checkpoint = rng.random() < self.faults.checkpoint and height % source.interval == 0
        certificate = source.checkpoint_certificate(height) if use_checkpoint else source.certificate(height)
        schedule = [source.schedule_proof(j) for j in plan.schedule_epochs]
        items = []
        for seq in plan.seqs:
            fields, proof = source.packet_proof(dst, seq)
            if fields is None:
                break  # pruned (already delivered and acknowledged)
            items.append((Packet.from_fields(fields), proof))
        if not items:
            return
        delivery = build_delivery(src, dst, header, certificate, schedule, items)
        self.submitted[(src, dst)] = (items[-1][0].seq, now_ms)
        self._submit(world, dst, delivery, now_ms, split=True)

    def _submit(self, world, dst: str, delivery: Delivery, now_ms: int, *, split: bool) -> None:
        rng = world.rng
        faults = self.faults
        if rng.random() < faults.drop_in_flight:
            world.trace(now_ms, f"relayer {self.name} crashed with a delivery {delivery.src}->{dst} in hand")
            self.crashed_until_ms = now_ms + rng.randint(1000, 8000)
            return
        batches = [delivery]
        if split and len(delivery.items) > 1 and rng.random() < faults.reorder:
            batches = [
                Delivery(delivery.src, delivery.dst, delivery.header, delivery.certificate, delivery.schedule, (item,))
                for item in delivery.items
            ]
            rng.shuffle(batches)
        for batch in batches:
            copies = 2 if rng.random() < faults.duplicate else 1
            for _ in range(copies):
                data = batch.encode()
                target = dst
                mangled = False
                if rng.random() < faults.mangle:
                    data, mangled = _mangle(data, rng), True
                if rng.random() < faults.misroute:
                    others = [n for n in world.topology.neighbours(batch.src) if n != dst]
                    if others:
                        target, mangled = rng.choice(others), True
                delay = rng.randint(0, faults.max_delay_ms)
                world.schedule(now_ms + delay, lambda d=data, t=target, m=mangled: world.submit_delivery(self.name, t, d, m))


def _mangle(data: bytes, rng) -> bytes:
    choice = rng.random()
    if choice < 0.8:
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if choice < 0.9:
        return data[: rng.randrange(1, len(data))]
    return data + b"\x00"


def refused(result) -> bool:
    return isinstance(result, BridgeError)
