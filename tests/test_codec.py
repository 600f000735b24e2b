"""The canonical codec: every allowed value round-trips, everything else is refused."""

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.codec import CodecError, decode, encode

ints = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
scalars = st.one_of(st.none(), st.booleans(), ints, st.binary(max_size=300), st.text(max_size=300))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=8), max_leaves=40)
map_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=30,
)


@given(values)
def test_every_allowed_value_round_trips(value):
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(map_values)
def test_maps_round_trip_when_allowed(value):
    data = encode(value, allow_maps=True)
    assert encode(decode(data, allow_maps=True), allow_maps=True) == data


@settings(max_examples=300)
@given(values, st.data())
def test_every_mutation_is_rejected_or_decodes_to_a_different_value(value, data):
    original = encode(value)
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "append"]))
    buf = bytearray(original)
    if kind == "flip":
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= data.draw(st.integers(1, 255))
    elif kind == "insert":
        i = data.draw(st.integers(0, len(buf)))
        buf.insert(i, data.draw(st.integers(0, 255)))
    elif kind == "delete":
        i = data.draw(st.integers(0, len(buf) - 1))
        del buf[i]
    else:
        buf += bytes([data.draw(st.integers(0, 255))])
    mutated = bytes(buf)
    if mutated == original:
        return
    try:
        decoded = decode(mutated)
    except CodecError:
        return
    assert decoded != value or type(decoded) is not type(value) or encode(decoded) != original


def test_decode_rejects_floats():
    with pytest.raises(CodecError, match="floats are not allowed"):
        decode(msgpack.packb(1.5))
    with pytest.raises(CodecError, match="floats are not allowed"):
        decode(msgpack.packb([1, [2.0]]))
    # float32 too
    with pytest.raises(CodecError, match="floats are not allowed"):
        decode(b"\xca" + struct.pack(">f", 1.0))


def test_encode_rejects_floats_and_unknown_types():
    with pytest.raises(CodecError, match="floats"):
        encode([1, 0.5])
    with pytest.raises(CodecError, match="set"):
        encode({1, 2})
    with pytest.raises(CodecError, match="outside the encodable range"):
        encode(1 << 64)


def test_decode_rejects_ext_types():
    with pytest.raises(CodecError, match="extension type 5"):
        decode(msgpack.packb(msgpack.ExtType(5, b"abc")))


def test_decode_rejects_maps_where_not_allowed():
    with pytest.raises(CodecError, match="maps are not allowed"):
        decode(msgpack.packb({"a": 1}))


def test_decode_rejects_unsorted_or_duplicate_or_non_str_map_keys():
    unsorted = b"\x82\xa1b\x01\xa1a\x02"  # {"b": 1, "a": 2}
    with pytest.raises(CodecError, match="non-canonical"):
        decode(unsorted, allow_maps=True)
    duplicate = b"\x82\xa1a\x01\xa1a\x02"
    with pytest.raises(CodecError, match="duplicate keys"):
        decode(duplicate, allow_maps=True)
    with pytest.raises(CodecError):
        decode(b"\x81\x01\x02", allow_maps=True)  # {1: 2}


def test_decode_rejects_trailing_bytes():
    with pytest.raises(CodecError, match="1 trailing bytes"):
        decode(encode([1, 2]) + b"\x00")


def test_decode_rejects_non_minimal_integers():
    for spelling in (b"\xcc\x05", b"\xcd\x00\x05", b"\xd0\x05", b"\xce\x00\x00\x00\x05", b"\xd3" + (5).to_bytes(8, "big", signed=True)):
        with pytest.raises(CodecError, match="non-canonical encoding at byte 0"):
            decode(spelling)


def test_decode_rejects_non_minimal_lengths():
    with pytest.raises(CodecError, match="non-canonical"):
        decode(b"\xd9\x01a")  # str8 for a 1-char string (fixstr is shorter)
    with pytest.raises(CodecError, match="non-canonical"):
        decode(b"\xdc\x00\x01\x01")  # array16 for a 1-element array
    with pytest.raises(CodecError, match="non-canonical"):
        decode(b"\xc5\x00\x01x")  # bin16 for 1 byte


def test_decode_rejects_raw_str_for_bytes_confusion():
    # The same payload as str and as bin are different values: neither decodes to the other.
    assert decode(encode("ab")) == "ab"
    assert decode(encode(b"ab")) == b"ab"


def test_decode_rejects_invalid_utf8():
    with pytest.raises(CodecError, match="UTF-8"):
        decode(b"\xa2\xff\xfe")


def test_decode_rejects_truncated_input():
    data = encode([1, "hello", b"world"])
    for cut in range(1, len(data)):
        with pytest.raises(CodecError):
            decode(data[:cut])


def test_decode_rejects_depth_beyond_limit():
    value: list = []
    for _ in range(codec.MAX_DEPTH + 1):
        value = [value]
    data = msgpack.packb(value)
    with pytest.raises(CodecError, match="nesting deeper than"):
        decode(data)
    with pytest.raises(CodecError, match="nesting deeper than"):
        encode(value)
    shallow = [[[]]]
    with pytest.raises(CodecError, match="nesting deeper than 2"):
        decode(encode(shallow), max_depth=2)


def test_decode_rejects_size_beyond_limit():
    data = encode(b"x" * 100)
    with pytest.raises(CodecError, match="limit here is 50"):
        decode(data, max_size=50)
    assert decode(data, max_size=len(data)) == b"x" * 100


def test_decode_rejects_empty_input_and_non_bytes():
    with pytest.raises(CodecError, match="empty input"):
        decode(b"")
    with pytest.raises(CodecError, match="expected bytes"):
        decode("not bytes")  # type: ignore[arg-type]


def test_decode_rejects_huge_declared_lengths_without_allocating():
    # An array header claiming 2**32-1 elements with no body must fail fast.
    with pytest.raises(CodecError):
        decode(b"\xdd\xff\xff\xff\xff")
    with pytest.raises(CodecError):
        decode(b"\xc6\xff\xff\xff\xff")


def test_tuples_encode_as_arrays():
    assert encode((1, 2)) == encode([1, 2])


def test_booleans_are_not_integers():
    assert decode(encode(True)) is True
    assert encode(True) != encode(1)
