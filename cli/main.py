"""The ``gridledger`` command. Exit codes: 0 success, 1 a rejection or failed check, 2 a usage error."""

from __future__ import annotations

import argparse
import sys

from cli import client_cmds, demo, devnet, genesis_cmd, keys, node_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridledger",
        description="gridledger: a permissioned consortium ledger for the electricity sector.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keys.add_parser(sub)
    node_cmd.add_parser(sub)
    devnet.add_parser(sub)
    genesis_cmd.add_parser(sub)
    client_cmds.add_parsers(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
