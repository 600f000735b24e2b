"""BLS12-381 proof-of-possession scheme: the two backends are interchangeable.

The fast backend (arkworks) is compared with the reference (py-ecc) byte for byte on
keys, signatures, proofs and aggregates, and verdict for verdict on every verification,
a corpus of malformed and adversarial inputs included. py-ecc costs ~0.3 s per
verification, so the reference side runs on few, chosen examples while the fast side
alone runs on many.

Without py-arkworks-bls12381 installed the comparisons are skipped (the reason is
printed as a warning); with GRIDLEDGER_REQUIRE_FAST_BLS=1 they fail instead, so CI
proves the fast backend it ships with.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from py_ecc.bls import G2ProofOfPossession
from py_ecc.bls.g2_primitives import G1_to_pubkey, pubkey_to_G1, signature_to_G2, subgroup_check
from py_ecc.optimized_bls12_381 import G1, add, multiply, neg

from ledger import bls

REPO = Path(__file__).resolve().parent.parent
REQUIRE_FAST = os.environ.get("GRIDLEDGER_REQUIRE_FAST_BLS") == "1"
FAST = bls.FAST_BACKEND
P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
INF_G1 = bytes([0xC0]) + bytes(47)
INF_G2 = bytes([0xC0]) + bytes(95)

# py-ecc is slow: few examples on the reference side, no deadline, no example database.
REF_SETTINGS = settings(
    max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST_SETTINGS = settings(max_examples=150, deadline=None, database=None)

ikms = st.binary(min_size=32, max_size=64)
messages = st.binary(max_size=300)


@pytest.fixture(scope="module")
def ref() -> bls.BLSScheme:
    return bls.scheme("py_ecc")


MISSING_FAST = f"fast BLS backend {FAST!r} is not installed (pip install '.[fast]')"


@pytest.fixture(scope="module")
def fast() -> bls.BLSScheme:
    """The fast backend, for comparisons; skipped (with a warning) when not installed."""
    if FAST not in bls.available_backends():
        if REQUIRE_FAST:
            pytest.fail(f"GRIDLEDGER_REQUIRE_FAST_BLS=1 but {MISSING_FAST}")
        warnings.warn(f"{MISSING_FAST}: backend comparisons skipped", stacklevel=1)
        pytest.skip(f"{MISSING_FAST}: backend comparisons skipped")
    return bls.scheme(FAST)


@pytest.fixture(scope="module")
def schemes(ref) -> list[bls.BLSScheme]:
    """Every installed backend, for rules each must keep on its own."""
    if FAST not in bls.available_backends():
        if REQUIRE_FAST:
            pytest.fail(f"GRIDLEDGER_REQUIRE_FAST_BLS=1 but {MISSING_FAST}")
        return [ref]
    return [ref, bls.scheme(FAST)]


@pytest.fixture(scope="module")
def signers(ref):
    """Four validators' keys made by the reference backend: (sk, pk, pop) each."""
    out = []
    for i in range(4):
        sk = ref.keygen(bytes([i + 1]) * 32)
        out.append((sk, ref.sk_to_pk(sk), ref.pop_prove(sk)))
    return out


MSG = b"gridledger checkpoint: height 1200, block hash, state root"


@pytest.fixture(scope="module")
def signed(ref, signers):
    """Each signer's signature of MSG and of another message, by the reference backend."""
    return {
        "msg": [ref.sign(sk, MSG) for sk, _, _ in signers],
        "other": [ref.sign(sk, b"another checkpoint") for sk, _, _ in signers],
    }


# ---------------------------------------------------------------- points for the corpus


def _g1_off_subgroup() -> bytes:
    """A canonical encoding of a point on E(Fp) outside the prime-order subgroup."""
    for x in range(1, 100):
        enc = (x | 1 << 383).to_bytes(48, "big")
        try:
            point = pubkey_to_G1(enc)
        except ValueError:
            continue
        if not subgroup_check(point):
            return enc
    raise AssertionError("no off-subgroup G1 point found")


