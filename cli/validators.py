"""``gridledger validators propose|approve|submit``: change a shard's validator set.

    gridledger validators propose --add new-validator.json --out change.json --node URL
    gridledger validators propose --remove 3f1a...(node key) --out change.json
    gridledger validators propose --replace 3f1a... --with new-key.json --out change.json
    gridledger validators approve change.json --key validator-0.json     # each operator
    gridledger validators submit change.json --key operator-account.json --wait

A proposal is a JSON file naming the change completely: the shard, the epoch (the
number of this change), the current set and its hash, the new set, the added
validators' TLS certificates, and the approvals collected so far. An operator
approves by signing ``[epoch, current set hash, new set hash]`` with the node key of
a current validator (``contracts/reconfig.py``); anyone holding a member account
submits it once it has a quorum (2f + 1 on BFT, a majority on Raft). The new set
takes effect at the height consensus defines (BFT: four checkpoint intervals after
the checkpoint at or above the change's height; Raft: right after it).

``--add`` takes a validator descriptor (``gridledger keys new --role validator``
prints one; it is also what genesis lists: name, node_key, bls_key, bls_pop,
tls_cert) or a validator key file, from which the descriptor is derived.
Exit codes: 0 success, 1 a rejection or failed check, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from contracts.reconfig import approval_payload
from ledger.crypto import Kind, PrivateKey, verify_signature
from ledger.validators import Validator, ValidatorSet, ValidatorSetError

__all__ = [
    "ProposalError",
    "add_parser",
    "approve",
    "fetch_current",
    "make_proposal",
    "reconfigure_tx",
]


class ProposalError(ValueError):
    """A proposal file or an option is wrong; the message says what."""


# ------------------------------------------------------------------ the proposal document


def _set_json(validators: ValidatorSet) -> list[dict]:
    return [{"name": v.name, "node_key": v.node_key.hex(), "bls_key": v.bls_key.hex(), "bls_pop": v.bls_pop.hex()}
            for v in validators]


def _set_from_json(items: Any) -> ValidatorSet:
    try:
        return ValidatorSet(tuple(Validator(bytes.fromhex(d["node_key"]), bytes.fromhex(d["bls_key"]),
                                            bytes.fromhex(d["bls_pop"]), d.get("name", "")) for d in items))
    except (KeyError, TypeError, ValueError, ValidatorSetError) as exc:
        raise ProposalError(f"a validator set is a list of {{name, node_key, bls_key, bls_pop}}: {exc}") from None


def make_proposal(chain_id: str, epoch: int, current: ValidatorSet, new: ValidatorSet,
                  tls_certs: dict[bytes, bytes] | None = None) -> dict:
    """A proposal document (JSON-ready) for changing ``current`` (the latest set, of epoch ``epoch - 1``) to ``new``."""
    if new == current:
        raise ProposalError("the new validator set equals the current one")
    return {
        "chain_id": chain_id,
        "epoch": epoch,
        "current_set_hash": current.hash.hex(),
        "current": _set_json(current),
        "new": _set_json(new),
        "new_set_hash": new.hash.hex(),
        "tls_certs": {k.hex(): c.decode() for k, c in (tls_certs or {}).items()},
        "approvals": {},
    }


def _load(proposal: dict) -> tuple[str, int, ValidatorSet, ValidatorSet]:
    try:
        chain_id, epoch = proposal["chain_id"], proposal["epoch"]
        current, new = _set_from_json(proposal["current"]), _set_from_json(proposal["new"])
    except KeyError as exc:
        raise ProposalError(f"the proposal has no {exc.args[0]!r}") from None
    if current.hash.hex() != proposal.get("current_set_hash") or new.hash.hex() != proposal.get("new_set_hash"):
        raise ProposalError("the proposal's set hashes do not match its sets (was it edited?)")
    if type(epoch) is not int or epoch < 1:
        raise ProposalError("the proposal's epoch is an integer >= 1")
    return chain_id, epoch, current, new


def approve(proposal: dict, key: PrivateKey) -> dict:
    """Add ``key``'s approval (it must be a validator of the current set); returns the proposal."""
    chain_id, epoch, current, new = _load(proposal)
    index = current.index_of(key.public_key.raw)
    if index is None:
        raise ProposalError(f"node key {key.public_key.hex()[:16]}... is not a validator of the current set")
    signature = key.sign(chain_id, Kind.RECONFIG, approval_payload(epoch, current.hash, new.hash))
    proposal["approvals"][str(index)] = signature.hex()
    return proposal


