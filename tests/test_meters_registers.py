"""Register words <-> numbers: exact, both word orders, agreeing with pymodbus."""

import math
import struct
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from meters.errors import ConfigError, DecodeError
from meters.registers import DataType, decode, encode, exact, parse_scale, to_int_units

_RANGES = {
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.ACC32: (0, (1 << 32) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
    DataType.ACC64: (0, (1 << 64) - 1),
}
_PYMODBUS = {
    DataType.INT16: "INT16", DataType.UINT16: "UINT16", DataType.INT32: "INT32", DataType.UINT32: "UINT32",
    DataType.INT64: "INT64", DataType.UINT64: "UINT64", DataType.FLOAT32: "FLOAT32", DataType.FLOAT64: "FLOAT64",
}


@st.composite
def typed_values(draw):
    dtype = draw(st.sampled_from([t for t in DataType if t is not DataType.SUNSSF]))
    if dtype is DataType.FLOAT32:
        value = draw(st.floats(width=32, allow_nan=False))
    elif dtype is DataType.FLOAT64:
        value = draw(st.floats(allow_nan=False))
    else:
        low, high = _RANGES[dtype]
        value = draw(st.integers(low, high))
    return dtype, value


@given(typed_values(), st.sampled_from(["big", "little"]))
def test_decode_inverts_encode_for_every_type_and_word_order(tv, order):
    dtype, value = tv
    words = encode(value, dtype, order)
    assert len(words) == dtype.words and all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, dtype, order) == value


@given(typed_values(), st.sampled_from(["big", "little"]))
def test_decode_agrees_with_pymodbus_convert_from_registers(tv, order):
    dtype, value = tv
    if dtype not in _PYMODBUS:
        return
    words = encode(value, dtype, order)
    theirs = AsyncModbusTcpClient.convert_from_registers(words, AsyncModbusTcpClient.DATATYPE[_PYMODBUS[dtype]], order)
    assert theirs == decode(words, dtype, order)


def test_little_word_order_swaps_registers_not_bytes():
    assert encode(0x12345678, DataType.UINT32, "big") == [0x1234, 0x5678]
    assert encode(0x12345678, DataType.UINT32, "little") == [0x5678, 0x1234]
    big = [int.from_bytes(struct.pack(">f", 1234.5)[i:i + 2], "big") for i in (0, 2)]
    assert decode(big, DataType.FLOAT32, "big") == 1234.5
    assert decode(big[::-1], DataType.FLOAT32, "little") == 1234.5


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_as_not_finite(value):
    words = encode(value, DataType.FLOAT32)
    with pytest.raises(DecodeError) as err:
        exact(decode(words, DataType.FLOAT32))
    assert err.value.reason == "not_finite"


def test_float32_kwh_converts_to_wh_exactly_without_binary_noise():
    # 12345.678 kWh is not representable; the float32 nearest to it converts exactly.
    f32 = decode(encode(12345.678, DataType.FLOAT32), DataType.FLOAT32)
    assert exact(f32) == Fraction(f32)
    assert to_int_units(exact(f32) * 1000) == round(Fraction(f32) * 1000)


def test_scale_is_read_as_an_exact_decimal():
    assert parse_scale("0.01") == Fraction(1, 100)
    assert parse_scale(0.1) == Fraction(1, 10)  # the TOML float 0.1 means one tenth
    assert parse_scale(10) == 10
    assert parse_scale("1e-3") == Fraction(1, 1000)
    for bad in ("abc", 0, -1, True):
        with pytest.raises(ConfigError):
            parse_scale(bad)


def test_unknown_type_and_word_order_are_configuration_errors():
    with pytest.raises(ConfigError, match="allowed"):
        DataType.parse("float16")
    with pytest.raises(ConfigError, match="word order"):
        decode([0, 0], DataType.UINT32, "middle")


def test_short_register_list_is_a_decode_error():
    with pytest.raises(DecodeError) as err:
        decode([1], DataType.UINT32)
    assert err.value.reason == "short_read"
