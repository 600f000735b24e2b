"""``gridledger keys new|show``: create and inspect key files.

Roles:
  account    an Ed25519 key for a participant (producer, consumer, trader, bank, ...)
  meter      an Ed25519 key held by one smart meter's gateway entry
  validator  a grid operator's validator: an Ed25519 node key and a BLS key with its
             proof of possession; a public descriptor ``<file>.pub.json`` is written
             beside the key file for the genesis document
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ledger import bls
from ledger.crypto import PrivateKey
from ledger.keystore import STRENGTHS, KeystoreError, load_key, save_key
from node.tls import make_node_certificate

ROLES = ("account", "meter", "validator")


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create and inspect key files", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ksub = keys.add_subparsers(dest="keys_command", required=True)

    new = ksub.add_parser("new", help="create a new key file")
    new.add_argument("--out", required=True, help="path of the key file to write")
    new.add_argument("--role", choices=ROLES, default="account")
    new.add_argument("--label", default="", help="a name shown by `keys show` (no personal data)")
    _password_args(new)
    new.add_argument("--strength", choices=sorted(STRENGTHS), default="interactive", help="Argon2id cost")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--json", action="store_true", help="print JSON")
    new.set_defaults(func=cmd_new)

    show = ksub.add_parser("show", help="show the public side of a key file")
    show.add_argument("path")
    _password_args(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)


def _password_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-env", metavar="VAR", default="GRIDLEDGER_PASSWORD",
                   help="environment variable holding the password (default GRIDLEDGER_PASSWORD)")
    p.add_argument("--password-file", metavar="FILE", help="read the password from this file")
    p.add_argument("--dev", action="store_true",
                   help="development mode: plaintext key file, no password (never for production keys)")


def read_password(args: argparse.Namespace) -> str | None:
    if args.dev:
        return None
    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\n")
    return os.environ.get(args.password_env)


def validator_descriptor(seed: bytes, bls_sk: bytes, label: str) -> dict:
    node = PrivateKey(seed)
    bls_pk = bls.sk_to_pk(bls_sk)
    return {
        "name": label,
        "node_key": node.public_key.hex(),
        "address": str(node.address),
        "bls_key": bls_pk.hex(),
        "bls_pop": bls.pop_prove(bls_sk).hex(),
        # The peer TLS certificate is deterministic from the node key and name, so the
        # key file stays the only secret; genesis pins it.
        "tls_cert": make_node_certificate(node, label or str(node.address))[0].decode(),
    }


def cmd_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    password = read_password(args)
    if password is None and not args.dev:
        print(f"error: no password: set {args.password_env}, pass --password-file, or --dev for a development key",
              file=sys.stderr)
        return 2
    key = PrivateKey.generate()
    secret = key.seed
    info: dict = {"file": str(out), "role": args.role, "address": str(key.address), "public_key": key.public_key.hex()}
    if args.role == "validator":
        bls_sk = bls.keygen(os.urandom(32))
        secret = key.seed + bls_sk
        descriptor = validator_descriptor(key.seed, bls_sk, args.label)
        pub = out.with_name(out.name.removesuffix(".json") + ".pub.json")
        pub.write_text(json.dumps(descriptor, indent=2) + "\n")
        info["descriptor"] = str(pub)
        info["bls_key"] = descriptor["bls_key"]
    try:
        save_key(out, kind="validator" if args.role == "validator" else "ed25519", secret=secret,
                 public_key=key.public_key.raw, password=password, label=args.label, address=str(key.address),
                 strength=args.strength, dev_plaintext=args.dev)
    except KeystoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
    else:
        print(f"created {args.role} key {out}")
        print(f"  address     {info['address']}")
        print(f"  public key  {info['public_key']}")
        if "descriptor" in info:
            print(f"  validator descriptor for genesis: {info['descriptor']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        key = load_key(args.path, read_password(args), allow_plaintext=args.dev)
    except KeystoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pk = PrivateKey(key.secret[:32])
    if pk.public_key.raw != key.public_key:
        print(f"error: keystore {args.path}: the public key does not match the sealed secret", file=sys.stderr)
        return 1
    info = {"file": args.path, "kind": key.kind, "label": key.label, "address": str(pk.address),
            "public_key": pk.public_key.hex()}
    if key.kind == "validator":
        info.update({k: v for k, v in validator_descriptor(key.secret[:32], key.secret[32:], key.label).items()
                     if k in ("bls_key", "bls_pop")})
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:<11} {v}")
    return 0
