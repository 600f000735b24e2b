"""Register maps: built-in (``sdm630``, ``sunspec``) and custom TOML files.

``load_map(spec, base_dir)`` resolves a map named in a configuration: a built-in name
or the path of a TOML map file (relative to ``base_dir``).
"""

from __future__ import annotations

from pathlib import Path

from meters.errors import ConfigError
from meters.maps.base import Layout, Measurement, MeterMap, Point, PointLayout, ReadBlock, ReadFn
from meters.maps.custom import CustomMap, load_custom_map
from meters.maps.sdm630 import SDM630
from meters.maps.sunspec import SUNSPEC

__all__ = [
    "BUILTIN",
    "CustomMap",
    "Layout",
    "Measurement",
    "MeterMap",
    "Point",
    "PointLayout",
    "ReadBlock",
    "ReadFn",
    "load_map",
]

BUILTIN: dict[str, MeterMap] = {"sdm630": SDM630, "sunspec": SUNSPEC}


def load_map(spec: str, base_dir: str | Path = ".") -> MeterMap:
    """A built-in map by name, or a custom map from a ``.toml`` path."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"map must be {' or '.join(sorted(BUILTIN))} or the path of a .toml map, got {spec!r}")
    if spec in BUILTIN:
        return BUILTIN[spec]
    if not spec.endswith(".toml"):
        raise ConfigError(f"unknown map {spec!r}: use {' or '.join(sorted(BUILTIN))}, or the path of a .toml map file")
    path = Path(spec)
    return load_custom_map(path if path.is_absolute() else Path(base_dir) / path)
