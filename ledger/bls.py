"""BLS12-381 aggregate signatures (IETF draft-irtf-cfrg-bls-signature, proof-of-possession
ciphersuite ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_``, minimal-pubkey-size).

Validators sign checkpoints with BLS so an observer, a light client or another shard
checks a checkpoint certificate of any number of signers with one aggregate
verification. Every BLS public key is registered with a proof of possession, which is
what makes fast aggregate verification over one message safe against rogue keys:
:func:`fast_aggregate_verify` trusts that every key passed to it had its proof checked
with :func:`pop_verify` when it joined the validator set.

Encodings: secret keys are 32 big-endian bytes (an integer in [1, r-1]), public keys are
48-byte compressed G1 points, signatures and proofs are 96-byte compressed G2 points
(the ZCash serialisation every BLS12-381 implementation shares).

Two backends implement the same scheme behind these functions:

* ``py_ecc``: the reference, pure Python, always present (a verification costs ~0.3 s);
* ``arkworks``: the compiled py-arkworks-bls12381 package (``pip install .[fast]``),
  ~1000 times faster; the scheme is assembled here from its curve operations.

The default is ``arkworks`` when installed, else ``py_ecc``. The environment variable
``GRIDLEDGER_BLS_BACKEND`` or :func:`use_backend` selects one explicitly.
``tests/test_bls.py`` proves both give byte-identical keys, signatures and aggregates
and the same verdict on every verification, malformed input included.

Contract: every verification function (:func:`verify`, :func:`fast_aggregate_verify`,
:func:`aggregate_verify`, :func:`pop_verify`, :func:`key_validate`) returns False and
never raises for malformed input: wrong types or lengths, non-canonical encodings,
points off the curve or outside the prime-order subgroup, the point at infinity as a
public key, empty key lists. Functions that produce keys or signatures raise
:class:`BLSError` for bad input.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from ledger.crypto import CryptoError

__all__ = [
    "BACKEND_ENV",
    "DST_POP",
    "DST_SIGN",
    "FAST_BACKEND",
    "PUBLIC_KEY_LEN",
    "SECRET_KEY_LEN",
    "SIGNATURE_LEN",
    "BLSError",
    "BLSScheme",
    "aggregate",
    "aggregate_verify",
    "available_backends",
    "backend_name",
    "fast_aggregate_verify",
    "key_validate",
    "keygen",
    "pop_prove",
    "pop_verify",
    "scheme",
    "sign",
    "sk_to_pk",
    "use_backend",
    "verify",
]

SECRET_KEY_LEN = 32
PUBLIC_KEY_LEN = 48
SIGNATURE_LEN = 96
MIN_IKM_LEN = 32

DST_SIGN = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
DST_POP = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
BACKEND_ENV = "GRIDLEDGER_BLS_BACKEND"

# The base field modulus p and the prime order r of G1 and G2.
_P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
_R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
_FIELD_BITS = (1 << 381) - 1
_INFINITY_FLAGS = 0xC0  # compressed + infinity, sign bit clear


class BLSError(CryptoError):
    """A BLS secret key, key material or signature to aggregate is malformed."""


# ---------------------------------------------------------------- encoding checks
# Both backends must reject exactly the same byte strings. py-ecc refuses every
# non-canonical encoding; arkworks accepts some (any byte string with the infinity
# flag decodes as infinity, and 0x80 00..00 decodes as the non-subgroup point (0, 2)).
# So the canonical form is checked here, in Python, before any backend sees the bytes;
# after it the backends differ only in arithmetic, which is the same maths.


def _canonical_point(data: object, length: int) -> bool:
    """True for a well-formed compressed encoding (on-curve is left to the backend)."""
    if not isinstance(data, bytes) or len(data) != length:
        return False
    flags = data[0] & 0xE0
    if not flags & 0x80:  # uncompressed encodings are not accepted
        return False
    if flags & 0x40:  # infinity: exactly 0xc0 followed by zeros
        return data[0] == _INFINITY_FLAGS and not any(data[1:])
    # Each 48-byte field element (x, or x.c1 then x.c0 in G2) is below p, and x = 0 is
    # reserved for infinity: py-ecc's rule, which keeps the off-subgroup G1 point (0, 2)
    # undecodable on both backends even where a backend skips the subgroup check.
    xs = [int.from_bytes(data[i : i + 48], "big") & _FIELD_BITS for i in range(0, length, 48)]
    return all(x < _P for x in xs) and any(xs)


def _is_g1(data: object) -> bool:
    return _canonical_point(data, PUBLIC_KEY_LEN)


def _is_g2(data: object) -> bool:
    return _canonical_point(data, SIGNATURE_LEN)


def _secret_int(sk: object) -> int:
    if not isinstance(sk, bytes) or len(sk) != SECRET_KEY_LEN:
        raise BLSError(f"a BLS secret key is {SECRET_KEY_LEN} bytes, got {_describe(sk)}")
    value = int.from_bytes(sk, "big")
    if not 0 < value < _R:
        raise BLSError("a BLS secret key encodes an integer from 1 to r-1 (the group order)")
    return value


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return type(value).__name__


def _hkdf_keygen(ikm: bytes, key_info: bytes) -> int:
    """KeyGen of the IETF draft (HKDF-SHA-256, salt re-hashed until the key is nonzero).

    Written out for backends without it; byte-identical to py-ecc's ``KeyGen``.
    """
    length = 48  # ceil(1.5 * ceil(log2(r)) / 8)
    salt = b"BLS-SIG-KEYGEN-SALT-"
    sk = 0
    while sk == 0:
        salt = hashlib.sha256(salt).digest()
        prk = hmac.new(salt, ikm + b"\x00", hashlib.sha256).digest()
        okm, block, info = b"", b"", key_info + length.to_bytes(2, "big")
        for counter in range(1, -(-length // 32) + 1):
            block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
            okm += block
        sk = int.from_bytes(okm[:length], "big") % _R
    return sk


# ---------------------------------------------------------------- backends
# A backend gets only inputs that passed the checks above (canonical encodings, secret
# keys in range, non-empty lists of equal length) and may still raise ValueError for a
# point that is off the curve or outside the subgroup; BLSScheme turns that into False.


class _PyEccBackend:
    name = "py_ecc"

    def __init__(self) -> None:
        from eth_utils import ValidationError
        from py_ecc.bls import G2ProofOfPossession

        self._s = G2ProofOfPossession
        self.errors: tuple[type[Exception], ...] = (ValidationError, ValueError, AssertionError)

    def keygen(self, ikm: bytes, key_info: bytes) -> int:
        return self._s.KeyGen(ikm, key_info)

    def sk_to_pk(self, sk: int) -> bytes:
        return self._s.SkToPk(sk)

    def sign(self, sk: int, message: bytes) -> bytes:
        return self._s.Sign(sk, message)

    def pop_prove(self, sk: int) -> bytes:
        return self._s.PopProve(sk)

    def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
        return self._s.Verify(pk, message, signature)

    def pop_verify(self, pk: bytes, proof: bytes) -> bool:
        return self._s.PopVerify(pk, proof)

    def key_validate(self, pk: bytes) -> bool:
        return self._s.KeyValidate(pk)

    def aggregate(self, signatures: list[bytes]) -> bytes:
        return self._s.Aggregate(signatures)

    def fast_aggregate_verify(self, pks: list[bytes], message: bytes, signature: bytes) -> bool:
        return self._s.FastAggregateVerify(pks, message, signature)

    def aggregate_verify(self, pks: list[bytes], messages: list[bytes], signature: bytes) -> bool:
        return self._s.AggregateVerify(pks, messages, signature)


class _ArkworksBackend:
    """The scheme built from py-arkworks-bls12381's curve operations, step by step as in the draft.

    ``from_compressed_bytes`` checks the subgroup (it raises ValueError outside it);
    ``from_compressed_bytes_unchecked`` checks only that the point is on the curve.
    """

    name = "arkworks"

    def __init__(self) -> None:
        from py_arkworks_bls12381 import GT, G1Point, G2Point, Scalar

        self._G1, self._G2, self._GT, self._Scalar = G1Point, G2Point, GT, Scalar
        self._neg_g1 = -G1Point()
        self._g1_identity = G1Point.identity()
        self.errors: tuple[type[Exception], ...] = (ValueError, OverflowError)

    def keygen(self, ikm: bytes, key_info: bytes) -> int:
        return _hkdf_keygen(ikm, key_info)

    def sk_to_pk(self, sk: int) -> bytes:
        return (self._G1() * self._Scalar(sk)).to_compressed_bytes()

    def _core_sign(self, sk: int, message: bytes, dst: bytes) -> bytes:
        return (self._G2.hash_to_curve(message, dst) * self._Scalar(sk)).to_compressed_bytes()

    def sign(self, sk: int, message: bytes) -> bytes:
        return self._core_sign(sk, message, DST_SIGN)

    def pop_prove(self, sk: int) -> bytes:
        return self._core_sign(sk, self.sk_to_pk(sk), DST_POP)

    def _pubkey_point(self, pk: bytes):  # KeyValidate, returning the point; raises if invalid
        point = self._G1.from_compressed_bytes(pk)
        if point == self._g1_identity:
            raise ValueError("the point at infinity is not a public key")
        return point

    def _core_verify_point(self, pk_point, message: bytes, signature: bytes, dst: bytes) -> bool:
        if pk_point == self._g1_identity:
            return False
        sig_point = self._G2.from_compressed_bytes(signature)
        hashed = self._G2.hash_to_curve(message, dst)
        return self._GT.pairing_check([pk_point, self._neg_g1], [hashed, sig_point])

    def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
        return self._core_verify_point(self._pubkey_point(pk), message, signature, DST_SIGN)

    def pop_verify(self, pk: bytes, proof: bytes) -> bool:
        return self._core_verify_point(self._pubkey_point(pk), pk, proof, DST_POP)

    def key_validate(self, pk: bytes) -> bool:
        self._pubkey_point(pk)
        return True

    def aggregate(self, signatures: list[bytes]) -> bytes:
        # Like the draft's Aggregate (and py-ecc): on-curve points, no subgroup check;
        # a non-subgroup aggregate fails every verification later.
        total = self._G2.identity()
        for sig in signatures:
            total = total + self._G2.from_compressed_bytes_unchecked(sig)
        return total.to_compressed_bytes()

    def fast_aggregate_verify(self, pks: list[bytes], message: bytes, signature: bytes) -> bool:
        total = self._g1_identity
        for pk in pks:
            total = total + self._pubkey_point(pk)
        # An aggregate key at infinity fails CoreVerify's KeyValidate (draft and py-ecc).
        return self._core_verify_point(total, message, signature, DST_SIGN)

    def aggregate_verify(self, pks: list[bytes], messages: list[bytes], signature: bytes) -> bool:
        points = [self._pubkey_point(pk) for pk in pks]
        sig_point = self._G2.from_compressed_bytes(signature)
        hashes = [self._G2.hash_to_curve(m, DST_SIGN) for m in messages]
        return self._GT.pairing_check([*points, self._neg_g1], [*hashes, sig_point])


_BACKEND_TYPES = {"py_ecc": _PyEccBackend, "arkworks": _ArkworksBackend}
FAST_BACKEND = "arkworks"


# ---------------------------------------------------------------- the scheme


class BLSScheme:
    """The BLS proof-of-possession scheme on one backend, with the module's input contract."""

    def __init__(self, backend: _PyEccBackend | _ArkworksBackend) -> None:
        self._b = backend
        self.name: str = backend.name

    def __repr__(self) -> str:
        return f"BLSScheme({self.name!r})"

    def _guard(self, fn, *args) -> bool:
        # py-ecc returns False for bad points, arkworks raises ValueError: normalise to False.
        try:
            return fn(*args) is True
        except self._b.errors:
            return False

    def keygen(self, ikm: bytes, key_info: bytes = b"") -> bytes:
        """Derive a 32-byte secret key from at least 32 bytes of secret key material (IETF KeyGen)."""
        if not isinstance(ikm, bytes) or len(ikm) < MIN_IKM_LEN:
            raise BLSError(
                f"BLS key material is at least {MIN_IKM_LEN} bytes, got {_describe(ikm)}"
            )
        if not isinstance(key_info, bytes):
            raise BLSError(f"BLS key_info is bytes, got {_describe(key_info)}")
        return self._b.keygen(ikm, key_info).to_bytes(SECRET_KEY_LEN, "big")

    def sk_to_pk(self, sk: bytes) -> bytes:
        """The 48-byte public key of a secret key."""
        return self._b.sk_to_pk(_secret_int(sk))

    def sign(self, sk: bytes, message: bytes) -> bytes:
        """The 96-byte signature of ``message``."""
        if not isinstance(message, bytes):
            raise BLSError(f"a BLS message is bytes, got {_describe(message)}")
        return self._b.sign(_secret_int(sk), message)

    def pop_prove(self, sk: bytes) -> bytes:
        """The 96-byte proof of possession of ``sk`` (a signature of the public key, own tag)."""
        return self._b.pop_prove(_secret_int(sk))

    def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is ``pk``'s signature of ``message``."""
        if not (_is_g1(pk) and isinstance(message, bytes) and _is_g2(signature)):
            return False
        return self._guard(self._b.verify, pk, message, signature)

    def pop_verify(self, pk: bytes, proof: bytes) -> bool:
        """True when ``proof`` proves possession of the secret key of a valid ``pk``."""
        if not (_is_g1(pk) and _is_g2(proof)):
            return False
        return self._guard(self._b.pop_verify, pk, proof)

    def key_validate(self, pk: bytes) -> bool:
        """True when ``pk`` is a point of the G1 subgroup other than infinity."""
        if not _is_g1(pk):
            return False
        return self._guard(self._b.key_validate, pk)

    def aggregate(self, signatures: Sequence[bytes]) -> bytes:
        """The sum of one or more signatures. Each must be a well-formed point on the curve;
        subgroup membership is checked when the aggregate is verified (as in the draft)."""
        sigs = _as_list(signatures)
        if not sigs:
            raise BLSError("aggregating needs at least one signature")
        for i, sig in enumerate(sigs):
            if not _is_g2(sig):
                raise BLSError(f"signature {i} is not a {SIGNATURE_LEN}-byte compressed G2 point")
        try:
            return self._b.aggregate(sigs)
        except self._b.errors:
            raise BLSError("a signature to aggregate is not a point on the curve") from None

    def fast_aggregate_verify(self, pks: Sequence[bytes], message: bytes, signature: bytes) -> bool:
        """True when ``signature`` aggregates signatures of ``message`` by every key in ``pks``.

        Only safe for keys whose proof of possession was verified. A key listed twice
        counts twice (as in the draft): callers that count signers must deduplicate.
        """
        keys = _as_list(pks)
        if not keys or not all(_is_g1(pk) for pk in keys):
            return False
        if not (isinstance(message, bytes) and _is_g2(signature)):
            return False
        return self._guard(self._b.fast_aggregate_verify, keys, message, signature)

    def aggregate_verify(
        self, pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes
    ) -> bool:
        """True when ``signature`` aggregates ``pks[i]``'s signature of ``messages[i]`` for every i."""
        keys, msgs = _as_list(pks), _as_list(messages)
        if not keys or len(keys) != len(msgs) or not all(_is_g1(pk) for pk in keys):
            return False
        if not (all(isinstance(m, bytes) for m in msgs) and _is_g2(signature)):
            return False
        return self._guard(self._b.aggregate_verify, keys, msgs, signature)


