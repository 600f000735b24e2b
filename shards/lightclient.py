"""A light client of a neighbouring shard: which headers of it are certified.

A shard verifies what its parent and children say (packets, validator-set changes)
without running their chains: it keeps, per neighbour, a :class:`LightClient` holding
the neighbour's validator sets and the heights they certify, and accepts a header
only with a certificate from the set in force at that height:

* a **commit certificate** (``ledger.certificate.CommitCertificate``): 2f + 1 Ed25519
  commit votes (BFT) or the leader's signature (Raft) over the header's hash;
* a **checkpoint certificate** (``CheckpointCertificate``): one BLS aggregate over
  (height, block hash, state root) from a quorum of the set.

**Following validator-set changes.** A neighbour records each change of its validator
set in its own state, under ``validator_epoch_key(e)`` for epoch e = 1, 2, ... (genesis
is epoch 0): ``[effective_after, set]``, the new set certifying the heights above
``effective_after``. A light client learns a change only from a state proof of that
record under a header it has verified, so every set it trusts was named by a set it
trusted before, back to genesis. A relayer attaches these proofs (:class:`ScheduleProof`)
to deliveries: the records of exactly the epochs after the last known one, in order,
ending with a proof that the next epoch's record is *absent*, which tells the client that
no change it does not know was made at or below that header's height (``known_through``).

How far that knowledge reaches depends on the neighbour's protocol:

* **BFT**: a change made at height h takes effect only after ``effective_after(h, K)``
  (``consensus.bft.schedule``: the checkpoint at or above h plus four intervals). A
  change the client does not know was made above ``known_through``, so it takes effect
  after ``effective_after(known_through + 1, K)`` at the earliest: every header up to
  that **horizon** is certified by a set the client knows, with no assumption beyond
  the protocol's own (at most f faulty validators in the set in force). Every delivery
  carries the absence proof of the next epoch under its own header, so an active bridge
  moves its horizon forward with each delivery.

  A header beyond the horizon (a bridge idle for more than four checkpoint intervals:
  nodes prove values only in their current state, so a relayer cannot go back to a
  height inside the horizon) is accepted only if it names the latest set the client
  knows and its time is within ``trusting_period_s`` of the last header that confirmed
  the schedule (``trusted_time``). This rests on one more assumption, the one every
  light client of a BFT chain makes (Tendermint's trusting period): a retired validator
  set does not sign for the trusting period after it leaves; grid operators bind
  themselves to it in the consortium agreement, and signatures at heights where a set
  is no longer in force are evidence against them. After the trusting period without a
  delivery the client is expired and only governance re-anchors it.
* **Raft**: a change takes effect right after its own batch, so there is no lag to lean
  on. Raft shards tolerate crashes, not lies (one leader signature certifies a block),
  so a set that was in force never certifies a header of a later set's heights; the
  client accepts a header certified by the latest set it knows at any height, and a
  header naming a set it does not know is refused until the change is proven (at the
  height of the change itself, the last one the old set certifies). Shards whose
  operators do not trust each other choose BFT.

**Hand-over bundles.** A change is learned from a header the *old* set certifies, at or
before the last height it certifies (``effective_after``; for Raft the change's own
height). Since a node proves only its current state, it keeps for every change the
bundle it can make when that height is its head: the header, its certificate and the
schedule proofs under it. A relayer delivers the bundles of the epochs a client does
not know before any packet proven under a newer set.

**Equivocation.** Two different certified headers at one height prove that a quorum
signed conflicting blocks. The client remembers the hashes of the last
``RECENT_HEIGHTS`` heights it accepted; a conflicting header at one of them freezes it
(:meth:`LightClient.accept` returns the earlier hash, so the caller can record
:class:`Equivocation` evidence with both headers), and anyone holding two conflicting
certified headers can submit them (:meth:`LightClient.submit_evidence`). A frozen client
refuses everything: the bridge to that neighbour stops until its grid operators resolve
the fork by governance.

Everything here is deterministic and pure: no I/O, no clock. ``to_fields`` /
``from_fields`` let a shard keep the client in its own authenticated state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.bft.schedule import effective_after
from ledger import bls, codec
from ledger.block import NULL_DIGEST, BlockError, BlockHeader
from ledger.certificate import CertificateError, CheckpointCertificate, CommitCertificate
from ledger.crypto import tagged_hash
from ledger.state import ProofError, verify_proof
from ledger.statekeys import state_key
from ledger.validators import ValidatorSet, ValidatorSetError
from shards.errors import LightClientError

__all__ = [
    "Certificate",
    "Epoch",
    "Equivocation",
    "LightClient",
    "MAX_EPOCHS",
    "RECENT_HEIGHTS",
    "ScheduleProof",
    "decode_certificate",
    "decode_epoch_record",
    "encode_certificate",
    "encode_epoch_record",
    "validator_epoch_key",
]

Certificate = CommitCertificate | CheckpointCertificate

# Heights whose accepted header hash is remembered, to notice a second, different
# header at one of them. A relayer proves packets at recent heights; 64 covers many
# deliveries while keeping the client's stored record small (~2.5 KB of hashes).
RECENT_HEIGHTS = 64
# Validator sets kept (the current one and its predecessors, to verify proofs at older
# heights). Set changes are rare governance events; older sets are dropped.
MAX_EPOCHS = 8
# The largest epoch record a neighbour may make us decode (a few hundred validators).
MAX_EPOCH_RECORD = 256 * 1024
# How long after the last schedule confirmation a BFT client still accepts a header
# beyond its horizon from the latest known set. A relayer refreshes an idle client with
# a schedule-only delivery well within it; a week leaves room for an outage of every
# relayer over a holiday while keeping the retired-set assumption short.
TRUSTING_PERIOD_S = 7 * 24 * 3600


def validator_epoch_key(epoch: int) -> bytes:
    """The state key under which a shard records its validator set of ``epoch`` (>= 1)."""
    return state_key("validators", "epoch", [epoch])


def encode_epoch_record(effective_after_height: int, validators: ValidatorSet) -> bytes:
    """The value a shard stores at :func:`validator_epoch_key`: ``[effective_after, set]``."""
    return codec.encode([effective_after_height, validators.to_fields()])


def decode_epoch_record(value: bytes) -> tuple[int, ValidatorSet]:
    try:
        fields = codec.decode(value, max_size=MAX_EPOCH_RECORD)
    except codec.CodecError as exc:
        raise LightClientError("bad_epoch_record", f"validator epoch record: {exc}") from None
    if not isinstance(fields, list) or len(fields) != 2 or type(fields[0]) is not int or fields[0] < 0:
        raise LightClientError("bad_epoch_record", "a validator epoch record is [effective_after, validators]")
    try:
        return fields[0], ValidatorSet.from_fields(fields[1])
    except (ValidatorSetError, TypeError) as exc:
        raise LightClientError("bad_epoch_record", f"validator epoch record: {exc}") from None


def encode_certificate(certificate: Certificate) -> list:
    """A certificate as a tagged array: ``["commit", fields]`` or ``["checkpoint", fields]``."""
    if isinstance(certificate, CommitCertificate):
        return ["commit", certificate.to_fields()]
    if isinstance(certificate, CheckpointCertificate):
        return ["checkpoint", certificate.to_fields()]
    raise LightClientError("bad_certificate", f"not a certificate: {type(certificate).__name__}")


def decode_certificate(fields: Any) -> Certificate:
    if not isinstance(fields, list) or len(fields) != 2 or fields[0] not in ("commit", "checkpoint"):
        raise LightClientError("bad_certificate", 'a certificate is ["commit", fields] or ["checkpoint", fields]')
    try:
        if fields[0] == "commit":
            return CommitCertificate.from_fields(fields[1])
        return CheckpointCertificate.from_fields(fields[1])
    except CertificateError as exc:
        raise LightClientError("bad_certificate", str(exc)) from None


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    after: int  # the set certifies heights above this one (0 for genesis)
    validators: ValidatorSet


@dataclass(frozen=True, slots=True)
class ScheduleProof:
    """A proof of the neighbour's validator record of ``epoch`` (``value`` None: absent)."""

    epoch: int
    value: bytes | None
    proof: bytes

    def to_fields(self) -> list:
        return [self.epoch, self.value, self.proof]

    @classmethod
    def from_fields(cls, fields: Any) -> ScheduleProof:
        if (
            not isinstance(fields, list)
            or len(fields) != 3
            or type(fields[0]) is not int
            or fields[0] < 1
            or not (fields[1] is None or isinstance(fields[1], bytes))
            or not isinstance(fields[2], bytes)
        ):
            raise LightClientError("bad_schedule_proof", "a schedule proof is [epoch >= 1, value or nil, proof]")
        return cls(fields[0], fields[1], fields[2])


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different headers of ``shard`` at one height, each with a certificate."""

    shard: str
    header_a: BlockHeader
    certificate_a: Certificate
    header_b: BlockHeader
    certificate_b: Certificate

    @property
    def height(self) -> int:
        return self.header_a.height

    def to_fields(self) -> list:
        return [
            self.shard,
            self.header_a.to_fields(),
            encode_certificate(self.certificate_a),
            self.header_b.to_fields(),
            encode_certificate(self.certificate_b),
        ]

    @classmethod
    def from_fields(cls, fields: Any) -> Equivocation:
        if not isinstance(fields, list) or len(fields) != 5 or type(fields[0]) is not str:
            raise LightClientError("bad_evidence", "evidence is [shard, header, certificate, header, certificate]")
        try:
            a = BlockHeader.from_fields(fields[1])
            b = BlockHeader.from_fields(fields[3])
        except BlockError as exc:
            raise LightClientError("bad_evidence", f"evidence header: {exc}") from None
        return cls(fields[0], a, decode_certificate(fields[2]), b, decode_certificate(fields[4]))

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @property
    def hash(self) -> bytes:
        return tagged_hash(b"gridledger/equivocation", self.encode())


class LightClient:
    """What one shard knows of one neighbour's validator sets and headers. Mutable."""

    def __init__(
        self,
        shard: str,
        protocol: str,
        checkpoint_interval: int,
        genesis: ValidatorSet,
        *,
        genesis_time: int = 0,
        trusting_period_s: int = TRUSTING_PERIOD_S,
    ) -> None:
        if protocol not in ("bft", "raft"):
            raise LightClientError("bad_protocol", f"protocol must be bft or raft, got {protocol!r}")
        if type(checkpoint_interval) is not int or checkpoint_interval < 1:
            raise LightClientError("bad_protocol", "checkpoint interval must be a positive integer")
        self.shard = shard
        self.protocol = protocol
        self.checkpoint_interval = checkpoint_interval
        self.epochs: list[Epoch] = [Epoch(0, 0, genesis)]
        # Every change made at or below this height is known (genesis state: height 0),
        # confirmed by a header of this block time.
        self.known_through = 0
        self.trusted_time = genesis_time
        self.trusting_period_s = trusting_period_s
        self.recent: dict[int, bytes] = {}
        self.frozen: bytes | None = None  # the hash of the evidence that froze it

    # ------------------------------------------------------------------ reading

    @property
    def latest(self) -> Epoch:
        return self.epochs[-1]

    def horizon(self) -> int | None:
        """The highest height whose certifying set is surely known (None: no bound, Raft)."""
        if self.protocol == "raft":
            return None
        return effective_after(self.known_through + 1, self.checkpoint_interval)

    def epoch_for(self, height: int) -> Epoch:
        """The epoch whose set certifies ``height``, as far as this client knows."""
        chosen = None
        for epoch in self.epochs:
            if epoch.after < height:
                chosen = epoch
        if chosen is None:
            raise LightClientError(
                "epoch_forgotten",
                f"height {height} of {self.shard} is certified by a validator set older than the {MAX_EPOCHS} kept here",
            )
        return chosen

    # ------------------------------------------------------------------ verifying

    def verify(self, header: BlockHeader, certificate: Certificate) -> None:
        """Raise :class:`LightClientError` unless ``certificate`` certifies ``header`` with
        the set this client knows to be in force at its height. Changes nothing."""
        if self.frozen is not None:
            raise LightClientError("bridge_frozen", f"the bridge to {self.shard} is frozen by equivocation evidence")
        if header.chain_id != self.shard:
            raise LightClientError("wrong_shard", f"header is of {header.chain_id!r}; this client follows {self.shard!r}")
        if header.height < 1:
            raise LightClientError("bad_height", "the genesis state is known from genesis; prove at a height >= 1")
        epoch = self.epoch_for(header.height)
        validators = epoch.validators
        horizon = self.horizon()
        if horizon is not None and header.height > horizon:
            # Beyond what the schedule proofs cover: the latest set within the trusting period.
            if header.time > self.trusted_time + self.trusting_period_s:
                raise LightClientError(
                    "client_expired",
                    f"header at height {header.height} of {self.shard} is beyond {horizon}, the last height whose "
                    f"validator set is proven here, and more than {self.trusting_period_s} s after the last "
                    f"confirmation; the client must be re-anchored by governance",
                )
        if header.validator_set_hash != validators.hash:
            raise LightClientError(
                "unknown_validator_set",
                f"header at height {header.height} names a validator set other than epoch {epoch.number}'s, "
                f"the set known here to certify it; deliver the validator-set change first",
            )
        try:
            if isinstance(certificate, CommitCertificate):
                if certificate.protocol != self.protocol:
                    raise LightClientError(
                        "bad_certificate", f"{self.shard} runs {self.protocol}; the certificate is {certificate.protocol}"
                    )
                if certificate.digest == NULL_DIGEST:
                    raise LightClientError(
                        "bad_certificate", "a null-batch certificate certifies no header; prove at another height"
                    )
                certificate.verify(self.shard, validators, height=header.height, digest=header.hash)
            elif isinstance(certificate, CheckpointCertificate):
                if certificate.height != header.height or certificate.block_hash != header.hash:
                    raise LightClientError("bad_certificate", "the checkpoint certificate is for another block")
                if certificate.state_root != header.state_root:
                    raise LightClientError("bad_certificate", "the checkpoint certifies another state root than the header's")
                certificate.verify(self.shard, validators, protocol=self.protocol)
            else:
                raise LightClientError("bad_certificate", f"not a certificate: {type(certificate).__name__}")
        except CertificateError as exc:
            raise LightClientError("bad_certificate", f"certificate of {self.shard} at {header.height}: {exc}") from None

    def accept(
        self, header: BlockHeader, certificate: Certificate, schedule: list[ScheduleProof] | tuple = ()
    ) -> bytes | None:
        """Verify ``header``, remember it, and learn from ``schedule`` proofs under its state root.

        Returns None, or (equivocation) the hash of a different header accepted earlier at
        the same height; the client is then frozen and learns nothing. Raises
        :class:`LightClientError` when the header or a schedule proof does not verify;
        then nothing changed.
        """
        self.verify(header, certificate)
        learned = self._check_schedule(header, schedule)
        previous = self.recent.get(header.height)
        if previous is not None and previous != header.hash:
            self.frozen = tagged_hash(b"gridledger/conflict", codec.encode([self.shard, header.height, previous, header.hash]))
            return previous
        self.recent[header.height] = header.hash
        if len(self.recent) > RECENT_HEIGHTS:
            for old in sorted(self.recent)[: len(self.recent) - RECENT_HEIGHTS]:
                del self.recent[old]
        new_epochs, through = learned
        self.epochs.extend(new_epochs)
        del self.epochs[:-MAX_EPOCHS]
        if through > self.known_through:
            self.known_through = through
            self.trusted_time = max(self.trusted_time, header.time)
        return None

    def _check_schedule(self, header: BlockHeader, schedule: list[ScheduleProof] | tuple) -> tuple[list[Epoch], int]:
        """Check the schedule proofs against the header's state root; return what they teach.

        The proofs cover exactly the epochs after the latest one known, in order: records
        present, then at most one absent (the last). One spelling per fact: an absence
        proof can be valid for many keys, so an epoch number the client did not ask about
        is refused rather than ignored.
        """
        new: list[Epoch] = []
        through = self.known_through
        last = self.latest
        numbers = [item.epoch for item in schedule]
        if numbers != list(range(last.number + 1, last.number + 1 + len(numbers))):
            raise LightClientError(
                "schedule_mismatch",
                f"schedule proofs of {self.shard} must cover epochs {last.number + 1}, {last.number + 2}, ... in order "
                f"(the client knows epoch {last.number}); got {numbers}",
            )
        for position, item in enumerate(schedule):
            try:
                ok = verify_proof(header.state_root, validator_epoch_key(item.epoch), item.value, item.proof)
            except ProofError as exc:
                raise LightClientError("bad_schedule_proof", f"validator epoch {item.epoch} proof: {exc}") from None
            if not ok:
                raise LightClientError(
                    "bad_schedule_proof", f"the proof of validator epoch {item.epoch} does not match the header's state root"
                )
            if item.value is None:
                if position != len(schedule) - 1:
                    raise LightClientError("schedule_mismatch", f"epoch {item.epoch} is absent, so no later epoch can be proven")
                # No change unknown here was made at or below this height.
                through = max(through, header.height)
                break
            after, validators = decode_epoch_record(item.value)
            if after < header.height or after < last.after:
                # The header is certified by the earlier set, so every change recorded
                # under it takes effect at or above its height, in order.
                raise LightClientError(
                    "schedule_conflict",
                    f"epoch {item.epoch} of {self.shard} takes effect after {after}, below height {header.height} "
                    f"which the previous set certifies",
                )
            # A BLS key joins with its proof of possession (what makes aggregate checks safe
            # against rogue keys); keys of sets already known were checked when they joined.
            known_keys = {v.bls_key for e in (*self.epochs, *new) for v in e.validators}
            for v in validators:
                if v.bls_key not in known_keys and not bls.pop_verify(v.bls_key, v.bls_pop):
                    raise LightClientError(
                        "bad_epoch_record", f"validator {v.name or v.node_key.hex()[:16]}: BLS proof of possession does not verify"
                    )
            last = Epoch(item.epoch, after, validators)
            new.append(last)
        return new, through

    # ------------------------------------------------------------------ evidence

    def verify_evidence(self, evidence: Equivocation) -> None:
        """Raise :class:`LightClientError` unless ``evidence`` shows two different certified
        headers of this neighbour at one height (checked with the sets known here)."""
        if evidence.shard != self.shard:
            raise LightClientError("bad_evidence", f"evidence is about {evidence.shard!r}, not {self.shard!r}")
        a, b = evidence.header_a, evidence.header_b
        if a.height != b.height:
            raise LightClientError("bad_evidence", "the two headers are at different heights")
        if a.hash == b.hash:
            raise LightClientError("bad_evidence", "the two headers are the same header")
        frozen, self.frozen = self.frozen, None
        try:
            self.verify(a, evidence.certificate_a)
            self.verify(b, evidence.certificate_b)
        finally:
            self.frozen = frozen

    def submit_evidence(self, evidence: Equivocation) -> None:
        """Verify ``evidence`` and freeze this client. Raises :class:`LightClientError` if it does not verify."""
        self.verify_evidence(evidence)
        self.frozen = evidence.hash

    # ------------------------------------------------------------------ storage

    def to_fields(self) -> list:
        return [
            self.shard,
            self.protocol,
            self.checkpoint_interval,
            [[e.number, e.after, e.validators.to_fields()] for e in self.epochs],
            self.known_through,
            self.trusted_time,
            self.trusting_period_s,
            [[h, self.recent[h]] for h in sorted(self.recent)],
            self.frozen,
        ]

    @classmethod
    def from_fields(cls, fields: Any) -> LightClient:
        try:
            shard, protocol, interval, epochs, known_through, trusted_time, trusting_period_s, recent, frozen = fields
            first = epochs[0]
            client = cls(shard, protocol, interval, ValidatorSet.from_fields(first[2]), trusting_period_s=trusting_period_s)
            client.epochs = [Epoch(n, after, ValidatorSet.from_fields(vs)) for n, after, vs in epochs]
            client.known_through = known_through
            client.trusted_time = trusted_time
            client.recent = {h: digest for h, digest in recent}
            client.frozen = frozen
        except (TypeError, ValueError, IndexError) as exc:
            raise LightClientError("bad_light_client", f"stored light client is malformed: {exc}") from None
        return client

    def encode(self) -> bytes:
        return codec.encode(self.to_fields())

    @classmethod
    def decode(cls, data: bytes) -> LightClient:
        try:
            return cls.from_fields(codec.decode(data, max_size=MAX_EPOCH_RECORD * MAX_EPOCHS))
        except codec.CodecError as exc:
            raise LightClientError("bad_light_client", f"stored light client: {exc}") from None