def _g2_off_subgroup() -> bytes:
    for x in range(1, 100):
        enc = (1 << 767 | x).to_bytes(96, "big")  # x = x.c0 = small, x.c1 = 0
        try:
            point = signature_to_G2(enc)
        except ValueError:
            continue
        if not subgroup_check(point):
            return enc
    raise AssertionError("no off-subgroup G2 point found")


def _off_curve(length: int) -> bytes:
    """A canonical-looking encoding whose x has no point on the curve."""
    decode = pubkey_to_G1 if length == 48 else signature_to_G2
    for x in range(1, 100):
        enc = (x | 1 << (8 * length - 1)).to_bytes(length, "big")
        try:
            decode(enc)
        except ValueError:
            return enc
    raise AssertionError("no off-curve x found")


def _negate_pk(pk: bytes) -> bytes:
    return G1_to_pubkey(neg(pubkey_to_G1(pk)))


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def _verdicts(scheme: bls.BLSScheme, corpus) -> list[tuple[str, bool]]:
    return [(label, getattr(scheme, fn)(*args)) for label, fn, args, _ in corpus]


# ---------------------------------------------------------------- known answers


# Vectors of the Ethereum consensus specification, which signs with this ciphersuite.
KAT_SK = bytes.fromhex("263dbd792f5b1be47ed85f8938c0f29586af0d3ac7b977f21c278fe1462040e3")
KAT_PK = bytes.fromhex(
    "a491d1b0ecd9bb917989f0e74f0dea0422eac4a873e5e2644f368dffb9a6e20fd6e10c1b77654d067c0618f6e5a7f79a"
)
KAT_SIG_ZEROS = bytes.fromhex(
    "b6ed936746e01f8ecf281f020953fbf1f01debd5657c4a383940b020b26507f6076334f91e2366c96e9ab279fb5158090352ea1c5b0c9274504f4f0e7053af24802e51e4568d164fe986834f41e55c8e850ce1f98458c0cfc9ab380b55285a55"
)


def test_reference_backend_reproduces_published_vectors(ref):
    assert ref.sk_to_pk(KAT_SK) == KAT_PK
    assert ref.sign(KAT_SK, bytes(32)) == KAT_SIG_ZEROS


def test_fast_backend_reproduces_published_vectors(fast):
    assert fast.sk_to_pk(KAT_SK) == KAT_PK
    assert fast.sign(KAT_SK, bytes(32)) == KAT_SIG_ZEROS
    assert fast.verify(KAT_PK, bytes(32), KAT_SIG_ZEROS)


# ---------------------------------------------------------------- byte-identical output


@FAST_SETTINGS
@given(ikm=ikms, key_info=st.binary(max_size=40))
def test_keygen_is_identical_on_both_backends(ikm, key_info):
    # KeyGen is hashing only, cheap on both sides: many examples.
    ref_sk = bls.scheme("py_ecc").keygen(ikm, key_info)
    if FAST in bls.available_backends():
        assert bls.scheme(FAST).keygen(ikm, key_info) == ref_sk
    assert bls._hkdf_keygen(ikm, key_info).to_bytes(32, "big") == ref_sk
    assert 0 < int.from_bytes(ref_sk, "big") < R


@REF_SETTINGS
@given(ikm_list=st.lists(ikms, min_size=1, max_size=3), message=messages)
def test_bls_backends_give_identical_keys_signatures_and_aggregates(ref, fast, ikm_list, message):
    sks = [ref.keygen(ikm) for ikm in ikm_list]
    assert [fast.keygen(ikm) for ikm in ikm_list] == sks
    pks = [ref.sk_to_pk(sk) for sk in sks]
    assert [fast.sk_to_pk(sk) for sk in sks] == pks
    sigs = [ref.sign(sk, message) for sk in sks]
    assert [fast.sign(sk, message) for sk in sks] == sigs
    assert fast.pop_prove(sks[0]) == ref.pop_prove(sks[0])
    agg = ref.aggregate(sigs)
    assert fast.aggregate(sigs) == agg
    assert all(len(pk) == 48 for pk in pks) and len(agg) == 96
    # One reference verification per example keeps the file fast.
    assert ref.fast_aggregate_verify(pks, message, agg)
    assert fast.fast_aggregate_verify(pks, message, agg)


