"""The instrumenter: rewrites a checked contract's AST so it meters itself.

Gas is charged from the source, never from bytecode, so it is the same on every
CPython version. The rewrite:

* **Blocks.** A function body, each branch of an ``if``, each loop body and the
  statements after a compound statement are *segments*: straight-line code that
  runs completely or stops with an error. Each segment starts with one
  ``_g(n)`` whose ``n`` is the static cost (``gas.py``) of everything in it,
  including the test of the ``if``/``while`` or the iterable of the ``for`` that
  ends it. A function's first segment is merged into ``_enter(n)``, which also
  counts call depth; a loop body's first segment is charged every iteration
  together with the iteration itself (and a ``while`` loop's test).
* **Comprehensions** get an extra first condition ``_gi(n)`` in each ``for``
  clause: it charges one iteration and is always true. The list they build is
  bounded by ``_cl(...)``.
* **Operations whose cost depends on sizes** become helper calls that check sizes
  and charge before working (``ops.py``): arithmetic (``_add``...), comparisons
  (``_eq``...), ``in``, subscripts and slices, item assignment and deletion, and
  augmented assignment. Operations with a literal operand stay native where the
  literal bounds the work (``x == 0``, ``d["price"]``).
* **Always**, metered or not, for semantics rather than cost: ``**``, ``%``, ``<<``
  and ``~`` go through helpers, keys of dict displays and comprehensions through
  ``_key`` (hash flooding, ``values.py``), (no floats, no printf formatting, bounded shifts,
  no version-dependent warnings), f-strings through ``_fstr`` (deterministic text),
  method calls on values through ``_mc_<name>`` dispatchers (``methods.py``),
  ``require(c, m)`` statements and ``assert`` become ``if not c: _fail(m)``, and
  every function counts depth with ``_enter``/``finally``.

Injected names all start with an underscore, which the checker forbids in contract
source, so a contract can neither call nor rebind them. Evaluation order is kept:
where a helper would evaluate operands in another order than Python, temporaries
(``_t1``...) are used.
"""

from __future__ import annotations

import ast
import copy

from contracts.runtime import gas as G
from contracts.runtime.checker import CheckedContract
from contracts.runtime.language import STATIC_ATTRIBUTES

__all__ = ["instrument", "statement_starts"]

_BINOP_HELPERS = {
    ast.Add: "_add",
    ast.Sub: "_sub",
    ast.Mult: "_mul",
    ast.FloorDiv: "_floordiv",
    ast.Mod: "_mod",
    ast.Pow: "_pow",
    ast.LShift: "_lshift",
    ast.RShift: "_rshift",
    ast.BitAnd: "_bitand",
    ast.BitOr: "_bitor",
    ast.BitXor: "_bitxor",
}
_INPLACE_HELPERS = {ast.Add: "_iadd", ast.Mult: "_imul", ast.BitOr: "_ior"}
# Helpers kept with metering off: they protect semantics, not gas.
_ALWAYS = {ast.Pow, ast.Mod, ast.LShift}
_COMPARE_HELPERS = {
    ast.Eq: "_eq",
    ast.NotEq: "_ne",
    ast.Lt: "_lt",
    ast.LtE: "_le",
    ast.Gt: "_gt",
    ast.GtE: "_ge",
    ast.In: "_in",
    ast.NotIn: "_notin",
}


def _name(id_: str, like: ast.AST | None = None, store: bool = False) -> ast.Name:
    node = ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())
    return ast.copy_location(node, like) if like is not None else node


def _call(func: str, args: list[ast.expr], like: ast.AST, keywords: list[ast.keyword] | None = None) -> ast.Call:
    return ast.copy_location(ast.Call(func=_name(func, like), args=args, keywords=keywords or []), like)


def _charge(n: int, like: ast.AST, func: str = "_g") -> ast.stmt:
    return ast.copy_location(ast.Expr(value=_call(func, [ast.Constant(n)], like)), like)


