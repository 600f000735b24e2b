"""The replica interface both protocols implement: ``step(event) -> actions``.

A replica is a pure state machine. It owns no socket, no clock, no disk and no
unseeded randomness; the driver (the deterministic simulator in tests, the node in
production) feeds it events and carries out the actions it returns, **in order**:

1. ``Persist`` records must be durable before any ``Send``/``Broadcast`` that follows
   them in the same action list is handed to the network. This is what stops a
   restarted replica from voting twice (BFT) or forgetting its term and vote (Raft).
2. ``Commit`` hands a finalised batch, with its certificate, to the application, in
   strictly increasing height order without gaps.
3. ``SetTimer`` tells the driver the logical tick at which the replica next needs a
   ``Tick``; a driver may skip idle ticks up to the earliest deadline (the simulator
   does), or simply tick at a fixed rate (the node does).

Time is logical: ``Tick(now)`` carries the driver's current tick, never decreasing.
Signing and verification are injected (``Signer``/``Verifier``) so the simulator can
use real Ed25519/BLS keys or cheap stand-ins.

Batches are opaque bytes to consensus (the node puts an encoded block in them); the
digest of a batch is computed by an injected function so the node can make it the
block hash that commit certificates sign. Before voting for a batch a replica asks
the injected ``validate`` function whether the batch is acceptable at that height
(right parent, plausible block time, valid transactions); a batch it refuses is never
voted for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ledger.certificate import CheckpointCertificate, CommitCertificate
from ledger.validators import ValidatorSet

__all__ = [
    "Action",
    "Application",
    "Broadcast",
    "Commit",
    "ConsensusConfig",
    "ConsensusError",
    "Event",
    "Executed",
    "FetchState",
    "Persist",
    "Propose",
    "Receive",
    "Replica",
    "Restart",
    "Send",
    "SetTimer",
    "Signer",
    "StateInstalled",
    "Tick",
    "Verifier",
]

NodeId = bytes  # a validator's Ed25519 node key (32 bytes), as listed in genesis


class ConsensusError(Exception):
    """A replica cannot continue safely.

    Raised when the records given to ``Restart`` are truncated, corrupt or
    inconsistent (the replica refuses to start rather than guess), or when a driver
    breaks the interface contract. Never raised for anything a peer sends: a bad
    message is dropped and counted.
    """


# ------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Receive:
    """A message from a peer, exactly as it arrived on the wire (it may be garbage).

    ``now`` (optional) is the driver's logical time at arrival, so a replica whose
    driver skips idle ticks still knows when it heard from a peer; ``None`` means
    "no later than the last ``Tick``".
    """

    sender: NodeId
    payload: bytes
    now: int | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Logical time advanced to ``now`` (monotonic, in ticks)."""

    now: int


@dataclass(frozen=True, slots=True)
class Propose:
    """The application offers a batch to order. Only the leader acts on it; others may forward.

    ``now`` (optional): the driver's logical time, as for ``Receive``.
    """

    batch: bytes
    now: int | None = None


@dataclass(frozen=True, slots=True)
class Restart:
    """The replica starts (or restarts) from the records it persisted earlier.

    ``records`` holds every key/value the replica persisted and did not delete. A
    replica that finds them truncated or inconsistent raises ``ConsensusError``
    rather than guessing.
    """

    records: Mapping[bytes, bytes]
    now: int = 0


@dataclass(frozen=True, slots=True)
class Executed:
    """The application applied the committed batch at ``height``; ``state_root`` is the result.

    BFT replicas sign checkpoints over (height, digest, state_root) with it.
    """

    height: int
    digest: bytes
    state_root: bytes


@dataclass(frozen=True, slots=True)
class StateInstalled:
    """The application installed a state snapshot at a certified checkpoint (after ``FetchState``).

    ``validator_sets``, when the driver gives them, are the validator sets recorded in
    the installed state, as ``(after height, set)`` pairs: the set that orders the
    heights after the checkpoint (paired with the checkpoint height) and every change
    already decided but not yet in force (paired with the last height before it takes
    effect). A replica that skipped heights cannot have seen the batches that changed
    the set.
    """

    checkpoint: CheckpointCertificate
    validator_sets: tuple[tuple[int, ValidatorSet], ...] = ()


Event = Receive | Tick | Propose | Restart | Executed | StateInstalled


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Send:
    to: NodeId
    payload: bytes


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send to every other validator of the current set (and to observers that follow it)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    """Durable writes: ``None`` as a value deletes the key. Durable before later sends."""

    records: tuple[tuple[bytes, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class Commit:
    height: int
    batch: bytes
    digest: bytes
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Wake me with a ``Tick`` no later than logical time ``at``."""

    at: int


@dataclass(frozen=True, slots=True)
class FetchState:
    """The replica is too far behind to replay: install the state at this certified checkpoint.

    The driver fetches the snapshot from peers, verifies it against
    ``checkpoint.state_root`` and answers with ``StateInstalled``.
    """

    checkpoint: CheckpointCertificate
    peers: tuple[NodeId, ...] = ()


Action = Send | Broadcast | Persist | Commit | SetTimer | FetchState


# ------------------------------------------------------------------ injected parts


class Signer(Protocol):
    """Signs as this replica. ``kind`` is a ``ledger.crypto.Kind``; the chain id is bound in."""

    node_id: NodeId

    def sign(self, kind: str, payload: bytes) -> bytes: ...

    def bls_sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, node_id: NodeId, kind: str, payload: bytes, signature: bytes) -> bool: ...

    def bls_fast_aggregate_verify(self, bls_keys: list[bytes], message: bytes, signature: bytes) -> bool: ...

    def bls_aggregate(self, signatures: list[bytes]) -> bytes: ...


class Application(Protocol):
    """What consensus asks of the application, synchronously and deterministically."""

    def digest(self, batch: bytes) -> bytes: ...

    def validate(self, height: int, batch: bytes) -> bool | None:
        """May ``batch`` be the block at ``height``?

        ``None``: the application cannot tell yet, because the answer depends on a height
        it has not executed (a ledger's block can be checked only on its parent's
        state). A BFT backup then holds the pre-prepare and asks again once it has
        executed the height below; every other caller asks about the next height only,
        and treats ``None`` as a refusal.
        """
        ...

    def validator_set_change(self, height: int, batch: bytes) -> ValidatorSet | None:
        """The validator set that takes effect after ``height`` if this batch changes it."""
        ...


@dataclass(frozen=True)
class ConsensusConfig:
    chain_id: str
    validators: ValidatorSet
    # BFT: view-change timeout (doubles on every failed view change); Raft: election timeout base.
    timeout_ticks: int = 20
    heartbeat_ticks: int = 2
    # BFT: sequence numbers accepted above the low watermark; checkpoint interval K.
    window: int = 64
    checkpoint_interval: int = 16
    # Raft: maximum entries per AppendEntries, and snapshot after this many applied entries.
    max_batch_entries: int = 64
    snapshot_interval: int = 256
    # Deterministic per-replica seed for election jitter (no unseeded randomness).
    seed: int = 0
    extra: Mapping[str, object] = field(default_factory=dict)


class Replica(Protocol):
    config: ConsensusConfig

    def step(self, event: Event) -> list[Action]: ...


ReplicaFactory = Callable[[ConsensusConfig, Signer, Verifier, Application], Replica]
