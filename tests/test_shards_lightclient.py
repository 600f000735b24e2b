"""The light client of a neighbour shard: certificates, validator-set changes, equivocation."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.bft.schedule import effective_after
from ledger import bls
from ledger.block import NULL_DIGEST, ZERO_HASH, BlockHeader
from ledger.certificate import (
    CheckpointCertificate,
    CommitCertificate,
    checkpoint_message,
    commit_vote_payload,
    signer_bitmap,
)
from ledger.crypto import Kind
from ledger.merkle import merkle_root
from ledger.validators import ValidatorSet
from shards.errors import LightClientError
from shards.lightclient import (
    TRUSTING_PERIOD_S,
    Equivocation,
    LightClient,
    ScheduleProof,
    encode_epoch_record,
)
from shards.sim.state import SimStorage
from shards.sim.world import validator_keys

SHARD = "ch/zurich"
T0 = 1_767_225_600
K = 4
EMPTY = merkle_root([])


class Chain:
    """A neighbour's chain as far as a light client sees it: headers, sets, epoch records."""

    def __init__(self, protocol: str = "bft", members=(0, 1, 2, 3)) -> None:
        self.protocol = protocol
        self.members = {0: tuple(members)}
        self.storage = SimStorage()
        self.root = self.storage.seal()

    def vset(self, epoch: int) -> ValidatorSet:
        return ValidatorSet(tuple(validator_keys(SHARD, i)[2] for i in self.members[epoch]))

    def record_epoch(self, epoch: int, after: int, members) -> None:
        self.members[epoch] = tuple(members)
        self.storage.begin()
        self.storage.write(("validators", "epoch", (epoch,)), [after, self.vset(epoch).to_fields()])
        self.storage.commit()
        self.root = self.storage.seal()

    def header(self, height: int, epoch: int = 0, *, time: int | None = None, salt: bytes = ZERO_HASH) -> BlockHeader:
        return BlockHeader(
            SHARD, height, salt, EMPTY, self.root, EMPTY, T0 + height if time is None else time,
            validator_keys(SHARD, self.members[epoch][0])[2].node_key, self.vset(epoch).hash,
        )

    def commit(self, header: BlockHeader, epoch: int = 0, signers=None, *, protocol: str | None = None) -> CommitCertificate:
        protocol = protocol or self.protocol
        members = self.members[epoch]
        if signers is None:
            signers = range(self.vset(epoch).bft_quorum) if protocol == "bft" else [0]
        kind, round_ = (Kind.COMMIT, 0) if protocol == "bft" else (Kind.RAFT_COMMIT, 1)
        payload = commit_vote_payload(header.height, round_, header.hash)
        sigs = tuple((i, validator_keys(SHARD, members[i])[0].sign(SHARD, kind, payload)) for i in sorted(signers))
        return CommitCertificate(protocol, header.height, round_, header.hash, sigs)

    def checkpoint(self, header: BlockHeader, epoch: int = 0, signers=(0, 1, 2)) -> CheckpointCertificate:
        members = self.members[epoch]
        message = checkpoint_message(SHARD, header.height, header.hash, header.state_root)
        aggregate = bls.aggregate([bls.sign(validator_keys(SHARD, members[i])[1], message) for i in signers])
        return CheckpointCertificate(header.height, header.hash, header.state_root, signer_bitmap(list(signers), len(members)), aggregate)

    def schedule(self, first: int, last: int) -> list[ScheduleProof]:
        out = []
        for epoch in range(first, last + 1):
            _, proof, encoded = self.storage.prove("validators", "epoch", [epoch])
            out.append(ScheduleProof(epoch, encoded, proof))
        return out

    def client(self) -> LightClient:
        return LightClient(SHARD, self.protocol, K, self.vset(0), genesis_time=T0)


def test_commit_certificate_from_a_quorum_is_accepted():
    chain = Chain()
    client = chain.client()
    header = chain.header(5)
    assert client.accept(header, chain.commit(header)) is None
    assert client.recent[5] == header.hash


def test_commit_certificate_below_quorum_is_refused():
    chain = Chain()
    header = chain.header(5)
    with pytest.raises(LightClientError) as refused:
        chain.client().accept(header, chain.commit(header, signers=[0, 1]))
    assert refused.value.code == "bad_certificate"


