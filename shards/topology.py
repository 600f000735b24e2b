"""The shard tree: which shards exist, whose child each is, and the path a flow takes.

A shard id is a path of grid levels (``ch``, ``ch/zurich``, ``ch/zurich/oerlikon``): the
parent of a shard is its id without the last segment, so the tree is in the ids
themselves and a topology document only lists the shards and their parameters. One
shard is the root (transmission); every other shard's parent is in the document.

**Paths.** A flow from shard A to shard B climbs from A to the lowest common ancestor
(LCA) and descends to B: ``path(A, B) = (A, parent(A), ..., LCA, ..., parent(B), B)``.
Each step crosses one **edge** (a parent and one of its children); an edge is the
bridge between them, its capacity and fee set by the parent's grid operator and kept
in the parent, so on any path the shard that *reserves* an edge is the one of its two
ends closer to the LCA (:func:`Topology.edges_reserved_at`).

**Bridge addresses.** For each edge there are two non-personal accounts: in the child
the account representing the parent, in the parent the account representing the child.
``bridge_address(home, neighbour)`` derives them from a domain-tagged hash of the two
ids: no private key exists for them (an account address is a hash of a public key
under another tag), so no one can sign for a bridge; only the bridge module moves
what they hold. Every shard computes every address from the ids alone.

**The document** is TOML (``genesis/three-levels.toml``)::

    genesis_time = 1767225600        # start of elementary period 0, unix seconds
    period_s = 900                   # the elementary period, shared by every shard

    [shards."ch"]
    protocol = "bft"                 # or "raft"
    checkpoint_interval = 16
    validators = 4                   # how many validator nodes a devnet starts
    label = "transmission"

    [bridges."ch/zurich"]            # keyed by the child; registered in the parent
    capacity_wh = 4000000            # per elementary period
    fee_per_kwh = 2                  # minor units of the settlement currency per kWh

Bridges listed are registered at genesis by the parent's grid operator; a bridge not
listed exists but carries no flow until the parent's grid operator registers it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ledger import codec
from ledger.crypto import ADDRESS_LEN, tagged_hash
from shards.errors import TopologyError

__all__ = [
    "BridgeSpec",
    "MAX_DEPTH",
    "MAX_SHARDS",
    "ShardSpec",
    "Topology",
    "bridge_address",
    "check_shard_id",
    "parent_of",
]

PROTOCOLS = ("bft", "raft")
# A segment is a lowercase area name: letters, digits, '-' and '_', at most 32
# characters; nine levels of 32 characters stay within a chain id's 128 characters
# with room to spare (ledger.tx.MAX_CHAIN_ID_LEN).
SEGMENT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Real grids have three to five voltage levels; eight bounds a path to 15 shards,
# which bounds every packet that carries one.
MAX_DEPTH = 8
# A bound on what a topology document may make every node hold in memory.
MAX_SHARDS = 4096
# Capacity per elementary period and fee per kWh are bounded so that the products the
# flow module computes (energy x periods x fee) stay far inside 64-bit integers.
MAX_CAPACITY_WH = 10**15
MAX_FEE_PER_KWH = 10**9


def check_shard_id(shard_id: object) -> str:
    """Return ``shard_id`` if it is a well-formed path id; raise :class:`TopologyError` otherwise."""
    if type(shard_id) is not str or not shard_id:
        raise TopologyError("bad_shard_id", f"a shard id is non-empty text, got {shard_id!r}")
    segments = shard_id.split("/")
    if len(segments) > MAX_DEPTH:
        raise TopologyError("bad_shard_id", f"shard id {shard_id!r} has {len(segments)} levels; at most {MAX_DEPTH}")
    for segment in segments:
        if not SEGMENT.fullmatch(segment):
            raise TopologyError(
                "bad_shard_id",
                f"shard id {shard_id!r}: segment {segment!r} must be 1-32 of a-z, 0-9, '-', '_' (starting with a letter or digit)",
            )
    return shard_id


def parent_of(shard_id: str) -> str | None:
    """The parent's id (the id without its last segment), or None for a root id."""
    cut = shard_id.rfind("/")
    return None if cut < 0 else shard_id[:cut]


def bridge_address(home: str, neighbour: str) -> bytes:
    """The 20-byte non-personal account in shard ``home`` that represents ``neighbour``."""
    return tagged_hash(b"gridledger/bridge", codec.encode([home, neighbour]))[:ADDRESS_LEN]


