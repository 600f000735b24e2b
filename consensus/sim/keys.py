"""Identities of simulated validators: real Ed25519/BLS keys, or cheap deterministic stand-ins.

A seed sweep signs and verifies hundreds of thousands of votes, so the simulator
offers a *cheap* scheme for bulk runs next to the real one used by the benchmark and
by spot checks:

* ``signatures="cheap"``: a signature is a keyed BLAKE2b (64 bytes) of exactly the
  bytes an Ed25519 signature would cover (:func:`ledger.crypto.signing_bytes`, so the
  chain id and message kind are bound in). Each node's key is a secret drawn from the
  run's seeded RNG; only the :class:`Keyring` (the verifier) knows it, so a replica,
  honest or Byzantine, cannot sign as another node. ``signatures="ed25519"``: real
  :class:`ledger.crypto.PrivateKey` keys.
* ``bls="cheap"``: a share is SHAKE-256 of the node's BLS secret and the message
  (96 bytes); an aggregate is the sum of shares modulo 2**768, which, like BLS, is
  independent of order and does not cancel repeated shares. ``bls="real"``:
  :mod:`ledger.bls` (py-ecc, ~0.1 s to sign, ~0.3 s to verify).

Both schemes sit behind the ``Signer``/``Verifier`` protocols of
:mod:`consensus.types`, so replicas never know which one they run with.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass

from consensus.types import NodeId
from ledger.crypto import PrivateKey, signing_bytes, verify_signature
from ledger.validators import Validator

__all__ = ["BLS_MODES", "SIGNATURE_MODES", "Keyring", "SimIdentity"]

SIGNATURE_MODES = ("cheap", "ed25519")
BLS_MODES = ("cheap", "real")

_AGGREGATE_MODULUS = 1 << 768
_BLS_SIGNATURE_LEN = 96


class _CheapSigner:
    __slots__ = ("_bls_secret", "_chain_id", "_secret", "_real_key", "_real_bls", "node_id")

    def __init__(self, chain_id: str, node_id: NodeId, secret: bytes | None, real_key: PrivateKey | None,
                 bls_secret: bytes | None, real_bls: bytes | None) -> None:
        self._chain_id = chain_id
        self.node_id = node_id
        self._secret = secret
        self._real_key = real_key
        self._bls_secret = bls_secret
        self._real_bls = real_bls

    def sign(self, kind: str, payload: bytes) -> bytes:
        if self._real_key is not None:
            return self._real_key.sign(self._chain_id, kind, payload)
        return hashlib.blake2b(signing_bytes(self._chain_id, kind, payload), key=self._secret, digest_size=64).digest()

    def bls_sign(self, message: bytes) -> bytes:
        if self._real_bls is not None:
            from ledger import bls

            return bls.sign(self._real_bls, message)
        return hashlib.shake_256(self._bls_secret + message).digest(_BLS_SIGNATURE_LEN)


@dataclass(frozen=True)
class SimIdentity:
    """One simulated validator: its node id, its genesis entry and the signer only it holds."""

    name: str
    node_id: NodeId
    validator: Validator
    signer: _CheapSigner


class Keyring:
    """Makes identities for one run and verifies their signatures (it is the run's ``Verifier``)."""

    def __init__(self, chain_id: str, rng: random.Random, *, signatures: str = "cheap", bls: str = "cheap") -> None:
        if signatures not in SIGNATURE_MODES:
            raise ValueError(f"signatures must be one of {SIGNATURE_MODES}, not {signatures!r}")
        if bls not in BLS_MODES:
            raise ValueError(f"bls must be one of {BLS_MODES}, not {bls!r}")
        self.chain_id = chain_id
        self.signatures = signatures
        self.bls = bls
        self._rng = rng
        self._secrets: dict[NodeId, bytes] = {}
        self._bls_secrets: dict[bytes, bytes] = {}

    def new_identity(self, name: str) -> SimIdentity:
        rng = self._rng
        secret = real_key = bls_secret = real_bls = None
        if self.signatures == "ed25519":
            real_key = PrivateKey(rng.randbytes(32))
            node_id = real_key.public_key.raw
        else:
            node_id = rng.randbytes(32)
            secret = rng.randbytes(32)
            self._secrets[node_id] = secret
        if self.bls == "real":
            from ledger import bls

            real_bls = bls.keygen(rng.randbytes(32))
            bls_key = bls.sk_to_pk(real_bls)
            pop = bls.pop_prove(real_bls)
        else:
            bls_key = rng.randbytes(48)
            bls_secret = rng.randbytes(32)
            pop = rng.randbytes(96)
            self._bls_secrets[bls_key] = bls_secret
        validator = Validator(node_id, bls_key, pop, name)
        signer = _CheapSigner(self.chain_id, node_id, secret, real_key, bls_secret, real_bls)
        return SimIdentity(name, node_id, validator, signer)

    # ------------------------------------------------------------ Verifier protocol

    def verify(self, node_id: NodeId, kind: str, payload: bytes, signature: bytes) -> bool:
        if not isinstance(signature, bytes) or not isinstance(node_id, bytes):
            return False
        if self.signatures == "ed25519":
            return verify_signature(node_id, self.chain_id, kind, payload, signature)
        secret = self._secrets.get(node_id)
        if secret is None or len(signature) != 64:
            return False
        expected = hashlib.blake2b(signing_bytes(self.chain_id, kind, payload), key=secret, digest_size=64).digest()
        return hmac.compare_digest(expected, signature)

    def bls_aggregate(self, signatures: list[bytes]) -> bytes:
        if self.bls == "real":
            from ledger import bls

            return bls.aggregate(list(signatures))
        total = 0
        for signature in signatures:
            if len(signature) != _BLS_SIGNATURE_LEN:
                raise ValueError("a BLS signature share is 96 bytes")
            total = (total + int.from_bytes(signature, "big")) % _AGGREGATE_MODULUS
        return total.to_bytes(_BLS_SIGNATURE_LEN, "big")

    def bls_fast_aggregate_verify(self, bls_keys: list[bytes], message: bytes, signature: bytes) -> bool:
        if self.bls == "real":
            from ledger import bls

            return bls.fast_aggregate_verify(list(bls_keys), message, signature)
        if not bls_keys or len(set(bls_keys)) != len(bls_keys) or len(signature) != _BLS_SIGNATURE_LEN:
            return False
        total = 0
        for key in bls_keys:
            secret = self._bls_secrets.get(key)
            if secret is None:
                return False
            total += int.from_bytes(hashlib.shake_256(secret + message).digest(_BLS_SIGNATURE_LEN), "big")
        return hmac.compare_digest((total % _AGGREGATE_MODULUS).to_bytes(_BLS_SIGNATURE_LEN, "big"), signature)