@FAST_SETTINGS
@given(
    ikm_list=st.lists(ikms, min_size=1, max_size=5, unique=True), message=messages, wrong=messages
)
def test_fast_backend_accepts_exactly_the_right_signatures(fast, ikm_list, message, wrong):
    sks = [fast.keygen(ikm) for ikm in ikm_list]
    pks = [fast.sk_to_pk(sk) for sk in sks]
    sigs = [fast.sign(sk, message) for sk in sks]
    agg = fast.aggregate(sigs)
    assert all(fast.verify(pk, message, sig) for pk, sig in zip(pks, sigs, strict=True))
    assert all(fast.pop_verify(pk, fast.pop_prove(sk)) for pk, sk in zip(pks, sks, strict=True))
    assert fast.fast_aggregate_verify(pks, message, agg)
    assert fast.aggregate_verify(pks, [message] * len(pks), agg)
    if wrong != message:
        assert not fast.verify(pks[0], wrong, sigs[0])
        assert not fast.fast_aggregate_verify(pks, wrong, agg)
    if len(pks) > 1:
        assert not fast.fast_aggregate_verify(pks[1:], message, agg)
        assert not fast.verify(pks[1], message, sigs[0])


def test_aggregate_of_infinity_and_non_subgroup_points_is_identical(ref, fast, signed):
    off = _g2_off_subgroup()
    sig = signed["msg"][0]
    minus_sig = _flip(sig, 2)  # the sign flag: -sig
    for sigs in ([INF_G2], [sig, minus_sig], [off], [off, sig, off], [INF_G2, sig]):
        assert fast.aggregate(sigs) == ref.aggregate(sigs)
    assert ref.aggregate([sig, minus_sig]) == INF_G2


def test_aggregate_verify_checks_each_signer_against_its_own_message(schemes, signers, signed):
    pks = [pk for _, pk, _ in signers[:2]]
    agg = schemes[0].aggregate([signed["msg"][0], signed["other"][1]])
    for scheme in schemes:
        assert scheme.aggregate_verify(pks, [MSG, b"another checkpoint"], agg)
        assert not scheme.aggregate_verify(pks, [b"another checkpoint", MSG], agg)
        assert not scheme.aggregate_verify(pks, [MSG], agg)  # one message short
        assert not scheme.aggregate_verify([], [], agg)


# ---------------------------------------------------------------- invalid inputs


