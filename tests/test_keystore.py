"""Encrypted key files: the right password opens, a wrong one is refused clearly."""

import json

import pytest

from ledger.crypto import PrivateKey
from ledger.keystore import KeystoreError, load_key, save_key

KEY = PrivateKey(bytes(range(32)))


def _save(path, password="correct horse", **kw):
    return save_key(
        path, kind="ed25519", secret=KEY.seed, public_key=KEY.public_key.raw, password=password,
        address=str(KEY.address), strength="test", **kw
    )


def test_keystore_opens_with_the_right_password(tmp_path):
    path = _save(tmp_path / "producer.json")
    key = load_key(path, "correct horse")
    assert key.secret == KEY.seed and key.public_key == KEY.public_key.raw and key.kind == "ed25519"


def test_keystore_wrong_password_gives_a_clear_error(tmp_path):
    path = _save(tmp_path / "producer.json")
    with pytest.raises(KeystoreError, match="wrong password for keystore"):
        load_key(path, "battery staple")


def test_keystore_does_not_hold_the_secret_in_clear(tmp_path):
    path = _save(tmp_path / "producer.json")
    text = path.read_text()
    assert KEY.seed.hex() not in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_keystore_altered_ciphertext_is_refused(tmp_path):
    path = _save(tmp_path / "producer.json")
    doc = json.loads(path.read_text())
    ct = bytearray.fromhex(doc["ciphertext"])
    ct[0] ^= 1
    doc["ciphertext"] = ct.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match=r"wrong password .* \(or the file was altered\)"):
        load_key(path, "correct horse")


def test_plaintext_keys_only_in_explicit_development_mode(tmp_path):
    path = _save(tmp_path / "dev.json", password=None, dev_plaintext=True)
    with pytest.raises(KeystoreError, match="plaintext development key"):
        load_key(path, None)
    assert load_key(path, None, allow_plaintext=True).secret == KEY.seed


def test_sealing_without_password_is_refused(tmp_path):
    with pytest.raises(KeystoreError, match="password is required"):
        _save(tmp_path / "k.json", password="")


def test_missing_or_garbage_keystore_is_named_in_the_error(tmp_path):
    with pytest.raises(KeystoreError, match="does not exist"):
        load_key(tmp_path / "nope.json", "pw")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KeystoreError, match="cannot be read"):
        load_key(bad, "pw")
    bad.write_text('{"format": "other"}')
    with pytest.raises(KeystoreError, match="is not a gridledger-keystore/1 file"):
        load_key(bad, "pw")