def approvals(proposal: dict) -> list[list]:
    """The approvals that verify, as the transaction carries them (ascending index)."""
    chain_id, epoch, current, new = _load(proposal)
    payload = approval_payload(epoch, current.hash, new.hash)
    out = []
    for text, sig_hex in sorted(proposal.get("approvals", {}).items(), key=lambda item: int(item[0])):
        index, signature = int(text), bytes.fromhex(sig_hex)
        if index >= current.n or not verify_signature(current.validators[index].node_key, chain_id, Kind.RECONFIG,
                                                      payload, signature):
            raise ProposalError(f"the approval of validator {index} does not verify for this proposal")
        out.append([index, signature])
    return out


def reconfigure_tx(proposal: dict, sender: PrivateKey, nonce: int, *, gas_limit: int = 2_000_000):
    """The ``system.reconfigure`` transaction of a proposal, signed by ``sender`` (any member account)."""
    from ledger.tx import Transaction

    chain_id, epoch, current, new = _load(proposal)
    certs = [[bytes.fromhex(k), c.encode()] for k, c in sorted(proposal.get("tls_certs", {}).items())]
    args = [epoch, current.hash, new.to_fields(), approvals(proposal), certs]
    return Transaction.create(sender, chain_id=chain_id, nonce=nonce, contract="system", function="reconfigure",
                              args=args, gas_limit=gas_limit)


def fetch_current(node) -> tuple[str, int, ValidatorSet]:
    """(shard, latest epoch, latest set) from a node's API (``ledger.httpclient.SyncClient``)."""
    chain_id = node.status()["shard"]
    epoch = node.state("validators", "current") or 0
    if epoch == 0:
        return chain_id, 0, node.validators()
    record = node.state("validators", "epoch", [epoch])
    return chain_id, epoch, ValidatorSet.from_fields(record[1])


def _descriptor(path: str) -> tuple[Validator, bytes | None]:
    """A validator (and its TLS certificate) from a descriptor JSON or a validator key file."""
    doc = json.loads(Path(path).read_text())
    if "node_key" in doc and "bls_key" in doc and "bls_pop" in doc:
        v = Validator(bytes.fromhex(doc["node_key"]), bytes.fromhex(doc["bls_key"]), bytes.fromhex(doc["bls_pop"]),
                      doc.get("name", ""))
        cert = doc.get("tls_cert")
        return v, cert.encode() if cert else None
    from cli.keys import validator_descriptor
    from ledger.keystore import load_key

    key_file = load_key(path, os.environ.get("GRIDLEDGER_PASSWORD"), allow_plaintext=True)
    if key_file.kind != "validator":
        raise ProposalError(f"{path} is neither a validator descriptor nor a validator key file")
    d = validator_descriptor(key_file.secret[:32], key_file.secret[32:], key_file.label or "")
    return _descriptor_from(d)


def _descriptor_from(d: dict) -> tuple[Validator, bytes | None]:
    v = Validator(bytes.fromhex(d["node_key"]), bytes.fromhex(d["bls_key"]), bytes.fromhex(d["bls_pop"]), d["name"])
    return v, d["tls_cert"].encode()


# ------------------------------------------------------------------ commands


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validators", help="propose, approve and submit validator-set changes", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    vsub = p.add_subparsers(dest="validators_command", required=True)
    propose = vsub.add_parser("propose", help="write a proposal to add, remove or replace a validator")
    group = propose.add_mutually_exclusive_group(required=True)
    group.add_argument("--add", metavar="DESCRIPTOR", help="a validator descriptor or validator key file")
    group.add_argument("--remove", metavar="NODE_KEY", help="the node key (hex) of the validator to remove")
    group.add_argument("--replace", metavar="NODE_KEY", help="the node key (hex) to replace (with --with)")
    propose.add_argument("--with", dest="replacement", metavar="DESCRIPTOR", help="the replacing validator")
    propose.add_argument("--out", required=True, help="the proposal file to write")
    _node_options(propose)
    propose.set_defaults(func=cmd_propose)
    approve_p = vsub.add_parser("approve", help="add this validator's approval to a proposal")
    approve_p.add_argument("proposal")
    approve_p.add_argument("--key", required=True, help="a current validator's key file")
    approve_p.add_argument("--password-env", default="GRIDLEDGER_PASSWORD")
    approve_p.add_argument("--dev", action="store_true", help="accept a plaintext development key")
    approve_p.set_defaults(func=cmd_approve)
    submit = vsub.add_parser("submit", help="submit an approved proposal as a system.reconfigure transaction")
    submit.add_argument("proposal")
    submit.add_argument("--key", required=True, help="the submitting member account's key file")
    submit.add_argument("--password-env", default="GRIDLEDGER_PASSWORD")
    submit.add_argument("--dev", action="store_true", help="accept a plaintext development key")
    submit.add_argument("--wait", action="store_true", help="wait until committed")
    submit.add_argument("--timeout", type=float, default=30.0)
    _node_options(submit)
    submit.set_defaults(func=cmd_submit)


