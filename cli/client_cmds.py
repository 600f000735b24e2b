"""``gridledger tx send``, ``gridledger query`` and ``gridledger status``: the API from a shell.

    gridledger tx send --key bank.json chf mint addr:grid1... 25000 "deposit 42" --wait
    gridledger query state chf balances addr:grid1... --verify --genesis genesis.json
    gridledger query tx 3f1a...        gridledger query block latest
    gridledger query account grid1...  gridledger status

Arguments and key parts are typed by a prefix: ``int:5``, ``addr:grid1...`` (the
20-byte address), ``hex:00ff``, ``str:text``, ``bool:true``, ``json:[1, "a"]`` (lists), ``file:token.contract`` (a file's text);
without a prefix a whole number is an int, ``grid1...`` an address, ``true``/``false``
a bool, anything else text. The node is ``--node URL``, ``$GRIDLEDGER_NODE``, or the
first validator of ``--devnet DIR``. ``--json`` prints the API's JSON unchanged.
Exit codes: 0 success, 1 a rejection or a failed check, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ledger.client import Account, ProofError, verify_read
from ledger.crypto import Address, CryptoError, PrivateKey
from ledger.genesis import Genesis, GenesisError
from ledger.httpclient import ApiError, SyncClient
from ledger.keystore import KeystoreError, load_key

__all__ = ["add_parsers", "parse_value"]


class UsageError(ValueError):
    pass


def parse_value(text: str) -> Any:
    """A typed argument from the command line (see the module docstring)."""
    prefix, _, rest = text.partition(":")
    try:
        if prefix == "int" and _:
            return int(rest)
        if prefix == "addr" and _:
            return Address.parse(rest).raw
        if prefix == "hex" and _:
            return bytes.fromhex(rest)
        if prefix == "str" and _:
            return rest
        if prefix == "bool" and _:
            if rest not in ("true", "false"):
                raise UsageError(f"bool: takes true or false, not {rest!r}")
            return rest == "true"
        if prefix == "json" and _:
            return _from_json(json.loads(rest))
        if prefix == "file" and _:
            return Path(rest).read_text()
    except (ValueError, CryptoError) as exc:
        raise UsageError(f"argument {text!r}: {exc}") from None
    if text.lstrip("-").isdigit():
        return int(text)
    if text.startswith("grid1"):
        try:
            return Address.parse(text).raw
        except CryptoError as exc:
            raise UsageError(f"argument {text!r} looks like an address but {exc}") from None
    if text in ("true", "false"):
        return text == "true"
    return text


def _from_json(value: Any) -> Any:
    if isinstance(value, float):
        raise UsageError("floats are not allowed: amounts are integers (Wh, minor currency units)")
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, str):
        return parse_value(value) if ":" in value or value.startswith("grid1") else value
    return value


def _node_url(args: argparse.Namespace) -> str:
    if args.node:
        return args.node
    if args.devnet:
        doc = json.loads((Path(args.devnet) / "devnet.json").read_text())
        return f"http://127.0.0.1:{doc['nodes'][0]['api_port']}"
    return os.environ.get("GRIDLEDGER_NODE", "http://127.0.0.1:8080")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="the node's API URL (default $GRIDLEDGER_NODE or http://127.0.0.1:8080)")
    p.add_argument("--devnet", help="use the first validator of the devnet in this directory")
    p.add_argument("--json", action="store_true", help="print the API's JSON unchanged")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tx = sub.add_parser("tx", help="sign and submit transactions", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = tx.add_subparsers(dest="tx_command", required=True)
    send = tsub.add_parser("send", help="call a contract function")
    send.add_argument("contract")
    send.add_argument("function")
    send.add_argument("args", nargs="*", help="typed arguments (see `gridledger tx --help`)")
    send.add_argument("--key", required=True, help="the sender's key file")
    send.add_argument("--password-env", default="GRIDLEDGER_PASSWORD")
    send.add_argument("--dev", action="store_true", help="accept a plaintext development key")
    send.add_argument("--chain-id", help="the shard id (default: asked from the node)")
    send.add_argument("--gas", type=int, default=1_000_000, help="gas limit")
    send.add_argument("--wait", action="store_true", help="wait until committed")
    send.add_argument("--timeout", type=float, default=30.0)
    _common(send)
    send.set_defaults(func=cmd_send)

    query = sub.add_parser("query", help="read state, transactions, blocks and accounts", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    qsub = query.add_subparsers(dest="query_command", required=True)
    state = qsub.add_parser("state", help="a contract's stored value, optionally verified")
    state.add_argument("contract")
    state.add_argument("name")
    state.add_argument("keys", nargs="*")
    state.add_argument("--verify", action="store_true", help="verify certificate, header and proof")
    state.add_argument("--genesis", help="genesis file giving the validator set to verify against")
    _common(state)
    state.set_defaults(func=cmd_state)
    for name, func, arg in (("tx", cmd_query_tx, "tx_id"), ("block", cmd_query_block, "height"),
                            ("account", cmd_query_account, "address")):
        p = qsub.add_parser(name, help=f"a {name}")
        p.add_argument(arg)
        _common(p)
        p.set_defaults(func=func)

    status = sub.add_parser("status", help="a node's height, role, leader and peers")
    _common(status)
    status.set_defaults(func=cmd_status)


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        return str(Address(value)) if len(value) == 20 else value.hex()
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    return value


def cmd_send(args: argparse.Namespace) -> int:
    try:
        fn_args = [parse_value(a) for a in args.args]
        key_file = load_key(args.key, os.environ.get(args.password_env), allow_plaintext=args.dev)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except KeystoreError as exc:
        return _fail(str(exc), 2)
    key = PrivateKey(key_file.secret[:32])
    try:
        with SyncClient(_node_url(args)) as node:
            chain_id = args.chain_id or node.status()["shard"]
            account = node.account(key.address)
            nonce = int(account.get("pending_nonce", account.get("nonce", 0)))
            tx = Account(key, chain_id=chain_id, next_nonce=nonce, gas_limit=args.gas).call(args.contract, args.function, fn_args)
            result = node.submit(tx, wait=args.wait, timeout_s=args.timeout)
    except ApiError as exc:
        if args.json and exc.body is not None:
            print(json.dumps(exc.body))
        return _fail(f"{exc.code}: {exc.message}")
    if args.json:
        print(json.dumps(result.json))
    else:
        print(f"transaction {tx.tx_id.hex()}: {result.status}" + (f" at height {result.height}" if result.height is not None else ""))
        if result.receipt is not None:
            r = result.receipt
            print(f"  {'ok' if r.ok else 'failed'}, gas used {r.gas_used}" + (f": {r.error[0]}: {r.error[1]}" if r.error else ""))
            for event in r.events:
                print(f"  event {event.contract}.{event.name} {json.dumps(_printable(dict(event.fields)))}")
    if result.receipt is not None and not result.receipt.ok:
        return 1
    return 0 if result.status in ("committed", "pending") else 1


def cmd_state(args: argparse.Namespace) -> int:
    try:
        parts = [parse_value(k) for k in args.keys]
        validators = None
        if args.verify:
            if not args.genesis:
                return _fail("--verify needs --genesis (the validator set to trust)", 2)
            genesis = Genesis.load(args.genesis)
            validators, protocol = genesis.validators, genesis.protocol
    except (UsageError, GenesisError) as exc:
        return _fail(str(exc), 2)
    try:
        with SyncClient(_node_url(args)) as node:
            if args.json and not args.verify:
                from ledger.httpclient import encode_key_part

                _, body = node.request("GET", f"/v1/state/{args.contract}/{args.name}",
                                       params=[("key", encode_key_part(p)) for p in parts])
                print(json.dumps(body))
                return 0
            read = node.read_state(args.contract, args.name, parts)
    except ApiError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    value = read.decoded_value()
    if args.verify:
        try:
            value = verify_read(read, validators, protocol=protocol)
        except ProofError as exc:
            return _fail(f"the read does not verify: {exc}")
    if args.json:
        print(json.dumps({"value": _printable(value), "height": read.header.height, "verified": bool(args.verify)}))
    else:
        print(json.dumps(_printable(value)))
        note = "verified: certificate, header and proof" if args.verify else "not verified (pass --verify)"
        print(f"  at height {read.header.height}, state root {read.header.state_root.hex()[:16]}..., {note}")
    return 0


def _get(args: argparse.Namespace, path: str) -> int:
    try:
        with SyncClient(_node_url(args)) as node:
            _, body = node.request("GET", path)
    except ApiError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    print(json.dumps(body) if args.json else json.dumps(body, indent=2))
    return 0


def cmd_query_tx(args: argparse.Namespace) -> int:
    return _get(args, f"/v1/tx/{args.tx_id}")


def cmd_query_block(args: argparse.Namespace) -> int:
    return _get(args, f"/v1/blocks/{args.height}")


def cmd_query_account(args: argparse.Namespace) -> int:
    try:
        Address.parse(args.address)
    except CryptoError as exc:
        return _fail(str(exc), 2)
    return _get(args, f"/v1/accounts/{args.address}")


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with SyncClient(_node_url(args)) as node:
            status = node.status()
    except ApiError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    if args.json:
        print(json.dumps(status))
        return 0
    for key in ("shard", "role", "name", "height", "view", "term", "leader", "is_leader", "peers", "mempool", "catching_up"):
        if status.get(key) is not None:
            print(f"{key:<12} {status[key]}")
    return 0
