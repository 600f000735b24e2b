"""The ``gridledger`` command. Exit codes: 0 success, 1 a rejection or failed check, 2 a usage error."""

from __future__ import annotations

import argparse
import importlib
import sys

from cli import client_cmds, demo, devnet, genesis_cmd, keys, node_cmd, relay, validators


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
    relay.add_parser(sub)
    validators.add_parser(sub)
    _meter_parser(sub)
    return parser


def _meter_parser(sub: argparse._SubParsersAction) -> None:
    """``gridledger meter gateway|simulate ...``: the meters package's own commands (their
    options, ``--help`` included, are parsed by ``meters.gateway`` / ``meters.simulator``)."""
    meter = sub.add_parser("meter", help="smart meters: the Modbus gateway and the meter simulator")
    msub = meter.add_subparsers(dest="meter_command", required=True)
    for name, module, text in (
        ("gateway", "meters.gateway", "poll meters over Modbus, sign and submit their readings"),
        ("simulate", "meters.simulator", "serve simulated meters over Modbus TCP"),
    ):
        cmd = msub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        cmd.add_argument("rest", nargs=argparse.REMAINDER)
        cmd.set_defaults(func=lambda args, m=module: importlib.import_module(m).main(args.rest))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