@pytest.fixture(scope="module")
def corpus(signers, signed):
    """(label, function, args, expected verdict) for every kind of bad input, and valid controls."""
    (sk0, pk0, pop0), (_, pk1, pop1), (_, pk2, _), (_, pk3, _) = signers
    pks = [pk0, pk1, pk2, pk3]
    sig0, sig1 = signed["msg"][0], signed["msg"][1]
    agg = bls.scheme("py_ecc").aggregate(signed["msg"])
    agg3 = bls.scheme("py_ecc").aggregate(signed["msg"][:3])
    agg_other = bls.scheme("py_ecc").aggregate(signed["other"])
    swapped = bls.scheme("py_ecc").aggregate([signed["other"][0], sig1])
    off_g1, off_g2 = _g1_off_subgroup(), _g2_off_subgroup()
    x_ge_p = (P | 1 << 383).to_bytes(48, "big")
    g2_x0_ge_p = (1 << 383 | 1).to_bytes(48, "big") + P.to_bytes(48, "big")
    g2_x1_ge_p = (P | 1 << 383).to_bytes(48, "big") + (1).to_bytes(48, "big")
    return [
        # valid controls, so the corpus proves the verdicts are not all False
        ("valid signature", "verify", (pk0, MSG, sig0), True),
        ("valid proof of possession", "pop_verify", (pk0, pop0), True),
        ("valid 4-signer aggregate", "fast_aggregate_verify", (pks, MSG, agg), True),
        ("valid key", "key_validate", (pk0,), True),
        (
            "duplicate signer counted twice",
            "fast_aggregate_verify",
            ([pk0, pk0], MSG, bls.scheme("py_ecc").aggregate([sig0, sig0])),
            True,
        ),
        # wrong content
        ("wrong message", "verify", (pk0, b"another checkpoint", sig0), False),
        ("another signer's signature", "verify", (pk1, MSG, sig0), False),
        (
            "signatures swapped between two signers' messages",
            "aggregate_verify",
            ([pk0, pk1], [MSG, b"another checkpoint"], swapped),
            False,
        ),
        ("negated signature (sign flag flipped)", "verify", (pk0, MSG, _flip(sig0, 2)), False),
        ("aggregate over another message", "fast_aggregate_verify", (pks, MSG, agg_other), False),
        ("aggregate missing a signer", "fast_aggregate_verify", (pks, MSG, agg3), False),
        ("aggregate with an extra key", "fast_aggregate_verify", (pks[:3], MSG, agg), False),
        (
            "duplicate signer, single signature",
            "fast_aggregate_verify",
            ([pk0, pk0], MSG, sig0),
            False,
        ),
        (
            "aggregate key at infinity (pk, -pk)",
            "fast_aggregate_verify",
            ([pk0, _negate_pk(pk0)], MSG, INF_G2),
            False,
        ),
        ("proof of possession used as a signature", "verify", (pk0, pk0, pop0), False),
        (
            "signature used as a proof of possession",
            "pop_verify",
            (pk0, bls.scheme("py_ecc").sign(sk0, pk0)),
            False,
        ),
        ("another key's proof of possession", "pop_verify", (pk0, pop1), False),
        ("signature at infinity", "verify", (pk0, MSG, INF_G2), False),
        # public keys that are not keys
        ("public key at infinity", "verify", (INF_G1, MSG, INF_G2), False),
        ("infinity key validated", "key_validate", (INF_G1,), False),
        ("infinity key's proof", "pop_verify", (INF_G1, INF_G2), False),
        ("infinity key among signers", "fast_aggregate_verify", ([pk0, INF_G1], MSG, sig0), False),
        ("infinity with the sign flag", "key_validate", (bytes([0xE0]) + bytes(47),), False),
        ("infinity with a stray bit", "key_validate", (INF_G1[:-1] + b"\x01",), False),
        ("all ones", "key_validate", (b"\xff" * 48,), False),
        ("all zeros", "key_validate", (bytes(48),), False),
        ("x = 0 without the infinity flag", "key_validate", (bytes([0x80]) + bytes(47),), False),
        ("uncompressed flag", "key_validate", (bytes([pk0[0] & 0x7F]) + pk0[1:],), False),
        ("x not below p", "key_validate", (x_ge_p,), False),
        ("key off the curve", "key_validate", (_off_curve(48),), False),
        ("key off the subgroup", "key_validate", (off_g1,), False),
        (
            "key off the subgroup in an aggregate",
            "fast_aggregate_verify",
            ([pk0, off_g1], MSG, sig0),
            False,
        ),
        ("truncated key", "verify", (pk0[:47], MSG, sig0), False),
        ("key with a trailing byte", "verify", (pk0 + b"\x00", MSG, sig0), False),
        ("empty key list", "fast_aggregate_verify", ([], MSG, sig0), False),
        ("keys given as bytes, not a list", "fast_aggregate_verify", (pk0, MSG, sig0), False),
        ("key of the wrong type", "verify", (pk0.hex(), MSG, sig0), False),
        # signatures that are not signatures
        ("truncated signature", "verify", (pk0, MSG, sig0[:95]), False),
        ("signature with a trailing byte", "verify", (pk0, MSG, sig0 + b"\x00"), False),
        ("signature off the curve", "verify", (pk0, MSG, _off_curve(96)), False),
        ("signature off the subgroup", "verify", (pk0, MSG, off_g2), False),
        ("signature x.c0 not below p", "verify", (pk0, MSG, g2_x0_ge_p), False),
        ("signature x.c1 not below p", "verify", (pk0, MSG, g2_x1_ge_p), False),
        ("signature infinity with a stray bit", "verify", (pk0, MSG, INF_G2[:-1] + b"\x01"), False),
        ("signature all ones", "pop_verify", (pk0, b"\xff" * 96), False),
        ("signature None", "verify", (pk0, MSG, None), False),
        ("message not bytes", "verify", (pk0, MSG.decode(), sig0), False),
        (
            "aggregate_verify with unequal lengths",
            "aggregate_verify",
            ([pk0, pk1], [MSG], agg),
            False,
        ),
    ]


