"""Deterministic text for contract values: what ``str(x)`` and f-strings produce.

CPython's ``repr`` is not safe for a ledger: it prints memory addresses for functions,
and whether it escapes a character depends on the Unicode database, which changes
between Python versions. So the runtime renders values itself:

* ``str`` at the top level is itself; inside a container it is quoted with ``'`` and
  everything outside printable ASCII is escaped (``\\n``, ``\\xe9``, ``\\u20ac``, ...);
* ``bytes`` as ``b'...'`` (CPython's bytes repr, which uses no Unicode data);
* ``int``, ``bool``, ``None`` as Python writes them; ``Fixed`` as its decimal text;
* ``list``, ``tuple``, ``dict`` (and dict views, rendered as lists) as Python writes
  them, up to ``MAX_NESTING`` levels;
* functions as ``<function name>``, anything else as ``<object>``.

Rendering walks the value with an explicit stack (no recursion), charges gas for
every element and every piece of text before producing it, and refuses output
longer than ``MAX_STR_LEN``.
"""

from __future__ import annotations

import types
from collections.abc import Callable

from contracts.runtime import gas as G
from contracts.runtime.errors import LimitExceeded
from contracts.runtime.fixed import Fixed

__all__ = ["quote", "render", "fstring"]

_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LITERAL = -1  # stack depth marking a piece of literal text


def quote(s: str) -> str:
    """``s`` quoted with only printable ASCII inside, independent of the Unicode database."""
    if s.isascii() and s.isprintable():  # ASCII printability is fixed, whatever the version
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    out = ["'"]
    for ch in s:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append("'")
    return "".join(out)


def _int_text(n: int) -> str:
    if n.bit_length() > G.MAX_INT_BITS + 8:
        raise LimitExceeded(f"integer exceeds {G.MAX_INT_BITS} bits")
    return str(n)


def _describe(value: object) -> str:
    if isinstance(value, types.FunctionType):
        return f"<function {value.__name__}>"
    if type(value) is range:
        r = value
        return f"range({r.start}, {r.stop})" if r.step == 1 else f"range({r.start}, {r.stop}, {r.step})"
    return "<object>"


def render(value: object, charge: Callable[[int], None], top_level_str_raw: bool = True) -> str:
    """Render ``value`` as text; ``charge(n)`` is called with the gas for each step before it."""
    charge(G.BUILTIN_CALL)
    max_len = G.MAX_STR_LEN
    max_depth = G.MAX_NESTING
    per_gas = G.BYTES_PER_GAS
    walk = G.CONTAINER_VISIT
    out: list[str] = []
    size = 0
    stack: list[tuple[object, int]] = [(value, 0 if top_level_str_raw else 1)]
    while stack:
        item, depth = stack.pop()
        if depth == _LITERAL:
            piece = item  # type: ignore[assignment]
        else:
            t = type(item)
            if t is str:
                if depth == 0:
                    charge(1 + len(item) // per_gas)  # type: ignore[arg-type]
                    piece = item  # type: ignore[assignment]
                elif item.isascii() and item.isprintable():  # type: ignore[union-attr]
                    charge(1 + len(item) // per_gas)  # type: ignore[arg-type]
                    piece = quote(item)  # type: ignore[arg-type]
                else:
                    charge(1 + len(item) * G.RENDER_CHAR)  # type: ignore[arg-type]
                    piece = quote(item)  # type: ignore[arg-type]
            elif t is int:
                charge(1 + (item.bit_length() >> 4))  # type: ignore[union-attr]
                piece = _int_text(item)  # type: ignore[arg-type]
            elif t is bool or item is None:
                piece = str(item)
            elif t is bytes:
                charge(1 + len(item) // per_gas)  # type: ignore[arg-type]
                piece = repr(item)
            elif t is Fixed:
                piece = str(item)
            elif t is list or t is tuple or t is dict or t in _DICT_VIEWS:
                if depth >= max_depth:
                    raise LimitExceeded(f"value nested deeper than {max_depth} levels")
                n = len(item)  # type: ignore[arg-type]
                charge(walk + n * G.RENDER_ELEMENT)
                child = depth + 1
                if t is dict:
                    opening, closing = "{", "}"
                    elements: list[tuple[object, int]] = []
                    for k, v in item.items():  # type: ignore[union-attr]
                        elements.append((k, child))
                        elements.append((": ", _LITERAL))
                        elements.append((v, child))
                        elements.append((", ", _LITERAL))
                else:
                    opening, closing = ("(", ")") if t is tuple else ("[", "]")
                    if t is tuple and n == 1:
                        closing = ",)"
                    elements = []
                    for v in item:  # type: ignore[union-attr]
                        elements.append((v, child))
                        elements.append((", ", _LITERAL))
                if elements:
                    elements.pop()  # no separator after the last element
                stack.append((closing, _LITERAL))
                stack.extend(reversed(elements))
                piece = opening
            else:
                piece = _describe(item)
        size += len(piece)  # type: ignore[arg-type]
        if size > max_len:
            raise LimitExceeded(f"text longer than {max_len} characters")
        out.append(piece)  # type: ignore[arg-type]
    charge(size // per_gas)
    return "".join(out)


def fstring(parts: tuple, charge: Callable[[int], None]) -> str:
    """An f-string: ``parts`` alternates literal text and values, starting with text."""
    charge(G.BUILTIN_CALL + len(parts))
    pieces = []
    size = 0
    for i, part in enumerate(parts):
        piece = part if i % 2 == 0 or type(part) is str else render(part, charge)
        size += len(piece)
        if size > G.MAX_STR_LEN:
            raise LimitExceeded(f"text longer than {G.MAX_STR_LEN} characters")
        pieces.append(piece)
    charge(size // G.BYTES_PER_GAS)
    return "".join(pieces)