def _as_list(items: object) -> list:
    # A bytes value is a sequence too, but never a list of keys or signatures.
    if isinstance(items, list | tuple):
        return list(items)
    return []


_schemes: dict[str, BLSScheme] = {}


def available_backends() -> list[str]:
    """Names of the installed backends, the reference ``py_ecc`` first."""
    names = []
    for name in _BACKEND_TYPES:
        try:
            scheme(name)
        except BLSError:
            continue
        names.append(name)
    return names


def scheme(name: str) -> BLSScheme:
    """The scheme on the named backend (for comparing backends; normal code uses the functions)."""
    if name not in _schemes:
        if name not in _BACKEND_TYPES:
            raise BLSError(f"unknown BLS backend {name!r}; known: {', '.join(_BACKEND_TYPES)}")
        try:
            _schemes[name] = BLSScheme(_BACKEND_TYPES[name]())
        except ImportError as exc:
            raise BLSError(f"BLS backend {name!r} is not installed ({exc.name})") from None
    return _schemes[name]


_active: BLSScheme


def use_backend(name: str) -> None:
    """Make every module-level function use the named backend."""
    global _active
    _active = scheme(name)


def backend_name() -> str:
    """The name of the backend in use."""
    return _active.name


def _select_default() -> None:
    requested = os.environ.get(BACKEND_ENV, "").strip()
    if requested:
        try:
            use_backend(requested)
        except BLSError as exc:
            raise BLSError(f"{BACKEND_ENV}={requested}: {exc}") from None
        return
    use_backend(FAST_BACKEND if FAST_BACKEND in available_backends() else "py_ecc")


