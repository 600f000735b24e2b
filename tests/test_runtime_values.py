"""Runtime values: Fixed against exact oracles, deterministic text, canonical storage keys."""

from __future__ import annotations

import decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.runtime.errors import ContractError, LimitExceeded
from contracts.runtime.fixed import ROUNDINGS, Fixed, round_div
from contracts.runtime.storage import _key_part, encode_key_prefix
from contracts.runtime.text import quote, render
from ledger.statekeys import state_key

_DECIMAL_MODES = {
    "down": decimal.ROUND_DOWN,
    "up": decimal.ROUND_UP,
    "floor": decimal.ROUND_FLOOR,
    "ceiling": decimal.ROUND_CEILING,
    "half_up": decimal.ROUND_HALF_UP,
    "half_even": decimal.ROUND_HALF_EVEN,
}
units = st.integers(-(10**30), 10**30)
scales = st.integers(0, 12)


def as_fraction(f: Fixed) -> Fraction:
    return Fraction(f.units, 10**f.scale)


def free(n: int) -> None:  # a charge function that never runs out
    pass


@settings(max_examples=500)
@given(st.integers(-(10**40), 10**40), st.integers(-(10**20), 10**20).filter(bool), st.sampled_from(ROUNDINGS))
def test_round_div_matches_decimal_rounding(n, d, mode):
    context = decimal.Context(prec=200, rounding=_DECIMAL_MODES[mode])
    expected = context.divide(decimal.Decimal(n), decimal.Decimal(d)).quantize(decimal.Decimal(1), context=context)
    assert round_div(n, d, mode) == int(expected)


@given(units, scales, units, scales)
def test_fixed_addition_subtraction_and_multiplication_are_exact(ua, sa, ub, sb):
    a, b = Fixed.from_units(ua, sa), Fixed.from_units(ub, sb)
    assert as_fraction(a + b) == as_fraction(a) + as_fraction(b)
    assert as_fraction(a - b) == as_fraction(a) - as_fraction(b)
    assert as_fraction(a * b) == as_fraction(a) * as_fraction(b)
    assert (a + b).scale == max(sa, sb) and (a * b).scale == sa + sb


@given(units, scales, units.filter(bool), scales, st.integers(0, 20), st.sampled_from(ROUNDINGS))
def test_fixed_division_rounds_the_exact_quotient(ua, sa, ub, sb, scale, mode):
    a, b = Fixed.from_units(ua, sa), Fixed.from_units(ub, sb)
    q = a.div(b, scale, mode)
    exact = as_fraction(a) / as_fraction(b) * 10**scale
    assert q.scale == scale
    assert q.units == round_div(exact.numerator, exact.denominator, mode)


@given(units, scales, st.integers(0, 20), st.sampled_from(ROUNDINGS))
def test_rescale_rounds_like_decimal_quantize(u, s, target, mode):
    f = Fixed.from_units(u, s)
    context = decimal.Context(prec=200, rounding=_DECIMAL_MODES[mode])
    expected = context.scaleb(decimal.Decimal(u), -s).quantize(decimal.Decimal(1).scaleb(-target), context=context)
    result = f.rescale(target, mode)
    assert result.scale == target and as_fraction(result) == Fraction(expected)


@given(units, scales)
def test_fixed_text_round_trips_and_equals_decimal_text(u, s):
    f = Fixed.from_units(u, s)
    with decimal.localcontext(decimal.Context(prec=200)):
        assert str(f) == f"{decimal.Decimal(u).scaleb(-s):f}"
    again = Fixed(str(f))
    assert again == f and again.scale == s


@given(units, scales, units, scales)
def test_fixed_equality_and_hash_are_by_value(ua, sa, ub, sb):
    a, b = Fixed.from_units(ua, sa), Fixed.from_units(ub, sb)
    assert (a == b) == (as_fraction(a) == as_fraction(b))
    assert (a < b) == (as_fraction(a) < as_fraction(b))
    if a == b:
        assert hash(a) == hash(b)


