"""``gridledger node run --config node.toml [--config other.toml ...]``: run one validator or
observer, or one per shard in a single process (one config file per shard)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser("node", help="run a node", description=__doc__)
    nsub = node.add_subparsers(dest="node_command", required=True)
    run = nsub.add_parser("run", help="run a validator or an observer (or one per shard) until SIGTERM")
    run.add_argument("--config", required=True, action="append",
                     help="a node's TOML configuration (see node/config.py); repeat it to serve several "
                          "shards in one process, one file per shard")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from node.run import main

    return main(args.config)