# ---------------------------------------------------------------- module-level API


def keygen(ikm: bytes, key_info: bytes = b"") -> bytes:
    """Derive a 32-byte secret key from at least 32 bytes of key material."""
    return _active.keygen(ikm, key_info)


def sk_to_pk(sk: bytes) -> bytes:
    """The 48-byte public key of a 32-byte secret key."""
    return _active.sk_to_pk(sk)


def sign(sk: bytes, message: bytes) -> bytes:
    """The 96-byte signature of ``message``."""
    return _active.sign(sk, message)


def verify(pk: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``pk``'s signature of ``message``; False for any bad input."""
    return _active.verify(pk, message, signature)


def aggregate(signatures: list[bytes]) -> bytes:
    """The aggregate of one or more signatures; :class:`BLSError` for malformed ones."""
    return _active.aggregate(signatures)


def fast_aggregate_verify(pks: list[bytes], message: bytes, signature: bytes) -> bool:
    """True when ``signature`` aggregates every key's signature of ``message``."""
    return _active.fast_aggregate_verify(pks, message, signature)


def aggregate_verify(pks: list[bytes], messages: list[bytes], signature: bytes) -> bool:
    """True when ``signature`` aggregates each key's signature of its own message."""
    return _active.aggregate_verify(pks, messages, signature)


def pop_prove(sk: bytes) -> bytes:
    """The 96-byte proof of possession of ``sk``."""
    return _active.pop_prove(sk)


def pop_verify(pk: bytes, proof: bytes) -> bool:
    """True when ``proof`` is a valid proof of possession for ``pk``."""
    return _active.pop_verify(pk, proof)


def key_validate(pk: bytes) -> bool:
    """True when ``pk`` is a valid public key (in the subgroup, not infinity)."""
    return _active.key_validate(pk)


_select_default()
