"""Hashes, Ed25519 identities, domain-separated signatures and addresses.

Accounts, meters and nodes are Ed25519 keys (libsodium through pynacl). Every
signature in gridledger covers the chain id (the shard id) and the kind of message
as well as the payload, so a signature made for one shard or one kind of message can
never be replayed on another shard or as another kind::

    signed bytes = encode(["gridledger/v1", chain_id, kind, payload])

An address is the first 20 bytes of a domain-tagged SHA-256 of the public key. Its
text form is Bech32m (BIP-350) with the human-readable part ``grid``: the checksum
detects any error in up to four characters, so a mistyped address is refused instead
of sending fiat or an energy token to nobody.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing

from ledger import codec

__all__ = [
    "ADDRESS_HRP",
    "ADDRESS_LEN",
    "Address",
    "CryptoError",
    "Kind",
    "PrivateKey",
    "PublicKey",
    "hash_bytes",
    "signing_bytes",
    "tagged_hash",
    "verify_signature",
]

SIGNING_DOMAIN = "gridledger/v1"
ADDRESS_LEN = 20
ADDRESS_HRP = "grid"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32

_sha256 = hashlib.sha256


class CryptoError(ValueError):
    """A key, address or signature is malformed or does not verify."""


class Kind:
    """The kinds of signed messages. A signature for one kind never verifies as another."""

    TX = "tx"
    PREPARE = "bft/prepare"
    COMMIT = "bft/commit"
    PRE_PREPARE = "bft/pre-prepare"
    VIEW_CHANGE = "bft/view-change"
    NEW_VIEW = "bft/new-view"
    CHECKPOINT = "checkpoint"
    RAFT = "raft"
    RAFT_COMMIT = "raft/commit"
    HANDSHAKE = "peer/handshake"
    READING = "meter/reading"
    OFFER = "market/offer"
    RECONFIG = "validator-set"
    POP = "bls/pop"


def hash_bytes(data: bytes) -> bytes:
    """SHA-256 of ``data`` (32 bytes). SHA-256 runs on the CPU's SHA extensions here."""
    return _sha256(data).digest()


def tagged_hash(tag: bytes, data: bytes) -> bytes:
    """SHA-256 with a domain tag, so hashes of different object types never collide."""
    return _sha256(tag + data).digest()


def signing_bytes(chain_id: str, kind: str, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers (see the module docstring)."""
    return codec.encode([SIGNING_DOMAIN, chain_id, kind, payload])


def verify_signature(
    public_key: bytes, chain_id: str, kind: str, payload: bytes, signature: bytes
) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``payload`` for that chain and kind."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(
            signature + signing_bytes(chain_id, kind, payload), public_key
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


# ---------------------------------------------------------------- Bech32m (BIP-350)

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_BECH32M_CONST = 0x2BC830A3
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise CryptoError("address has non-zero padding bits")
    return out


def _bech32m_encode(hrp: str, payload: bytes) -> str:
    data = _convert_bits(payload, 8, 5, True)
    values = _hrp_expand(hrp) + data
    polymod = _polymod(values + [0] * 6) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def _bech32m_decode(text: str, hrp: str) -> bytes:
    if not isinstance(text, str):
        raise CryptoError(f"an address is text, got {type(text).__name__}")
    if text.lower() != text and text.upper() != text:
        raise CryptoError("address mixes upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1:
        raise CryptoError(f"not an address: {text!r} has no '{hrp}1' prefix")
    if text[:pos] != hrp:
        raise CryptoError(f"address prefix is {text[:pos]!r}; gridledger addresses start with '{hrp}1'")
    body = text[pos + 1 :]
    if len(body) < 7:
        raise CryptoError("address is too short")
    try:
        values = [_CHARSET_REV[c] for c in body]
    except KeyError as exc:
        raise CryptoError(f"address contains {exc.args[0]!r}, which is not a Bech32 character") from None
    if _polymod(_hrp_expand(hrp) + values) != _BECH32M_CONST:
        raise CryptoError("address checksum does not match: it was probably mistyped")
    return bytes(_convert_bits(values[:-6], 5, 8, False))


@dataclass(frozen=True, slots=True)
class Address:
    """A 20-byte account address. ``str(address)`` is its checksummed text form."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != ADDRESS_LEN:
            raise CryptoError(f"an address is {ADDRESS_LEN} bytes")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> Address:
        if len(public_key) != PUBLIC_KEY_LEN:
            raise CryptoError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, got {len(public_key)}")
        return cls(tagged_hash(b"gridledger/address", public_key)[:ADDRESS_LEN])

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse the text form; raises :class:`CryptoError` on any typo, wrong prefix or length."""
        raw = _bech32m_decode(text.strip() if isinstance(text, str) else text, ADDRESS_HRP)
        if len(raw) != ADDRESS_LEN:
            raise CryptoError(f"address decodes to {len(raw)} bytes; expected {ADDRESS_LEN}")
        return cls(raw)

    def __str__(self) -> str:
        return _bech32m_encode(ADDRESS_HRP, self.raw)

    def __repr__(self) -> str:
        return f"Address({self})"


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key of an account, a meter or a node."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_LEN:
            raise CryptoError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes")

    @property
    def address(self) -> Address:
        return Address.from_public_key(self.raw)

    def verify(self, chain_id: str, kind: str, payload: bytes, signature: bytes) -> bool:
        return verify_signature(self.raw, chain_id, kind, payload, signature)

    def hex(self) -> str:
        return self.raw.hex()


class PrivateKey:
    """An Ed25519 signing key. Its seed leaves the process only through the keystore."""

    __slots__ = ("_signing_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise CryptoError(f"an Ed25519 seed is {SEED_LEN} bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(SEED_LEN))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    @property
    def address(self) -> Address:
        return self.public_key.address

    def sign(self, chain_id: str, kind: str, payload: bytes) -> bytes:
        """Sign ``payload`` as a message of ``kind`` on shard ``chain_id``."""
        return self._signing_key.sign(signing_bytes(chain_id, kind, payload)).signature

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public_key.hex()[:16]}…)"
