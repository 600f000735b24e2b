"""Source checks that make parsing itself identical on CPython 3.11, 3.12 and 3.13.

A deployment is accepted or refused by every validator alike only if every Python
version parses the source alike. Three things make versions disagree:

* PEP 701 (3.12) lets f-strings reuse their own quote, hold backslashes, comments
  and line breaks in replacement fields, and nest without limit: 3.11 refuses those;
* identifiers are checked against the Unicode database, which grows with each
  version, and so do the names ``\\N{...}`` escapes accept;
* new statements (``type X = ...``, ``def f[T]()``) exist only in newer versions.

So before the checker's rules run: control characters other than tab and newline are
refused up front (rule ``source-characters``, with a position), and after parsing
anything a version might parse differently is refused as a syntax error, exactly as
3.11's parser refuses it: non-ASCII characters outside string literals and comments,
``\\N{`` escapes, 3.12-only syntax and f-strings outside 3.11's grammar. Syntax errors
carry no position, because CPython versions place them differently.
"""

from __future__ import annotations

import ast
import warnings

from contracts.runtime import gas as G
from contracts.runtime.errors import ContractError

__all__ = ["bad_character", "parse", "portable", "syntax_error"]

_QUOTES = "'\""
_PREFIX_CHARS = frozenset("rRbBuUfF")


def bad_character(source: str) -> tuple[int, int] | None:
    """(line, column) of the first control character other than tab and newline, if any."""
    for line_no, line in enumerate(source.split("\n"), 1):
        for col, ch in enumerate(line):
            code = ord(ch)
            if (code < 0x20 and ch != "\t") or code == 0x7F or ch == "\ufeff":
                return line_no, len(line[:col].encode("utf-8"))
    return None


def _string_spans(tree: ast.Module) -> list[tuple[int, int, int, int]]:
    """Positions of every string literal (outermost f-strings as a whole)."""
    spans = []
    inside_fstring: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for inner in ast.walk(node):
                if inner is not node:
                    inside_fstring.add(id(inner))
    for node in ast.walk(tree):
        if id(node) in inside_fstring:
            continue
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))):
            spans.append((node.lineno, node.col_offset, node.end_lineno or node.lineno, node.end_col_offset or 0))
    return spans


def _inside(i: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= i < b for a, b in ranges)


def _non_ascii_outside_strings(source: str, tree: ast.Module) -> bool:
    lines = source.split("\n")
    covered: dict[int, list[tuple[int, int]]] = {}
    for line, col, end_line, end_col in _string_spans(tree):
        for n in range(line, end_line + 1):
            start = col if n == line else 0
            stop = end_col if n == end_line else 1 << 30
            covered.setdefault(n, []).append((start, stop))
    for n, text in enumerate(lines, 1):
        if text.isascii() and "#" not in text:
            continue
        raw = text.encode("utf-8")
        ranges = covered.get(n, [])
        comment = None
        for i, byte in enumerate(raw):
            if byte == 0x23 and not _inside(i, ranges):  # '#'
                comment = i
                break
        for i, byte in enumerate(raw):
            if byte >= 0x80 and not _inside(i, ranges) and (comment is None or i < comment):
                return True
    return False


def _fstring_ok(segment: str) -> bool:
    """True when every f-string literal in ``segment`` is inside 3.11's f-string grammar."""
    i, n = 0, len(segment)
    while i < n:
        ch = segment[i]
        if ch == "#":  # comment between implicitly concatenated literals
            while i < n and segment[i] != "\n":
                i += 1
            continue
        if ch not in _QUOTES:
            i += 1
            continue
        j = i
        while j > 0 and segment[j - 1] in _PREFIX_CHARS:
            j -= 1
        is_f = any(c in "fF" for c in segment[j:i])
        triple = segment[i : i + 3] == ch * 3
        delim = ch * 3 if triple else ch
        i += len(delim)
        depth = 0
        while i < n:
            c = segment[i]
            if depth == 0:
                if c == "\\":
                    i += 2
                    continue
                if segment.startswith(delim, i):
                    i += len(delim)
                    break
                if is_f and c == "{":
                    if segment[i + 1 : i + 2] == "{":
                        i += 2
                        continue
                    depth = 1
                i += 1
                continue
            # inside a replacement field
            if c == "\\" or c == "#" or c == ch or (c == "\n" and not triple) or ord(c) > 0x7F:
                return False
            if c in _QUOTES:
                k = i
                while k > 0 and segment[k - 1].isalnum():
                    k -= 1
                if any(p in "fF" for p in segment[k:i]):
                    return False  # nested f-strings: nesting rules differ between versions
                inner_triple = segment[i : i + 3] == c * 3
                inner = c * 3 if inner_triple else c
                end = segment.find(inner, i + len(inner))
                if end < 0:
                    return False
                i = end + len(inner)
                continue
            if c in "{[(":
                depth += 1
            elif c in "}])":
                depth -= 1
            i += 1
    return True


def portable(source: str, tree: ast.Module) -> bool:
    """True when every supported CPython version parses ``source`` into this same tree."""
    if "\\N{" in source:
        return False
    for node in ast.walk(tree):
        if type(node).__name__ in ("TypeAlias", "TypeVar", "ParamSpec", "TypeVarTuple"):
            return False
        if getattr(node, "type_params", None):
            return False
        if isinstance(node, ast.JoinedStr):
            segment = ast.get_source_segment(source, node)
            if segment is None or not _fstring_ok(segment):
                return False
    return not _non_ascii_outside_strings(source, tree)


def _structure(tree: ast.Module) -> tuple[int, int]:
    """(node count, maximum depth), computed without recursion."""
    count, deepest = 0, 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > deepest:
            deepest = depth
        if count > G.MAX_AST_NODES or deepest > G.MAX_AST_DEPTH:
            break
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return count, deepest


def syntax_error(detail: str | None = None) -> ContractError:
    return ContractError.at(None, None, "syntax", "the source is not valid contract syntax (Python 3.11)", detail=detail)


def parse(source: object) -> ast.Module:
    """Parse contract source identically on every supported Python version."""
    if type(source) is not str:
        raise ContractError.at(None, None, "syntax", "contract source must be text")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > G.MAX_SOURCE_BYTES:
        raise ContractError.at(None, None, "source-too-large", f"source is {size} bytes; the limit is {G.MAX_SOURCE_BYTES}")
    bad = bad_character(source)
    if bad is not None:
        raise ContractError.at(bad[0], bad[1], "source-characters", "only printable text, tabs and newlines are allowed in source")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise syntax_error("source is not valid UTF-8 text") from None
    try:
        with warnings.catch_warnings():
            # Warnings (invalid escapes, ...) differ by version and could be turned into
            # errors by a node's -W flags; they must never decide acceptance.
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename="<contract>", mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise syntax_error(str(exc)) from None
    count, depth = _structure(tree)
    if not portable(source, tree):
        raise syntax_error("the source uses syntax or characters that Python versions parse differently")
    if count > G.MAX_AST_NODES:
        raise ContractError.at(None, None, "too-complex", f"more than {G.MAX_AST_NODES} syntax nodes; split the contract")
    if depth > G.MAX_AST_DEPTH:
        raise ContractError.at(None, None, "too-deep", f"syntax nested deeper than {G.MAX_AST_DEPTH} levels; use intermediate variables")
    return tree
