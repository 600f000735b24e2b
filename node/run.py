"""``gridledger node run --config node.toml [--config other.toml ...]``: run nodes until SIGTERM or SIGINT.

One config runs one node. Several configs run one node per shard in a single asyncio
process (a grid operator validating at several levels): each has its own store,
consensus replica, peer mesh and API port, exactly as if it ran alone; they share only
the process and its event loop (see ``node/config.py``, "Several shards in one process").

A node that must stop (its store disagrees with a certified block, say) stops the
whole process: every other shard is stopped cleanly and the exit code says so, so that
the supervisor restarts the process and each shard resumes from its store.

Exit codes: 0 after a clean stop, 1 when a node had to stop (the message names its
shard and says why, in its log and on stderr), 2 for a bad configuration, genesis or
key file (the message names the config file).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from contracts.runtime.errors import ContractError
from ledger.genesis import GenesisError
from ledger.keystore import KeystoreError
from ledger.store import StoreError
from node.config import ConfigError, NodeConfig, load_many

__all__ = ["main", "run_node", "run_nodes"]


async def run_node(config: NodeConfig) -> int:
    return await run_nodes([("node config", config)])


async def run_nodes(configs: Sequence[tuple[str, NodeConfig]]) -> int:
    """Build, start and run one node per ``(source, config)``; return the exit code."""
    from node.node import Node, NodeError

    nodes: list = []
    shards: dict[str, str] = {}

    def close_stores() -> None:
        for built in nodes:
            built.store.close()

    for source, config in configs:
        try:
            node = Node(config)
        except (ConfigError, GenesisError, KeystoreError, StoreError, NodeError, ContractError) as exc:
            # ContractError: genesis contracts that do not deploy (bad app_state).
            close_stores()
            print(f"error: {_where(source, len(configs))}{exc}", file=sys.stderr)
            return 2
        except ValueError as exc:  # every layer's error type is a ValueError (shards' BridgeError, ...)
            close_stores()
            print(f"error: {_where(source, len(configs))}{type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        if node.chain_id in shards:
            node.store.close()
            close_stores()
            print(f"error: {source}: shard {node.chain_id} is already served by {shards[node.chain_id]}; "
                  "a process runs each shard once", file=sys.stderr)
            return 2
        shards[node.chain_id] = source
        nodes.append(node)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    started: list = []
    try:
        for (source, _), node in zip(configs, nodes, strict=True):
            try:
                await node.start()
            except OSError as exc:
                started.append(node)  # partly started: stopped below with the others
                print(f"error: {_where(source, len(configs))}cannot start shard {node.chain_id}: {exc}", file=sys.stderr)
                return 2
            started.append(node)
        waits = [asyncio.create_task(stopping.wait())] + [asyncio.create_task(n.wait_stopped()) for n in nodes]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        # Stop in reverse start order; a node never started still holds an open store.
        for node in reversed(started):
            await node.stop()
        for node in nodes:
            if node not in started:
                node.store.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    fatal = [n for n in nodes if n.fatal]
    for node in fatal:
        print(f"error: shard {node.chain_id}: {node.fatal}", file=sys.stderr)
    return 1 if fatal else 0


def _where(source: str, count: int) -> str:
    return f"{source}: " if count > 1 and source else ""


def main(config_paths: str | Sequence[str]) -> int:
    paths = [config_paths] if isinstance(config_paths, (str, Path)) else list(config_paths)
    try:
        configs = load_many(paths)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_nodes(list(zip([str(p) for p in paths], configs, strict=True))))
