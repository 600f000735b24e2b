"""PBFT-style Byzantine fault-tolerant ordering for n = 3f + 1 validators.

The protocol (Castro and Liskov's PBFT, with a stable leader):

* **Normal case** (:mod:`.normal`). The leader of view v (validator v mod n of the set
  ordering the heights) assigns batches to sequence numbers (heights) in the window
  (low, hi], where low is the stable checkpoint and hi = low + min(window, 4 K) (K the
  checkpoint interval; earlier where the validator set changes), and sends
  PRE-PREPARE(v, seq, digest, batch). Backups check the batch with
  ``Application.validate`` and send PREPARE; with the pre-prepare and 2f matching
  prepares a replica is *prepared* and sends COMMIT; 2f + 1 commit votes are the
  :class:`~ledger.certificate.CommitCertificate` (protocol "bft", height = seq,
  round = view). Batches are committed strictly in height order.
* **Checkpoints** (:mod:`.catchup`, :mod:`.checkpoint`). Every K heights validators
  BLS-sign (height, block hash, state root); 2f + 1 shares aggregate into a
  :class:`~ledger.certificate.CheckpointCertificate`, the new low watermark. The log
  below it is discarded. A replica that falls behind fills small gaps with decided
  batches from peers and otherwise fetches the state at a certified checkpoint.
* **View change** (:mod:`.changing`, :mod:`.viewchange`). A leader that keeps a batch
  waiting longer than the timeout, proposes an invalid batch or equivocates is
  replaced: VIEW-CHANGE messages carry the stable checkpoint and prepared
  certificates; the next leader's NEW-VIEW carries 2f + 1 of them and re-proposes,
  per height, the digest prepared in the highest view, or the null batch ``b""``.
  Every replica recomputes that choice. The new-view timer starts once 2f + 1
  view-changes are in; it doubles on each failed view change (up to x8) and a commit
  resets it; f + 1 validators asking for a higher view make a replica join them.
* **Validator-set changes** (:mod:`.schedule`) take effect four checkpoint intervals
  after the checkpoint at or above the height of the batch that makes them
  (:func:`effective_after`), so every replica knows the sets of its whole window and
  the window never spans two sets. Every replica is configured with the genesis set;
  a new validator joins by fetching the state at a certified checkpoint.

**Persist before send.** A replica returns actions in order, and the driver must make
each ``Persist`` durable before sending anything that follows it. The replica records
every pre-prepare, prepare and commit it signs (view, sequence, digest), each prepared
certificate before its commit vote, each view-change, its view and its new-view (see
:mod:`.records`), so after any crash, even of every replica at once, it never signs
two digests for one (view, sequence) nor two view-changes for one view.

**Under a slow leader** (one that delays each pre-prepare but stays under the timeout)
the protocol guarantees: no stretch of one view timeout without progress while work
waits, and every batch an honest replica holds committed within ``FAIRNESS`` (4) view
timeouts of its arrival, plus one timeout per K batches that were already waiting, or
the view changes. The timers run per waiting batch, so the leader can add latency but
cannot starve a batch, and while there is a backlog it must order at least K batches
per timeout. Throughput follows the offered load up to that floor: the window keeps up
to 4 K heights in flight across checkpoints, so delaying each batch does not reduce
it. Measured in the simulator (n = 4, timeout 20 ticks, 1200 ticks of load, seeds
400-402, tests/test_bft_byzantine.py): median commit latency 5-8 ticks with an honest
leader, 14-17 with a slow one (maximum 27, bound 80), heights committed within 5%.
"""

from consensus.bft.audit import audit, check_send, describe, is_leader
from consensus.bft.byzantine import BYZANTINE
from consensus.bft.replica import BftReplica
from consensus.bft.schedule import ValidatorSchedule, effective_after
from consensus.sim.spec import ProtocolSpec

__all__ = ["SPEC", "BftReplica", "ValidatorSchedule", "effective_after"]

SPEC = ProtocolSpec(
    name="bft",
    make_replica=BftReplica,
    max_faulty=lambda n: (n - 1) // 3,
    byzantine=BYZANTINE,
    check_send=check_send,
    describe=describe,
    is_leader=is_leader,
    reconfig_effective_after=effective_after,
    audit=audit,
    validates_in_order=True,
)
