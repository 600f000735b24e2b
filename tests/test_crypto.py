"""Ed25519 identities, domain-separated signatures and checksummed addresses."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.crypto import Address, CryptoError, Kind, PrivateKey, PublicKey, verify_signature

KEY = PrivateKey(bytes(range(32)))


def test_signature_verifies_for_its_chain_and_kind():
    sig = KEY.sign("ch/zurich", Kind.TX, b"payload")
    assert KEY.public_key.verify("ch/zurich", Kind.TX, b"payload", sig)


def test_signature_does_not_verify_on_another_shard():
    sig = KEY.sign("ch/zurich", Kind.TX, b"payload")
    assert not verify_signature(KEY.public_key.raw, "ch/bern", Kind.TX, b"payload", sig)


def test_signature_does_not_verify_as_another_message_kind():
    sig = KEY.sign("ch", Kind.PREPARE, b"vote")
    assert not verify_signature(KEY.public_key.raw, "ch", Kind.COMMIT, b"vote", sig)


def test_signature_does_not_verify_for_another_payload_or_key():
    sig = KEY.sign("ch", Kind.TX, b"a")
    assert not verify_signature(KEY.public_key.raw, "ch", Kind.TX, b"b", sig)
    other = PrivateKey(bytes(32))
    assert not verify_signature(other.public_key.raw, "ch", Kind.TX, b"a", sig)


def test_malformed_signatures_and_keys_do_not_verify_and_do_not_raise():
    sig = KEY.sign("ch", Kind.TX, b"a")
    assert not verify_signature(KEY.public_key.raw, "ch", Kind.TX, b"a", sig[:-1])
    assert not verify_signature(KEY.public_key.raw[:31], "ch", Kind.TX, b"a", sig)
    assert not verify_signature(bytes(32), "ch", Kind.TX, b"a", bytes(64))


def test_keys_are_deterministic_from_their_seed():
    assert PrivateKey(bytes(range(32))).public_key == KEY.public_key
    with pytest.raises(CryptoError, match="32 bytes"):
        PrivateKey(b"short")


def test_address_text_round_trips():
    addr = KEY.address
    text = str(addr)
    assert text.startswith("grid1")
    assert Address.parse(text) == addr
    assert Address.parse(text.upper()) == addr


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32), st.data())
def test_address_checksum_rejects_a_mistyped_character(seed, data):
    text = str(PrivateKey(seed).address)
    i = data.draw(st.integers(len("grid1"), len(text) - 1))
    replacement = data.draw(st.sampled_from([c for c in "qpzry9x8gf2tvdw0s3jn54khce6mua7l" if c != text[i]]))
    typo = text[:i] + replacement + text[i + 1 :]
    with pytest.raises(CryptoError):
        Address.parse(typo)


def test_address_checksum_rejects_swapped_characters():
    text = str(KEY.address)
    for i in range(5, len(text) - 1):
        if text[i] != text[i + 1]:
            swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
            with pytest.raises(CryptoError, match="checksum"):
                Address.parse(swapped)


def test_address_parser_rejects_wrong_prefix_mixed_case_and_bad_characters():
    text = str(KEY.address)
    with pytest.raises(CryptoError, match="prefix"):
        Address.parse("bc1" + text[5:])
    with pytest.raises(CryptoError, match="mixes upper and lower case"):
        Address.parse(text[:6] + text[6:].upper())
    with pytest.raises(CryptoError, match="not a Bech32 character"):
        Address.parse(text[:-1] + "b")
    with pytest.raises(CryptoError):
        Address.parse("grid1")


def test_public_key_must_be_32_bytes():
    with pytest.raises(CryptoError):
        PublicKey(b"x" * 31)
