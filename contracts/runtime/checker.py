"""The deploy-time checker: a contract's source against the language's allowlist.

:func:`check` parses the source and walks the whole tree. Anything not explicitly
allowed is refused with ``ContractError(line, column, rule, hint)`` (``code`` is
``rejected``); when a source breaks several rules the one nearest the top is
reported, so every validator names the same one. The rules, by name:

==========================  ===============================================================
``syntax``                  not Python 3.11 syntax (or parsed differently by 3.12/3.13)
``source-too-large``        more than ``MAX_SOURCE_BYTES``
``source-characters``       control characters other than tab and newline
``too-complex``             more than ``MAX_AST_NODES`` syntax nodes
``too-deep``                syntax nested deeper than ``MAX_AST_DEPTH``, or loops than 16
``underscore-name``         a name, attribute or keyword starting or ending with ``_``
``forbidden-builtin``       a Python builtin outside the allowlist (eval, getattr, type...)
``unknown-name``            a name defined nowhere
``reserved-name``           binding a runtime or builtin name, by any binding form
``shadows-global``          binding a module-level name inside a function
``duplicate-name``          a module-level name defined twice, or a parameter repeated
``no-import``               imports other than ``from gridledger import ...``
``no-class`` ``no-lambda`` ``no-generator`` ``no-async`` ``no-global`` ``no-try``
``no-raise`` ``no-with`` ``no-match`` ``no-set`` ``no-star``    the construct is not available
``no-del-name``             ``del`` of a name or attribute (only ``del x[k]``)
``no-slice-assign``         assigning or deleting a slice
``no-annotated-assign``     ``x: T = ...`` statements
``nested-function``         a function inside a function
``no-float``                a float or complex literal
``no-true-division``        the ``/`` operator (use ``//`` or Fixed's ``div``)
``forbidden-operator``      the ``@`` operator
``no-format``               format specs and conversions in f-strings, ``%`` on text,
                            nested f-strings
``is-operator``             ``is`` other than with None, True or False
``int-too-large``           an integer literal over ``MAX_INT_BITS``
``unknown-attribute``       an attribute outside the allowlist
``method-not-called``       a method named but not called (``f = xs.append``)
``no-attribute-store``      assigning to an attribute
``runtime-object-as-value`` ``ctx``, a storage or an event declaration used as a value
``module-statement``        a statement other than declarations, constants, functions
``mutable-global``          a module-level constant that is not an immutable expression
``declaration``             wrong arguments to ``Map``, ``Value`` or ``Event``
``declaration-in-function`` ``Map``/``Value``/``Event`` outside module level
``decorator``               a decorator other than export, view, constructor
``export-annotation``       an exported parameter without an allowed type annotation
``default-not-constant``    a parameter default that is not a literal or a constant
``constructor``             more than one constructor
``break-outside-loop``      ``break``/``continue`` outside a loop
``walrus-in-comprehension`` ``:=`` inside a comprehension
``chained-compare``         ``a < f(x) < c`` inside a comprehension's iterable
``loop-target``             a ``for`` target other than names
==========================  ===============================================================
"""

from __future__ import annotations

import ast
import warnings

from contracts.runtime import gas as G
from contracts.runtime.builtins import ALLOWED_BUILTINS
from contracts.runtime.errors import ContractError
from contracts.runtime.language import (
    ANNOTATION_NAMES,
    CTX_ATTRIBUTES,
    DECLARATION_ATTRIBUTES,
    DECLARATIONS,
    DECORATORS,
    IMPORT_MODULE,
    PYTHON_BUILTINS,
    RESERVED_NAMES,
    RUNTIME_NAMES,
    STATIC_ATTRIBUTES,
    forbidden_hint,
)
from contracts.runtime.methods import ATTRIBUTE_NAMES, METHOD_NAMES
from contracts.runtime.model import CheckedContract, EventDecl, FunctionInfo, Param, StorageDecl
from contracts.runtime.portable import parse, syntax_error

__all__ = ["CheckedContract", "EventDecl", "FunctionInfo", "Param", "StorageDecl", "check", "parse"]

MAX_LOOP_NESTING = 16  # CPython allows 20 statically nested blocks; the instrumenter adds one
MAX_EVENT_FIELDS = 16


class _Reject(Exception):
    pass


