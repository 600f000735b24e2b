"""BLS12-381 aggregate signatures (IETF draft-irtf-cfrg-bls-signature, proof-of-possession
ciphersuite ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_``).

Validators sign checkpoints with BLS so an observer, a light client or another shard
checks a checkpoint certificate of any number of signers with one aggregate
verification. Every BLS public key is registered with a proof of possession, which is
what makes fast aggregate verification over one message safe against rogue keys.

py-ecc is the reference backend and always present. A compiled backend serves the
hot path when installed; ``tests/test_bls.py`` proves it byte-identical to py-ecc.
"""

from __future__ import annotations

from py_ecc.bls import G2ProofOfPossession as _PyEcc

__all__ = [
    "PUBLIC_KEY_LEN",
    "SECRET_KEY_LEN",
    "SIGNATURE_LEN",
    "aggregate",
    "fast_aggregate_verify",
    "keygen",
    "pop_prove",
    "pop_verify",
    "sign",
    "sk_to_pk",
    "verify",
]

SECRET_KEY_LEN = 32
PUBLIC_KEY_LEN = 48
SIGNATURE_LEN = 96


def keygen(ikm: bytes) -> bytes:
    """Derive a 32-byte secret key from at least 32 bytes of key material."""
    return _PyEcc.KeyGen(ikm).to_bytes(SECRET_KEY_LEN, "big")


def sk_to_pk(sk: bytes) -> bytes:
    return _PyEcc.SkToPk(int.from_bytes(sk, "big"))


def sign(sk: bytes, message: bytes) -> bytes:
    return _PyEcc.Sign(int.from_bytes(sk, "big"), message)


def verify(pk: bytes, message: bytes, signature: bytes) -> bool:
    return _PyEcc.Verify(pk, message, signature)


def aggregate(signatures: list[bytes]) -> bytes:
    return _PyEcc.Aggregate(list(signatures))


def fast_aggregate_verify(pks: list[bytes], message: bytes, signature: bytes) -> bool:
    return _PyEcc.FastAggregateVerify(list(pks), message, signature)


def pop_prove(sk: bytes) -> bytes:
    return _PyEcc.PopProve(int.from_bytes(sk, "big"))


def pop_verify(pk: bytes, proof: bytes) -> bool:
    return _PyEcc.PopVerify(pk, proof)
