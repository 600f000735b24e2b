"""The consensus protocols a shard's genesis may choose, by name.

Each protocol package exposes a :class:`consensus.sim.spec.ProtocolSpec` as ``SPEC``.
Packages are imported on first use, so a node running Raft never loads BFT.
"""

from __future__ import annotations

import importlib
import importlib.util

from consensus.sim.spec import ProtocolSpec

__all__ = ["NAMES", "available", "get"]

NAMES = ("bft", "raft")


def get(name: str) -> ProtocolSpec:
    """The ``ProtocolSpec`` of protocol ``name``; ``ValueError`` for a name gridledger does not know."""
    if name not in NAMES:
        raise ValueError(f"unknown consensus protocol {name!r}; choose one of {', '.join(NAMES)}")
    module = importlib.import_module(f"consensus.{name}")
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, ProtocolSpec):
        raise ValueError(f"consensus.{name} does not expose a ProtocolSpec named SPEC")
    return spec


def available() -> list[str]:
    """Names of the protocols whose package is present and exposes a ``SPEC``.

    A package that is present but fails to import raises: a broken protocol is never
    silently left out of a test run.
    """
    names = []
    for name in NAMES:
        if importlib.util.find_spec(f"consensus.{name}") is None:
            continue
        module = importlib.import_module(f"consensus.{name}")
        if isinstance(getattr(module, "SPEC", None), ProtocolSpec):
            names.append(name)
    return names