def test_certificate_of_another_header_is_refused():
    chain = Chain()
    header = chain.header(5)
    other = chain.header(5, salt=b"\x01" * 32)
    with pytest.raises(LightClientError) as refused:
        chain.client().accept(header, chain.commit(other))
    assert refused.value.code == "bad_certificate"


def test_header_of_another_shard_is_refused():
    chain = Chain()
    header = dataclasses.replace(chain.header(5), chain_id="ch/bern")
    with pytest.raises(LightClientError) as refused:
        chain.client().verify(header, chain.commit(header))
    assert refused.value.code == "wrong_shard"


def test_header_naming_an_unknown_validator_set_is_refused():
    chain = Chain()
    chain.members[1] = (0, 1, 2, 4)
    header = chain.header(5, epoch=1)
    with pytest.raises(LightClientError) as refused:
        chain.client().verify(header, chain.commit(header, epoch=1))
    assert refused.value.code == "unknown_validator_set"


def test_null_batch_certificate_certifies_no_header():
    chain = Chain()
    header = chain.header(5)
    members = chain.members[0]
    payload = commit_vote_payload(5, 0, NULL_DIGEST)
    sigs = tuple((i, validator_keys(SHARD, members[i])[0].sign(SHARD, Kind.COMMIT, payload)) for i in range(3))
    with pytest.raises(LightClientError) as refused:
        chain.client().verify(header, CommitCertificate("bft", 5, 0, NULL_DIGEST, sigs))
    assert refused.value.code == "bad_certificate"


def test_raft_leader_signature_certifies_a_raft_header_but_not_a_bft_one():
    chain = Chain("raft", members=(0, 1, 2))
    header = chain.header(9)
    assert chain.client().accept(header, chain.commit(header)) is None
    bft = Chain("bft")
    header = bft.header(9)
    with pytest.raises(LightClientError):
        bft.client().verify(header, bft.commit(header, protocol="raft"))


def test_checkpoint_certificate_is_verified_with_one_aggregate():
    chain = Chain()
    header = chain.header(8)
    client = chain.client()
    assert client.accept(header, chain.checkpoint(header)) is None
    with pytest.raises(LightClientError):
        client.verify(header, chain.checkpoint(header, signers=(0, 1)))
    lying = dataclasses.replace(chain.checkpoint(header), state_root=b"\x07" * 32)
    with pytest.raises(LightClientError):
        client.verify(header, lying)


def test_validator_set_change_is_learned_from_a_certified_proof():
    chain = Chain()
    client = chain.client()
    change_at = 3
    after = effective_after(change_at, K)
    chain.record_epoch(1, after, (1, 2, 3, 4))
    header = chain.header(change_at)
    assert client.accept(header, chain.commit(header), chain.schedule(1, 2)) is None
    assert client.latest.number == 1 and client.latest.after == after
    assert client.known_through == change_at
    # Heights up to `after` are still the old set's; above it only the new set certifies.
    old = chain.header(after)
    client.verify(old, chain.commit(old))
    new = chain.header(after + 1, epoch=1)
    client.verify(new, chain.commit(new, epoch=1))
    forged = chain.header(after + 1)
    with pytest.raises(LightClientError):
        client.verify(forged, chain.commit(forged))


def test_a_schedule_proof_that_does_not_match_the_root_is_refused():
    chain = Chain()
    client = chain.client()
    chain.record_epoch(1, effective_after(3, K), (1, 2, 3, 4))
    header = chain.header(3)
    proofs = chain.schedule(1, 2)
    fake = [ScheduleProof(1, encode_epoch_record(999, chain.vset(0)), proofs[0].proof), proofs[1]]
    with pytest.raises(LightClientError) as refused:
        client.accept(header, chain.commit(header), fake)
    assert refused.value.code == "bad_schedule_proof"
    assert client.latest.number == 0  # nothing learned


def test_a_change_taking_effect_below_the_proving_header_is_refused():
    chain = Chain()
    chain.record_epoch(1, 2, (1, 2, 3, 4))
    header = chain.header(3)
    with pytest.raises(LightClientError) as refused:
        chain.client().accept(header, chain.commit(header), chain.schedule(1, 2))
    assert refused.value.code == "schedule_conflict"


