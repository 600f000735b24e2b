"""The deterministic shard-tree simulator: ``python -m shards.sim --seeds N [--seed S]``.

A seeded tree of 7 to 13 shards runs the real flow module (``shards.flow``) with real
headers, certificates, state proofs and light clients, under stalls, validator-set
changes and relayers that crash, delay, duplicate, reorder and mangle packets, and checks
the invariants of cross-shard flows after every block (``shards.sim.checker``).
``runner`` holds one run and the workload, ``world`` the simulated shards, ``relayer``
the relayers and their faults, ``ledger`` the in-memory market the flows act on,
``state`` the authenticated storage.
"""

from shards.sim.runner import SeedResult, World, run_seed

__all__ = ["SeedResult", "World", "run_seed"]