def _node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="the node's API URL (default $GRIDLEDGER_NODE or http://127.0.0.1:8080)")
    p.add_argument("--devnet", help="use the first validator of the devnet in this directory")


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_propose(args: argparse.Namespace) -> int:
    from cli.client_cmds import _node_url
    from ledger.httpclient import ApiError, SyncClient

    try:
        with SyncClient(_node_url(args)) as node:
            chain_id, epoch, current = fetch_current(node)
    except ApiError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    try:
        new, certs = _changed_set(args, current)
        proposal = make_proposal(chain_id, epoch + 1, current, new, certs)
    except (ProposalError, ValidatorSetError, OSError, ValueError) as exc:
        return _fail(str(exc), 2)
    Path(args.out).write_text(json.dumps(proposal, indent=2) + "\n")
    print(f"proposal for epoch {epoch + 1} of {chain_id}: {current.n} -> {new.n} validators, written to {args.out}")
    return 0


def _changed_set(args: argparse.Namespace, current: ValidatorSet) -> tuple[ValidatorSet, dict[bytes, bytes]]:
    if args.replacement and not args.replace:
        raise ProposalError("--with goes with --replace")
    if args.add:
        added, cert = _descriptor(args.add)
        return current.with_change(add=added), ({added.node_key: cert} if cert else {})
    if args.remove:
        return current.with_change(remove=bytes.fromhex(args.remove)), {}
    if not args.replacement:
        raise ProposalError("--replace needs --with DESCRIPTOR")
    added, cert = _descriptor(args.replacement)
    old = bytes.fromhex(args.replace)
    index = current.index_of(old)
    if index is None:
        raise ProposalError("the validator to replace is not in the current set")
    validators = list(current.validators)
    validators[index] = added  # the replacement keeps the position (and the leader rotation)
    return ValidatorSet(tuple(validators)), ({added.node_key: cert} if cert else {})


def cmd_approve(args: argparse.Namespace) -> int:
    from ledger.keystore import KeystoreError, load_key

    try:
        proposal = json.loads(Path(args.proposal).read_text())
        key_file = load_key(args.key, os.environ.get(args.password_env), allow_plaintext=args.dev)
        if key_file.kind != "validator":
            raise ProposalError(f"{args.key} is not a validator key")
        approve(proposal, PrivateKey(key_file.secret[:32]))
    except (ProposalError, KeystoreError, OSError, ValueError) as exc:
        return _fail(str(exc), 2)
    Path(args.proposal).write_text(json.dumps(proposal, indent=2) + "\n")
    print(f"approved; {len(proposal['approvals'])} of {len(proposal['current'])} current validators have approved")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cli.client_cmds import _node_url
    from ledger.httpclient import ApiError, SyncClient
    from ledger.keystore import KeystoreError, load_key

    try:
        proposal = json.loads(Path(args.proposal).read_text())
        key = PrivateKey(load_key(args.key, os.environ.get(args.password_env), allow_plaintext=args.dev).secret[:32])
    except (KeystoreError, OSError, ValueError) as exc:
        return _fail(str(exc), 2)
    try:
        with SyncClient(_node_url(args)) as node:
            account = node.account(key.address)
            nonce = int(account.get("pending_nonce", account.get("nonce", 0)))
            tx = reconfigure_tx(proposal, key, nonce)
            result = node.submit(tx, wait=args.wait, timeout_s=args.timeout)
    except ProposalError as exc:
        return _fail(str(exc), 2)
    except ApiError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    print(f"transaction {tx.tx_id.hex()}: {result.status}" + (f" at height {result.height}" if result.height is not None else ""))
    receipt = result.receipt
    if receipt is not None:
        if not receipt.ok:
            return _fail(f"the change was refused: {receipt.error[0]}: {receipt.error[1]}")
        epoch, after = receipt.result
        print(f"epoch {epoch}: the new validator set takes effect after height {after}")
    return 0 if result.status in ("committed", "pending") else 1
