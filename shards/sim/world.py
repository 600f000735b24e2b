"""The simulated shard tree: each shard a small deterministic chain running the real flow module.

A :class:`SimShard` has validators with real Ed25519 and BLS keys, blocks whose headers
commit to the state root of its :class:`~shards.sim.state.SimStorage`, commit
certificates signed by a quorum of the set in force (BFT) or by the leader (Raft),
checkpoint certificates with BLS aggregates on request, validator-set changes recorded
as epoch records with the hand-over bundles a node keeps, a mempool, a clock skew and
stalls. Blocks are made only when transactions wait (an empty block would change
nothing a neighbour can see but the time, which the next block carries anyway).

Everything a shard does to its state goes through transactions that are atomic: the
storage overlay and the ledger journal are dropped when the flow module refuses.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.bft.schedule import effective_after
from ledger import bls
from ledger.block import ZERO_HASH, BlockHeader
from ledger.certificate import (
    CheckpointCertificate,
    CommitCertificate,
    checkpoint_message,
    commit_vote_payload,
    signer_bitmap,
)
from ledger.crypto import Kind, PrivateKey, tagged_hash
from ledger.merkle import merkle_root
from ledger.validators import Validator, ValidatorSet
from shards.errors import BridgeError
from shards.flow import FlowModule, install_genesis
from shards.lightclient import ScheduleProof
from shards.relay import Handover
from shards.sim.ledger import SimLedger
from shards.sim.state import SimStorage
from shards.topology import ShardSpec, Topology

__all__ = ["SimShard", "Tx", "account", "validator_keys"]

EMPTY_ROOT = merkle_root([])
MAX_BLOCK_TXS = 64


@functools.cache
def validator_keys(shard: str, index: int) -> tuple[PrivateKey, bytes, Validator]:
    """The keys of validator ``index`` of ``shard``: the same in every run (cached, since a
    BLS proof of possession costs a millisecond); the seed drives faults, not keys."""
    seed = tagged_hash(b"gridledger/sim-validator", f"{shard}#{index}".encode())
    key = PrivateKey(seed)
    bls_sk = bls.keygen(seed + b"bls-ikm-padding-0123456789")
    validator = Validator(key.public_key.raw, bls.sk_to_pk(bls_sk), bls.pop_prove(bls_sk), f"{shard}#{index}")
    return key, bls_sk, validator


def account(shard: str, name: str) -> bytes:
    """A participant's 20-byte address in the simulation."""
    return tagged_hash(b"gridledger/sim-account", f"{shard}:{name}".encode())[:20]


@dataclass
class Tx:
    """A transaction waiting in a mempool: ``run(shard, now)`` refuses with a BridgeError."""

    kind: str
    run: Callable[[SimShard, int], Any]
    note: str = ""
    on_done: Callable[[SimShard, Any], None] | None = None  # called with the result or the refusal


@dataclass(frozen=True)
class Epoch:
    number: int
    after: int
    validators: ValidatorSet
    written_at: int
    members: tuple[int, ...]


