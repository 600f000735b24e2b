"""The deterministic consensus simulator: real replica code on a seeded, faulty network.

``python -m consensus.sim --protocol raft --seeds 500`` sweeps seeds; ``--seed S``
replays one run with its trace. :class:`Simulation` is also the harness for scripted
protocol tests (crash every replica, isolate the leader, change the validator set).

The protocol packages import :mod:`consensus.sim.spec` for ``ProtocolSpec``; the rest
of the simulator loads only when one of the names below is used, so a node running a
replica never imports it.
"""

from __future__ import annotations

import importlib

__all__ = [
    "MIXES",
    "FaultPlan",
    "Keyring",
    "ProtocolSpec",
    "RunResult",
    "SimIdentity",
    "SimNode",
    "Simulation",
    "make_plan",
    "run_seed",
    "summarise",
    "sweep",
]

_HOME = {
    "MIXES": "faults", "FaultPlan": "faults", "make_plan": "faults",
    "Keyring": "keys", "SimIdentity": "keys",
    "ProtocolSpec": "spec",
    "RunResult": "simulator", "SimNode": "cluster", "Simulation": "simulator",
    "run_seed": "runner", "summarise": "runner", "sweep": "runner",
}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'consensus.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"consensus.sim.{module}"), name)