_STATEMENT_RULES: dict[type, tuple[str, str]] = {
    ast.ClassDef: ("no-class", "classes are not available; use dicts and functions"),
    ast.AsyncFunctionDef: ("no-async", "contracts are not asynchronous"),
    ast.AsyncFor: ("no-async", "contracts are not asynchronous"),
    ast.AsyncWith: ("no-async", "contracts are not asynchronous"),
    ast.Global: ("no-global", "functions cannot rebind module names; keep state in a Map or Value"),
    ast.Nonlocal: ("no-global", "there are no nested functions"),
    ast.Try: ("no-try", "errors cannot be caught: check with require(condition, message) first"),
    ast.Raise: ("no-raise", "use fail(message) or require(condition, message)"),
    ast.With: ("no-with", "with statements are not available"),
    ast.Import: ("no-import", "only `from gridledger import ...` is allowed"),
    ast.ImportFrom: ("no-import", "only `from gridledger import ...` at module level is allowed"),
    ast.AnnAssign: ("no-annotated-assign", "drop the annotation: `x = value`"),
}
if hasattr(ast, "TryStar"):
    _STATEMENT_RULES[ast.TryStar] = _STATEMENT_RULES[ast.Try]
if hasattr(ast, "Match"):
    _STATEMENT_RULES[ast.Match] = ("no-match", "use if/elif")

_EXPRESSION_RULES: dict[type, tuple[str, str]] = {
    ast.Lambda: ("no-lambda", "define a named function at module level"),
    ast.GeneratorExp: ("no-generator", "use a list comprehension [... for ...]"),
    ast.Yield: ("no-generator", "generators are not available; return a list"),
    ast.YieldFrom: ("no-generator", "generators are not available; return a list"),
    ast.Await: ("no-async", "contracts are not asynchronous"),
    ast.Set: ("no-set", "sets iterate in hash order; use a dict or a sorted list"),
    ast.SetComp: ("no-set", "sets iterate in hash order; use a dict comprehension"),
    ast.Starred: ("no-star", "unpack explicitly: a, b = pair"),
}

_ALLOWED_BINOPS = (
    ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.LShift, ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd,
)


def _pos(node: ast.AST, fallback: tuple[int, int]) -> tuple[int, int]:
    line = getattr(node, "lineno", None)
    if line is None:
        return fallback
    return line, getattr(node, "col_offset", 0)


