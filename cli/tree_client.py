"""The consortium's view of a shard tree over the public APIs (``TreeClient``), and the
three-level devnet of ``genesis/three-levels.toml`` (``create_tree``).

Signed calls as any participant, reads verified against each shard's validators, the
flow records of every hop, the consumer's quote: used by the demo's tree story
(``cli.shards_story``), ``python -m bench.shards`` and the process tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.devnet_shards import ShardDevnet, derive_topology
from ledger.client import Account, verify_read
from ledger.genesis import Genesis
from ledger.httpclient import ApiError, Client, TxResult
from shards.quote import Quote, quote_flow
from shards.records import HopRecord
from shards.topology import Topology

__all__ = ["CURRENCY", "DESTINATION", "ORIGIN", "TOPOLOGY", "TreeClient", "TreeError", "create_tree"]

CURRENCY = "CHF"
ORIGIN = "ch/zurich/oerlikon"
DESTINATION = "ch/bern/breitenrain"
TOPOLOGY = Path(__file__).resolve().parent.parent / "genesis" / "three-levels.toml"


class TreeError(AssertionError):
    """The tree did not do what was waited for; the message says what."""


class TreeClient:
    """Signed calls and verified reads on every shard of a :class:`ShardDevnet`."""

    def __init__(self, net: ShardDevnet) -> None:
        self.net = net
        self.topology = Topology.from_toml((net.root / "topology.toml").read_text())
        self.genesis = {s: Genesis.load(net.genesis_file(s)) for s in net.shards}
        self.clients = {s: Client(net.url(s), timeout=30.0) for s in net.shards}
        self.keys = {name: net.account_key(name) for name in net.accounts}
        self._accounts: dict[tuple[str, str], Account] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def __aenter__(self) -> TreeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def address(self, name: str) -> bytes:
        return self.keys[name].address.raw

    def operator(self, shard: str) -> str:
        return self.net.operators[shard]

    # ------------------------------------------------------------------ transactions

    async def _account(self, name: str, shard: str) -> Account:
        account = self._accounts.get((name, shard))
        if account is None:
            nonce = await self.clients[shard].next_nonce(self.keys[name].address)
            account = self._accounts[(name, shard)] = Account(self.keys[name], chain_id=shard, next_nonce=nonce)
        return account

    async def call(self, who: str, shard: str, contract: str, function: str, *args: Any,
                   expect_ok: bool = True, timeout_s: float = 30.0) -> TxResult:
        """Sign and submit ``contract.function(*args)`` as ``who`` on ``shard``; wait for its commit."""
        lock = self._locks.setdefault((who, shard), asyncio.Lock())
        async with lock:
            account = await self._account(who, shard)
            tx = account.call(contract, function, list(args), gas_limit=5_000_000)
        try:
            result = await self.clients[shard].submit(tx, wait=True, timeout_s=timeout_s)
        except ApiError:
            self._accounts.pop((who, shard), None)
            raise
        if not result.committed:
            raise TreeError(f"{who}'s {contract}.{function} on {shard} is {result.status} after {timeout_s} s")
        if expect_ok and not result.ok:
            raise TreeError(f"{who}'s {contract}.{function} on {shard} failed: {result.receipt.error}")
        return result

    # ------------------------------------------------------------------ reads

    async def read(self, shard: str, contract: str, name: str, parts: Sequence[Any] = ()) -> Any:
        """A value of ``shard``'s state, verified against its genesis validators."""
        genesis = self.genesis[shard]
        read = await self.clients[shard].read_state(contract, name, list(parts))
        return verify_read(read, genesis.validators, protocol=genesis.protocol)

    async def balance(self, shard: str, who: str | bytes) -> int:
        address = who if isinstance(who, bytes) else self.address(who)
        return await self.read(shard, "fiat", "balance", [CURRENCY, address]) or 0

    async def flow(self, shard: str, flow_id: bytes) -> HopRecord | None:
        fields = await self.read(shard, "bridge", "flow", [flow_id])
        return None if fields is None else HopRecord.from_fields(fields)

    async def wait_flow(self, shard: str, flow_id: bytes, phases: Sequence[str], timeout_s: float = 60.0) -> HopRecord:
        deadline = time.monotonic() + timeout_s
        record = None
        while time.monotonic() < deadline:
            record = await self.flow(shard, flow_id)
            if record is not None and record.phase in phases:
                return record
            await asyncio.sleep(0.05)
        raise TreeError(f"flow {flow_id.hex()[:12]} at {shard} is {record.phase if record else 'unknown'}, "
                        f"not {'/'.join(phases)}, after {timeout_s} s")

    async def quote(self, origin: str, destination: str, energy_wh: int, first_period: int, last_period: int) -> Quote:
        """The consumer's quote from verified reads of every path shard's ``link`` and ``reserved``."""
        path = self.topology.path(origin, destination)
        links: dict[tuple[str, str], Any] = {}
        reserved: dict[tuple[str, str, int], int] = {}
        for index, _ in enumerate(path):
            for parent, child in self.topology.edges_reserved_at(path, index):
                links[(parent, child)] = await self.read(parent, "bridge", "link", [child])
                for period in range(first_period, last_period + 1):
                    reserved[(parent, child, period)] = await self.read(parent, "bridge", "reserved", [child, period]) or 0

        def read_link(parent: str, child: str):
            value = links[(parent, child)]
            return None if value is None else (value[0], value[1])

        return quote_flow(self.topology, origin, destination, energy_wh=energy_wh, first_period=first_period,
                          last_period=last_period, read_link=read_link,
                          read_reserved=lambda p, c, period: reserved[(p, c, period)])

    # ------------------------------------------------------------------ the market side

    def period_now(self) -> int:
        return (int(time.time()) - self.topology.genesis_time) // self.topology.period_s

    def period_start(self, period: int) -> int:
        return self.topology.genesis_time + period * self.topology.period_s

    async def rate(self, shard: str, who: str, rating: int = 80) -> None:
        """The shard's grid operator rates ``who`` (genesis members start unrated, below the
        collateral threshold)."""
        await self.call(self.operator(shard), shard, "membership", "set_rating", self.address(who), rating)

    async def fund(self, shard: str, who: str, amount: int) -> None:
        reference = hashlib.sha256(f"deposit:{who}:{shard}:{time.time_ns()}".encode()).digest()
        await self.call("bank", shard, "fiat", "mint", CURRENCY, self.address(who), amount, reference)

    async def offer_tokens(self, producer: str, shard: str, count: int, energy_wh: int, period: int,
                           price: int) -> list[int]:
        """``count`` tokens of ``energy_wh`` in ``period`` with the consumer side offered at ``price``."""
        async def one() -> int:
            emitted = await self.call(producer, shard, "energy_tokens", "emit", period, period, energy_wh, "solar", 40, 0,
                                      CURRENCY, 0, None, None, None, None, None)
            serial = emitted.receipt.result
            await self.call(producer, shard, "energy_tokens", "offer_side", serial, "consumer", price, CURRENCY)
            return serial

        serials = []
        for _ in range(count):  # one producer's nonces: in order
            serials.append(await one())
        return serials

    async def open_flow(self, consumer: str, origin: str, destination: str, token: int, price: int, energy_wh: int,
                        period: int, fee_budget: int, deadline: int, *, expect_ok: bool = True) -> TxResult:
        return await self.call(consumer, origin, "bridge", "open_flow", destination, token, price, CURRENCY, energy_wh,
                               period, period, fee_budget, deadline, expect_ok=expect_ok)


def create_tree(root: Path, *, validators: int | None, observers: bool = False, period_s: int | None = None,
                market_params: dict | None = None, relayers: int = 1, relay_poll_ms: int = 100) -> ShardDevnet:
    """A devnet of the three-level tree under ``root`` (created, not started)."""
    genesis_time = None
    if period_s is not None:
        genesis_time = int(time.time()) // period_s * period_s
    text = derive_topology(TOPOLOGY.read_text(), validators=validators, period_s=period_s, genesis_time=genesis_time)
    topology_file = root.parent / f"{root.name}-topology.toml"
    root.parent.mkdir(parents=True, exist_ok=True)
    topology_file.write_text(text)
    return ShardDevnet.create(root, topology_file, observers=observers, relayers=relayers, market_params=market_params,
                              relay_poll_ms=relay_poll_ms)
