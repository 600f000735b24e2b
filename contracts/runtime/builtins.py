"""The builtins a contract sees: safe, charged stand-ins for a small set of Python's.

Contract code runs with ``__builtins__`` set to the dict :func:`make_builtins`
returns and nothing else: no ``getattr``, ``type``, ``eval``, ``open``, ``print``,
``__import__``. Every builtin here charges gas from the sizes of its inputs before
it works and refuses results beyond the runtime's limits (``bytes(10**9)``,
``list(range(10**9))``, ``int('9' * 10**6)`` stop with ``limit``).

``int``, ``str``, ``bytes``, ``bool``, ``list``, ``tuple`` and ``dict`` are functions
here, not the host's types (a type would lead to its attributes and subclasses);
``isinstance`` and parameter annotations translate them back. ``enumerate``, ``zip``
and ``reversed`` return sized, re-iterable views, so whatever consumes them can be
charged in advance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded, contract_failure
from contracts.runtime.fixed import Fixed
from contracts.runtime.meter import MeterFunctions
from contracts.runtime.methods import _size, element_bytes, make_sorter
from contracts.runtime.text import render
from contracts.runtime.values import CONTAINERS, DICT_VIEWS, type_name

__all__ = ["ALLOWED_BUILTINS", "Lazy", "TYPE_NAMES", "make_builtins"]

# Names of Python builtins a contract may use; every other Python builtin is refused
# by the checker with the rule ``forbidden-builtin``.
ALLOWED_BUILTINS = frozenset(
    {
        "len", "abs", "min", "max", "sum", "sorted", "reversed", "enumerate", "zip", "range",
        "list", "tuple", "dict", "str", "bytes", "int", "bool", "any", "all", "isinstance",
        "divmod", "pow", "chr", "ord", "hex", "True", "False", "None",
    }
)

_INT_RANGE = 1 << 63
_MISSING = object()


MAX_LAZY_NESTING = 8


class Lazy:
    """A sized, re-iterable view produced by ``enumerate``, ``zip`` and ``reversed``.

    Views over views iterate recursively in C, so their nesting is bounded.
    """

    __slots__ = ("_make", "_n", "_depth")

    def __init__(self, make: Callable[[], object], n: int, sources: tuple = ()) -> None:
        depth = 1 + max((s._depth for s in sources if type(s) is Lazy), default=0)
        if depth > MAX_LAZY_NESTING:
            raise LimitExceeded(f"enumerate/zip/reversed nest at most {MAX_LAZY_NESTING} deep")
        self._make = make
        self._n = n
        self._depth = depth

    def __iter__(self):
        return iter(self._make())

    def __len__(self) -> int:
        return self._n


def _int_arg(value: object, what: str) -> int:
    if type(value) is int:
        return value  # type: ignore[return-value]
    if type(value) is bool:
        return int(value)  # type: ignore[arg-type]
    raise ContractError(f"{what} must be an int, not {type_name(value)}")


def make_builtins(
    fns: MeterFunctions,
    walk: Callable[[object], int],
    check_key: Callable[[object], None],
    power: Callable[[object, object], object],
) -> dict:
    """The contract builtins, charging through ``fns``; ``power`` is the ``**`` helper."""
    charge, charge_bytes = fns.charge, fns.charge_bytes
    per_gas = G.ELEMENTS_PER_GAS
    max_len, max_bytes = G.MAX_COLLECTION_LEN, G.MAX_BYTES_LEN
    sort_values, compare_cost = make_sorter(fns, walk)
    markers: dict[object, type] = {}

    def collection_size(x: object) -> int:
        n = _size(x)
        if n > max_len:
            raise LimitExceeded(f"collection longer than {max_len} elements")
        return n

    def c_abs(x):
        if type(x) in (int, bool, Fixed):
            return abs(x)
        raise ContractError(f"abs() takes a number, not {type_name(x)}")

    def extreme(name: str, pick: Callable):
        def choose(*args, key=None, default=_MISSING):
            charge(G.BUILTIN_CALL)
            if len(args) == 2 and key is None and default is _MISSING and type(args[0]) is int and type(args[1]) is int:
                return pick(args)  # the common min(a, b) of two bounded ints
            if not args:
                raise ContractError(f"{name}() needs at least one argument")
            if len(args) == 1:
                items = list(args[0]) if _size(args[0]) <= max_len else None
                if items is None:
                    raise LimitExceeded(f"collection longer than {max_len} elements")
            else:
                if default is not _MISSING:
                    raise ContractError(f"{name}() takes default= only with a single collection")
                items = list(args)
            n = len(items)
            charge_bytes(element_bytes(args[0] if len(args) == 1 else args) * n)
            if not n:
                if default is _MISSING:
                    raise ContractError(f"{name}() of an empty collection")
                return default
            keys = items if key is None else [key(v) for v in items]
            charge(1 + n * G.COMPARE * compare_cost(keys))
            return items[pick(range(n), key=keys.__getitem__)]

        choose.__name__ = name
        return choose

    def c_sum(items, start=0):
        n = collection_size(items) if type(items) is not range else _size(items)
        charge(1 + n // per_gas)
        if type(start) not in (int, bool, Fixed):
            raise ContractError("sum() adds numbers (int or Fixed); use str.join for text and + for lists")
        if type(items) is range:
            # arithmetic series: exact, O(1), and identical to adding the elements
            r = items
            total = (r.start + r[-1]) * n // 2 if n else 0
            return _result(start + total)
        present = set(map(type, items))
        if not present <= {int, bool, Fixed}:
            raise ContractError("sum() adds numbers (int or Fixed); use str.join for text and + for lists")
        if Fixed in present or type(start) is Fixed:
            charge(n * G.FIXED_OP)
            return sum(items, start)
        limbs = (max(map(int.bit_length, items), default=0) >> 6) + 1
        charge(n * limbs)
        return _result(sum(items, start))

    def _result(value):
        if type(value) is int and value.bit_length() > G.MAX_INT_BITS:
            raise LimitExceeded(f"integer result exceeds {G.MAX_INT_BITS} bits")
        return value

    def c_sorted(items, key=None, reverse=False):
        return sort_values(items, key, reverse)

    def c_reversed(x):
        t = type(x)
        if t is range:
            return x[::-1]
        if t in (list, tuple, str, bytes, dict) or t in DICT_VIEWS or t is Lazy:
            return Lazy(lambda: reversed(x) if t is not Lazy else reversed(list(x)), len(x), (x,))
        raise ContractError(f"reversed() takes a sequence, not {type_name(x)}")

    def c_enumerate(x, start=0):
        start = _int_arg(start, "enumerate start")
        n = _size(x)
        return Lazy(lambda: enumerate(x, start), n, (x,))

    def c_zip(*xs):
        n = min((_size(x) for x in xs), default=0)
        return Lazy(lambda: zip(*xs, strict=False), n, xs)

    def c_range(*args):
        if not 1 <= len(args) <= 3:
            raise ContractError("range() takes 1 to 3 integers")
        values = [_int_arg(a, "range() argument") for a in args]
        if any(not -_INT_RANGE <= v < _INT_RANGE for v in values):
            raise LimitExceeded("range() arguments must fit in 64 bits")
        return range(*values)

    def c_list(x=()):
        n = collection_size(x)
        charge_bytes(element_bytes(x) * n)
        return list(x)

    def c_tuple(x=()):
        n = collection_size(x)
        charge_bytes(element_bytes(x) * n)
        return tuple(x)

    def c_dict(x=None, **kw):
        d: dict = {}
        if x is not None:
            if type(x) is dict:
                charge_bytes(16 * len(x))
                d = dict(x)
            else:
                n = collection_size(x)
                charge(1 + 4 * n)
                for pair in x:
                    if type(pair) not in (list, tuple) or len(pair) != 2:
                        raise ContractError("dict() takes pairs (key, value)")
                    k, v = pair
                    if type(k) is not str:
                        check_key(k)
                    d[k] = v
        if kw:
            charge_bytes(16 * len(kw))
            d.update(kw)
        if len(d) > max_len:
            raise LimitExceeded(f"dict longer than {max_len} elements")
        return d

    def c_str(x=""):
        return x if type(x) is str else render(x, charge)

    def c_bytes(x=b""):
        t = type(x)
        if t is bytes:
            return x
        if t is int or t is bool:
            if not 0 <= x <= max_bytes:
                raise LimitExceeded(f"bytes({x if x < 0 else 'n'}) must be from 0 to {max_bytes} bytes")
            charge_bytes(int(x))
            return bytes(int(x))
        if t is str:
            raise ContractError("bytes(text) needs an encoding; use text.encode()")
        n = _size(x)
        if n > max_bytes:
            raise LimitExceeded(f"bytes longer than {max_bytes}")
        charge_bytes(n)
        charge(n // per_gas)
        if t in CONTAINERS or t is range or t is Lazy:
            return bytes(x)
        raise ContractError(f"bytes() takes an int, bytes or a list of ints, not {type_name(x)}")

    def c_int(x=0, base=None):
        t = type(x)
        if t is int and base is None:
            return x
        if t is bool and base is None:
            return int(x)
        if t is str:
            base = 10 if base is None else base
            if base not in (2, 8, 10, 16):
                raise ContractError("int() base must be 2, 8, 10 or 16")
            if len(x) > G.MAX_INT_TEXT:
                raise LimitExceeded(f"int() takes text of at most {G.MAX_INT_TEXT} characters")
            if not x.isascii():
                raise ContractError("int() parses ASCII digits only")
            charge(1 + len(x) // 8)
            return _result(int(x, base))
        if t is Fixed:
            raise ContractError("int(Fixed) would hide a rounding; use x.to_int(rounding)")
        if t is bytes:
            raise ContractError("use int.from_bytes(data, 'big') for bytes")
        raise ContractError(f"int() takes text or a number, not {type_name(x)}")

    def c_bool(x=False):
        return bool(x)

    def c_any(items):
        charge(1 + _size(items) // per_gas)
        return any(items)

    def c_all(items):
        charge(1 + _size(items) // per_gas)
        return all(items)

    def c_divmod(a, b):
        if type(a) in (int, bool) and type(b) in (int, bool):
            charge(((a.bit_length() >> 6) + 1) * ((b.bit_length() >> 6) + 1))
            return divmod(a, b)
        raise ContractError("divmod() takes two ints; for Fixed use div(...)")

    def c_pow(a, b, mod=None):
        if mod is None:
            return power(a, b)
        for v in (a, b, mod):
            _int_arg(v, "pow() argument")
        if mod == 0:
            raise ContractError("pow() modulus must not be zero")
        limbs = (int(mod).bit_length() >> 6) + 1
        charge(1 + limbs * limbs * (abs(int(b)).bit_length() + 1))
        return pow(int(a), int(b), int(mod))

    def c_chr(i):
        i = _int_arg(i, "chr() argument")
        if not 0 <= i <= 0x10FFFF:
            raise ContractError("chr() takes a code point from 0 to 0x10FFFF")
        return chr(i)

    def c_ord(c):
        if type(c) is not str or len(c) != 1:
            raise ContractError("ord() takes a single character")
        return ord(c)

    def c_hex(n):
        n = _int_arg(n, "hex() argument")
        charge(1 + (n.bit_length() >> 6))
        return hex(n)

    def c_isinstance(x, types):
        wanted = types if type(types) is tuple else (types,)
        real = []
        for marker in wanted:
            t = markers.get(marker)  # type: ignore[arg-type]
            if t is None:
                raise ContractError("isinstance() takes int, bool, str, bytes, list, tuple, dict, Fixed or a tuple of them")
            real.append(t)
        return isinstance(x, tuple(real))

    def c_bytes_fromhex(text):
        if type(text) is not str:
            raise ContractError("bytes.fromhex() takes text")
        if len(text) > 2 * max_bytes:
            raise LimitExceeded(f"bytes longer than {max_bytes}")
        charge_bytes(len(text))
        if not text.isascii():
            raise ContractError("bytes.fromhex() takes ASCII hex digits")
        return bytes.fromhex(text)

    def c_int_from_bytes(data, byteorder="big", *, signed=False):
        if type(data) is not bytes:
            raise ContractError("int.from_bytes() takes bytes")
        if len(data) * 8 > G.MAX_INT_BITS:
            raise LimitExceeded(f"integer exceeds {G.MAX_INT_BITS} bits")
        if byteorder not in ("big", "little"):
            raise ContractError("byteorder must be 'big' or 'little'")
        charge(1 + len(data) // 8)
        return int.from_bytes(data, byteorder, signed=bool(signed))

    def c_sha256(data):
        if type(data) is not bytes:
            raise ContractError("sha256() takes bytes; encode text first")
        charge(G.HASH_BASE + len(data) // 16)
        return hashlib.sha256(data).digest()

    def c_fixed(value, scale=None):
        charge(G.FIXED_OP + (len(value) // 4 if type(value) is str else 0))
        return Fixed(value, scale)

    def c_fixed_from_units(units, scale):
        charge(G.FIXED_OP)
        return Fixed.from_units(units, scale)

    def c_address(value):
        if type(value) is not bytes or len(value) != 20:
            raise ContractError("an address is 20 bytes")
        return value

    def c_require(condition, message="requirement failed"):
        if not condition:
            raise contract_failure(message if type(message) is str else render(message, charge))

    def c_fail(message="failed"):
        raise contract_failure(message if type(message) is str else render(message, charge))

    table = {
        "len": len,
        "abs": c_abs,
        "min": extreme("min", min),
        "max": extreme("max", max),
        "sum": c_sum,
        "sorted": c_sorted,
        "reversed": c_reversed,
        "enumerate": c_enumerate,
        "zip": c_zip,
        "range": c_range,
        "list": c_list,
        "tuple": c_tuple,
        "dict": c_dict,
        "str": c_str,
        "bytes": c_bytes,
        "int": c_int,
        "bool": c_bool,
        "any": c_any,
        "all": c_all,
        "isinstance": c_isinstance,
        "divmod": c_divmod,
        "pow": c_pow,
        "chr": c_chr,
        "ord": c_ord,
        "hex": c_hex,
        "True": True,
        "False": False,
        "None": None,
        # runtime names (more are added by the engine: call, contract_address)
        "Fixed": c_fixed,
        "Address": c_address,
        "sha256": c_sha256,
        "require": c_require,
        "fail": c_fail,
        # static attribute forms, reached only through the instrumenter
        "_bytes_fromhex": c_bytes_fromhex,
        "_int_from_bytes": c_int_from_bytes,
        "_fixed_from_units": c_fixed_from_units,
    }
    for name, fn in table.items():
        if isinstance(fn, type(c_abs)) and not name.startswith("_"):
            fn.__name__ = name  # what str() of the builtin shows: <function name>
    markers.update({table[name]: t for name, t in TYPE_NAMES.items()})
    return table


# The builtin names that stand for types (in annotations and isinstance), and the
# host types they mean.
TYPE_NAMES: dict[str, type] = {
    "int": int,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "list": list,
    "tuple": tuple,
    "dict": dict,
    "Fixed": Fixed,
}
