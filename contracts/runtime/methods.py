"""The methods contracts may call on values, each charged by its input sizes.

``obj.name(...)`` in a contract becomes ``_mc_name(obj, ...)``: a dispatcher that
looks up ``type(obj)`` in the table for ``name`` and refuses everything else, so a
method name the checker allows can only ever reach the implementations listed here,
never an attribute of a host object.

Text methods follow ASCII rules wherever CPython would consult the Unicode
database (which differs between Python versions): ``upper``/``lower`` refuse
non-ASCII text, the ``is...`` predicates answer for ASCII characters only, and
``split()``/``strip()`` without arguments split and strip ASCII whitespace.
Only UTF-8 is offered by ``encode``/``decode``.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded
from contracts.runtime.fixed import Fixed
from contracts.runtime.meter import MeterFunctions
from contracts.runtime.ops import DeletionTracker
from contracts.runtime.values import CONTAINERS, SCAN_BYTES_PER_GAS, type_name

__all__ = ["ATTRIBUTE_NAMES", "METHOD_NAMES", "make_methods", "make_sorter"]

METHODS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "str": (
        "upper", "lower", "strip", "lstrip", "rstrip", "split", "rsplit", "join", "startswith",
        "endswith", "find", "rfind", "index", "count", "replace", "encode", "isdigit", "isalpha",
        "isalnum", "isspace", "isupper", "islower", "isascii", "removeprefix", "removesuffix",
        "partition", "rpartition", "zfill", "ljust", "rjust",
    ),
    "bytes": (
        "hex", "decode", "startswith", "endswith", "find", "count", "index", "replace", "split",
        "join", "strip", "removeprefix", "removesuffix",
    ),
    "list": ("append", "extend", "insert", "pop", "remove", "index", "count", "reverse", "sort", "copy", "clear"),
    "dict": ("get", "keys", "values", "items", "pop", "setdefault", "update", "copy", "clear", "popitem"),
    "tuple": ("index", "count"),
    "int": ("bit_length", "to_bytes"),
    "Fixed": ("rescale", "to_int", "div", "mul", "pow"),
}
METHOD_NAMES = frozenset(name for names in METHODS_BY_TYPE.values() for name in names)
# Attributes read without a call: the parts of a Fixed.
ATTRIBUTE_NAMES = frozenset({"units", "scale"})

_ASCII_WS = " \t\n\r\x0b\x0c"
_NoneType = type(None)
_FIXED_COMPARE = 8  # a Fixed comparison runs Python code: about 8 plain comparisons


def _size(x: object) -> int:
    try:
        return len(x)  # type: ignore[arg-type]
    except OverflowError:  # a range longer than sys.maxsize
        return 1 << 63
    except TypeError:
        raise ContractError(f"{type_name(x)} is not a collection") from None


def element_bytes(source: object) -> int:
    """Bytes each element of ``source`` costs when copied into a list (a new tuple for zip, enumerate, items)."""
    from contracts.runtime.builtins import Lazy

    t = type(source)
    return G.TUPLE_ELEMENT_BYTES if t is Lazy or t is _ITEMS else 8


_ITEMS = type({}.items())


def make_sorter(
    fns: MeterFunctions, walk: Callable[[object], int]
) -> tuple[Callable[..., list], Callable[[list], int]]:
    """``(sort_values, compare_cost)``: a stable, charged sort and the per-comparison cost of keys."""
    charge, charge_bytes = fns.charge, fns.charge_bytes
    max_len = G.MAX_COLLECTION_LEN

    def compare_cost(keys: list) -> int:
        n = len(keys)
        if not n:
            return 1
        charge(1 + n // G.ELEMENTS_PER_GAS)
        present = set(map(type, keys))
        cost = 1
        if Fixed in present:
            cost = _FIXED_COMPARE * 2
        if not CONTAINERS.isdisjoint(present):
            cost += sum(walk(k) for k in keys if type(k) in CONTAINERS) // n
        if str in present or bytes in present:
            cost += sum(len(k) for k in keys if type(k) in (str, bytes)) // (n * SCAN_BYTES_PER_GAS)
        return cost

    def sort_values(items: object, key: object = None, reverse: object = False) -> list:
        charge(2 * G.BUILTIN_CALL)
        n = _size(items)
        if n > max_len:
            raise LimitExceeded(f"cannot sort more than {max_len} elements")
        charge_bytes(element_bytes(items) * n)
        values = list(items)  # type: ignore[call-overload]
        if key is None:
            keys = values
        elif callable(key):
            keys = [key(v) for v in values]
        else:
            raise ContractError("sort key must be a function")
        per = compare_cost(keys)
        charge(1 + n * max(1, (n - 1).bit_length()) * G.COMPARE * per)
        if key is None:
            return sorted(values, reverse=bool(reverse))
        order = sorted(range(n), key=keys.__getitem__, reverse=bool(reverse))
        return [values[i] for i in order]

    return sort_values, compare_cost


def make_methods(
    fns: MeterFunctions,
    walk: Callable[[object], int],
    check_key: Callable[[object], None],
    tracker: DeletionTracker,
) -> dict[str, Callable[..., object]]:
    """Dispatchers keyed ``_mc_<name>`` for every name in :data:`METHOD_NAMES`."""
    charge, charge_bytes = fns.charge, fns.charge_bytes
    per_gas = G.ELEMENTS_PER_GAS
    max_str, max_bytes, max_len = G.MAX_STR_LEN, G.MAX_BYTES_LEN, G.MAX_COLLECTION_LEN
    sort_values, _ = make_sorter(fns, walk)

    def scan(n: int) -> None:
        charge(1 + n // SCAN_BYTES_PER_GAS)

    def text_limit(t: type, n: int) -> None:
        if n > (max_str if t is str else max_bytes):
            raise LimitExceeded(f"{type_name(t())} longer than {max_str if t is str else max_bytes}")

    def element_cost(x: object) -> int:
        t = type(x)
        if t in CONTAINERS:
            return walk(x)
        if t is str or t is bytes:
            return 1 + len(x) // SCAN_BYTES_PER_GAS  # type: ignore[arg-type]
        return _FIXED_COMPARE if t is Fixed else 1

    # ------------------------------------------------------------ shared by str and bytes

    def m_startswith(s, prefix, *bounds):
        scan(sum(map(len, prefix)) if type(prefix) is tuple else len(prefix))
        return s.startswith(prefix, *bounds)

    def m_endswith(s, suffix, *bounds):
        scan(sum(map(len, suffix)) if type(suffix) is tuple else len(suffix))
        return s.endswith(suffix, *bounds)

    def m_find(s, sub, *bounds):
        scan(len(s) + len(sub))
        return s.find(sub, *bounds)

    def m_rfind(s, sub, *bounds):
        scan(len(s) + len(sub))
        return s.rfind(sub, *bounds)

    def m_text_index(s, sub, *bounds):
        scan(len(s) + len(sub))
        return s.index(sub, *bounds)

    def m_text_count(s, sub, *bounds):
        scan(len(s) + len(sub))
        return s.count(sub, *bounds)

    def m_replace(s, old, new, count=-1):
        scan(len(s))
        occurrences = s.count(old)
        if type(count) is not int:
            raise ContractError("replace count must be an int")
        if count >= 0:
            occurrences = min(occurrences, count)
        n = len(s) + occurrences * (len(new) - len(old))
        text_limit(type(s), n)
        charge_bytes(n)
        return s.replace(old, new, count)

    def m_split(s, sep=None, maxsplit=-1):
        if sep is None and type(s) is str and not s.isascii():
            raise ContractError("split() without a separator needs ASCII text; pass the separator")
        if type(maxsplit) is not int:
            raise ContractError("maxsplit must be an int")
        charge_bytes(len(s))
        limit = max_len - 1 if maxsplit < 0 else min(maxsplit, max_len - 1)
        parts = s.split(sep, limit)
        if maxsplit < 0 and len(parts) == max_len and (sep is None or sep in parts[-1]):
            raise LimitExceeded(f"split would produce more than {max_len - 1} parts")
        charge(len(parts))
        return parts

    def m_rsplit(s, sep=None, maxsplit=-1):
        if sep is None and not s.isascii():
            raise ContractError("rsplit() without a separator needs ASCII text; pass the separator")
        if type(maxsplit) is not int:
            raise ContractError("maxsplit must be an int")
        charge_bytes(len(s))
        limit = max_len - 1 if maxsplit < 0 else min(maxsplit, max_len - 1)
        parts = s.rsplit(sep, limit)
        if maxsplit < 0 and len(parts) == max_len and (sep is None or sep in parts[0]):
            raise LimitExceeded(f"rsplit would produce more than {max_len - 1} parts")
        charge(len(parts))
        return parts

    def m_join(s, items):
        n = _size(items)
        charge(1 + n // per_gas)
        total = sum(map(len, items)) + len(s) * max(n - 1, 0)
        text_limit(type(s), total)
        charge_bytes(total)
        return s.join(items)

    def m_strip_like(name: str):
        def strip(s, chars=None):
            charge_bytes(len(s))
            if chars is None and type(s) is str and not s.isascii():
                chars = _ASCII_WS
            return getattr(type(s), name)(s, chars)

        return strip

    def m_removeprefix(s, prefix):
        charge_bytes(len(s))
        return s.removeprefix(prefix)

    def m_removesuffix(s, suffix):
        charge_bytes(len(s))
        return s.removesuffix(suffix)

    # ------------------------------------------------------------ str

    def ascii_case(name: str):
        def convert(s):
            if not s.isascii():
                raise ContractError(f"{name}() works on ASCII text only")
            charge_bytes(len(s))
            return getattr(str, name)(s)

        return convert

    def ascii_predicate(name: str):
        def predicate(s):
            scan(len(s))
            return s.isascii() and getattr(str, name)(s)

        return predicate

    def m_isascii(s):
        scan(len(s))
        return s.isascii()

    def m_encode(s, encoding="utf-8"):
        if encoding not in ("utf-8", "utf8"):
            raise ContractError("only utf-8 encoding is available")
        charge_bytes(len(s))
        out = s.encode("utf-8")
        text_limit(bytes, len(out))
        return out

    def m_partition(s, sep):
        charge_bytes(len(s))
        return s.partition(sep)

    def m_rpartition(s, sep):
        charge_bytes(len(s))
        return s.rpartition(sep)

    def padding(name: str):
        def pad(s, width, *fill):
            if type(width) is not int:
                raise ContractError(f"{name} width must be an int")
            text_limit(str, width)
            charge_bytes(max(width, len(s)))
            return getattr(str, name)(s, width, *fill)

        return pad

    # ------------------------------------------------------------ bytes

    def m_hex(b):
        text_limit(str, 2 * len(b))
        charge_bytes(2 * len(b))
        return b.hex()

    def m_decode(b, encoding="utf-8"):
        if encoding not in ("utf-8", "utf8"):
            raise ContractError("only utf-8 decoding is available")
        charge_bytes(len(b))
        return b.decode("utf-8")

    def m_bytes_split(b, sep=None, maxsplit=-1):
        return m_split(b, sep, maxsplit)

    # ------------------------------------------------------------ list

    def m_append(lst, x):
        if len(lst) >= max_len:
            raise LimitExceeded(f"list longer than {max_len} elements")
        charge_bytes(8, 0)
        lst.append(x)

    def m_extend(lst, items):
        n = _size(items)
        if len(lst) + n > max_len:
            raise LimitExceeded(f"list longer than {max_len} elements")
        charge_bytes(8 * n)
        lst.extend(items)

    def m_insert(lst, index, x):
        if len(lst) >= max_len:
            raise LimitExceeded(f"list longer than {max_len} elements")
        charge(1 + len(lst) // per_gas)
        lst.insert(index, x)

    def m_list_pop(lst, *index):
        charge(1 + (len(lst) // per_gas if index else 0))
        return lst.pop(*index)

    def m_remove(lst, x):
        charge(1 + len(lst) * element_cost(x) // per_gas)
        lst.remove(x)

    def m_seq_index(seq, x, *bounds):
        charge(1 + len(seq) * element_cost(x) // per_gas)
        return seq.index(x, *bounds)

    def m_seq_count(seq, x):
        charge(1 + len(seq) * element_cost(x) // per_gas)
        return seq.count(x)

    def m_reverse(lst):
        charge(1 + len(lst) // per_gas)
        lst.reverse()

    def m_sort(lst, key=None, reverse=False):
        lst[:] = sort_values(lst, key, reverse)

    def m_list_copy(lst):
        charge_bytes(8 * len(lst))
        return lst.copy()

    def m_list_clear(lst):
        charge(1 + len(lst) // per_gas)
        lst.clear()

    # ------------------------------------------------------------ dict

    def key_ok(k):
        if type(k) is not str:
            check_key(k)

    def m_get(d, k, default=None):
        key_ok(k)
        return d.get(k, default)

    def m_keys(d):
        return d.keys()

    def m_values(d):
        return d.values()

    def m_items(d):
        return d.items()

    def m_dict_pop(d, k, *default):
        key_ok(k)
        if k in d:
            value = d.pop(k)
            tracker.deleted(d)
            return value
        return d.pop(k, *default)

    def m_popitem(d):
        item = d.popitem()
        tracker.deleted(d)
        return item

    def m_setdefault(d, k, default=None):
        key_ok(k)
        if k not in d and len(d) >= max_len:
            raise LimitExceeded(f"dict longer than {max_len} elements")
        return d.setdefault(k, default)

    def m_update(d, other=None, **kw):
        if other is not None:
            if type(other) is dict:
                if len(d) + len(other) > max_len:
                    raise LimitExceeded(f"dict longer than {max_len} elements")
                charge_bytes(16 * len(other))
                d.update(other)
            else:
                n = _size(other)
                charge(1 + 4 * n)
                for pair in other:
                    k, v = pair
                    key_ok(k)
                    if k not in d and len(d) >= max_len:
                        raise LimitExceeded(f"dict longer than {max_len} elements")
                    d[k] = v
        if kw:
            if len(d) + len(kw) > max_len:
                raise LimitExceeded(f"dict longer than {max_len} elements")
            charge_bytes(16 * len(kw))
            d.update(kw)

    def m_dict_copy(d):
        charge_bytes(16 * len(d))
        return d.copy()

    def m_dict_clear(d):
        charge(1 + len(d) // per_gas)
        d.clear()

    # ------------------------------------------------------------ int

    def m_bit_length(n):
        return n.bit_length()

    def m_to_bytes(n, length=1, byteorder="big", *, signed=False):
        if type(length) is not int or not 0 <= length <= G.MAX_INT_BITS // 8 + 1:
            raise ContractError(f"to_bytes length must be an int from 0 to {G.MAX_INT_BITS // 8 + 1}")
        if byteorder not in ("big", "little"):
            raise ContractError("byteorder must be 'big' or 'little'")
        charge_bytes(length)
        return n.to_bytes(length, byteorder, signed=bool(signed))

    # ------------------------------------------------------------ Fixed

    def fixed_charge(f: Fixed, other: object = 0) -> None:
        units = other.units if type(other) is Fixed else other
        if type(units) not in (int, bool):
            units = 0
        charge(G.FIXED_OP + ((f.units.bit_length() >> 6) + 1) * ((int(units).bit_length() >> 6) + 1))

    def m_rescale(f, scale, rounding=None):
        fixed_charge(f)
        return f.rescale(scale, rounding)

    def m_to_int(f, rounding=None):
        fixed_charge(f)
        return f.to_int(rounding)

    def m_div(f, other, scale, rounding):
        fixed_charge(f, other)
        return f.div(other, scale, rounding)

    def m_mul(f, other, scale, rounding):
        fixed_charge(f, other)
        return f.mul(other, scale, rounding)

    def m_pow(f, exponent, scale, rounding):
        if type(exponent) is int and 0 <= exponent <= 256:
            limbs = (f.units.bit_length() * exponent >> 6) + 1
            if f.units.bit_length() * exponent <= G.MAX_INT_BITS + 1:
                charge(G.FIXED_OP + limbs * limbs)
        return f.pow(exponent, scale, rounding)

    tables: dict[str, dict[type, Callable[..., object]]] = {
        "upper": {str: ascii_case("upper")},
        "lower": {str: ascii_case("lower")},
        "strip": {str: m_strip_like("strip"), bytes: m_strip_like("strip")},
        "lstrip": {str: m_strip_like("lstrip")},
        "rstrip": {str: m_strip_like("rstrip")},
        "split": {str: m_split, bytes: m_bytes_split},
        "rsplit": {str: m_rsplit},
        "join": {str: m_join, bytes: m_join},
        "startswith": {str: m_startswith, bytes: m_startswith},
        "endswith": {str: m_endswith, bytes: m_endswith},
        "find": {str: m_find, bytes: m_find},
        "rfind": {str: m_rfind},
        "index": {str: m_text_index, bytes: m_text_index, list: m_seq_index, tuple: m_seq_index},
        "count": {str: m_text_count, bytes: m_text_count, list: m_seq_count, tuple: m_seq_count},
        "replace": {str: m_replace, bytes: m_replace},
        "encode": {str: m_encode},
        "isdigit": {str: ascii_predicate("isdigit")},
        "isalpha": {str: ascii_predicate("isalpha")},
        "isalnum": {str: ascii_predicate("isalnum")},
        "isspace": {str: ascii_predicate("isspace")},
        "isupper": {str: ascii_predicate("isupper")},
        "islower": {str: ascii_predicate("islower")},
        "isascii": {str: m_isascii},
        "removeprefix": {str: m_removeprefix, bytes: m_removeprefix},
        "removesuffix": {str: m_removesuffix, bytes: m_removesuffix},
        "partition": {str: m_partition},
        "rpartition": {str: m_rpartition},
        "zfill": {str: padding("zfill")},
        "ljust": {str: padding("ljust")},
        "rjust": {str: padding("rjust")},
        "hex": {bytes: m_hex},
        "decode": {bytes: m_decode},
        "append": {list: m_append},
        "extend": {list: m_extend},
        "insert": {list: m_insert},
        "pop": {list: m_list_pop, dict: m_dict_pop},
        "remove": {list: m_remove},
        "reverse": {list: m_reverse},
        "sort": {list: m_sort},
        "copy": {list: m_list_copy, dict: m_dict_copy},
        "clear": {list: m_list_clear, dict: m_dict_clear},
        "get": {dict: m_get},
        "keys": {dict: m_keys},
        "values": {dict: m_values},
        "items": {dict: m_items},
        "setdefault": {dict: m_setdefault},
        "update": {dict: m_update},
        "popitem": {dict: m_popitem},
        "bit_length": {int: m_bit_length},
        "to_bytes": {int: m_to_bytes},
        "rescale": {Fixed: m_rescale},
        "to_int": {Fixed: m_to_int},
        "div": {Fixed: m_div},
        "mul": {Fixed: m_mul},
        "pow": {Fixed: m_pow},
    }
    assert set(tables) == METHOD_NAMES, set(tables) ^ METHOD_NAMES

    def dispatcher(name: str, table: dict[type, Callable[..., object]]) -> Callable[..., object]:
        get = table.get

        def call_method(obj, *args, **kwargs):
            impl = get(type(obj))
            if impl is None:
                raise ContractError(f"{type_name(obj)} has no method {name}()")
            return impl(obj, *args, **kwargs)

        call_method.__name__ = name
        return call_method

    helpers: dict[str, Callable[..., object]] = {f"_mc_{name}": dispatcher(name, table) for name, table in tables.items()}

    def attribute(name: str) -> Callable[[object], object]:
        def read(obj):
            if type(obj) is Fixed:
                return getattr(obj, name)
            raise ContractError(f"{type_name(obj)} has no attribute {name}")

        return read

    for name in ATTRIBUTE_NAMES:
        helpers[f"_at_{name}"] = attribute(name)
    return helpers