def test_fixed_equals_int_with_the_same_hash():
    assert Fixed("2.00") == 2 and hash(Fixed("2.00")) == hash(2)
    assert {Fixed("1.50"): "x"}[Fixed("1.5")] == "x"


def test_fixed_rescale_and_to_int_need_a_rounding_mode_only_when_digits_are_lost():
    assert Fixed("12.50").rescale(1) == Fixed("12.5")
    assert Fixed("7.00").to_int() == 7
    with pytest.raises(ContractError, match="rounding mode"):
        Fixed("12.55").rescale(1)
    with pytest.raises(ContractError, match="rounding mode"):
        Fixed("7.5").to_int()
    assert Fixed("7.5").to_int("half_even") == 8 and Fixed("6.5").to_int("half_even") == 6
    assert Fixed("-7.5").to_int("down") == -7 and Fixed("-7.5").to_int("floor") == -8


def test_fixed_refuses_bad_text_scales_and_roundings():
    for bad in ["1.", ".5", "1e5", "1_000", "--1", "1.2.3", "", "\u0661"]:
        with pytest.raises(ContractError):
            Fixed(bad)
    with pytest.raises(ContractError):
        Fixed("1.234", 2)
    with pytest.raises(ContractError):
        Fixed(1, 37)
    with pytest.raises(ContractError):
        Fixed(1).rescale(2, "nearest")


def test_fixed_product_scale_is_bounded_and_pow_is_exact_then_rounded():
    with pytest.raises(ContractError, match="scale"):
        Fixed("0." + "1" * 20) * Fixed("0." + "1" * 20)
    assert Fixed("0.995").pow(3, 9, "down") == Fixed("0.985074875")
    assert Fixed("0.995").pow(29, 4, "half_even") == Fixed("0.8647")
    with pytest.raises(LimitExceeded):
        Fixed("1.123456789").pow(256, 2, "down")


def test_fixed_is_immutable():
    f = Fixed(1)
    with pytest.raises(AttributeError):
        f.units = 5  # type: ignore[misc]


# ------------------------------------------------------------ text


def test_render_matches_python_for_plain_ascii_values():
    value = [1, -2, "ab c", b"\x00x", None, True, (1,), (), {"k": [1, 2]}, {}]
    assert render(value, free) == repr(value)
    assert render(["a'b"], free) == "['a\\'b']"  # always single quotes, unlike repr


def test_render_escapes_everything_outside_printable_ascii():
    assert render(["\u00e9\u20ac\U0001f600\n"], free) == "['\\xe9\\u20ac\\U0001f600\\n']"
    assert quote("caf\u00e9") == "'caf\\xe9'"
    assert render("caf\u00e9", free) == "caf\u00e9"  # top-level text is itself


def test_render_names_functions_without_addresses_and_shows_fixed_as_decimal():
    def settle():
        pass

    assert render([settle, Fixed("1.50"), range(0, 4, 2)], free) == "[<function settle>, 1.50, range(0, 4, 2)]"


def test_render_refuses_deep_nesting_and_huge_text():
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(LimitExceeded):
        render(deep, free)
    shared = [1]
    for _ in range(30):
        shared = [shared, shared]
    with pytest.raises(LimitExceeded):
        render(shared, free)


def test_render_charges_before_it_produces_text():
    spent = []
    render(["x" * 1000, list(range(100))], spent.append)
    assert sum(spent) > 100


# ------------------------------------------------------------ storage keys

key_part = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=40), st.binary(max_size=60))


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.lists(key_part, min_size=1, max_size=8))
def test_storage_keys_are_exactly_ledger_state_keys(contract, name, parts):
    prefix = encode_key_prefix(contract, name)
    ours = prefix + bytes((0x90 | len(parts),)) + b"".join(_key_part(p, name) for p in parts)
    assert ours == state_key(contract, name, parts)
    assert prefix + b"\x90" == state_key(contract, name, [])


def test_key_parts_are_ints_text_or_bytes_of_bounded_size():
    for bad in [1.0, None, True, (1,), [1], 2**64]:
        with pytest.raises(ContractError):
            _key_part(bad, "m")
    with pytest.raises(LimitExceeded):
        _key_part(b"x" * 300, "m")
