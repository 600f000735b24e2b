"""What the checker learns about a contract: declarations, constants, functions.

The loader (``engine.py``) binds storage and events from these records and checks
exported functions' arguments against their parameters.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["CheckedContract", "EventDecl", "FunctionInfo", "Param", "StorageDecl"]


@dataclass(frozen=True)
class StorageDecl:
    """``name = Map(default=..., key_parts=n)`` or ``name = Value(default=...)``."""

    name: str
    kind: str  # "map" or "value"
    default: object
    key_parts: int  # 0 for a Value


@dataclass(frozen=True)
class EventDecl:
    """``Name = Event("field", ..., indexed=["field"])``."""

    name: str
    fields: tuple[str, ...]
    indexed: tuple[str, ...]


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str | None  # an ANNOTATION_NAMES entry
    optional: bool  # annotated `T | None`
    has_default: bool
    keyword_only: bool


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    kind: str  # "private", "export", "view" or "constructor"
    reentrant: bool
    params: tuple[Param, ...]
    line: int
    end_line: int


@dataclass
class CheckedContract:
    """A source that passed every rule, with what the loader needs to know about it."""

    source: str
    tree: ast.Module
    storage: dict[str, StorageDecl] = field(default_factory=dict)
    events: dict[str, EventDecl] = field(default_factory=dict)
    constants: list[str] = field(default_factory=list)
    functions: dict[str, FunctionInfo] = field(default_factory=dict)

    @property
    def constructor(self) -> FunctionInfo | None:
        return next((f for f in self.functions.values() if f.kind == "constructor"), None)

    @property
    def exports(self) -> dict[str, FunctionInfo]:
        return {n: f for n, f in self.functions.items() if f.kind in ("export", "view")}
