"""The deploy-time checker: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.runtime.checker import check
from contracts.runtime.errors import ContractError

LANGUAGE_MD = Path(__file__).resolve().parent.parent / "contracts" / "runtime" / "LANGUAGE.md"


def example_contract() -> str:
    text = LANGUAGE_MD.read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]


def rejected(source: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        check(textwrap.dedent(source))
    assert info.value.code == "rejected"
    return info.value


TOKEN = '''
"""A token."""
from gridledger import Map, Value, Event, export, view, constructor, ctx, require

balances = Map(default=0)
allowances = Map(default=0, key_parts=2)
total = Value(default=0)
FEE_BPS = 25
SCALE = 10 ** 4
Transfer = Event("sender", "to", "amount", indexed=["sender", "to"])


@constructor
def setup(supply: int):
    balances[ctx.sender] = supply
    total.set(supply)


def fee(amount):
    return amount * FEE_BPS // SCALE


@export
def transfer(to: Address, amount: int, memo: str | None = None) -> bool:
    require(amount > 0, "amount must be positive")
    balance = balances[ctx.sender]
    require(balance >= amount, f"balance {balance} is below {amount}")
    balances[ctx.sender] = balance - amount
    balances[to] += amount - fee(amount)
    Transfer.emit(sender=ctx.sender, to=to, amount=amount)
    return True


@view
def allowance(owner: Address, spender: Address) -> int:
    return allowances[owner, spender]
'''


def test_checker_accepts_a_realistic_token():
    checked = check(TOKEN)
    assert set(checked.storage) == {"balances", "allowances", "total"}
    assert checked.storage["allowances"].key_parts == 2
    assert checked.events["Transfer"].indexed == ("sender", "to")
    assert set(checked.exports) == {"transfer", "allowance"}
    assert checked.constructor is not None and checked.constructor.name == "setup"
    assert checked.functions["fee"].kind == "private"
    memo = checked.functions["transfer"].params[2]
    assert (memo.annotation, memo.optional, memo.has_default) == ("str", True, True)


def test_checker_accepts_the_language_guide_example():
    checked = check(example_contract())
    assert {"offer", "buy", "sold_by"} <= set(checked.exports)


def test_rejection_names_line_column_rule_and_hint():
    err = rejected(
        """
        @export
        def main() -> int:
            return getattr(ctx, "sender")
        """
    )
    assert (err.line, err.column, err.rule) == (4, 11, "forbidden-builtin")
    assert "introspection" in err.hint
    assert err.message.startswith("line 4, column 11: [forbidden-builtin]")


def test_the_topmost_violation_is_reported():
    err = rejected(
        """
        @export
        def main() -> int:
            x = 1.5
            return eval("x")
        """
    )
    assert (err.line, err.rule) == (4, "no-float")


@pytest.mark.parametrize(
    "binding",
    [
        "def main(require: int) -> int:\n    return 1",
        "def main(x: int, ctx: int = 1) -> int:\n    return 1",
        "def main(*, len: int = 1) -> int:\n    return 1",
        "def main() -> int:\n    for call in range(2):\n        pass\n    return 1",
        "def main() -> list:\n    return [fail for fail in range(2)]",
        "def main() -> dict:\n    return {sha256: 1 for sha256 in range(2)}",
        "def main() -> int:\n    if (require := 1):\n        pass\n    return 1",
        "def main() -> int:\n    ctx = 1\n    return 1",
        "def main() -> int:\n    a, (b, sorted) = 1, (2, 3)\n    return 1",
        "def main() -> int:\n    sum += 1\n    return 1",
        "def main() -> int:\n    for i, max in [(1, 2)]:\n        pass\n    return 1",
        "def main() -> int:\n    Fixed = 1\n    return 1",
        "def main() -> int:\n    print = 1\n    return 1",
    ],
)
def test_reserved_names_cannot_be_bound_by_any_binding_form(binding):
    err = rejected("@export\n" + binding + "\n")
    assert err.rule == "reserved-name"


@pytest.mark.parametrize("name", ["require", "call", "ctx", "len", "Map", "export", "type"])
def test_reserved_names_cannot_be_module_level_names(name):
    assert rejected(f"{name} = 1\n").rule == "reserved-name"
    assert rejected(f"def {name}():\n    return 1\n").rule == "reserved-name"


@pytest.mark.parametrize(
    "source",
    [
        "def main():\n    _g = 1\n",
        "def main(_enter):\n    return 1\n",
        "def main():\n    return [x_ for x_ in range(3)]\n",
        "def _hidden():\n    return 1\n",
        "def main():\n    return (1).__class__\n",
        "def helper(x=1):\n    return x\ndef main():\n    return helper(__dict__=1)\n",
        "X_ = 1\n",
    ],
)
def test_names_starting_or_ending_with_underscore_are_refused(source):
    assert rejected(source).rule == "underscore-name"


def test_local_names_cannot_shadow_module_level_names():
    err = rejected("balances = Map(default=0)\ndef main():\n    balances = 1\n")
    assert err.rule == "shadows-global"
    err = rejected("LIMIT = 3\ndef main():\n    for LIMIT in range(2):\n        pass\n")
    assert err.rule == "shadows-global"


@pytest.mark.parametrize(
    ("snippet", "rule"),
    [
        ("class A:\n        pass", "no-class"),
        ("f = lambda: 1", "no-lambda"),
        ("g = (x for x in range(3))", "no-generator"),
        ("s = {1, 2}", "no-set"),
        ("s = {x for x in range(3)}", "no-set"),
        ("a, *b = [1, 2]", "no-star"),
        ("x = [*range(3)]", "no-star"),
        ("d = {**{}}", "no-star"),
        ("x = 1 / 2", "no-true-division"),
        ("x = 2.5", "no-float"),
        ("x = 1j", "no-float"),
        ("x = ...", "syntax"),
        ("x = 'a%s' % 1", "no-format"),
        ("x = f'{1!r}'", "no-format"),
        ("x = f'{1:>3}'", "no-format"),
        ("x = 'a'.format(1)", "unknown-attribute"),
        ("x = (1).real", "unknown-attribute"),
        ("x = [].append", "method-not-called"),
        ("x = 1 is 1", "is-operator"),
        (f"x = {10 ** 400}", "int-too-large"),
        ("x = [1] @ [2]", "forbidden-operator"),
        ("import os", "no-import"),
        ("try:\n        pass\n    except Exception:\n        pass", "no-try"),
        ("raise ValueError", "no-raise"),
        ("with open('f') as f:\n        pass", "no-with"),
        ("global x", "no-global"),
        ("def inner():\n        return 1", "nested-function"),
        ("x: int = 1", "no-annotated-assign"),
        ("del x", "no-del-name"),
        ("xs = [1, 2]\n    xs[0:1] = [3]", "no-slice-assign"),
        ("xs = [1]\n    del xs[0:1]", "no-slice-assign"),
        ("ctx.sender = b''", "no-attribute-store"),
        ("c = ctx", "runtime-object-as-value"),
        ("m = Map(default=0)", "declaration-in-function"),
        ("break", "break-outside-loop"),
        ("xs = [1]\n    for xs[0] in range(3):\n        pass", "loop-target"),
        ("x = [y := 1 for i in range(3)]", "walrus-in-comprehension"),
        ("x = [i for i in range(3) if 0 < len([i]) < 5] + [j for j in range(0 < len([1]) < 3)]", "chained-compare"),
        ("x = nonexistent + 1", "unknown-name"),
        ("x = iter([1])", "forbidden-builtin"),
        ("x = ValueError", "forbidden-builtin"),
        ("x = ctx.private_key", "unknown-attribute"),
        ("x = bytes.maketrans(b'a', b'b')", "unknown-attribute"),
        ("x = sorted.keys", "unknown-attribute"),
    ],
)
def test_constructs_outside_the_language_are_refused_by_their_rule(snippet, rule):
    assert rejected(f"def main():\n    {snippet}\n    return 1\n").rule == rule


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("x = []\n", "mutable-global"),
        ("x = {'a': 1}\n", "mutable-global"),
        ("x = len('abc')\n", "mutable-global"),
        ("x = y\n", "mutable-global"),
        ("for i in range(3):\n    pass\n", "module-statement"),
        ("print('hi')\n", "module-statement"),
        ("if True:\n    x = 1\n", "module-statement"),
        ("a = b = 1\n", "module-statement"),
        ("m = Map(0)\n", "declaration"),
        ("m = Map(default=0, key_parts=9)\n", "declaration"),
        ("m = Map(default=0, contract='other')\n", "declaration"),
        ("m = Map(default=[1])\n", "declaration"),
        ("v = Value(default=2 ** 70)\n", "declaration"),
        ("E = Event('a', 'a')\n", "declaration"),
        ("E = Event('a', indexed=['b'])\n", "declaration"),
        ("E = Event(1)\n", "declaration"),
        ("x = 1\nx = 2\n", "duplicate-name"),
        ("def f():\n    return 1\ndef f():\n    return 2\n", "duplicate-name"),
        ("def f(a, a):\n    return 1\n", "duplicate-name"),
        ("from gridledger import os\n", "no-import"),
        ("@property\ndef f():\n    return 1\n", "decorator"),
        ("@export(gas=1)\ndef f() -> int:\n    return 1\n", "decorator"),
        ("@export\n@view\ndef f() -> int:\n    return 1\n", "decorator"),
        ("@export\ndef f(x) -> int:\n    return 1\n", "export-annotation"),
        ("@export\ndef f(x: float) -> int:\n    return 1\n", "export-annotation"),
        ("def f(x=[]):\n    return 1\n", "default-not-constant"),
        ("def f(x=len):\n    return 1\n", "default-not-constant"),
        ("def f(x=LATER):\n    return x\nLATER = 1\n", "default-not-constant"),
        ("@constructor\ndef a():\n    pass\n@constructor\ndef b():\n    pass\n", "constructor"),
        ("def f(*args):\n    return 1\n", "no-star"),
        ("def f(**kw):\n    return 1\n", "no-star"),
    ],
)
def test_module_level_rules(source, rule):
    assert rejected(source).rule == rule


def test_module_constants_may_use_arithmetic_tuples_earlier_constants_and_fixed():
    checked = check("A = 3\nB = (A * 2, -A, A ** 2, 'x')\nP = Fixed('0.25')\nQ = Fixed.from_units(25, 2)\n")
    assert checked.constants == ["A", "B", "P", "Q"]


# ------------------------------------------------------------ parsing identically on every version


@pytest.mark.parametrize(
    "source",
    [
        'def main():\n    d = {"k": 1}\n    return f"{d["k"]}"\n',  # PEP 701 quote reuse (3.12+)
        "def main():\n    x = 1\n    return f'{x # comment\n}'\n",
        "def main():\n    return f'{\"\\n\".join([])}'\n",  # backslash in a replacement field
        "def main():\n    x = 1\n    return f'{f'{x}'}'\n",
        'def main():\n    return f"{f\'{1}\'}"\n',  # nested f-strings
        "type Amount = int\n",
        "def main[T](x):\n    return x\n",
        "def main():\n    z\u00e4hler = 1\n    return z\u00e4hler\n",  # identifiers depend on the Unicode database
        'def main():\n    return "\\N{BLACK STAR}"\n',
        "def main(:\n    return 1\n",
        "x = 0o8\n",
        "def main():\n\treturn 1\n        return 2\n",
        "x = 1\x00\n",
    ],
)
def test_syntax_that_python_versions_parse_differently_is_a_syntax_error_without_position(source):
    with pytest.raises(ContractError) as info:
        check(source)
    err = info.value
    if err.rule == "source-characters":
        return
    assert err.rule == "syntax"
    assert err.line is None and err.column is None
    assert err.message == "[syntax] the source is not valid contract syntax (Python 3.11)"


def test_non_ascii_text_in_strings_and_comments_is_allowed():
    check('# Z\u00fcrich substation\nNAME = "Z\u00fcrich \u20ac"\n')


def test_violations_inside_fstrings_are_reported_at_the_fstring():
    err = rejected("def main():\n    x = 1\n    return f'value {x.__class__}'\n")
    assert (err.line, err.column, err.rule) == (3, 11, "underscore-name")


def test_control_characters_are_refused_with_their_position():
    err = rejected("def main():\n    return 1\x0c\n")
    assert (err.rule, err.line, err.column) == ("source-characters", 2, 12)


def test_size_and_depth_limits():
    assert rejected("x = 1\n" + "#" * (100 << 10) + "\n").rule == "source-too-large"
    assert rejected("def main():\n    return " + " + ".join(["1"] * 200) + "\n").rule == "too-deep"
    loops = "def main():\n"
    for depth in range(17):
        loops += "    " * (depth + 1) + f"for i{depth} in range(2):\n"
    loops += "    " * 18 + "pass\n"
    assert rejected(loops).rule == "too-deep"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_checker_refuses_arbitrary_text_only_with_contract_errors(text):
    try:
        check(text)
    except ContractError as err:
        assert err.code == "rejected" and err.rule
        assert len(err.message) <= 256


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_checker_refuses_mutated_contracts_only_with_contract_errors(data):
    source = TOKEN
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(source)))
        j = data.draw(st.integers(i, min(len(source), i + 12)))
        insert = data.draw(st.sampled_from(["", "_", "(", ")", "[", ":", "\n", " ", ".x", "__class__", "*", "'", "=", "lambda", "1.5"]))
        source = source[:i] + insert + source[j:]
    try:
        check(source)
    except ContractError as err:
        assert err.code == "rejected" and err.rule