class SimShard:
    def __init__(self, spec: ShardSpec, topology: Topology, *, genesis_size: int, pool: int, skew_s: int, rng) -> None:
        self.id = spec.id
        self.spec = spec
        self.topology = topology
        self.protocol = spec.protocol
        self.interval = spec.checkpoint_interval
        self.rng = rng
        self.pool = pool  # validator indices 0..pool-1 may ever serve
        members = tuple(range(genesis_size))
        self.epochs = [Epoch(0, 0, self._set_of(members), 0, members)]
        self.go = account(self.id, "grid_operator")
        self.storage = SimStorage()
        self.ledger = SimLedger(self.id, topology, self.go)
        self.module = FlowModule(self.id, topology, self.storage, self.ledger)
        self.height = 0
        self.time = topology.genesis_time
        self.headers: dict[int, BlockHeader] = {}
        self.certificates: dict[tuple[int, str], Any] = {}
        self.mempool: deque[Tx] = deque()
        self.stall_until_ms = 0
        self.skew_s = skew_s
        self.handovers: dict[int, Handover] = {}
        self.pending_members: tuple[int, ...] | None = None
        self.blocks = 0

    # ------------------------------------------------------------------ validators

    def _set_of(self, members: tuple[int, ...]) -> ValidatorSet:
        return ValidatorSet(tuple(validator_keys(self.id, i)[2] for i in members))

    @property
    def genesis_set(self) -> ValidatorSet:
        return self.epochs[0].validators

    def epoch_for(self, height: int) -> Epoch:
        chosen = self.epochs[0]
        for epoch in self.epochs:
            if epoch.after < height:
                chosen = epoch
        return chosen

    def change_validators(self) -> None:
        """Propose a validator-set change (applied in the next block): one validator added
        or removed, as Raft's single-server changes require; BFT keeps at least 4."""
        current = self.pending_members or self.epochs[-1].members
        minimum = 4 if self.protocol == "bft" else 1
        outside = [i for i in range(self.pool) if i not in current]
        if outside and (len(current) <= minimum or self.rng.random() < 0.5):
            members = (*current, self.rng.choice(outside))
        elif len(current) > minimum:
            leaving = self.rng.choice(current)
            members = tuple(i for i in current if i != leaving)
        else:
            return
        self.pending_members = members

    # ------------------------------------------------------------------ genesis

    def install(self, neighbour_sets: dict[str, ValidatorSet]) -> None:
        self.storage.begin()
        install_genesis(self.storage, self.topology, self.id, neighbour_sets)
        self.storage.commit()
        root = self.storage.seal()
        vset = self.genesis_set
        self.headers[0] = BlockHeader(self.id, 0, ZERO_HASH, EMPTY_ROOT, root, EMPTY_ROOT, self.time, b"", vset.hash)

    def genesis_tx(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` against the ledger and storage before the first block (genesis state)."""
        self.storage.begin()
        fn()
        self.storage.commit()
        self.storage.seal()

    # ------------------------------------------------------------------ blocks

    def submit(self, tx: Tx) -> None:
        self.mempool.append(tx)

    def produce(self, now_ms: int) -> list[tuple[Tx, Any]] | None:
        """Make a block if transactions wait and the shard is not stalled."""
        if now_ms < self.stall_until_ms or (not self.mempool and self.pending_members is None):
            return None
        time = max(self.time, self.topology.genesis_time + now_ms // 1000 + self.skew_s)
        height = self.height + 1
        results = []
        for _ in range(min(len(self.mempool), MAX_BLOCK_TXS)):
            tx = self.mempool.popleft()
            results.append((tx, self._execute(tx, time)))
        if self.pending_members is not None:
            self._write_epoch(height)
        root = self.storage.seal()
        vset = self.epoch_for(height).validators
        header = BlockHeader(
            self.id, height, self.headers[self.height].hash, EMPTY_ROOT, root, EMPTY_ROOT, time,
            vset.validators[height % vset.n].node_key, vset.hash,
        )
        self.headers[height] = header
        self.height = height
        self.time = time
        self.blocks += 1
        for epoch in self.epochs[1:]:
            if epoch.after == height and epoch.number not in self.handovers:
                # The last height the old set certifies: keep the bundle a relayer needs.
                self.handovers[epoch.number] = Handover(
                    epoch.number, header, self.certificate(height), tuple(self.schedule_proofs(epoch.number))
                )
        for tx, result in results:
            if tx.on_done is not None:
                tx.on_done(self, result)
        return results

    def _execute(self, tx: Tx, now: int) -> Any:
        self.storage.begin()
        self.ledger.begin()
        self.ledger.now = now
        try:
            result = tx.run(self, now)
        except BridgeError as exc:
            self.storage.rollback()
            self.ledger.rollback()
            return exc
        except BaseException:
            self.storage.rollback()
            self.ledger.rollback()
            raise
        self.storage.commit()
        self.ledger.commit()
        return result

    def _write_epoch(self, height: int) -> None:
        members = self.pending_members
        self.pending_members = None
        number = self.epochs[-1].number + 1
        after = effective_after(height, self.interval) if self.protocol == "bft" else height
        vset = self._set_of(members)
        self.storage.begin()
        self.storage.write(("validators", "epoch", (number,)), [after, vset.to_fields()])
        self.storage.commit()
        self.epochs.append(Epoch(number, after, vset, height, members))

    # ------------------------------------------------------------------ certificates and proofs

    def certificate(self, height: int) -> CommitCertificate:
        cached = self.certificates.get((height, "commit"))
        if cached is not None:
            return cached
        header = self.headers[height]
        epoch = self.epoch_for(height)
        vset = epoch.validators
        if self.protocol == "bft":
            signers = sorted(self.rng.sample(range(vset.n), vset.bft_quorum))
            kind, round_ = Kind.COMMIT, 0
        else:
            signers = [height % vset.n]
            kind, round_ = Kind.RAFT_COMMIT, 1
        payload = commit_vote_payload(height, round_, header.hash)
        sigs = tuple((i, validator_keys(self.id, epoch.members[i])[0].sign(self.id, kind, payload)) for i in signers)
        cert = CommitCertificate(self.protocol, height, round_, header.hash, sigs)
        self.certificates[(height, "commit")] = cert
        return cert

    def checkpoint_certificate(self, height: int) -> CheckpointCertificate:
        cached = self.certificates.get((height, "checkpoint"))
        if cached is not None:
            return cached
        header = self.headers[height]
        epoch = self.epoch_for(height)
        vset = epoch.validators
        needed = vset.bft_quorum if self.protocol == "bft" else vset.majority
        signers = sorted(self.rng.sample(range(vset.n), needed))
        message = checkpoint_message(self.id, height, header.hash, header.state_root)
        aggregate = bls.aggregate([bls.sign(validator_keys(self.id, epoch.members[i])[1], message) for i in signers])
        cert = CheckpointCertificate(height, header.hash, header.state_root, signer_bitmap(signers, vset.n), aggregate)
        self.certificates[(height, "checkpoint")] = cert
        return cert

    def schedule_proof(self, epoch: int) -> ScheduleProof:
        _, proof, encoded = self.storage.prove("validators", "epoch", [epoch])
        return ScheduleProof(epoch, encoded, proof)

    def schedule_proofs(self, first: int) -> list[ScheduleProof]:
        """Proofs at the head of the epoch records from ``first`` on, the last one absent."""
        last = self.epochs[-1].number
        return [self.schedule_proof(j) for j in range(first, last + 2)]

    def packet_proof(self, dst: str, seq: int) -> tuple[Any, bytes]:
        value, proof, _ = self.storage.prove("bridge", "outbox", [dst, seq])
        return value, proof
