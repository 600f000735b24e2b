"""What the simulator needs to know about a protocol.

Each protocol package (``consensus.bft``, ``consensus.raft``) exposes a ``SPEC`` of
this type. The simulator runs the real replica code; Byzantine behaviours are
replicas too (usually wrappers around an honest replica that lie in a named way), so
the simulator never needs protocol internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from consensus.types import ReplicaFactory
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