def _const(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant)


def _simple(node: ast.expr) -> bool:
    return isinstance(node, (ast.Name, ast.Constant))


class _Instrumenter:
    def __init__(self, checked: CheckedContract, metered: bool) -> None:
        self.checked = checked
        self.metered = metered
        self.maps = {n for n, d in checked.storage.items() if d.kind == "map"}
        self.temp = 0

    # ------------------------------------------------------------ costs

    def cost(self, node: ast.AST | None) -> int:
        if node is None or isinstance(node, (ast.Constant, ast.Name)):
            return 0
        c = self.cost
        if isinstance(node, ast.Attribute):
            return G.ATTRIBUTE + c(node.value)
        if isinstance(node, ast.Subscript):
            return G.SUBSCRIPT + c(node.value) + c(node.slice)
        if isinstance(node, ast.Slice):
            return c(node.lower) + c(node.upper) + c(node.step)
        if isinstance(node, ast.BinOp):
            return G.OP + c(node.left) + c(node.right)
        if isinstance(node, ast.UnaryOp):
            return G.OP + c(node.operand)
        if isinstance(node, ast.BoolOp):
            return G.OP * (len(node.values) - 1) + sum(map(c, node.values))
        if isinstance(node, ast.Compare):
            return G.OP * len(node.ops) + c(node.left) + sum(map(c, node.comparators))
        if isinstance(node, ast.IfExp):
            return G.OP + c(node.test) + c(node.body) + c(node.orelse)
        if isinstance(node, ast.NamedExpr):
            return G.STORE + c(node.value)
        if isinstance(node, ast.Call):
            return G.CALL + c(node.func) + sum(map(c, node.args)) + sum(c(k.value) for k in node.keywords)
        if isinstance(node, (ast.List, ast.Tuple)):
            return G.DISPLAY + G.ELEMENT * len(node.elts) + sum(map(c, node.elts))
        if isinstance(node, ast.Dict):
            return G.DICT_DISPLAY + 2 * G.ELEMENT * len(node.keys) + sum(map(c, node.keys)) + sum(map(c, node.values))
        if isinstance(node, (ast.ListComp, ast.DictComp)):
            return G.COMPREHENSION + c(node.generators[0].iter)
        if isinstance(node, ast.JoinedStr):
            fields = [v for v in node.values if isinstance(v, ast.FormattedValue)]
            return G.FSTRING + G.ELEMENT * len(fields) + sum(c(v.value) for v in fields)
        raise AssertionError(f"uncosted node {type(node).__name__}")  # the checker admits no other

    def target_cost(self, target: ast.expr) -> int:
        if isinstance(target, ast.Name):
            return G.STORE
        if isinstance(target, (ast.Tuple, ast.List)):
            return G.OP + sum(self.target_cost(e) for e in target.elts)
        if isinstance(target, ast.Subscript):
            return G.STORE + G.SUBSCRIPT + self.cost(target.value) + self.cost(target.slice)
        return G.STORE

    def statement_cost(self, stmt: ast.stmt) -> int:
        c = self.cost
        if isinstance(stmt, ast.Assign):
            return G.STMT + c(stmt.value) + sum(self.target_cost(t) for t in stmt.targets)
        if isinstance(stmt, ast.AugAssign):
            return G.STMT + G.OP + self.target_cost(stmt.target) + self.cost(stmt.target) + c(stmt.value)
        if isinstance(stmt, (ast.Return, ast.Expr)):
            if isinstance(stmt, ast.Expr) and self.is_require(stmt.value):
                return G.STMT + G.CALL + c(stmt.value.args[0]) if stmt.value.args else G.STMT  # type: ignore[attr-defined]
            return G.STMT + c(stmt.value)
        if isinstance(stmt, ast.Delete):
            return G.STMT + sum(G.SUBSCRIPT + c(t.value) + c(t.slice) for t in stmt.targets)  # type: ignore[attr-defined]
        if isinstance(stmt, ast.Assert):
            return G.STMT + c(stmt.test)
        if isinstance(stmt, (ast.If, ast.While)):
            return G.STMT + c(stmt.test)
        if isinstance(stmt, ast.For):
            return G.STMT + c(stmt.iter) + self.target_cost(stmt.target)
        if isinstance(stmt, (ast.Break, ast.Continue)):
            return G.STMT
        return 0  # pass

    # ------------------------------------------------------------ helpers

    def new_temp(self) -> str:
        self.temp += 1
        return f"_t{self.temp}"

    def is_require(self, node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "require"
            and 1 <= len(node.args) <= 2
            and not node.keywords
        )

    def is_map(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in self.maps

    # ------------------------------------------------------------ expressions

    def expr(self, node: ast.expr) -> ast.expr:
        m = getattr(self, "x_" + type(node).__name__, None)
        if m is not None:
            return m(node)
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, field, self.expr(value))
            elif isinstance(value, list):
                setattr(node, field, [self.expr(v) if isinstance(v, ast.expr) else v for v in value])
        return node

    def x_BinOp(self, node: ast.BinOp) -> ast.expr:
        left, right = self.expr(node.left), self.expr(node.right)
        op = type(node.op)
        if self.metered or op in _ALWAYS:
            return _call(_BINOP_HELPERS[op], [left, right], node)
        node.left, node.right = left, right
        return node

    def x_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        operand = self.expr(node.operand)
        if isinstance(node.op, ast.Invert):
            return _call("_invert", [operand], node)
        node.operand = operand
        return node

    def x_Compare(self, node: ast.Compare) -> ast.expr:
        originals = [node.left, *node.comparators]
        rewritten = [self.expr(x) for x in originals]
        if not self.metered:
            node.left, node.comparators = rewritten[0], rewritten[1:]
            return node
        parts: list[ast.expr] = []
        left = rewritten[0]
        for i, op in enumerate(node.ops):
            right = rewritten[i + 1]
            if i + 1 < len(node.ops) and not _simple(right):
                # a middle operand is evaluated once, as Python does: a < (t := f(x)) and t < c
                temp = self.new_temp()
                right_use: ast.expr = ast.copy_location(ast.NamedExpr(target=_name(temp, right, store=True), value=right), right)
                following: ast.expr = _name(temp, right)
            else:
                right_use = right
                following = copy.deepcopy(right)
            parts.append(self.compare_one(op, left, right_use, originals[i], originals[i + 1], node))
            left = following
        if len(parts) == 1:
            return parts[0]
        return ast.copy_location(ast.BoolOp(op=ast.And(), values=parts), node)

    def compare_one(self, op: ast.cmpop, a: ast.expr, b: ast.expr, a0: ast.expr, b0: ast.expr, like: ast.AST) -> ast.expr:
        native = ast.copy_location(ast.Compare(left=a, ops=[op], comparators=[b]), like)
        t = type(op)
        if t in (ast.Is, ast.IsNot):
            return native
        if t in (ast.In, ast.NotIn):
            if self.is_map(b0) or _const(b0):
                return native
            return _call(_COMPARE_HELPERS[t], [a, b], like)
        if _const(a0) or _const(b0):
            return native
        return _call(_COMPARE_HELPERS[t], [a, b], like)

    def x_Subscript(self, node: ast.Subscript) -> ast.expr:
        if self.is_map(node.value):
            node.slice = self.expr(node.slice)
            return node
        value = self.expr(node.value)
        s = node.slice
        if isinstance(s, ast.Slice):
            if self.metered:
                parts = [self.expr(p) if p is not None else ast.copy_location(ast.Constant(None), node) for p in (s.lower, s.upper, s.step)]
                return _call("_getslice", [value, *parts], node)
            node.value = value
            node.slice = self.expr_slice(s)
            return node
        key = self.expr(s)
        if not self.metered or _const(s):
            node.value, node.slice = value, key
            return node
        return _call("_getitem", [value, key], node)

    def expr_slice(self, s: ast.Slice) -> ast.Slice:
        s.lower = self.expr(s.lower) if s.lower is not None else None
        s.upper = self.expr(s.upper) if s.upper is not None else None
        s.step = self.expr(s.step) if s.step is not None else None
        return s

    def x_Attribute(self, node: ast.Attribute) -> ast.expr:
        base = node.value
        if isinstance(base, ast.Name) and (base.id == "ctx" or base.id in self.checked.storage or base.id in self.checked.events):
            return node
        return _call(f"_at_{node.attr}", [self.expr(base)], node)

    def x_Call(self, node: ast.Call) -> ast.expr:
        func = node.func
        args = [self.expr(a) for a in node.args]
        keywords = [ast.copy_location(ast.keyword(arg=k.arg, value=self.expr(k.value)), k.value) for k in node.keywords]
        if isinstance(func, ast.Attribute):
            base = func.value
            if isinstance(base, ast.Name):
                if base.id in STATIC_ATTRIBUTES and base.id not in self.checked.storage:
                    return _call(STATIC_ATTRIBUTES[base.id][func.attr], args, node, keywords)
                if base.id in self.checked.storage or base.id in self.checked.events:
                    node.args, node.keywords = args, keywords
                    return node
            return _call(f"_mc_{func.attr}", [self.expr(base), *args], node, keywords)
        node.func = self.expr(func)
        node.args, node.keywords = args, keywords
        return node

    def x_JoinedStr(self, node: ast.JoinedStr) -> ast.expr:
        parts: list[ast.expr] = []
        text = ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                text += value.value
            else:
                parts.append(ast.copy_location(ast.Constant(text), node))
                parts.append(self.expr(value.value))  # type: ignore[attr-defined]
                text = ""
        if not parts:
            return ast.copy_location(ast.Constant(text), node)
        if text:
            parts.append(ast.copy_location(ast.Constant(text), node))
        return _call("_fstr", parts, node)

    def x_Dict(self, node: ast.Dict) -> ast.expr:
        # keys are hashed by the display itself: non-literal keys pass the key check
        node.keys = [k if k is None or _const(k) else _call("_key", [self.expr(k)], k) for k in node.keys]
        node.values = [self.expr(v) for v in node.values]
        return node

    def x_ListComp(self, node: ast.ListComp) -> ast.expr:
        return self.comprehension(node, [node.elt])

    def x_DictComp(self, node: ast.DictComp) -> ast.expr:
        return self.comprehension(node, [node.key, node.value])

    def comprehension(self, node: ast.ListComp | ast.DictComp, results: list[ast.expr]) -> ast.expr:
        gens = node.generators
        per_iteration = []
        for i, gen in enumerate(gens):
            n = G.ITERATION + sum(self.cost(cond) for cond in gen.ifs)
            if i + 1 < len(gens):
                n += self.cost(gens[i + 1].iter)
            else:
                n += G.ELEMENT + sum(self.cost(r) for r in results)
            per_iteration.append(n)
        for gen, n in zip(gens, per_iteration, strict=True):
            gen.iter = self.expr(gen.iter)
            gen.ifs = [self.expr(cond) for cond in gen.ifs]
            if self.metered:
                gen.ifs.insert(0, _call("_gi", [ast.Constant(n)], node))
        if isinstance(node, ast.ListComp):
            node.elt = self.expr(node.elt)
        else:
            node.key = _call("_key", [self.expr(node.key)], node.key)
            node.value = self.expr(node.value)
        return _call("_cl", [node], node) if self.metered else node

    # ------------------------------------------------------------ statements

    def block(self, stmts: list[ast.stmt]) -> tuple[int, list[ast.stmt]]:
        """Rewrite a statement list; return (cost of its first segment, statements).

        The first segment's charge is left to the caller (function entry, loop
        iteration, branch); later segments get their own ``_g`` at their start.
        """
        segments: list[tuple[int, list[ast.stmt], ast.AST]] = []
        cost, current, anchor = 0, [], stmts[0] if stmts else None
        for stmt in stmts:
            cost += self.statement_cost(stmt)
            current.extend(self.statement(stmt))
            if isinstance(stmt, (ast.If, ast.For, ast.While, ast.Return, ast.Break, ast.Continue)):
                segments.append((cost, current, anchor))
                cost, current, anchor = 0, [], None
            elif anchor is None:
                anchor = stmt
        if current or cost:
            segments.append((cost, current, anchor))
        out: list[ast.stmt] = []
        first_cost = 0
        for index, (seg_cost, seg, seg_anchor) in enumerate(segments):
            if index == 0:
                first_cost = seg_cost
            elif self.metered and seg_cost and seg:
                out.append(_charge(seg_cost, seg_anchor or seg[0]))
            out.extend(seg)
        return first_cost, out

    def charged_block(self, stmts: list[ast.stmt], extra: int, like: ast.AST) -> list[ast.stmt]:
        first, body = self.block(stmts)
        total = first + extra
        if self.metered and total:
            body.insert(0, _charge(total, like))
        return body or [ast.copy_location(ast.Pass(), like)]

    def statement(self, stmt: ast.stmt) -> list[ast.stmt]:
        m = getattr(self, "s_" + type(stmt).__name__)
        return m(stmt)

    def s_Pass(self, stmt: ast.Pass) -> list[ast.stmt]:
        return [stmt]

    s_Break = s_Continue = s_Pass

    def s_Return(self, stmt: ast.Return) -> list[ast.stmt]:
        if stmt.value is not None:
            stmt.value = self.expr(stmt.value)
        return [stmt]

    def s_Expr(self, stmt: ast.Expr) -> list[ast.stmt]:
        if self.is_require(stmt.value):
            call: ast.Call = stmt.value  # type: ignore[assignment]
            message = call.args[1] if len(call.args) > 1 else ast.copy_location(ast.Constant("requirement failed"), call)
            return [self.failure_check(call.args[0], message, stmt)]
        stmt.value = self.expr(stmt.value)
        return [stmt]

    def s_Assert(self, stmt: ast.Assert) -> list[ast.stmt]:
        message = stmt.msg if stmt.msg is not None else ast.copy_location(ast.Constant("assertion failed"), stmt)
        return [self.failure_check(stmt.test, message, stmt)]

    def failure_check(self, condition: ast.expr, message: ast.expr, like: ast.AST) -> ast.stmt:
        """``if not condition: _fail(message)``; the message is paid for only when it is built."""
        body: list[ast.stmt] = []
        message_cost = self.cost(message)
        if self.metered and message_cost:
            body.append(_charge(message_cost, like))
        body.append(ast.copy_location(ast.Expr(value=_call("_fail", [self.expr(message)], like)), like))
        test = ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=self.expr(condition)), like)
        return ast.copy_location(ast.If(test=test, body=body, orelse=[]), like)

    def s_If(self, stmt: ast.If) -> list[ast.stmt]:
        stmt.test = self.expr(stmt.test)
        stmt.body = self.charged_block(stmt.body, 0, stmt)
        if stmt.orelse:
            stmt.orelse = self.charged_block(stmt.orelse, 0, stmt.orelse[0])
        return [stmt]

    def s_For(self, stmt: ast.For) -> list[ast.stmt]:
        stmt.iter = self.expr(stmt.iter)
        target_cost = self.target_cost(stmt.target)
        stmt.body = self.charged_block(stmt.body, G.ITERATION + target_cost, stmt)
        if stmt.orelse:
            stmt.orelse = self.charged_block(stmt.orelse, 0, stmt.orelse[0])
        return [stmt]

    def s_While(self, stmt: ast.While) -> list[ast.stmt]:
        test_cost = self.cost(stmt.test)
        stmt.test = self.expr(stmt.test)
        stmt.body = self.charged_block(stmt.body, G.ITERATION + test_cost, stmt)
        if stmt.orelse:
            stmt.orelse = self.charged_block(stmt.orelse, 0, stmt.orelse[0])
        return [stmt]

    def s_Assign(self, stmt: ast.Assign) -> list[ast.stmt]:
        value = self.expr(stmt.value)
        needs_helper = any(self.has_helper_target(t) for t in stmt.targets)
        if not needs_helper:
            stmt.value = value
            stmt.targets = [self.native_target(t) for t in stmt.targets]
            return [stmt]
        out: list[ast.stmt] = []
        if len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Subscript) and _simple(value):
            return [self.store(stmt.targets[0], value, stmt)]
        temp = self.new_temp()
        out.append(ast.copy_location(ast.Assign(targets=[_name(temp, stmt, store=True)], value=value), stmt))
        for target in stmt.targets:
            out.extend(self.assign_from(target, _name(temp, stmt), stmt))
        return out

    def has_helper_target(self, target: ast.expr) -> bool:
        if isinstance(target, ast.Subscript):
            return self.metered and not self.is_map(target.value)
        if isinstance(target, (ast.Tuple, ast.List)):
            return any(self.has_helper_target(e) for e in target.elts)
        return False

    def native_target(self, target: ast.expr) -> ast.expr:
        if isinstance(target, ast.Subscript):
            target.value = self.expr(target.value) if not self.is_map(target.value) else target.value
            target.slice = self.expr(target.slice)
        elif isinstance(target, (ast.Tuple, ast.List)):
            target.elts = [self.native_target(e) for e in target.elts]
        return target

    def assign_from(self, target: ast.expr, value: ast.expr, like: ast.AST) -> list[ast.stmt]:
        if isinstance(target, ast.Name):
            return [ast.copy_location(ast.Assign(targets=[target], value=value), like)]
        if isinstance(target, ast.Subscript):
            return [self.store(target, value, like)]
        # a tuple target holding subscripts: unpack into temporaries, then assign in order
        temps = [self.new_temp() for _ in target.elts]  # type: ignore[attr-defined]
        unpack = ast.copy_location(
            ast.Assign(targets=[ast.copy_location(ast.Tuple(elts=[_name(t, like, store=True) for t in temps], ctx=ast.Store()), like)], value=value),
            like,
        )
        out: list[ast.stmt] = [unpack]
        for elt, temp in zip(target.elts, temps, strict=True):  # type: ignore[attr-defined]
            out.extend(self.assign_from(elt, _name(temp, like), like))
        return out

    def store(self, target: ast.Subscript, value: ast.expr, like: ast.AST) -> ast.stmt:
        if self.is_map(target.value) or not self.metered:
            target = self.native_target(target)
            return ast.copy_location(ast.Assign(targets=[target], value=value), like)
        call = _call("_setitem", [self.expr(target.value), self.expr(target.slice), value], like)
        return ast.copy_location(ast.Expr(value=call), like)

    def s_AugAssign(self, stmt: ast.AugAssign) -> list[ast.stmt]:
        op = type(stmt.op)
        value = self.expr(stmt.value)
        helper = _INPLACE_HELPERS.get(op, _BINOP_HELPERS[op])
        use_helper = self.metered or op in _ALWAYS
        target = stmt.target
        if isinstance(target, ast.Name):
            if not use_helper:
                stmt.value = value
                return [stmt]
            combined = _call(helper, [_name(target.id, target), value], stmt)
            return [ast.copy_location(ast.Assign(targets=[_name(target.id, target, store=True)], value=combined), stmt)]
        # subscript target: evaluate the container and key once, in Python's order
        assert isinstance(target, ast.Subscript)
        out: list[ast.stmt] = []
        is_map = self.is_map(target.value)
        container: ast.expr = target.value if is_map else self.expr(target.value)
        if not is_map and not _simple(container):
            temp = self.new_temp()
            out.append(ast.copy_location(ast.Assign(targets=[_name(temp, stmt, store=True)], value=container), stmt))
            container = _name(temp, stmt)
        key = self.expr(target.slice)
        if not _simple(key):
            temp = self.new_temp()
            out.append(ast.copy_location(ast.Assign(targets=[_name(temp, stmt, store=True)], value=key), stmt))
            key = _name(temp, stmt)
        if not use_helper:
            stmt.target = ast.copy_location(ast.Subscript(value=container, slice=key, ctx=ast.Store()), target)
            stmt.value = value
            out.append(stmt)
            return out
        if is_map or not self.metered:
            current: ast.expr = ast.copy_location(ast.Subscript(value=container, slice=key, ctx=ast.Load()), target)
        else:
            current = _call("_getitem", [container, key], stmt)
        combined = _call(helper, [current, value], stmt)
        if is_map or not self.metered:
            store_target = ast.copy_location(ast.Subscript(value=container, slice=key, ctx=ast.Store()), target)
            out.append(ast.copy_location(ast.Assign(targets=[store_target], value=combined), stmt))
        else:
            out.append(ast.copy_location(ast.Expr(value=_call("_setitem", [container, key, combined], stmt)), stmt))
        return out

    def s_Delete(self, stmt: ast.Delete) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for target in stmt.targets:
            assert isinstance(target, ast.Subscript)
            if self.is_map(target.value) or not self.metered:
                target = self.native_target(target)
                out.append(ast.copy_location(ast.Delete(targets=[target]), stmt))
            else:
                call = _call("_delitem", [self.expr(target.value), self.expr(target.slice)], stmt)
                out.append(ast.copy_location(ast.Expr(value=call), stmt))
        return out

    # ------------------------------------------------------------ module

    def function(self, fn: ast.FunctionDef) -> ast.FunctionDef:
        self.temp = 0
        fn.decorator_list = []
        fn.returns = None
        for arg in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
            arg.annotation = None
        first, body = self.block(fn.body)
        entry = _charge(G.FUNCTION_ENTRY + first if self.metered else 0, fn, "_enter")
        leave = ast.copy_location(
            ast.AugAssign(
                target=ast.copy_location(ast.Attribute(value=_name("_m", fn), attr="depth", ctx=ast.Store()), fn),
                op=ast.Sub(),
                value=ast.Constant(1),
            ),
            fn,
        )
        guarded = ast.copy_location(ast.Try(body=body or [ast.copy_location(ast.Pass(), fn)], handlers=[], orelse=[], finalbody=[leave]), fn)
        fn.body = [entry, guarded]
        return fn

    def module(self) -> ast.Module:
        tree = self.checked.tree
        body: list[ast.stmt] = []
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef):
                body.append(self.function(stmt))
            elif isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id in self.checked.constants:
                if self.metered:
                    body.append(_charge(G.STMT + self.cost(stmt.value), stmt))
                stmt.value = self.expr(stmt.value)
                body.append(stmt)
            # docstring, imports and declarations produce no code: the loader
            # binds declarations itself.
        module = ast.Module(body=body, type_ignores=[])
        return ast.fix_missing_locations(module)


def instrument(checked: CheckedContract, *, metered: bool = True) -> ast.Module:
    """The instrumented module for ``checked`` (which it consumes: the tree is rewritten in place)."""
    return _Instrumenter(checked, metered).module()


def statement_starts(tree: ast.Module) -> list[tuple[int, int]]:
    """(first line, last line) of every statement, from the source before instrumenting.

    A runtime error is reported at the first line of the innermost statement that
    contains the failing instruction's line: CPython versions attribute an
    instruction to different lines of a multi-line statement, never to another one.
    """
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            spans.append((node.lineno, node.end_lineno or node.lineno))
    spans.sort()
    return spans
