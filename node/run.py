"""``gridledger node run --config node.toml``: run one node until SIGTERM or SIGINT.

Exit codes: 0 after a clean stop, 1 when the node had to stop (it says why in its
log and on stderr), 2 for a bad configuration, genesis or key file.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from ledger.genesis import GenesisError
from ledger.keystore import KeystoreError
from ledger.store import StoreError
from node.config import ConfigError, NodeConfig

__all__ = ["main", "run_node"]


async def run_node(config: NodeConfig) -> int:
    from node.node import Node, NodeError

    try:
        node = Node(config)
    except (ConfigError, GenesisError, KeystoreError, StoreError, NodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node._stopping.set)
    try:
        await node.start()
    except OSError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        await node.stop()
        return 2
    await node.wait_stopped()
    await node.stop()
    if node.fatal:
        print(f"error: {node.fatal}", file=sys.stderr)
        return 1
    return 0


def main(config_path: str) -> int:
    try:
        config = NodeConfig.load(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_node(config))