def _is_const_none_bool(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and (node.value is None or node.value is True or node.value is False)


class _Checker:
    def __init__(self, source: str, tree: ast.Module) -> None:
        self.source = source
        self.tree = tree
        self.problems: list[tuple[int, int, str, str]] = []
        self.result = CheckedContract(source, tree)
        self.module_kinds: dict[str, str] = {}  # name -> storage | event | constant | function | import
        self.constant_lines: dict[str, int] = {}
        self.fstring_at: tuple[int, int] | None = None
        self.here: tuple[int, int] = (1, 0)
        # per function
        self.locals: set[str] = set()
        self.comp_scopes: list[set[str]] = []
        self.loop_depth = 0
        self.in_comp_iter = 0
        self.in_comprehension = 0

    # ------------------------------------------------------------ reporting

    def problem(self, node: ast.AST | None, rule: str, hint: str) -> None:
        if self.fstring_at is not None:
            line, col = self.fstring_at
        elif node is None:
            line, col = self.here
        else:
            line, col = _pos(node, self.here)
        self.problems.append((line, col, rule, hint))
        if len(self.problems) > 200:
            raise _Reject

    # ------------------------------------------------------------ names

    def name_ok(self, name: str, node: ast.AST | None, what: str = "name") -> bool:
        if name.startswith("_") or name.endswith("_"):
            self.problem(node, "underscore-name", f"{what} {name!r} starts or ends with an underscore; such names belong to the runtime")
            return False
        return True

    def bind(self, name: str, node: ast.AST | None, *, module: bool = False) -> None:
        if not self.name_ok(name, node):
            return
        if name in RESERVED_NAMES:
            self.problem(node, "reserved-name", f"{name!r} is a runtime or builtin name and cannot be bound")
            return
        if module:
            if name in self.module_kinds:
                self.problem(node, "duplicate-name", f"{name!r} is already defined at module level")
        elif name in self.module_kinds:
            self.problem(node, "shadows-global", f"{name!r} is a module-level name; choose another local name")

    def bind_target(self, target: ast.expr, *, local: bool = True) -> None:
        """Check an assignment, loop or comprehension target."""
        if isinstance(target, ast.Name):
            self.bind(target.id, target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                if isinstance(elt, ast.Starred):
                    self.problem(elt, "no-star", "unpack explicitly: a, b = pair")
                else:
                    self.bind_target(elt, local=local)
        elif isinstance(target, ast.Subscript):
            if isinstance(target.slice, ast.Slice):
                self.problem(target, "no-slice-assign", "assign elements one by one, or build a new list")
            self.subscript(target)
        elif isinstance(target, ast.Attribute):
            self.problem(target, "no-attribute-store", "attributes cannot be assigned")
        else:
            self.problem(target, "syntax", "cannot assign to this expression")

    def loop_target(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.loop_target(elt)
        elif isinstance(target, ast.Name):
            self.bind(target.id, target)
        else:
            self.problem(target, "loop-target", "a loop variable is a name or a tuple of names")

    def collect_bound(self, body: list[ast.stmt]) -> set[str]:
        """Names a function binds (Python makes them local to the whole function)."""
        names: set[str] = set()

        def targets(t: ast.expr) -> None:
            if isinstance(t, ast.Name):
                names.add(t.id)
            elif isinstance(t, (ast.Tuple, ast.List)):
                for e in t.elts:
                    targets(e.value if isinstance(e, ast.Starred) else e)

        stack: list[ast.AST] = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    targets(t)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets(node.target)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets(node.target)
            elif isinstance(node, ast.NamedExpr):
                targets(node.target)
            if isinstance(node, (ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)):
                # comprehension targets are local to the comprehension; walrus inside is refused
                stack.extend(g.iter for g in node.generators)
                continue
            stack.extend(ast.iter_child_nodes(node))
        return names

    def load_name(self, node: ast.Name, *, runtime_ok: bool = False) -> None:
        name = node.id
        if not self.name_ok(name, node):
            return
        if any(name in scope for scope in self.comp_scopes) or name in self.locals:
            return
        kind = self.module_kinds.get(name)
        if kind in ("constant", "function"):
            return
        if kind in ("storage", "event"):
            if not runtime_ok:
                self.problem(node, "runtime-object-as-value", f"{name!r} is a declaration; use it as {name}[key], {name}.get() or {name}.emit(...)")
            return
        if name in RUNTIME_NAMES:
            if name == "ctx" and not runtime_ok:
                self.problem(node, "runtime-object-as-value", "ctx is only read as ctx.sender, ctx.height, ...")
            elif name in DECLARATIONS:
                self.problem(node, "declaration-in-function", f"{name}(...) declares storage or events at module level only")
            elif name in DECORATORS:
                self.problem(node, "decorator", f"{name} is used only as a decorator: @{name}")
            return
        if name in ALLOWED_BUILTINS:
            return
        if name in PYTHON_BUILTINS:
            self.problem(node, "forbidden-builtin", forbidden_hint(name))
            return
        self.problem(node, "unknown-name", f"{name!r} is not defined")

    # ------------------------------------------------------------ module level

    def check_module(self) -> None:
        body = self.tree.body
        for index, stmt in enumerate(body):
            self.here = _pos(stmt, self.here)
            if index == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                continue
            if isinstance(stmt, ast.ImportFrom) and stmt.module == IMPORT_MODULE and stmt.level == 0:
                for alias in stmt.names:
                    if alias.asname is not None or alias.name not in RUNTIME_NAMES:
                        self.problem(stmt, "no-import", f"`from {IMPORT_MODULE} import` takes runtime names ({', '.join(sorted(RUNTIME_NAMES))}) without `as`")
                continue
            if isinstance(stmt, ast.Assign):
                self.module_assign(stmt)
            elif isinstance(stmt, ast.FunctionDef):
                self.bind(stmt.name, stmt, module=True)
                self.module_kinds[stmt.name] = "function"
            elif type(stmt) in _STATEMENT_RULES:
                rule, hint = _STATEMENT_RULES[type(stmt)]
                self.problem(stmt, rule, hint)
            else:
                self.problem(stmt, "module-statement", "at module level only declarations, constants and functions are allowed")
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef):
                self.here = _pos(stmt, self.here)
                self.function(stmt)

    def module_assign(self, stmt: ast.Assign) -> None:
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            self.problem(stmt, "module-statement", "module-level assignments bind one name: NAME = value")
            return
        name = stmt.targets[0].id
        value = stmt.value
        self.bind(name, stmt.targets[0], module=True)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in DECLARATIONS:
            self.declaration(name, value)
            return
        self.constant_expression(value)
        self.module_kinds[name] = "constant"
        self.constant_lines[name] = stmt.lineno
        self.result.constants.append(name)

    def literal_default(self, node: ast.expr) -> tuple[bool, object]:
        if isinstance(node, ast.Constant) and type(node.value) in (int, str, bytes, bool, type(None)):
            if type(node.value) is int and node.value.bit_length() > 64:
                return False, None
            return True, node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int:
            return node.operand.value.bit_length() <= 63, -node.operand.value
        if isinstance(node, ast.List) and not node.elts:
            return True, []
        if isinstance(node, ast.Dict) and not node.keys:
            return True, {}
        return False, None

    def declaration(self, name: str, call: ast.Call) -> None:
        kind = call.func.id  # type: ignore[attr-defined]
        if kind == "Event":
            fields: list[str] = []
            for arg in call.args:
                if not (isinstance(arg, ast.Constant) and type(arg.value) is str and arg.value.isidentifier() and arg.value.isascii()):
                    self.problem(arg, "declaration", 'Event fields are names in quotes: Event("sender", "amount", indexed=["sender"])')
                    return
                if not self.name_ok(arg.value, arg, "field"):
                    return
                if arg.value in fields:
                    self.problem(arg, "declaration", f"field {arg.value!r} appears twice")
                    return
                fields.append(arg.value)
            if len(fields) > MAX_EVENT_FIELDS:
                self.problem(call, "declaration", f"an event has at most {MAX_EVENT_FIELDS} fields")
                return
            indexed: list[str] = []
            for kw in call.keywords:
                if kw.arg != "indexed" or not isinstance(kw.value, (ast.List, ast.Tuple)):
                    self.problem(call, "declaration", 'Event takes field names and indexed=["field", ...]')
                    return
                for elt in kw.value.elts:
                    if not (isinstance(elt, ast.Constant) and elt.value in fields):
                        self.problem(elt, "declaration", "indexed fields must be fields of the event")
                        return
                    indexed.append(elt.value)
            self.result.events[name] = EventDecl(name, tuple(fields), tuple(indexed))
            self.module_kinds[name] = "event"
            return
        if call.args:
            self.problem(call, "declaration", f"{kind} takes keyword arguments: {kind}(default=...)" + (", key_parts=n" if kind == "Map" else ""))
            return
        default: object = None
        key_parts = 1 if kind == "Map" else 0
        for kw in call.keywords:
            if kw.arg == "default":
                ok, default = self.literal_default(kw.value)
                if not ok:
                    self.problem(kw.value, "declaration", "a default is a literal: an int in 64 bits, text, bytes, True/False, None, [] or {}")
                    return
            elif kw.arg == "key_parts" and kind == "Map":
                v = kw.value
                if not (isinstance(v, ast.Constant) and type(v.value) is int and 1 <= v.value <= G.MAX_KEY_PARTS):
                    self.problem(v, "declaration", f"key_parts is an integer from 1 to {G.MAX_KEY_PARTS}")
                    return
                key_parts = v.value
            else:
                self.problem(call, "declaration", f"{kind} takes " + ("default= and key_parts=" if kind == "Map" else "default="))
                return
        self.result.storage[name] = StorageDecl(name, kind.lower(), default, key_parts)
        self.module_kinds[name] = "storage"

    def constant_expression(self, node: ast.expr) -> None:
        """Module constants: immutable expressions of literals and earlier constants."""
        if isinstance(node, ast.Constant):
            self.constant_literal(node)
        elif isinstance(node, ast.Tuple):
            for elt in node.elts:
                self.constant_expression(elt)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert, ast.Not)):
            self.constant_expression(node.operand)
        elif isinstance(node, ast.BinOp):
            self.binop_ok(node)
            self.constant_expression(node.left)
            self.constant_expression(node.right)
        elif isinstance(node, ast.Name):
            if self.module_kinds.get(node.id) != "constant":
                if node.id in ("True", "False", "None"):
                    return
                self.problem(node, "mutable-global", f"{node.id!r} is not a constant defined above")
        elif isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id == "Fixed")
            or (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id == "Fixed" and node.func.attr == "from_units")
        ):
            if node.keywords:
                self.problem(node, "mutable-global", "Fixed(...) constants take positional literals")
            for arg in node.args:
                self.constant_expression(arg)
        else:
            self.problem(node, "mutable-global", "module-level values are constants: literals, tuples, arithmetic, Fixed(...); keep changing state in a Map or Value")

    def constant_literal(self, node: ast.Constant) -> None:
        v = node.value
        if type(v) is float or type(v) is complex:
            self.problem(node, "no-float", "no floats in gridledger: use int (Wh, minor units) or Fixed('1.5')")
        elif v is Ellipsis:
            self.problem(node, "syntax", "... is not a value in contracts")
        elif type(v) is int and v.bit_length() > G.MAX_INT_BITS:
            self.problem(node, "int-too-large", f"integers have at most {G.MAX_INT_BITS} bits")

    # ------------------------------------------------------------ functions

    def function(self, fn: ast.FunctionDef) -> None:
        kind, reentrant = "private", False
        for dec in fn.decorator_list:
            name, args_ok = None, True
            if isinstance(dec, ast.Name):
                name = dec.id
            elif isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "export" and not dec.args:
                name = "export"
                for kw in dec.keywords:
                    if kw.arg == "reentrant" and isinstance(kw.value, ast.Constant) and type(kw.value.value) is bool:
                        reentrant = kw.value.value
                    else:
                        args_ok = False
            if name not in DECORATORS or not args_ok or kind != "private":
                self.problem(dec, "decorator", "decorators are @export, @export(reentrant=True), @view or @constructor (one per function)")
                continue
            kind = name
        if kind == "constructor" and any(f.kind == "constructor" for f in self.result.functions.values()):
            self.problem(fn, "constructor", "a contract has at most one @constructor")
        a = fn.args
        if a.vararg or a.kwarg:
            self.problem(a.vararg or a.kwarg, "no-star", "*args and **kwargs are not available; name the parameters")
        params: list[Param] = []
        seen: set[str] = set()
        positional = a.posonlyargs + a.args
        defaults_start = len(positional) - len(a.defaults)
        for i, arg in enumerate(positional + a.kwonlyargs):
            keyword_only = i >= len(positional)
            if arg.arg in seen:
                self.problem(arg, "duplicate-name", f"parameter {arg.arg!r} appears twice")
            seen.add(arg.arg)
            self.bind(arg.arg, arg)
            annotation, optional = self.annotation(arg.annotation, required=kind != "private", where=arg)
            has_default = (i >= defaults_start) if not keyword_only else a.kw_defaults[i - len(positional)] is not None
            params.append(Param(arg.arg, annotation, optional, has_default, keyword_only))
        for default in list(a.defaults) + [d for d in a.kw_defaults if d is not None]:
            self.default_value(default, fn.lineno)
        if fn.returns is not None:
            self.annotation(fn.returns, required=False, where=fn.returns, allow_none=True)
        self.result.functions[fn.name] = FunctionInfo(
            fn.name, kind, reentrant, tuple(params), fn.lineno, fn.end_lineno or fn.lineno
        )
        self.locals = {p.name for p in params} | self.collect_bound(fn.body)
        self.comp_scopes = []
        self.loop_depth = 0
        for stmt in fn.body:
            self.statement(stmt)
        self.locals = set()

    def annotation(self, node: ast.expr | None, *, required: bool, where: ast.AST, allow_none: bool = False) -> tuple[str | None, bool]:
        if node is None:
            if required:
                self.problem(where, "export-annotation", f"exported parameters need a type: one of {', '.join(sorted(ANNOTATION_NAMES))}")
            return None, False
        if isinstance(node, ast.Name) and node.id in ANNOTATION_NAMES:
            return node.id, False
        if allow_none and isinstance(node, ast.Constant) and node.value is None:
            return None, False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            left, right = node.left, node.right
            if isinstance(right, ast.Constant) and right.value is None and isinstance(left, ast.Name) and left.id in ANNOTATION_NAMES:
                return left.id, True
        self.problem(node, "export-annotation", f"a type is one of {', '.join(sorted(ANNOTATION_NAMES))}, optionally `T | None`")
        return None, False

    def default_value(self, node: ast.expr, line: int) -> None:
        if isinstance(node, ast.Constant):
            self.constant_literal(node)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int:
            return
        if isinstance(node, ast.Name) and self.constant_lines.get(node.id, line) < line:
            return
        if isinstance(node, ast.Tuple):
            for elt in node.elts:
                self.default_value(elt, line)
            return
        self.problem(node, "default-not-constant", "a default is a literal or a module constant defined above the function (never a list or dict: defaults are shared between calls)")

    # ------------------------------------------------------------ statements

    def statement(self, stmt: ast.stmt) -> None:
        self.here = _pos(stmt, self.here)
        t = type(stmt)
        if t is ast.FunctionDef:
            self.problem(stmt, "nested-function", "define helper functions at module level")
        elif t in _STATEMENT_RULES:
            rule, hint = _STATEMENT_RULES[t]
            self.problem(stmt, rule, hint)
        elif t is ast.Return:
            if stmt.value is not None:  # type: ignore[attr-defined]
                self.expr(stmt.value)  # type: ignore[attr-defined]
        elif t is ast.Assign:
            self.expr(stmt.value)  # type: ignore[attr-defined]
            for target in stmt.targets:  # type: ignore[attr-defined]
                self.bind_target(target)
        elif t is ast.AugAssign:
            self.binop_ok(stmt)
            target = stmt.target  # type: ignore[attr-defined]
            if isinstance(target, ast.Name):
                self.bind(target.id, target)
            else:
                self.bind_target(target)
            self.expr(stmt.value)  # type: ignore[attr-defined]
        elif t is ast.Delete:
            for target in stmt.targets:  # type: ignore[attr-defined]
                if isinstance(target, ast.Subscript):
                    if isinstance(target.slice, ast.Slice):
                        self.problem(target, "no-slice-assign", "delete elements one by one")
                    else:
                        self.subscript(target)
                else:
                    self.problem(target, "no-del-name", "only items can be deleted: del d[key]")
        elif t is ast.For:
            self.expr(stmt.iter)  # type: ignore[attr-defined]
            self.loop_target(stmt.target)  # type: ignore[attr-defined]
            self.loop(stmt.body)  # type: ignore[attr-defined]
            self.block(stmt.orelse)  # type: ignore[attr-defined]
        elif t is ast.While:
            self.expr(stmt.test)  # type: ignore[attr-defined]
            self.loop(stmt.body)  # type: ignore[attr-defined]
            self.block(stmt.orelse)  # type: ignore[attr-defined]
        elif t is ast.If:
            self.expr(stmt.test)  # type: ignore[attr-defined]
            self.block(stmt.body)  # type: ignore[attr-defined]
            self.block(stmt.orelse)  # type: ignore[attr-defined]
        elif t is ast.Expr:
            self.expr(stmt.value)  # type: ignore[attr-defined]
        elif t is ast.Assert:
            self.expr(stmt.test)  # type: ignore[attr-defined]
            if stmt.msg is not None:  # type: ignore[attr-defined]
                self.expr(stmt.msg)  # type: ignore[attr-defined]
        elif t in (ast.Break, ast.Continue):
            if self.loop_depth == 0:
                self.problem(stmt, "break-outside-loop", "break and continue belong inside a for or while loop body")
        elif t is ast.Pass:
            pass
        else:
            self.problem(stmt, "syntax", "this statement is not available in contracts")

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def loop(self, body: list[ast.stmt]) -> None:
        self.loop_depth += 1
        if self.loop_depth > MAX_LOOP_NESTING:
            self.problem(body[0] if body else None, "too-deep", f"loops nest at most {MAX_LOOP_NESTING} deep")
        self.block(body)
        self.loop_depth -= 1

    # ------------------------------------------------------------ expressions

    def binop_ok(self, node: ast.BinOp | ast.AugAssign) -> None:
        op = node.op
        if isinstance(op, ast.Div):
            self.problem(node, "no-true-division", "use // for integers or a.div(b, scale, rounding) for Fixed")
        elif isinstance(op, ast.MatMult):
            self.problem(node, "forbidden-operator", "the @ operator is not available")
        elif isinstance(op, ast.Mod):
            left = node.left if isinstance(node, ast.BinOp) else None
            if isinstance(left, ast.JoinedStr) or (isinstance(left, ast.Constant) and isinstance(left.value, (str, bytes))):
                self.problem(node, "no-format", "% does not format text; use an f-string such as f'{amount} Wh'")
        elif not isinstance(op, _ALLOWED_BINOPS):
            self.problem(node, "forbidden-operator", "this operator is not available")

    def expr(self, node: ast.expr, *, runtime_ok: bool = False) -> None:
        t = type(node)
        if t is ast.Name:
            self.load_name(node, runtime_ok=runtime_ok)  # type: ignore[arg-type]
        elif t is ast.Constant:
            self.constant_literal(node)  # type: ignore[arg-type]
        elif t is ast.Attribute:
            self.attribute(node, in_call=False)  # type: ignore[arg-type]
        elif t is ast.Call:
            self.call(node)  # type: ignore[arg-type]
        elif t is ast.Subscript:
            self.subscript(node)  # type: ignore[arg-type]
        elif t is ast.BinOp:
            self.binop_ok(node)  # type: ignore[arg-type]
            self.expr(node.left)  # type: ignore[attr-defined]
            self.expr(node.right)  # type: ignore[attr-defined]
        elif t is ast.UnaryOp:
            self.expr(node.operand)  # type: ignore[attr-defined]
        elif t is ast.BoolOp:
            for v in node.values:  # type: ignore[attr-defined]
                self.expr(v)
        elif t is ast.Compare:
            self.compare(node)  # type: ignore[arg-type]
        elif t is ast.IfExp:
            self.expr(node.test)  # type: ignore[attr-defined]
            self.expr(node.body)  # type: ignore[attr-defined]
            self.expr(node.orelse)  # type: ignore[attr-defined]
        elif t is ast.NamedExpr:
            if self.in_comprehension:
                self.problem(node, "walrus-in-comprehension", "assign before the comprehension instead")
            self.expr(node.value)  # type: ignore[attr-defined]
            self.bind(node.target.id, node.target)  # type: ignore[attr-defined]
        elif t is ast.List or t is ast.Tuple:
            for elt in node.elts:  # type: ignore[attr-defined]
                if isinstance(elt, ast.Starred):
                    self.problem(elt, "no-star", "build the list explicitly: a + b")
                else:
                    self.expr(elt)
        elif t is ast.Dict:
            for k, v in zip(node.keys, node.values, strict=True):  # type: ignore[attr-defined]
                if k is None:
                    self.problem(v, "no-star", "merge dicts with a | b")
                    continue
                self.expr(k)
                self.expr(v)
        elif t is ast.ListComp or t is ast.DictComp:
            self.comprehension(node)  # type: ignore[arg-type]
        elif t is ast.JoinedStr:
            self.fstring(node)  # type: ignore[arg-type]
        elif t in _EXPRESSION_RULES:
            rule, hint = _EXPRESSION_RULES[t]
            self.problem(node, rule, hint)
        else:
            self.problem(node, "syntax", "this expression is not available in contracts")

    def compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (_is_const_none_bool(operands[i]) or _is_const_none_bool(operands[i + 1])):
                    self.problem(node, "is-operator", "`is` compares identity, which differs between validators; use ==, or `is None`")
        if len(node.ops) > 1 and self.in_comp_iter:
            for middle in node.comparators[:-1]:
                if not isinstance(middle, (ast.Name, ast.Constant)):
                    self.problem(node, "chained-compare", "assign the middle value to a variable before the comprehension")
        for i, operand in enumerate(operands):
            # `k in balances` reads a storage map
            runtime_ok = i > 0 and isinstance(node.ops[i - 1], (ast.In, ast.NotIn)) and self.is_map(operand)
            self.expr(operand, runtime_ok=runtime_ok)

    def is_map(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in self.result.storage and self.result.storage[node.id].kind == "map" and not self.is_local(node.id)

    def is_local(self, name: str) -> bool:
        return name in self.locals or any(name in s for s in self.comp_scopes)

    def subscript(self, node: ast.Subscript) -> None:
        base = node.value
        if self.is_map(base):
            self.load_name(base, runtime_ok=True)  # type: ignore[arg-type]
            if isinstance(node.slice, ast.Slice):
                self.problem(node, "syntax", "storage maps are read by key, not sliced")
                return
            self.expr(node.slice)
            return
        self.expr(base)
        s = node.slice
        if isinstance(s, ast.Slice):
            for part in (s.lower, s.upper, s.step):
                if part is not None:
                    self.expr(part)
        else:
            self.expr(s)

    def attribute(self, node: ast.Attribute, *, in_call: bool) -> None:
        attr = node.attr
        if not self.name_ok(attr, node, "attribute"):
            return
        base = node.value
        if isinstance(base, ast.Name) and not self.is_local(base.id):
            name = base.id
            kind = self.module_kinds.get(name)
            if name == "ctx":
                if attr not in CTX_ATTRIBUTES or in_call:
                    self.problem(node, "unknown-attribute", f"ctx has {', '.join(sorted(CTX_ATTRIBUTES))}")
                return
            if kind == "storage" or kind == "event":
                decl = "Event" if kind == "event" else ("Map" if self.result.storage[name].kind == "map" else "Value")
                allowed = DECLARATION_ATTRIBUTES[decl]
                if attr not in allowed or not in_call:
                    usage = {"Map": f"{name}[key], {name}[key] = v, del {name}[key], key in {name}", "Value": f"{name}.get() and {name}.set(v)", "Event": f"{name}.emit(field=value, ...)"}[decl]
                    self.problem(node, "unknown-attribute", f"use {usage}")
                return
            if name in STATIC_ATTRIBUTES and kind is None:
                if attr not in STATIC_ATTRIBUTES[name] or not in_call:
                    self.problem(node, "unknown-attribute", f"{name} offers {', '.join(f'{name}.{a}(...)' for a in STATIC_ATTRIBUTES[name])}")
                return
            if kind == "function" or (kind is None and (name in RUNTIME_NAMES or name in ALLOWED_BUILTINS)):
                self.problem(node, "unknown-attribute", f"{name} has no attributes")
                return
        if in_call:
            if attr not in METHOD_NAMES:
                self.problem(node, "unknown-attribute", f"no method {attr}(); see the language guide for the methods of str, bytes, list, dict, tuple, int and Fixed")
        elif attr not in ATTRIBUTE_NAMES:
            if attr in METHOD_NAMES:
                self.problem(node, "method-not-called", f"call the method: .{attr}(...)")
            else:
                self.problem(node, "unknown-attribute", f"no attribute {attr}; Fixed values have .units and .scale")
        self.expr(base)

    def call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            self.attribute(func, in_call=True)
        elif isinstance(func, ast.Name) and func.id in DECLARATIONS and not self.is_local(func.id):
            self.problem(node, "declaration-in-function", f"{func.id}(...) declares storage or events at module level only")
            return
        else:
            self.expr(func)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.problem(arg, "no-star", "pass arguments one by one")
            else:
                self.expr(arg)
        seen: set[str] = set()
        for kw in node.keywords:
            if kw.arg is None:
                self.problem(kw.value, "no-star", "pass keyword arguments one by one")
                continue
            self.name_ok(kw.arg, kw.value, "keyword")
            if kw.arg in seen:
                self.problem(kw.value, "duplicate-name", f"keyword argument {kw.arg!r} repeated")
            seen.add(kw.arg)
            self.expr(kw.value)

    def comprehension(self, node: ast.ListComp | ast.DictComp) -> None:
        pushed = 0
        self.in_comprehension += 1
        for gen in node.generators:
            if gen.is_async:
                self.problem(node, "no-async", "contracts are not asynchronous")
            self.in_comp_iter += 1
            self.expr(gen.iter)
            self.in_comp_iter -= 1
            scope: set[str] = set()
            self.comprehension_targets(gen.target, scope)
            self.comp_scopes.append(scope)
            pushed += 1
            for cond in gen.ifs:
                self.expr(cond)
        if isinstance(node, ast.DictComp):
            self.expr(node.key)
            self.expr(node.value)
        else:
            self.expr(node.elt)
        del self.comp_scopes[len(self.comp_scopes) - pushed :]
        self.in_comprehension -= 1

    def comprehension_targets(self, target: ast.expr, scope: set[str]) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id, target)
            scope.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                if isinstance(elt, ast.Starred):
                    self.problem(elt, "no-star", "unpack explicitly")
                else:
                    self.comprehension_targets(elt, scope)
        else:
            self.problem(target, "syntax", "comprehension targets are names")

    def fstring(self, node: ast.JoinedStr) -> None:
        outer = self.fstring_at is None
        if outer:
            self.fstring_at = (node.lineno, node.col_offset)
        try:
            for value in node.values:
                if isinstance(value, ast.Constant):
                    continue
                if not isinstance(value, ast.FormattedValue):
                    self.problem(value, "syntax", "unexpected f-string part")
                    continue
                if value.conversion != -1 or value.format_spec is not None:
                    self.problem(value, "no-format", "f-strings take plain {value} fields: no !r/!s/!a and no :format specs")
                    continue
                if isinstance(value.value, ast.JoinedStr):
                    self.problem(value, "no-format", "f-strings cannot nest")
                    continue
                self.expr(value.value)
        finally:
            if outer:
                self.fstring_at = None


def check(source: object) -> CheckedContract:
    """Check a contract's source; raise :class:`ContractError` (``rejected``) on the first rule broken."""
    tree = parse(source)
    checker = _Checker(source, tree)  # type: ignore[arg-type]
    try:
        checker.check_module()
    except _Reject:
        pass
    if checker.problems:
        line, col, rule, hint = min(checker.problems)
        raise ContractError.at(line, col, rule, hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tree, "<contract>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise syntax_error(str(exc)) from None
    return checker.result
