"""Facts about contract values shared by the helpers: type names, nesting walks, key checks.

Contract values are ``int``, ``bool``, ``str``, ``bytes``, ``None``, ``tuple``,
``list``, ``dict`` (insertion-ordered) and :class:`~contracts.runtime.fixed.Fixed`.
Two CPython behaviours make nested values dangerous on a ledger: comparing two deeply
nested lists recurses in C with a limit that differs between Python versions, and
hashing a deeply nested tuple recurses with no limit at all. So before any operation
that recurses (comparison, hashing, encoding) the runtime walks one operand with an
explicit stack, charging gas per element and refusing nesting deeper than
``MAX_NESTING``. The walk costs what the recursion it guards costs, so it also
prices comparisons of large structures honestly.
"""

from __future__ import annotations

import types
from collections.abc import Callable

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded
from contracts.runtime.fixed import Fixed

__all__ = [
    "CONTAINERS",
    "KEY_SCALARS",
    "SCAN_BYTES_PER_GAS",
    "make_walkers",
    "type_name",
    "unsupported",
]

_NoneType = type(None)
DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
CONTAINERS = frozenset({list, tuple, dict, *DICT_VIEWS})
# Dict keys. CPython randomises the hashes of text and bytes per process, but not of
# ints (hash(k) == k mod 2**61-1) or tuples (a fixed function of their elements'
# hashes): a contract could build thousands of distinct keys with one hash and make
# every lookup scan them all, quadratic work for linear gas. So a dict key is text,
# bytes, a bool, None, or an int whose hash is itself (|k| < 2**60), and equal hashes
# then mean equal keys.
KEY_SCALARS = frozenset({int, bool, str, bytes, _NoneType})
_KEY_INT_LIMIT = 1 << 60
# memcmp-like scans (comparisons, searches) are cheaper per byte than creating data.
SCAN_BYTES_PER_GAS = 64

_NAMES = {
    int: "int",
    bool: "bool",
    str: "str",
    bytes: "bytes",
    _NoneType: "None",
    list: "list",
    tuple: "tuple",
    dict: "dict",
    Fixed: "Fixed",
    range: "range",
    types.FunctionType: "function",
    types.BuiltinFunctionType: "function",
    DICT_VIEWS[0]: "dict_keys",
    DICT_VIEWS[1]: "dict_values",
    DICT_VIEWS[2]: "dict_items",
}


def type_name(value: object) -> str:
    """A contract-level type name, identical on every Python version."""
    return _NAMES.get(type(value), "object")


def unsupported(symbol: str, a: object, b: object | None = None) -> ContractError:
    if b is None:
        return ContractError(f"unsupported operand type for {symbol}: {type_name(a)}")
    return ContractError(f"unsupported operand types for {symbol}: {type_name(a)} and {type_name(b)}")


def make_walkers(charge: Callable[[int], None]) -> tuple[Callable[[object], int], Callable[[object], None]]:
    """Return ``(walk, check_key)`` charging through ``charge``.

    ``walk(value)`` visits every container inside ``value`` (charging before each),
    refuses nesting beyond ``MAX_NESTING`` and returns the number of elements seen
    (1 for a scalar). ``check_key(key)`` refuses dict keys outside ``KEY_SCALARS``
    (see there why).
    """
    max_depth = G.MAX_NESTING
    per_gas = G.ELEMENTS_PER_GAS
    containers = CONTAINERS
    visit = G.CONTAINER_VISIT
    walk_element = G.WALK_ELEMENT

    def walk(value: object) -> int:
        if type(value) not in containers:
            return 1
        count = 0
        stack = [(value, 0)]
        while stack:
            v, depth = stack.pop()
            if depth >= max_depth:
                raise LimitExceeded(f"value nested deeper than {max_depth} levels")
            n = len(v)  # type: ignore[arg-type]
            charge(visit + n // per_gas)
            count += n
            items = v.values() if type(v) is dict else v  # type: ignore[union-attr]
            if containers.isdisjoint(map(type, items)):  # type: ignore[arg-type]
                continue
            charge(n * walk_element)
            for item in items:  # type: ignore[union-attr]
                if type(item) in containers:
                    stack.append((item, depth + 1))
        return count

    def check_key(key: object) -> None:
        t = type(key)
        if t is str or t is bytes or t is bool or key is None:
            return
        if t is int and -_KEY_INT_LIMIT < key < _KEY_INT_LIMIT:  # type: ignore[operator]
            return
        if t is int:
            raise ContractError("an int dict key must be below 2**60 in size: larger ints hash predictably")
        raise ContractError(
            f"a dict key is text, bytes, a bool, None or an int, not {type_name(key)};"
            " for composite keys use text such as f'{a}:{b}' or a storage Map with key_parts"
        )

    return walk, check_key