def test_bft_client_beyond_its_horizon_needs_the_trusting_period():
    chain = Chain()
    client = chain.client()
    horizon = client.horizon()
    assert horizon == effective_after(1, K)
    inside = chain.header(horizon + 10, time=T0 + 100)
    client.verify(inside, chain.commit(inside))  # latest set, within the trusting period
    late = chain.header(horizon + 10, time=T0 + TRUSTING_PERIOD_S + 1)
    with pytest.raises(LightClientError) as refused:
        client.verify(late, chain.commit(late))
    assert refused.value.code == "client_expired"
    # An absence proof of the next epoch moves the horizon and the trusted time forward.
    header = chain.header(horizon, time=T0 + TRUSTING_PERIOD_S)
    client.accept(header, chain.commit(header), chain.schedule(1, 1))
    assert client.known_through == horizon
    client.verify(late, chain.commit(late))


def test_raft_client_learns_a_change_at_the_changes_own_height():
    chain = Chain("raft", members=(0, 1, 2))
    client = chain.client()
    chain.record_epoch(1, 7, (0, 1, 2, 3))
    at_change = chain.header(7)
    client.accept(at_change, chain.commit(at_change), chain.schedule(1, 2))
    after = chain.header(8, epoch=1)
    client.verify(after, chain.commit(after, epoch=1))


def test_two_certified_headers_at_one_height_freeze_the_client():
    chain = Chain()
    client = chain.client()
    a = chain.header(6)
    b = chain.header(6, salt=b"\x02" * 32)
    assert client.accept(a, chain.commit(a)) is None
    assert client.accept(b, chain.commit(b)) == a.hash
    assert client.frozen is not None
    with pytest.raises(LightClientError) as refused:
        client.verify(chain.header(7), chain.commit(chain.header(7)))
    assert refused.value.code == "bridge_frozen"


def test_submitted_equivocation_evidence_is_verified_then_freezes():
    chain = Chain()
    a = chain.header(6)
    b = chain.header(6, salt=b"\x02" * 32)
    evidence = Equivocation(SHARD, a, chain.commit(a), b, chain.commit(b))
    assert Equivocation.from_fields(evidence.to_fields()) == evidence
    client = chain.client()
    client.submit_evidence(evidence)
    assert client.frozen == evidence.hash
    with pytest.raises(LightClientError):
        chain.client().submit_evidence(Equivocation(SHARD, a, chain.commit(a), a, chain.commit(a)))
    uncertified = Equivocation(SHARD, a, chain.commit(a), b, chain.commit(b, signers=[0]))
    with pytest.raises(LightClientError):
        chain.client().submit_evidence(uncertified)


def test_light_client_round_trips_through_its_stored_fields():
    chain = Chain()
    client = chain.client()
    chain.record_epoch(1, effective_after(3, K), (1, 2, 3, 4))
    header = chain.header(3)
    client.accept(header, chain.commit(header), chain.schedule(1, 2))
    again = LightClient.decode(client.encode())
    assert again.to_fields() == client.to_fields()
    new = chain.header(effective_after(3, K) + 1, epoch=1)
    again.verify(new, chain.commit(new, epoch=1))


def test_schedule_proofs_must_cover_exactly_the_next_epochs():
    """An absence proof is valid for many keys; a proof about an epoch the client did not
    ask about is refused, so a delivery has one spelling."""
    chain = Chain()
    header = chain.header(3)
    absent_next = chain.schedule(1, 1)
    renumbered = [ScheduleProof(5, None, absent_next[0].proof)]
    client = chain.client()
    with pytest.raises(LightClientError) as refused:
        client.accept(header, chain.commit(header), renumbered)
    assert refused.value.code == "schedule_mismatch"
    chain.record_epoch(1, effective_after(3, K), (1, 2, 3, 4))
    header = chain.header(3)
    proofs = chain.schedule(1, 2)
    for wrong in ([proofs[1], proofs[0]], [proofs[1]], [ScheduleProof(1, None, proofs[1].proof), proofs[1]]):
        with pytest.raises(LightClientError):
            chain.client().accept(header, chain.commit(header), wrong)
    assert chain.client().accept(header, chain.commit(header), proofs) is None
