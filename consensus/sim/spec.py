"""What the simulator needs to know about a protocol.

Each protocol package (``consensus.bft``, ``consensus.raft``) exposes a ``SPEC`` of
this type. The simulator runs the real replica code; Byzantine behaviours are
replicas too (usually wrappers around an honest replica that lie in a named way), so
the simulator never needs protocol internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from consensus.types import NodeId, Replica, ReplicaFactory
from ledger.certificate import CommitCertificate
from ledger.validators import ValidatorSet

__all__ = ["ProtocolSpec"]


@dataclass(frozen=True)
class ProtocolSpec:
    name: str  # "bft" or "raft"
    make_replica: ReplicaFactory
    # Faulty replicas the protocol tolerates for a set of n: f = (n-1)//3 (bft), (n-1)//2 crashed (raft).
    max_faulty: Callable[[int], int]
    # Named Byzantine replicas: same signature as make_replica. Empty for crash-fault protocols.
    byzantine: Mapping[str, ReplicaFactory] = field(default_factory=dict)
    # Checks a commit certificate against the validator set in force at that height.
    verify_certificate: Callable[[str, ValidatorSet, CommitCertificate], None] = (
        lambda chain_id, validators, cert: cert.verify(chain_id, validators)
    )
    # Optional hooks (added for the simulator; every one may be left out).
    # Persist-before-send check: given the replica's durable records at the moment a
    # message leaves, the recipient (None for a broadcast) and the payload, return a
    # description of the rule broken (e.g. "vote for term 5 sent before the vote was
    # persisted") or None. Called for every message an honest replica sends.
    check_send: Callable[[Mapping[bytes, bytes], NodeId | None, bytes], str | None] | None = None
    # One line naming a message for traces, e.g. "AppendEntries t=3 prev=7 n=2".
    describe: Callable[[bytes], str] | None = None
    # Whether this replica currently believes it leads (aims "isolate the leader" faults).
    is_leader: Callable[[Replica], bool] | None = None
    # True when one reconfiguration batch may add or remove only one validator (Raft's
    # single-server changes); the simulator then replaces a key as an add, then a remove.
    single_server_changes: bool = False
    # Ticks after the heal within which a new proposal must commit, given timeout_ticks
    # (None: the simulator's default).
    liveness_bound_ticks: Callable[[int], int] | None = None
    # When a validator-set change takes effect: (height r of the committed
    # reconfiguration batch, checkpoint_interval) -> the last height the old set still
    # orders and certifies; the new set certifies the heights above it. Several changes
    # with the same answer: the last one wins. None: ``r`` (the next height, as in Raft).
    reconfig_effective_after: Callable[[int, int], int] | None = None
    # Anomalies an honest replica noticed in itself that no correct run produces (e.g.
    # "two leaders in one term"), as messages; the simulator asks every honest replica
    # before it crashes and at the end of the run, and counts each as a violation.
    audit: Callable[[Replica], list[str]] | None = None
    # The replicas' applications judge a height-bound batch only on its parent's state,
    # as a ledger checks a block: ``validate`` answers None above the executed height
    # + 1 (see consensus.types.Application.validate).
    validates_in_order: bool = False
