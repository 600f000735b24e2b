"""FakeNode: a TEST DOUBLE of the node's HTTP API, for the meter gateway's tests and bench.

It is not a ledger and never runs in production. It implements just what the gateway
uses (``POST /v1/tx`` with ``?wait=commit``, ``GET /v1/tx/{id}``,
``GET /v1/accounts/{address}``, ``GET /v1/status``) over an in-memory chain that is
strict where the real node will be strict: transactions are decoded and their
signatures checked with ``ledger``, nonces must follow each other per sender, and a
stand-in for the ``meters`` contract records one reading per ``(meter, period)`` and
refuses a second one as ``duplicate`` (the whole transaction fails, its nonce is used).

Faults for tests: :meth:`go_down` / :meth:`come_up` (the API stops answering; with
``lose_mempool`` the node forgets what it had not committed, like a restart),
``hold_blocks`` (no block is produced) and ``hold_responses`` (submissions are
accepted and committed but never answered, the worst case for a client that dies).
Every reading attempt is kept in :attr:`attempts` so a test can prove that nothing was
sent twice with different content.

Run alone for benchmarks: ``python -m meters.fakenode --listen 127.0.0.1:8700``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass, field

from aiohttp import web

from ledger.crypto import Address, CryptoError
from ledger.tx import Transaction, TxError
from meters.nodeapi import CONTRACT, FUNCTION
from meters.readings import FLAG_MASK

__all__ = ["FakeNode", "main"]


@dataclass
class _Record:
    tx: Transaction
    status: str = "pending"
    height: int | None = None
    index: int | None = None
    receipt: dict | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def body(self) -> dict:
        out = {"tx_id": self.tx.tx_id.hex(), "status": self.status}
        if self.status == "committed":
            out.update(height=self.height, index=self.index, receipt=self.receipt)
        return out


class FakeNode:
    """In-memory chain behind the node's HTTP API shape. A test double, not a node."""

    def __init__(self, chain_id: str, *, host: str = "127.0.0.1", port: int = 0, block_interval_s: float = 0.05,
                 registered: set[bytes] | None = None) -> None:
        self.chain_id = chain_id
        self.host = host
        self.port = port
        self.block_interval_s = block_interval_s
        self.registered = registered
        self.height = 0
        self.nonces: dict[bytes, int] = {}
        self._senders: dict[bytes, bytes] = {}  # address -> public key
        self.mempool: list[_Record] = []
        self.txs: dict[bytes, _Record] = {}
        self.readings: dict[tuple[bytes, int], tuple[int, int, bytes, int]] = {}
        self.attempts: list[tuple[bytes, int, int, int]] = []
        self.conflicting_duplicates = 0
        self.duplicate_refusals = 0
        self.posts = 0
        self.posted: list[tuple[bytes, int]] = []  # (tx id, readings carried) of every accepted submission
        self.hold_blocks = False
        self.hold_responses = False
        self.post_seen = asyncio.Event()
        self.commit_seen = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._blocks: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.come_up()
        self._blocks = asyncio.create_task(self._produce_blocks())

    async def stop(self) -> None:
        await self.go_down()
        if self._blocks is not None:
            self._blocks.cancel()
            await asyncio.gather(self._blocks, return_exceptions=True)

    async def come_up(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/tx", self._post_tx)
        app.router.add_get("/v1/tx/{tx_id}", self._get_tx)
        app.router.add_get("/v1/accounts/{address}", self._get_account)
        app.router.add_get("/v1/status", self._get_status)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def go_down(self, *, lose_mempool: bool = False) -> None:
        """Stop answering (open connections are dropped). The chain itself keeps going."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if lose_mempool:
            for record in self.mempool:
                del self.txs[record.tx.tx_id]
            self.mempool.clear()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def release_responses(self) -> None:
        self.hold_responses = False
        self._release.set()
        self._release = asyncio.Event()

    # ------------------------------------------------------------ chain

    async def _produce_blocks(self) -> None:
        while True:
            await asyncio.sleep(self.block_interval_s)
            if self.hold_blocks or not self.mempool:
                continue
            self.height += 1
            batch, self.mempool = self.mempool, []
            for index, record in enumerate(batch):
                record.receipt = self._execute(record.tx)
                record.status, record.height, record.index = "committed", self.height, index
                self.nonces[record.tx.sender] = self.nonces.get(record.tx.sender, 0) + 1
                record.done.set()
            self.commit_seen.set()

    def _execute(self, tx: Transaction) -> dict:
        """The stand-in for the meters contract: one reading per (meter, period)."""
        def fail(code: str, message: str) -> dict:
            return {"ok": False, "gas_used": 1000, "events": [], "error": {"code": code, "message": message}}

        if tx.contract != CONTRACT or tx.function != FUNCTION:
            return fail("not_allowed", f"this test double only runs {CONTRACT}.{FUNCTION}")
        batch = tx.args[0] if len(tx.args) == 1 and type(tx.args[0]) is list else None
        if not batch or not all(type(r) is list and len(r) == 3 and all(type(x) is int for x in r) for r in batch):
            return fail("contract_error", "args must be [[period, energy_wh, flags], ...]")
        if any(r[1] < 0 or not 0 <= r[2] <= FLAG_MASK for r in batch):
            return fail("contract_error", "energy_wh must be >= 0 and flags within the defined bits")
        periods = [r[0] for r in batch]
        for period, energy, flags in batch:
            self.attempts.append((tx.sender, period, energy, flags))
        duplicates = [p for p in periods if (tx.sender, p) in self.readings] or (
            periods if len(set(periods)) != len(periods) else [])
        if duplicates:
            self.duplicate_refusals += 1
            for period, energy, flags in batch:
                held = self.readings.get((tx.sender, period))
                if held is not None and (held[0], held[1]) != (energy, flags):
                    self.conflicting_duplicates += 1
            return fail("duplicate", f"reading for period {duplicates[0]} is already recorded")
        for period, energy, flags in batch:
            self.readings[(tx.sender, period)] = (energy, flags, tx.tx_id, self.height)
        events = [{"contract": CONTRACT, "name": "reading", "fields": {"period": p, "energy_wh": e, "flags": f}}
                  for p, e, f in batch]
        return {"ok": True, "gas_used": 1000 * len(batch), "events": events, "error": None}

    def readings_of(self, sender: bytes) -> dict[int, tuple[int, int]]:
        return {p: (e, f) for (s, p), (e, f, _, _) in self.readings.items() if s == sender}

    # ------------------------------------------------------------ HTTP

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    async def _post_tx(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        self.post_seen.set()
        try:
            body = await request.json()
            raw = bytes.fromhex(body["tx"])
            tx = Transaction.decode(raw)
            tx.verify(self.chain_id, self.height)
        except TxError as exc:
            return self._error(400, exc.code, exc.message)
        except (ValueError, KeyError, TypeError):
            return self._error(400, "malformed", "body must be {\"tx\": \"<hex>\"}")
        if tx.tx_id in self.txs:
            return self._error(409, "duplicate", "this transaction is already known")
        if self.registered is not None and tx.sender not in self.registered:
            return self._error(403, "not_member", "the sender is not a registered meter")
        expected = self.nonces.get(tx.sender, 0) + sum(1 for r in self.mempool if r.tx.sender == tx.sender)
        if tx.nonce != expected:
            return self._error(400, "bad_nonce", f"nonce {tx.nonce}; the next nonce of this sender is {expected}")
        record = _Record(tx)
        self.posted.append((tx.tx_id, len(tx.args[0]) if tx.args and type(tx.args[0]) is list else 0))
        self._senders.setdefault(tx.sender_address.raw, tx.sender)
        self.txs[tx.tx_id] = record
        self.mempool.append(record)
        if self.hold_responses:
            await self._release.wait()
        if request.query.get("wait") == "commit":
            timeout = int(request.query.get("timeout_ms", "5000")) / 1000
            try:
                await asyncio.wait_for(record.done.wait(), timeout)
            except TimeoutError:
                pass
        return web.json_response(record.body(), status=200 if record.status == "committed" else 202)

    async def _get_tx(self, request: web.Request) -> web.Response:
        try:
            record = self.txs.get(bytes.fromhex(request.match_info["tx_id"]))
        except ValueError:
            return self._error(400, "malformed", "a transaction id is 64 hex digits")
        if record is None:
            return web.json_response({"tx_id": request.match_info["tx_id"], "status": "unknown"})
        return web.json_response(record.body())

    async def _get_account(self, request: web.Request) -> web.Response:
        try:
            address = Address.parse(request.match_info["address"])
        except CryptoError as exc:
            return self._error(400, "malformed", str(exc))
        sender = self._senders.get(address.raw)
        nonce = self.nonces.get(sender, 0) if sender is not None else 0
        return web.json_response({"address": str(address), "nonce": nonce, "roles": ["meter"]})

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response({"shard": self.chain_id, "role": "validator", "height": self.height,
                                  "mempool": len(self.mempool)})


async def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    node = FakeNode(args.chain_id, host=host or "127.0.0.1", port=int(port), block_interval_s=args.block_interval_ms / 1000)
    await node.start()
    print(f"fake node (test double) for shard {args.chain_id} on {node.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meters.fakenode",
                                     description="A test double of the node's HTTP API for meter submissions.")
    parser.add_argument("--listen", default="127.0.0.1:8700")
    parser.add_argument("--chain-id", default="devnet")
    parser.add_argument("--block-interval-ms", type=int, default=100)
    return asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
