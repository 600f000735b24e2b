"""``gridledger genesis new``: write a shard's genesis document from a short description.

    gridledger genesis new --chain-id ch/zurich --protocol bft \\
        --validator keys/op1.pub.json --validator keys/op2.pub.json ... \\
        --account grid1...=grid_operator,deployer:ewz --account grid1...=producer:solar-roof \\
        --param period_seconds=900 --out genesis.json

Validators come from the descriptors ``gridledger keys new --role validator`` writes
(node key, BLS key with its proof of possession, TLS certificate). Every field is
checked as the node checks it; the genesis hash is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ledger.genesis import DEFAULT_PARAMS, ROLES, Genesis, GenesisError


def add_parser(sub: argparse._SubParsersAction) -> None:
    genesis = sub.add_parser("genesis", help="create genesis documents", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = genesis.add_subparsers(dest="genesis_command", required=True)
    new = gsub.add_parser("new", help="write a genesis document")
    new.add_argument("--chain-id", required=True, help="the shard id, a path such as ch/zurich")
    new.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    new.add_argument("--validator", action="append", default=[], metavar="DESCRIPTOR",
                     help="a validator descriptor (.pub.json); repeat for each")
    new.add_argument("--account", action="append", default=[], metavar="ADDRESS=ROLE,ROLE[:LABEL]",
                     help=f"a participant and its roles ({', '.join(ROLES)})")
    new.add_argument("--deployer", action="append", default=[], metavar="ADDRESS")
    new.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help=f"a shard parameter ({', '.join(sorted(DEFAULT_PARAMS))})")
    new.add_argument("--time", type=int, help="genesis time in unix seconds (default: now, rounded to a period)")
    new.add_argument("--out", required=True)
    new.add_argument("--force", action="store_true")
    new.set_defaults(func=cmd_new)


def cmd_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    try:
        params = {}
        for item in args.param:
            name, _, value = item.partition("=")
            params[name] = int(value)
        validators = []
        for path in args.validator:
            d = json.loads(Path(path).read_text())
            validators.append({k: d[k] for k in ("name", "node_key", "bls_key", "bls_pop", "tls_cert") if k in d})
        accounts = []
        for item in args.account:
            address, _, rest = item.partition("=")
            roles, _, label = rest.partition(":")
            accounts.append({"address": address, "roles": [r for r in roles.split(",") if r], "label": label})
        period = params.get("period_seconds", DEFAULT_PARAMS["period_seconds"])
        doc = {
            "chain_id": args.chain_id,
            "genesis_time": args.time if args.time is not None else int(time.time()) // period * period,
            "protocol": args.protocol,
            "params": params,
            "validators": validators,
            "accounts": accounts,
            "deployers": args.deployer,
        }
        genesis = Genesis.from_document(doc)
        genesis.validators.verify_proofs_of_possession()
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GenesisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}: shard {genesis.chain_id}, {genesis.protocol}, {genesis.validators.n} validators, "
          f"{len(genesis.accounts)} accounts; genesis hash {genesis.hash.hex()}")
    return 0
