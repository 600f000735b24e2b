"""Encrypted key files for accounts, meters, nodes and validators' BLS keys.

A keystore file is JSON. The secret is sealed with XSalsa20-Poly1305 (libsodium
``secretbox``) under a key stretched from the password with Argon2id (libsodium
``pwhash``); the KDF parameters travel in the file so a key sealed on a fast server
opens on a slow gateway. The public key and address are stored in clear so tooling can
list keys without the password.

Plaintext key files exist only for development (a devnet on a laptop, the test suite):
they are written with ``dev_plaintext=True`` and refused on load unless the caller
passes ``allow_plaintext=True`` explicitly, which the node does only in development
mode.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from ledger.crypto import CryptoError

__all__ = ["KeyFile", "KeystoreError", "load_key", "save_key", "STRENGTHS"]

FORMAT = "gridledger-keystore/1"

# Argon2id cost presets. "interactive" (64 MiB, 2 passes) is libsodium's advice for
# keys opened at start-up; "sensitive" for keys kept offline; "test" only for the
# test suite, where hundreds of keys are sealed.
STRENGTHS = {
    "interactive": (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
    "test": (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN),
}


class KeystoreError(CryptoError):
    """A key file cannot be read, is malformed, or the password is wrong."""


@dataclass(frozen=True)
class KeyFile:
    """What a keystore file holds once opened."""

    kind: str  # "ed25519" or "bls12381"
    secret: bytes
    public_key: bytes
    label: str


def _kdf(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, password.encode("utf-8"), salt, opslimit=opslimit, memlimit=memlimit
    )


def save_key(
    path: str | os.PathLike,
    *,
    kind: str,
    secret: bytes,
    public_key: bytes,
    password: str | None,
    label: str = "",
    address: str | None = None,
    strength: str = "interactive",
    dev_plaintext: bool = False,
) -> Path:
    """Write a key file (mode 0600, atomically). ``password`` is required unless ``dev_plaintext``."""
    path = Path(path)
    doc: dict = {"format": FORMAT, "kind": kind, "label": label, "public_key": public_key.hex()}
    if address is not None:
        doc["address"] = address
    if dev_plaintext:
        doc["dev_plaintext"] = True
        doc["secret"] = secret.hex()
    else:
        if not password:
            raise KeystoreError("a password is required to seal a key (plaintext keys only in development mode)")
        if strength not in STRENGTHS:
            raise KeystoreError(f"unknown keystore strength {strength!r}; choose one of {sorted(STRENGTHS)}")
        opslimit, memlimit = STRENGTHS[strength]
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_kdf(password, salt, opslimit, memlimit))
        nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
        sealed = box.encrypt(secret, nonce)
        doc["kdf"] = {"name": "argon2id", "opslimit": opslimit, "memlimit": memlimit, "salt": salt.hex()}
        doc["nonce"] = nonce.hex()
        doc["ciphertext"] = sealed.ciphertext.hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _field(doc: dict, name: str, path: Path) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise KeystoreError(f"keystore {path}: field {name!r} is missing or not text")
    return value


def _hex(doc: dict, name: str, path: Path) -> bytes:
    try:
        return bytes.fromhex(_field(doc, name, path))
    except ValueError:
        raise KeystoreError(f"keystore {path}: field {name!r} is not hex") from None


def load_key(path: str | os.PathLike, password: str | None, *, allow_plaintext: bool = False) -> KeyFile:
    """Open a key file. Raises :class:`KeystoreError` naming the file and what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"keystore {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"keystore {path} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeystoreError(f"keystore {path} is not a {FORMAT} file")
    kind = _field(doc, "kind", path)
    public_key = _hex(doc, "public_key", path)
    label = doc.get("label", "") if isinstance(doc.get("label", ""), str) else ""
    if doc.get("dev_plaintext"):
        if not allow_plaintext:
            raise KeystoreError(
                f"keystore {path} holds a plaintext development key; plaintext keys are accepted "
                "only in development mode (GRIDLEDGER_DEV=1 or --dev)"
            )
        return KeyFile(kind, _hex(doc, "secret", path), public_key, label)
    if not password:
        raise KeystoreError(f"keystore {path} is encrypted: a password is required")
    kdf = doc.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
        raise KeystoreError(f"keystore {path}: unsupported or missing kdf")
    try:
        opslimit = int(kdf["opslimit"])
        memlimit = int(kdf["memlimit"])
        salt = bytes.fromhex(kdf["salt"])
    except (KeyError, TypeError, ValueError):
        raise KeystoreError(f"keystore {path}: kdf parameters are malformed") from None
    box = nacl.secret.SecretBox(_kdf(password, salt, opslimit, memlimit))
    try:
        secret = box.decrypt(_hex(doc, "ciphertext", path), _hex(doc, "nonce", path))
    except nacl.exceptions.CryptoError:
        raise KeystoreError(f"wrong password for keystore {path} (or the file was altered)") from None
    return KeyFile(kind, secret, public_key, label)
