"""Operator, comparison and subscript helpers that instrumented contract code calls.

The instrumenter (``instrument.py``) replaces ``a + b`` with ``_add(a, b)``,
``a == b`` with ``_eq(a, b)``, ``d[k]`` with ``_getitem(d, k)`` and so on. Each helper
takes the common case (two machine-sized integers, a str or int key) in a couple of
type checks and otherwise:

* checks operand sizes and charges by them **before** computing (big integers per
  64-bit limb, strings, bytes and sequences per byte or element);
* refuses results beyond the limits (``MAX_INT_BITS``, ``MAX_STR_LEN``,
  ``MAX_COLLECTION_LEN``...) before allocating them: ``10**(10**9)``, ``1 << 10**9``
  and ``'x' * 10**9`` stop with ``limit`` without doing the work;
* walks nested operands of comparisons and checks dict keys (``values.py``), so no
  C recursion can exceed what gas paid for;
* refuses operations that would leave the value model: ``**`` with a negative
  exponent (a float), ``%`` on text (printf formatting), set operations of dict views
  (sets iterate in hash order).

A few helpers stay even with metering off, because they protect semantics rather
than count work: ``_pow``, ``_mod``, ``_lshift`` and the f-string, method and
attribute helpers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError, LimitExceeded, contract_failure
from contracts.runtime.fixed import Fixed
from contracts.runtime.meter import Meter, MeterFunctions
from contracts.runtime.text import fstring, render
from contracts.runtime.values import (
    CONTAINERS,
    DICT_VIEWS,
    SCAN_BYTES_PER_GAS,
    type_name,
    unsupported,
)

__all__ = ["DeletionTracker", "make_operator_helpers"]

_MAXB = G.MAX_INT_BITS
_INT_LIMIT = 1 << _MAXB
_SMALL = 1 << 62  # sums of two such ints stay machine-sized
_HALF = 1 << 31  # products of two such ints stay machine-sized
_NoneType = type(None)
_FAST_CMP = frozenset({int, bool, _NoneType, Fixed, range})


def _limbs(x: int) -> int:
    return (x.bit_length() >> 6) + 1


def _int_result(r: int) -> int:
    if -_INT_LIMIT < r < _INT_LIMIT:
        return r
    raise LimitExceeded(f"integer result exceeds {_MAXB} bits")


class DeletionTracker:
    """Compacts dicts that had many keys deleted.

    CPython leaves a deleted dict entry as a placeholder until the dict next grows,
    and iteration scans placeholders too: a dict that held 100,000 keys and now
    holds one still costs 100,000 steps per ``for`` loop. The tracker counts
    deletions per dict (holding the dict, so its identity cannot be reused within
    the transaction) and rebuilds a dict once its deletions outnumber its size, paid
    by the deleting transaction: amortised, a deletion costs a constant.
    """

    __slots__ = ("counts", "charge")

    def __init__(self, charge: Callable[[int], None]) -> None:
        self.counts: dict[int, list] = {}
        self.charge = charge

    def reset(self) -> None:
        self.counts.clear()

    def deleted(self, d: dict) -> None:
        entry = self.counts.get(id(d))
        if entry is None:
            entry = self.counts[id(d)] = [d, 0]
        entry[1] += 1
        if entry[1] > len(d) + 32:
            self.charge(1 + len(d) // G.ELEMENTS_PER_GAS)
            items = list(d.items())
            d.clear()
            d.update(items)
            entry[1] = 0


def make_operator_helpers(
    meter: Meter,
    fns: MeterFunctions,
    walk: Callable[[object], int],
    check_key: Callable[[object], None],
    tracker: DeletionTracker,
) -> dict[str, object]:
    """The helpers, keyed by the global names the instrumenter uses."""
    charge = fns.charge
    charge_bytes = fns.charge_bytes
    per_gas = G.ELEMENTS_PER_GAS
    max_str, max_bytes, max_len = G.MAX_STR_LEN, G.MAX_BYTES_LEN, G.MAX_COLLECTION_LEN
    containers = CONTAINERS
    compare_element = G.COMPARE_ELEMENT

    def seq_size_ok(t: type, n: int) -> int:
        """Bytes (approximately) of a new sequence of type t with n elements; refuses oversize."""
        if t is str:
            if n > max_str:
                raise LimitExceeded(f"string longer than {max_str} characters")
            return n
        if t is bytes:
            if n > max_bytes:
                raise LimitExceeded(f"bytes longer than {max_bytes}")
            return n
        if n > max_len:
            raise LimitExceeded(f"{t.__name__} longer than {max_len} elements")
        return 8 * n

    def fixed_cost(a: object, b: object) -> None:
        ua = a.units if type(a) is Fixed else a  # type: ignore[union-attr]
        ub = b.units if type(b) is Fixed else b  # type: ignore[union-attr]
        if type(ua) not in (int, bool) or type(ub) not in (int, bool):
            charge(G.FIXED_OP)
            return
        charge(G.FIXED_OP + _limbs(ua) * _limbs(ub))

    # ------------------------------------------------------------ arithmetic

    def add_slow(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        if (ta is int or ta is bool) and (tb is int or tb is bool):
            charge(_limbs(a) + _limbs(b))  # type: ignore[arg-type]
            return _int_result(a + b)  # type: ignore[operator]
        if ta is Fixed or tb is Fixed:
            if ta not in (int, bool, Fixed) or tb not in (int, bool, Fixed):
                raise unsupported("+", a, b)
            fixed_cost(a, b)
            return a + b  # type: ignore[operator]
        if ta is tb and (ta is str or ta is bytes or ta is list or ta is tuple):
            charge_bytes(seq_size_ok(ta, len(a) + len(b)))  # type: ignore[arg-type]
            return a + b  # type: ignore[operator]
        raise unsupported("+", a, b)

    def add(a: object, b: object) -> object:
        if type(a) is int and type(b) is int and -_SMALL < a < _SMALL and -_SMALL < b < _SMALL:  # type: ignore[operator]
            return a + b  # type: ignore[operator]
        return add_slow(a, b)

    def sub(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        if ta is int and tb is int and -_SMALL < a < _SMALL and -_SMALL < b < _SMALL:  # type: ignore[operator]
            return a - b  # type: ignore[operator]
        if (ta is int or ta is bool) and (tb is int or tb is bool):
            charge(_limbs(a) + _limbs(b))  # type: ignore[arg-type]
            return _int_result(a - b)  # type: ignore[operator]
        if (ta is Fixed or tb is Fixed) and ta in (int, bool, Fixed) and tb in (int, bool, Fixed):
            fixed_cost(a, b)
            return a - b  # type: ignore[operator]
        raise unsupported("-", a, b)

    def repeat(seq: object, count: object) -> object:
        if count <= 0:  # type: ignore[operator]
            return seq * 0  # type: ignore[operator]
        t = type(seq)
        n = len(seq) * count  # type: ignore[arg-type,operator]
        charge_bytes(seq_size_ok(t, n))
        return seq * count  # type: ignore[operator]

    def mul_slow(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        a_int = ta is int or ta is bool
        b_int = tb is int or tb is bool
        if a_int and b_int:
            if a and b and a.bit_length() + b.bit_length() - 1 > _MAXB:  # type: ignore[union-attr]
                raise LimitExceeded(f"integer result exceeds {_MAXB} bits")
            charge(_limbs(a) * _limbs(b))  # type: ignore[arg-type]
            return _int_result(a * b)  # type: ignore[operator]
        if b_int and ta in (str, bytes, list, tuple):
            return repeat(a, b)
        if a_int and tb in (str, bytes, list, tuple):
            return repeat(b, a)
        if (ta is Fixed or tb is Fixed) and ta in (int, bool, Fixed) and tb in (int, bool, Fixed):
            fixed_cost(a, b)
            return a * b  # type: ignore[operator]
        raise unsupported("*", a, b)

    def mul(a: object, b: object) -> object:
        if type(a) is int and type(b) is int and -_HALF < a < _HALF and -_HALF < b < _HALF:  # type: ignore[operator]
            return a * b  # type: ignore[operator]
        return mul_slow(a, b)

    def int_division(symbol: str, op: Callable[[int, int], int]) -> Callable[[object, object], object]:
        def divide(a: object, b: object) -> object:
            ta, tb = type(a), type(b)
            if ta is int and tb is int and -_SMALL < a < _SMALL and -_SMALL < b < _SMALL:  # type: ignore[operator]
                return op(a, b)  # type: ignore[arg-type]
            if (ta is int or ta is bool) and (tb is int or tb is bool):
                charge(_limbs(a) * _limbs(b))  # type: ignore[arg-type]
                return op(a, b)  # type: ignore[arg-type]
            if symbol == "%" and (ta is str or ta is bytes):
                raise ContractError("the % operator does not format text; use an f-string such as f'{amount} Wh'")
            if ta is Fixed or tb is Fixed:
                raise ContractError(f"Fixed has no {symbol}; use a.div(b, scale, rounding) or a.to_int(rounding)")
            raise unsupported(symbol, a, b)

        return divide

    floordiv = int_division("//", operator.floordiv)
    mod = int_division("%", operator.mod)

    def power(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        if not ((ta is int or ta is bool) and (tb is int or tb is bool)):
            if ta is Fixed:
                raise ContractError("Fixed has no **; use x.pow(n, scale, rounding)")
            raise unsupported("**", a, b)
        if b < 0:  # type: ignore[operator]
            raise ContractError("a negative exponent would make a fraction; use Fixed and div(...)")
        magnitude = abs(a)  # type: ignore[arg-type]
        if magnitude <= 1 or b <= 1:  # type: ignore[operator]
            charge(1 + _limbs(b))  # type: ignore[arg-type]
            return a**b  # type: ignore[operator]
        bits = magnitude.bit_length()
        if (bits - 1) * b + 1 > _MAXB:  # type: ignore[operator]
            raise LimitExceeded(f"integer result exceeds {_MAXB} bits")
        limbs = (bits * b >> 6) + 1  # type: ignore[operator]
        charge(limbs * limbs)
        return _int_result(a**b)  # type: ignore[operator]

    def lshift(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        if not ((ta is int or ta is bool) and (tb is int or tb is bool)):
            raise unsupported("<<", a, b)
        if b < 0:  # type: ignore[operator]
            raise ContractError("negative shift count")
        if not a:
            return 0
        if a.bit_length() + b > _MAXB:  # type: ignore[union-attr,operator]
            raise LimitExceeded(f"integer result exceeds {_MAXB} bits")
        charge(_limbs(a) + (b >> 6))  # type: ignore[arg-type,operator]
        return a << b  # type: ignore[operator]

    def rshift(a: object, b: object) -> object:
        ta, tb = type(a), type(b)
        if not ((ta is int or ta is bool) and (tb is int or tb is bool)):
            raise unsupported(">>", a, b)
        if b < 0:  # type: ignore[operator]
            raise ContractError("negative shift count")
        charge(_limbs(a))  # type: ignore[arg-type]
        if b > a.bit_length():  # type: ignore[union-attr,operator]
            return 0 if a >= 0 else -1  # type: ignore[operator]
        return a >> b  # type: ignore[operator]

    def bitwise(symbol: str, op: Callable[[object, object], object]) -> Callable[[object, object], object]:
        def apply(a: object, b: object) -> object:
            ta, tb = type(a), type(b)
            if (ta is int or ta is bool) and (tb is int or tb is bool):
                charge(_limbs(a) + _limbs(b) - 2)  # type: ignore[arg-type]
                return op(a, b)
            if symbol == "|" and ta is dict and tb is dict:
                n = len(a) + len(b)  # type: ignore[arg-type]
                if n > max_len:
                    raise LimitExceeded(f"dict longer than {max_len} elements")
                charge_bytes(16 * n)
                return op(a, b)
            raise unsupported(symbol, a, b)

        return apply

    def in_place_add(a: object, b: object) -> object:
        if type(a) is int and type(b) is int and -_SMALL < a < _SMALL and -_SMALL < b < _SMALL:  # type: ignore[operator]
            return a + b  # type: ignore[operator]
        # `xs += ys` extends the list in place, exactly as Python does.
        if type(a) is list and type(b) is list:
            charge_bytes(seq_size_ok(list, len(a) + len(b)) - 8 * len(a))
            a.extend(b)
            return a
        return add(a, b)

    def in_place_mul(a: object, b: object) -> object:
        if type(a) is list and type(b) in (int, bool):
            if b <= 0:  # type: ignore[operator]
                a.clear()
                return a
            charge_bytes(seq_size_ok(list, len(a) * b))  # type: ignore[operator]
            a *= b  # type: ignore[operator]
            return a
        return mul(a, b)

    def in_place_or(a: object, b: object) -> object:
        if type(a) is dict and type(b) is dict:
            n = len(a) + len(b)
            if n > max_len:
                raise LimitExceeded(f"dict longer than {max_len} elements")
            charge_bytes(16 * len(b))
            a.update(b)
            return a
        return bit_or(a, b)

    bit_or = bitwise("|", operator.or_)

    # ------------------------------------------------------------ comparison

    def comparison(op: Callable[[object, object], bool]) -> Callable[[object, object], bool]:
        def compare(a: object, b: object) -> bool:
            ta = type(a)
            if ta in _FAST_CMP:
                if ta is Fixed or type(b) is Fixed:
                    charge(G.FIXED_OP)
                return op(a, b)
            if ta is str or ta is bytes:
                tb = type(b)
                if tb is ta:
                    charge(1 + min(len(a), len(b)) // SCAN_BYTES_PER_GAS)  # type: ignore[arg-type]
                elif tb is str or tb is bytes:
                    # str never equals bytes; deciding it here keeps -b/-bb interpreter flags out of consensus
                    if op is operator.eq:
                        return False
                    if op is operator.ne:
                        return True
                return op(a, b)
            if ta in containers:
                charge(walk(a) * compare_element)
            return op(a, b)

        return compare

    def contains(x: object, c: object) -> bool:
        tc = type(c)
        if tc is dict or tc is DICT_VIEWS[0]:
            if type(x) is not str:
                check_key(x)
            return x in c  # type: ignore[operator]
        if tc is str or tc is bytes:
            if type(x) is not tc:
                raise ContractError(f"'in <{type_name(c)}>' needs a {type_name(c)} on the left, not {type_name(x)}")
            charge(1 + (len(c) + len(x)) // SCAN_BYTES_PER_GAS)  # type: ignore[arg-type]
            return x in c  # type: ignore[operator]
        if tc is DICT_VIEWS[2]:
            # (key, value) in d.items() hashes the key: only a valid key can be present
            if type(x) is not tuple or len(x) != 2:
                return False
            check_key(x[0])
            tx = type(x[1])
            charge(1 + (walk(x[1]) if tx in containers else 1) * compare_element)
            return x in c  # type: ignore[operator]
        if tc is list or tc is tuple or tc is DICT_VIEWS[1]:
            tx = type(x)
            if tx in containers:
                cost = walk(x)
            elif tx is str or tx is bytes:
                cost = 1 + len(x) // SCAN_BYTES_PER_GAS  # type: ignore[arg-type]
            else:
                cost = 1
            charge(1 + len(c) * cost // per_gas + (len(c) if tx is Fixed else 0) * compare_element * 8)  # type: ignore[arg-type]
            return x in c  # type: ignore[operator]
        if tc is range:
            tx = type(x)
            if tx is int or tx is bool:
                return x in c  # type: ignore[operator]
            if tx is Fixed and x.units % (10**x.scale) == 0:  # type: ignore[union-attr]
                return x.to_int() in c  # type: ignore[union-attr,operator]
            return False
        raise ContractError(f"'in' needs a collection or text on the right, not {type_name(c)}")

    def not_contains(x: object, c: object) -> bool:
        return not contains(x, c)

    # ------------------------------------------------------------ subscripts

    def getitem(o: object, k: object) -> object:
        tk = type(k)
        if tk is int or tk is str:
            return o[k]  # type: ignore[index]
        if type(o) is dict:
            check_key(k)
        elif tk is not bool:
            raise ContractError(f"{type_name(o)} indices are integers, not {type_name(k)}")
        return o[k]  # type: ignore[index]

    def getslice(o: object, lower: object, upper: object, step: object) -> object:
        t = type(o)
        if t is range:
            return o[lower:upper:step]  # type: ignore[index,misc]
        if t not in (list, tuple, str, bytes):
            raise ContractError(f"{type_name(o)} cannot be sliced")
        s = slice(lower, upper, step)
        n = len(range(*s.indices(len(o))))  # type: ignore[arg-type]
        charge_bytes(n if t is str or t is bytes else 8 * n)
        return o[s]  # type: ignore[index]

    def setitem(o: object, k: object, v: object) -> None:
        t = type(o)
        if t is list:
            if type(k) is not int and type(k) is not bool:
                raise ContractError(f"list indices are integers, not {type_name(k)}")
            o[k] = v  # type: ignore[index]
            return
        if t is dict:
            if type(k) is not str:
                check_key(k)
            if len(o) >= max_len and k not in o:  # type: ignore[arg-type,operator]
                raise LimitExceeded(f"dict longer than {max_len} elements")
            o[k] = v  # type: ignore[index]
            return
        raise ContractError(f"{type_name(o)} does not support item assignment")

    def delitem(o: object, k: object) -> None:
        t = type(o)
        if t is list:
            if type(k) is not int and type(k) is not bool:
                raise ContractError(f"list indices are integers, not {type_name(k)}")
            charge(1 + len(o) // per_gas)  # type: ignore[arg-type]
            del o[k]  # type: ignore[attr-defined]
            return
        if t is dict:
            check_key(k)
            del o[k]  # type: ignore[attr-defined]
            tracker.deleted(o)  # type: ignore[arg-type]
            return
        raise ContractError(f"{type_name(o)} does not support item deletion")

    def key(k: object) -> object:
        # keys of dict displays and dict comprehensions
        if type(k) is not str:
            check_key(k)
        return k

    def collection_result(value: object) -> object:
        # Comprehensions are charged per iteration; this bounds the list they build.
        if len(value) > max_len:  # type: ignore[arg-type]
            raise LimitExceeded(f"{type_name(value)} longer than {max_len} elements")
        return value

    def format_string(*parts: object) -> str:
        return fstring(parts, charge)

    def fail(message: object = "failed") -> None:
        raise contract_failure(message if type(message) is str else render(message, charge))  # type: ignore[arg-type]

    def invert(a: object) -> object:
        if type(a) is bool:
            return ~int(a)
        if type(a) is int:
            return ~a
        raise unsupported("~", a)

    return {
        "_m": meter,
        "_g": fns.charge,
        "_gi": fns.charge_true,
        "_enter": fns.enter,
        "_add": add,
        "_sub": sub,
        "_mul": mul,
        "_floordiv": floordiv,
        "_mod": mod,
        "_pow": power,
        "_lshift": lshift,
        "_rshift": rshift,
        "_bitand": bitwise("&", operator.and_),
        "_bitor": bit_or,
        "_bitxor": bitwise("^", operator.xor),
        "_invert": invert,
        "_iadd": in_place_add,
        "_imul": in_place_mul,
        "_ior": in_place_or,
        "_eq": comparison(operator.eq),
        "_ne": comparison(operator.ne),
        "_lt": comparison(operator.lt),
        "_le": comparison(operator.le),
        "_gt": comparison(operator.gt),
        "_ge": comparison(operator.ge),
        "_in": contains,
        "_notin": not_contains,
        "_getitem": getitem,
        "_getslice": getslice,
        "_setitem": setitem,
        "_delitem": delitem,
        "_cl": collection_result,
        "_key": key,
        "_fstr": format_string,
        "_fail": fail,
    }