@pytest.fixture(scope="module")
def ref_verdicts(ref, corpus):
    return _verdicts(ref, corpus)  # ~5 s of py-ecc: computed once for the two tests below


def test_reference_backend_gives_the_expected_verdicts(corpus, ref_verdicts):
    assert ref_verdicts == [(label, expected) for label, _, _, expected in corpus]


def test_bls_backends_agree_on_invalid_inputs(fast, corpus, ref_verdicts):
    assert _verdicts(fast, corpus) == ref_verdicts
    assert _verdicts(fast, corpus) == [(label, expected) for label, _, _, expected in corpus]


@settings(max_examples=12, deadline=None, database=None)
@given(bit=st.integers(0, 48 * 8 - 1), sig_bit=st.integers(0, 96 * 8 - 1))
def test_bls_backends_agree_on_flipped_bits(schemes, signers, signed, bit, sig_bit):
    pk, sig = signers[0][1], signed["msg"][0]
    bad_pk, bad_sig = _flip(pk, bit), _flip(sig, sig_bit)
    for args in ((bad_pk, MSG, sig), (pk, MSG, bad_sig)):
        assert [scheme.verify(*args) for scheme in schemes] == [False] * len(schemes)


@settings(max_examples=40, deadline=None, database=None)
@given(
    data=st.one_of(
        st.binary(min_size=0, max_size=100),
        st.binary(min_size=48, max_size=48),
        st.binary(min_size=96, max_size=96),
        st.none(),
        st.integers(),
        st.text(),
    )
)
def test_verification_functions_never_raise_on_garbage(schemes, signers, signed, data):
    pk, sig = signers[0][1], signed["msg"][0]
    for scheme in schemes:
        assert scheme.key_validate(data) is False
        assert scheme.verify(data, MSG, sig) is False
        assert scheme.pop_verify(pk, data) is False
        assert scheme.fast_aggregate_verify([pk, data], MSG, sig) is False
        assert scheme.aggregate_verify([data], [MSG], sig) is False


def test_aggregate_refuses_malformed_signatures(schemes, signed):
    sig = signed["msg"][0]
    for bad in (
        [],
        [sig[:95]],
        [sig, b"\xff" * 96],
        [_off_curve(96)],
        [INF_G2[:-1] + b"\x01"],
        sig,
    ):
        for scheme in schemes:
            with pytest.raises(bls.BLSError):
                scheme.aggregate(bad)


@pytest.mark.parametrize(
    "sk",
    [bytes(32), R.to_bytes(32, "big"), b"\xff" * 32, bytes(31), "00" * 32],
    ids=["zero", "r", "above-r", "31-bytes", "hex-text"],
)
def test_secret_keys_outside_one_to_r_are_refused(schemes, sk):
    for scheme in schemes:
        for fn, args in (
            (scheme.sk_to_pk, (sk,)),
            (scheme.pop_prove, (sk,)),
            (scheme.sign, (sk, MSG)),
        ):
            with pytest.raises(bls.BLSError, match="secret key"):
                fn(*args)


