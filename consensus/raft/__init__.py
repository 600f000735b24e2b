"""Raft for gridledger shards that choose crash-fault tolerance.

``SPEC`` is the :class:`~consensus.sim.spec.ProtocolSpec` the simulator and the node
use; :class:`RaftReplica` is the replica (``step(event) -> actions``, see
:mod:`consensus.types`). The rules it keeps are listed in :mod:`.replica`; the wire
format is :mod:`.messages`, the durable records :mod:`.records`, checkpoints and
snapshots :mod:`.checkpoints`.

What the node must know:

* **Certificates.** A committed batch carries ``CommitCertificate("raft", height,
  round=term, digest, ((leader index, signature),))``: the signature of the leader
  that saw it on a majority, over ``commit_vote_payload(height, term, digest)`` (kind
  ``raft/commit``), by its index in the set in force at that height. Every
  ``checkpoint_interval`` heights a majority BLS-signs a checkpoint certificate.
* **Validator-set changes** are batches for which ``Application.validator_set_change``
  returns the new set; each may add or remove exactly one validator (single-server
  changes, one in flight), and the new set certifies the heights after the batch's own.
  Replacing a key is two changes: add the new key, then remove the old one.
* **After a restart** a replica replays ``Commit`` for the heights since its last
  snapshot once it learns they are committed; the application ignores heights it
  already has (they carry the same digest).
* **Reads** are not part of the replica: a node serves reads from committed state with
  the commit (or checkpoint) certificate that makes it final, so they are as fresh as
  the last certified height, never linearizable through a stale leader.
"""

from consensus.raft.checks import audit, check_send, describe
from consensus.raft.replica import LEADER, RaftReplica
from consensus.sim.spec import ProtocolSpec

__all__ = ["SPEC", "RaftReplica"]


def _is_leader(replica: object) -> bool:
    return getattr(replica, "role", None) == LEADER


SPEC = ProtocolSpec(
    name="raft",
    make_replica=RaftReplica,
    # Raft survives any minority of crashed replicas.
    max_faulty=lambda n: (n - 1) // 2,
    check_send=check_send,
    describe=describe,
    is_leader=_is_leader,
    single_server_changes=True,
    audit=audit,
)