@dataclass(frozen=True, slots=True)
class ShardSpec:
    id: str
    protocol: str = "bft"
    checkpoint_interval: int = 16
    validators: int = 4
    label: str = ""

    def to_fields(self) -> list:
        return [self.id, self.protocol, self.checkpoint_interval, self.validators, self.label]


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """The genesis registration of the bridge between ``child`` and its parent."""

    child: str
    capacity_wh: int
    fee_per_kwh: int

    @property
    def parent(self) -> str:
        parent = parent_of(self.child)
        assert parent is not None
        return parent

    def to_fields(self) -> list:
        return [self.child, self.capacity_wh, self.fee_per_kwh]


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise TopologyError("bad_topology", f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True)
class Topology:
    """A validated shard tree. Build with :meth:`from_toml`, :meth:`load` or :meth:`build`."""

    genesis_time: int
    period_s: int
    shards: tuple[ShardSpec, ...]
    bridges: tuple[BridgeSpec, ...] = field(default=())

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls, shards: list[ShardSpec], bridges: list[BridgeSpec] = (), *, genesis_time: int = 0, period_s: int = 900
    ) -> Topology:
        """Check a tree given as specs; raise :class:`TopologyError` naming what is wrong."""
        _int(genesis_time, "genesis_time", 0, 2**40)
        _int(period_s, "period_s", 1, 86_400)
        if not shards:
            raise TopologyError("bad_topology", "a topology needs at least one shard")
        if len(shards) > MAX_SHARDS:
            raise TopologyError("bad_topology", f"{len(shards)} shards; at most {MAX_SHARDS}")
        ids: set[str] = set()
        for spec in shards:
            check_shard_id(spec.id)
            if spec.id in ids:
                raise TopologyError("bad_topology", f"shard {spec.id!r} is listed twice")
            ids.add(spec.id)
            if spec.protocol not in PROTOCOLS:
                raise TopologyError("bad_topology", f"shard {spec.id!r}: protocol must be one of {PROTOCOLS}")
            _int(spec.checkpoint_interval, f"shard {spec.id!r} checkpoint_interval", 1, 1 << 20)
            _int(spec.validators, f"shard {spec.id!r} validators", 1, 1000)
            if type(spec.label) is not str or len(spec.label) > 200:
                raise TopologyError("bad_topology", f"shard {spec.id!r}: label is text of at most 200 characters")
        roots = [s.id for s in shards if parent_of(s.id) is None]
        if len(roots) != 1:
            raise TopologyError("bad_topology", f"a topology has exactly one root shard; found {sorted(roots)}")
        for spec in shards:
            parent = parent_of(spec.id)
            if parent is not None and parent not in ids:
                raise TopologyError("bad_topology", f"shard {spec.id!r} has no parent {parent!r} in the topology")
        seen: set[str] = set()
        for bridge in bridges:
            if bridge.child not in ids or parent_of(bridge.child) is None:
                raise TopologyError("bad_topology", f"bridge for {bridge.child!r}: not a child shard of this topology")
            if bridge.child in seen:
                raise TopologyError("bad_topology", f"bridge for {bridge.child!r} is listed twice")
            seen.add(bridge.child)
            _int(bridge.capacity_wh, f"bridge {bridge.child!r} capacity_wh", 0, MAX_CAPACITY_WH)
            _int(bridge.fee_per_kwh, f"bridge {bridge.child!r} fee_per_kwh", 0, MAX_FEE_PER_KWH)
        return cls(
            genesis_time,
            period_s,
            tuple(sorted(shards, key=lambda s: s.id)),
            tuple(sorted(bridges, key=lambda b: b.child)),
        )

    @classmethod
    def from_toml(cls, text: str) -> Topology:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError("bad_topology", f"topology is not valid TOML: {exc}") from None
        known = {"genesis_time", "period_s", "shards", "bridges"}
        unknown = set(doc) - known
        if unknown:
            raise TopologyError("bad_topology", f"unknown top-level keys {sorted(unknown)}; allowed: {sorted(known)}")
        shard_table = doc.get("shards")
        if not isinstance(shard_table, dict):
            raise TopologyError("bad_topology", "a topology needs a [shards.\"<id>\"] table per shard")
        shards = []
        for shard_id, entry in shard_table.items():
            if not isinstance(entry, dict):
                raise TopologyError("bad_topology", f"shards.{shard_id!r} must be a table")
            extra = set(entry) - {"protocol", "checkpoint_interval", "validators", "label"}
            if extra:
                raise TopologyError("bad_topology", f"shards.{shard_id!r}: unknown keys {sorted(extra)}")
            shards.append(
                ShardSpec(
                    shard_id,
                    entry.get("protocol", "bft"),
                    entry.get("checkpoint_interval", 16),
                    entry.get("validators", 4),
                    entry.get("label", ""),
                )
            )
        bridges = []
        for child, entry in (doc.get("bridges") or {}).items():
            if not isinstance(entry, dict) or set(entry) != {"capacity_wh", "fee_per_kwh"}:
                raise TopologyError("bad_topology", f"bridges.{child!r} must set exactly capacity_wh and fee_per_kwh")
            bridges.append(BridgeSpec(child, entry["capacity_wh"], entry["fee_per_kwh"]))
        return cls.build(shards, bridges, genesis_time=doc.get("genesis_time", 0), period_s=doc.get("period_s", 900))

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TopologyError("bad_topology", f"cannot read topology {path}: {exc.strerror}") from None
        return cls.from_toml(text)

    def to_fields(self) -> list:
        return [
            self.genesis_time,
            self.period_s,
            [s.to_fields() for s in self.shards],
            [b.to_fields() for b in self.bridges],
        ]

    @cached_property
    def hash(self) -> bytes:
        """Every shard's genesis names this hash, so all shards agree on the tree."""
        return tagged_hash(b"gridledger/topology", codec.encode(self.to_fields()))

    # ------------------------------------------------------------------ the tree

    @cached_property
    def _by_id(self) -> dict[str, ShardSpec]:
        return {s.id: s for s in self.shards}

    @cached_property
    def _children(self) -> dict[str, tuple[str, ...]]:
        children: dict[str, list[str]] = {s.id: [] for s in self.shards}
        for s in self.shards:
            parent = parent_of(s.id)
            if parent is not None:
                children[parent].append(s.id)
        return {k: tuple(sorted(v)) for k, v in children.items()}

    @cached_property
    def _bridges(self) -> dict[str, BridgeSpec]:
        return {b.child: b for b in self.bridges}

    @property
    def root(self) -> str:
        return next(s.id for s in self.shards if parent_of(s.id) is None)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.shards)

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._by_id

    def shard(self, shard_id: str) -> ShardSpec:
        spec = self._by_id.get(shard_id)
        if spec is None:
            raise TopologyError("unknown_shard", f"shard {shard_id!r} is not in the topology")
        return spec

    def parent(self, shard_id: str) -> str | None:
        self.shard(shard_id)
        return parent_of(shard_id)

    def children(self, shard_id: str) -> tuple[str, ...]:
        self.shard(shard_id)
        return self._children[shard_id]

    def neighbours(self, shard_id: str) -> tuple[str, ...]:
        """The parent (if any) first, then the children in id order."""
        parent = self.parent(shard_id)
        return ((parent,) if parent is not None else ()) + self._children[shard_id]

    def is_neighbour(self, a: str, b: str) -> bool:
        return a in self._by_id and b in self._by_id and (parent_of(a) == b or parent_of(b) == a)

    def leaves(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.shards if not self._children[s.id])

    def depth(self, shard_id: str) -> int:
        """0 for the root."""
        self.shard(shard_id)
        return shard_id.count("/")

    def bridge(self, child: str) -> BridgeSpec | None:
        """The genesis registration of the bridge above ``child`` (None: not registered at genesis)."""
        self.shard(child)
        return self._bridges.get(child)

    # ------------------------------------------------------------------ paths

    def lca(self, a: str, b: str) -> str:
        """The lowest common ancestor of two shards (a shard is its own ancestor)."""
        self.shard(a)
        self.shard(b)
        sa, sb = a.split("/"), b.split("/")
        common = 0
        for x, y in zip(sa, sb, strict=False):
            if x != y:
                break
            common += 1
        # One root: every id starts with the root's segment, so common >= 1.
        return "/".join(sa[:common])

    def path(self, a: str, b: str) -> tuple[str, ...]:
        """The shards from ``a`` to ``b`` through their LCA, both ends included."""
        top = self.lca(a, b)
        up = [a]
        while up[-1] != top:
            up.append(parent_of(up[-1]))  # type: ignore[arg-type]
        down = [b]
        while down[-1] != top:
            down.append(parent_of(down[-1]))  # type: ignore[arg-type]
        return tuple(up + down[-2::-1])

    def check_path(self, path: tuple[str, ...] | list[str]) -> None:
        """Raise :class:`TopologyError` unless ``path`` is exactly ``self.path(path[0], path[-1])``."""
        if len(path) < 2:
            raise TopologyError("bad_path", "a flow path joins at least two shards")
        if tuple(path) != self.path(path[0], path[-1]):
            raise TopologyError("bad_path", f"{' -> '.join(path)} is not the path through the lowest common ancestor")

    @staticmethod
    def edge_of(a: str, b: str) -> tuple[str, str]:
        """The edge between neighbours ``a`` and ``b`` as (parent, child)."""
        if parent_of(a) == b:
            return (b, a)
        if parent_of(b) == a:
            return (a, b)
        raise TopologyError("not_neighbours", f"{a!r} and {b!r} are not parent and child")

    def edges(self, path: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
        """The (parent, child) edges crossed by ``path``, in path order."""
        return [self.edge_of(x, y) for x, y in zip(path, path[1:], strict=False)]

    def edges_reserved_at(self, path: tuple[str, ...] | list[str], index: int) -> list[tuple[str, str]]:
        """The edges of ``path`` whose parent is ``path[index]``: that hop reserves their
        capacity and charges their fees (the LCA holds two, the ends may hold none)."""
        here = path[index]
        out = []
        if index > 0 and parent_of(path[index - 1]) == here:
            out.append((here, path[index - 1]))
        if index + 1 < len(path) and parent_of(path[index + 1]) == here:
            out.append((here, path[index + 1]))
        return out

    # ------------------------------------------------------------------ time

    def period_start(self, period: int) -> int:
        """Block time (s) at which elementary period ``period`` begins."""
        return self.genesis_time + period * self.period_s