def test_keygen_refuses_short_key_material(ref):
    with pytest.raises(bls.BLSError, match="at least 32 bytes"):
        ref.keygen(bytes(31))


# ---------------------------------------------------------------- proof of possession


def test_pop_rejects_rogue_key(ref, schemes, signers):
    """A rogue key pk_r = a*G - pk_victim makes an aggregate the attacker alone can sign;
    the proof of possession is what keeps such a key out of the validator set."""
    victim_pk = signers[0][1]
    attacker_sk = ref.keygen(b"attacker key material".ljust(32, b"!"))
    a = int.from_bytes(attacker_sk, "big")
    rogue_pk = G1_to_pubkey(add(multiply(G1, a), neg(pubkey_to_G1(victim_pk))))
    forged = ref.sign(attacker_sk, MSG)
    # Without proofs of possession the forgery passes as "victim and rogue both signed".
    for scheme in schemes:
        assert scheme.fast_aggregate_verify([victim_pk, rogue_pk], MSG, forged)
    # The attacker has no secret key for rogue_pk, so no proof of it verifies.
    attempts = [
        ref.pop_prove(attacker_sk),  # proof for a*G
        signers[0][2],  # the victim's proof
        ref.aggregate([ref.pop_prove(attacker_sk), signers[0][2]]),  # both proofs summed
        ref.sign(attacker_sk, rogue_pk),  # a signature of the rogue key, wrong tag
        G2ProofOfPossession._CoreSign(a, rogue_pk, bls.DST_POP),  # right tag, wrong secret
    ]
    for scheme in schemes:
        assert [scheme.pop_verify(rogue_pk, proof) for proof in attempts] == [False] * len(attempts)
        assert scheme.key_validate(rogue_pk)  # a well-formed key all the same


# ---------------------------------------------------------------- backend selection


def test_module_functions_follow_the_selected_backend(fast):
    before = bls.backend_name()
    try:
        bls.use_backend("py_ecc")
        assert bls.backend_name() == "py_ecc"
        ref_sk = bls.keygen(bytes(range(32)))
        ref_pk = bls.sk_to_pk(ref_sk)
        bls.use_backend(FAST)
        assert bls.backend_name() == FAST
        assert bls.sk_to_pk(bls.keygen(bytes(range(32)))) == ref_pk
    finally:
        bls.use_backend(before)


def test_default_backend_is_the_fast_one_when_installed():
    expected = FAST if FAST in bls.available_backends() else "py_ecc"
    assert _backend_in_subprocess(None) == (0, expected)


def test_backend_env_var_selects_the_backend():
    assert _backend_in_subprocess("py_ecc") == (0, "py_ecc")


def test_backend_env_var_naming_an_unknown_backend_fails_loudly():
    code, out = _backend_in_subprocess("openssl")
    assert code != 0 and "GRIDLEDGER_BLS_BACKEND=openssl" in out and "unknown BLS backend" in out


def test_unknown_backend_is_refused():
    with pytest.raises(bls.BLSError, match="known: py_ecc, arkworks"):
        bls.use_backend("blspy")


def test_fast_backend_is_installed_when_required():
    if not REQUIRE_FAST:
        pytest.skip("GRIDLEDGER_REQUIRE_FAST_BLS is not 1")
    assert FAST in bls.available_backends(), "py-arkworks-bls12381 is required but not installed"


def _backend_in_subprocess(value: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != bls.BACKEND_ENV}
    if value is not None:
        env[bls.BACKEND_ENV] = value
    proc = subprocess.run(
        [sys.executable, "-c", "from ledger import bls; print(bls.backend_name())"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, (proc.stdout.strip() if proc.returncode == 0 else proc.stderr)
