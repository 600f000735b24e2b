"""Sans-IO consensus for gridledger's validators: ``step(event) -> actions``.

Two protocols behind one interface (:mod:`consensus.types`): ``bft`` (PBFT-style,
n = 3f + 1) and ``raft`` (crash-fault tolerant), plus a deterministic, seeded network
simulator that runs the real replica code with network and Byzantine faults.

The rule every driver must keep: **persist before send**. Actions are carried out in
order, and the records of a ``Persist`` are durable before any message that follows it
leaves the process. No socket, clock, disk or unseeded randomness lives in this
package; it imports only ``ledger``.
"""
