"""Harness for process-level tests: a devnet of real node processes, a token, a transfer load.

Every test creates its own devnet in a temporary directory with :func:`devnet`, which
always stops every node process (SIGTERM, then SIGKILL) when the test ends, and prints
the end of each node's log when it fails. The load generator and the checks speak the
public HTTP API only (``ledger.httpclient``), like any client of the consortium.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.throughput import TOKEN_SOURCE
from cli.devnet import Devnet, DevnetNode
from ledger.client import Account
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.httpclient import ApiError, Client

__all__ = [
    "ChainView",
    "HarnessError",
    "Stop",
    "TamperingProxy",
    "TransferLoad",
    "api",
    "check_alive",
    "deploy_token",
    "devnet",
    "fetch_chain",
    "genesis_of",
    "heights",
    "leader_of",
    "log_tail",
    "logs",
    "status",
    "tx_status_everywhere",
    "wait_for",
    "wait_height",
    "wait_ready",
]

# Start-up of 4-5 Python processes on a busy 2-core machine takes a few seconds.
READY_TIMEOUT_S = 90.0
FUNDS = 10**12


class HarnessError(AssertionError):
    """The devnet did not do what the test waited for; the message says what and shows the logs."""


def log_tail(net: Devnet, node: DevnetNode, lines: int = 25) -> str:
    path = net.log_file(node)
    if not path.exists():
        return f"--- {node.name}: no log\n"
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {node.name} ({path}):\n" + "\n".join(tail) + "\n"


def logs(net: Devnet, lines: int = 25) -> str:
    return "".join(log_tail(net, n, lines) for n in net.nodes)


@contextlib.contextmanager
def devnet(
    root: Path, *, protocol: str = "bft", validators: int = 4, observers: int = 1, params: dict | None = None,
    configure=None, market: bool = False,
) -> Iterator[Devnet]:
    """A running devnet under ``root``; every node process is stopped when the block ends.

    Without ``market`` genesis has no energy market, so any account may transact (with
    it, only the market's members). ``configure(net)``, if given, runs after the files
    are written and before any node starts.
    """
    net = Devnet.create(root, validators=validators, observers=observers, protocol=protocol, params=params,
                        market=market)
    try:
        if configure is not None:
            configure(net)
        net.start()
        wait_ready(net)
        yield net
    except BaseException:
        print(logs(net))
        raise
    finally:
        net.stop(timeout_s=5.0)


def wait_ready(net: Devnet, names: list[str] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    # Devnet.wait_ready reports with SystemExit (it serves the command line): make it a test failure.
    try:
        net.wait_ready(timeout_s, names=names)
    except SystemExit as exc:
        raise HarnessError(str(exc)) from None


def genesis_of(net: Devnet) -> Genesis:
    return Genesis.load(net.root / "genesis.json")


def api(node: DevnetNode, timeout: float = 5.0) -> Client:
    return Client(node.url, timeout=timeout)


async def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    """Await ``predicate()`` (async, returning a true value) until it holds; HarnessError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: not reached within {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)


async def status(node: DevnetNode) -> dict | None:
    try:
        async with api(node, timeout=2.0) as c:
            return await c.status()
    except ApiError:
        return None


async def heights(nodes: list[DevnetNode]) -> dict[str, int | None]:
    found = await asyncio.gather(*(status(n) for n in nodes))
    return {n.name: (s or {}).get("height") for n, s in zip(nodes, found, strict=True)}


def dead_nodes(net: Devnet) -> list[DevnetNode]:
    """Nodes whose process has exited although the test did not stop them."""
    dead = []
    for node in net.nodes:
        if node.pid is None:
            continue
        try:
            exited = os.waitpid(node.pid, os.WNOHANG)[0] == node.pid
        except ChildProcessError:  # not our child (started by `gridledger devnet up`)
            try:
                os.kill(node.pid, 0)
                exited = False
            except ProcessLookupError:
                exited = True
        if exited:
            dead.append(node)
    return dead


def check_alive(net: Devnet) -> None:
    dead = dead_nodes(net)
    if dead:
        for node in dead:
            node.pid = None
        raise HarnessError("node process exited: " + ", ".join(n.name for n in dead) + "\n"
                           + "".join(log_tail(net, n, 15) for n in dead))


async def wait_height(
    nodes: list[DevnetNode], height: int, timeout_s: float, what: str = "", net: Devnet | None = None
) -> dict[str, int]:
    """Wait until every node in ``nodes`` is at ``height`` or above (failing early if a node of ``net`` died)."""
    last: dict = {}

    async def reached():
        nonlocal last
        if net is not None:
            check_alive(net)
        last = await heights(nodes)
        return all(h is not None and h >= height for h in last.values())

    try:
        await wait_for(reached, timeout_s, what or f"every node at height {height}", poll_s=0.2)
    except HarnessError as exc:
        raise HarnessError(f"{exc}; heights: {last}") from None
    return last


async def leader_of(nodes: list[DevnetNode]) -> DevnetNode | None:
    found = await asyncio.gather(*(status(n) for n in nodes))
    for node, st in zip(nodes, found, strict=True):
        if st and st.get("is_leader"):
            return node
    return None


async def deploy_token(net: Devnet, holders: list[PrivateKey], amount: int = FUNDS) -> None:
    """Deploy the load token, crediting ``amount`` to each holder, from the devnet's operator."""
    operator = Account(net.account_key("operator"), chain_id=net.chain_id, gas_limit=10_000_000)
    async with api(net.validators()[0], timeout=30.0) as c:
        operator.next_nonce = await c.next_nonce(operator.address)
        first, rest = holders[:2000], holders[2000:]
        deploy = operator.call("system", "deploy", ["token", TOKEN_SOURCE, [[k.address.raw for k in first], amount]])
        results = [await c.submit(deploy, wait=True, timeout_s=20)]
        for i in range(0, len(rest), 2000):
            chunk = [k.address.raw for k in rest[i:i + 2000]]
            results.append(await c.submit(operator.call("token", "mint", [chunk, amount]), wait=True, timeout_s=20))
    for r in results:
        if not r.ok:
            raise HarnessError(f"token set-up failed: {r.status} {r.receipt and r.receipt.error}")


# ---------------------------------------------------------------------- the load


class Stop(asyncio.Event):
    """An event that remembers when it was set."""

    stopped_at = 0.0

    def set(self) -> None:
        self.stopped_at = time.monotonic()
        super().set()


@dataclass
class TransferLoad:
    """Token transfers from ``senders``, each in batches of ``batch`` with sequential nonces.

    A sender submits its batch to one validator with ``wait=commit`` and records every
    transaction the answer shows committed (id -> (height, index)). Whatever is not
    committed is submitted again, unchanged, to the next validator: submission is
    idempotent, and a transaction lost with a killed validator's mempool must reach
    another one before the sender's later nonces can run. ``errors`` keeps every
    rejection (there should be none: each nonce is used by exactly one transaction).
    """

    urls: list[str]
    chain_id: str
    senders: list[PrivateKey]
    batch: int = 10
    wait_s: float = 3.0
    seed: int = 1
    give_up_s: float = 60.0
    committed: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unfinished: list[bytes] = field(default_factory=list)
    attempts: int = 0
    failovers: int = 0

    async def run(self, stop: Stop) -> None:
        clients = [Client(u, timeout=self.wait_s + 5.0) for u in self.urls]
        try:
            await asyncio.gather(*(self._sender(i, key, clients, stop) for i, key in enumerate(self.senders)))
        finally:
            for c in clients:
                await c.close()

    async def _sender(self, i: int, key: PrivateKey, clients: list[Client], stop: Stop) -> None:
        rng = random.Random(self.seed * 1000 + i)
        account = Account(key, chain_id=self.chain_id)
        target = clients[i % len(clients)]
        recipients = [k.address.raw for k in self.senders]
        while not stop.is_set():
            txs = [account.call("token", "transfer", [rng.choice(recipients), 1 + rng.randrange(100)])
                   for _ in range(self.batch)]
            waiting = {t.tx_id: t.encode() for t in txs}
            # A started batch is finished even after stop (its nonces would block the sender),
            # unless the shard makes no progress for give_up_s after the stop.
            while waiting:
                if stop.is_set() and time.monotonic() - stop.stopped_at > self.give_up_s:
                    self.unfinished.extend(waiting)
                    return
                self.attempts += 1
                try:
                    results = await target.submit_many(list(waiting.values()), wait=True, timeout_s=self.wait_s)
                except ApiError:
                    results = []
                for r in results:
                    if r.status == "committed":
                        self.committed[r.tx_id] = (r.height, r.index)
                        waiting.pop(r.tx_id, None)
                    elif r.status == "rejected":
                        self.errors.append(f"{target.base_url}: {r.error}")
                if waiting:
                    self.failovers += 1
                    target = clients[(clients.index(target) + 1) % len(clients)]
                    await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- whole-chain checks


@dataclass
class ChainView:
    """Every block of one node up to a height: header fields and transaction ids."""

    name: str
    headers: list[dict]
    tx_ids: list[list[str]]

    def location(self) -> dict[str, tuple[int, int]]:
        return {t: (h, i) for h, ids in enumerate(self.tx_ids) for i, t in enumerate(ids)}


async def fetch_chain(node: DevnetNode, upto: int, concurrency: int = 16) -> ChainView:
    headers: list = [None] * (upto + 1)
    tx_ids: list = [None] * (upto + 1)
    gate = asyncio.Semaphore(concurrency)
    async with api(node, timeout=30.0) as c:
        async def one(h: int) -> None:
            async with gate:
                _, body = await c.request("GET", f"/v1/blocks/{h}")
            headers[h] = body["header"]
            tx_ids[h] = body["tx_ids"]

        await asyncio.gather(*(one(h) for h in range(upto + 1)))
    return ChainView(node.name, headers, tx_ids)


async def tx_status_everywhere(nodes: list[DevnetNode], tx_ids: list[bytes], concurrency: int = 16) -> dict[str, dict]:
    """GET /v1/tx/{id} on every node: node name -> tx id -> (status, height, index)."""
    out: dict[str, dict] = {}

    async def per_node(node: DevnetNode) -> None:
        gate = asyncio.Semaphore(concurrency)
        seen: dict = {}
        async with api(node, timeout=30.0) as c:
            async def one(t: bytes) -> None:
                async with gate:
                    r = await c.tx(t)
                seen[t] = (r.status, r.height, r.index)

            await asyncio.gather(*(one(t) for t in tx_ids))
        out[node.name] = seen

    await asyncio.gather(*(per_node(n) for n in nodes))
    return out


# ---------------------------------------------------------------------- a lying node


class TamperingProxy:
    """An HTTP proxy in front of nodes that rewrites chosen JSON answers: a node that lies.

    ``tamper(path, body)`` gets the path (with query) and the decoded JSON of every 200
    answer and returns the body to serve instead, or None to pass it unchanged. The proxy
    runs its own event loop in a thread, so node processes and blocking test code can use
    it at the same time. ``tampered`` counts the answers it changed.
    """

    def __init__(self, targets: list[str], tamper) -> None:
        self.targets = targets  # the first that answers is asked
        # While no target answers (the devnet is starting), wait rather than fail, so the
        # client does not turn to another source before the proxy could lie to it.
        self.patience_s = 20.0
        self.tamper = tamper
        self.tampered = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tampering-proxy", daemon=True)
        self._runner = None
        self._session = None

    def start(self) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> TamperingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> int:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return self._runner.addresses[0][1]

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        answer = None
        deadline = time.monotonic() + self.patience_s
        while answer is None:
            for target in self.targets:
                try:
                    async with self._session.request(
                        request.method, target.rstrip("/") + request.path_qs, data=body or None,
                        headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as resp:
                        answer = resp.status, await resp.read(), resp.headers.get("Content-Type", "application/json")
                    break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    continue
            if answer is None:
                if time.monotonic() > deadline:
                    return web.json_response({"error": {"code": "unavailable", "message": "no target answers"}}, status=503)
                await asyncio.sleep(0.2)
        status, raw, content_type = answer[0], answer[1], answer[2].split(";")[0]
        if status == 200 and content_type == "application/json":
            changed = self.tamper(request.path_qs, json.loads(raw))
            if changed is not None:
                self.tampered += 1
                return web.json_response(changed)
        return web.Response(body=raw, status=status, content_type=content_type)
