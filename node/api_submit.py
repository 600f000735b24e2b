"""The API's submission routes: ``POST /v1/tx``, ``POST /v1/txs`` and ``GET /v1/tx/{tx_id}``.

Submissions are idempotent: a transaction already committed is answered with its
receipt, one already waiting as pending, and a transaction listed twice in a batch is
one submission. So a client that lost an answer simply submits again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ledger.tx import MAX_TX_SIZE, Receipt, Transaction, TxError
from node import openapi
from node.api_json import (
    ApiError,
    api_error,
    bad_request,
    json_response,
    parse_hex,
    parse_int,
    receipt_json,
    to_json,
)

if TYPE_CHECKING:
    from node.api import NodeView

__all__ = ["DEFAULT_WAIT_MS", "MAX_BATCH", "MAX_WAIT_MS", "SubmitHandlers"]

# wait=commit holds a request open; a minute covers any healthy shard's commit latency
# many times over, and bounds what a client can pin.
MAX_WAIT_MS = 60_000
DEFAULT_WAIT_MS = 10_000
# A meter gateway sends a few hundred readings at a time; 1000 items keeps one batch
# answer under a second of admission work.
MAX_BATCH = 1000


class SubmitHandlers:
    """Handlers of :class:`node.api.ApiServer` (a mixin: ``node`` and ``_json_body`` come from it)."""

    node: NodeView

    def _wait_params(self, request: web.Request) -> float | None:
        wait = request.query.get("wait")
        if wait is None:
            if "timeout_ms" in request.query:
                raise bad_request("timeout_ms needs wait=commit")
            return None
        if wait != "commit":
            raise bad_request(f"wait must be 'commit', got {wait!r}")
        return parse_int(request.query.get("timeout_ms", str(DEFAULT_WAIT_MS)), "timeout_ms", 0, MAX_WAIT_MS) / 1000

    @staticmethod
    def _decode(raw: bytes) -> Transaction:
        """Decode to name the transaction; refuse what the mempool would refuse as malformed.

        Callers hold the result until the node has admitted the transaction: the node
        then finds it decoded (``Transaction.decode`` keeps the transactions that are
        held), instead of decoding and hashing it a second time.
        """
        try:
            return Transaction.decode(raw)
        except TxError as exc:
            raise api_error(exc.code, exc.message) from None

    def _known(self, tx_id: bytes) -> bool:
        """Already committed or waiting: a resubmission is answered with its status, not refused."""
        return self.node.tx_pending(tx_id) or self.node.store.tx_location(tx_id) is not None

    def _tx_status(self, tx_id: bytes) -> dict:
        # A waiting transaction is not committed (a commit removes its transactions from
        # the mempool in the same step), so the mempool answers first, without a store read.
        if self.node.tx_pending(tx_id):
            return {"tx_id": tx_id.hex(), "status": "pending"}
        location = self.node.store.tx_location(tx_id)
        if location is not None:
            height, index, receipt_raw = location
            return {
                "tx_id": tx_id.hex(),
                "status": "committed",
                "height": to_json(height),
                "index": index,
                "receipt": receipt_json(Receipt.decode(receipt_raw)),
                "receipt_hex": receipt_raw.hex(),
            }
        rejected = self.node.tx_rejected(tx_id)
        if rejected is not None:
            code, message = rejected
            return {"tx_id": tx_id.hex(), "status": "rejected", "error": {"code": code, "message": message}}
        return {"tx_id": tx_id.hex(), "status": "unknown"}

    def _submit_answer(self, tx_id: bytes) -> web.Response:
        body = self._tx_status(tx_id)
        if body["status"] == "committed":
            return json_response(body, 200)
        if body["status"] == "rejected":
            return json_response(body, openapi.status_of(body["error"]["code"]))
        return json_response(body, 202)

    async def submit_tx(self, request: web.Request) -> web.Response:
        timeout_s = self._wait_params(request)
        body = await self._json_body(request)
        if type(body) is not dict or "tx" not in body:
            raise bad_request('the body must be {"tx": "<hex of the encoded transaction>"}')
        raw = parse_hex(body["tx"], "tx", max_bytes=MAX_TX_SIZE)
        tx = self._decode(raw)
        tx_id = tx.tx_id
        if not self._known(tx_id):
            try:
                # shielded: admission completes even if the client disconnects meanwhile
                await asyncio.shield(self.node.submit(raw))
            except TxError as exc:  # TxRejected, or a plain TxError from a node that decodes again
                raise api_error(exc.code, exc.message, tx_id=tx_id.hex(), status="rejected") from None
        del tx
        if timeout_s is not None and self.node.store.tx_location(tx_id) is None:
            await self.node.wait_for(tx_id, timeout_s)
        return self._submit_answer(tx_id)

    async def submit_txs(self, request: web.Request) -> web.Response:
        timeout_s = self._wait_params(request)
        body = await self._json_body(request)
        if type(body) is not dict or type(body.get("txs")) is not list:
            raise bad_request('the body must be {"txs": ["<hex>", ...]}')
        items = body["txs"]
        if len(items) > MAX_BATCH:
            raise api_error("too_large", f"a batch holds at most {MAX_BATCH} transactions, got {len(items)}")
        results: list[dict | None] = [None] * len(items)
        tx_ids: list[bytes | None] = [None] * len(items)
        raws: list[bytes] = [b""] * len(items)
        decoded: list[Transaction] = []  # held until admitted (see _decode)
        first: dict[bytes, int] = {}  # a transaction listed twice is one submission
        to_submit: list[int] = []
        for i, item in enumerate(items):
            try:
                raws[i] = parse_hex(item, f"txs[{i}]", max_bytes=MAX_TX_SIZE)
                tx = self._decode(raws[i])
                decoded.append(tx)
                tx_ids[i] = tx_id = tx.tx_id
            except ApiError as exc:
                results[i] = {"tx_id": None, "status": "rejected", "error": {"code": exc.code, "message": exc.message}}
                continue
            if tx_id not in first:
                first[tx_id] = i
                if not self._known(tx_id):
                    to_submit.append(i)
        if to_submit:
            outcomes = await asyncio.shield(self.node.submit_many([raws[i] for i in to_submit]))
            if len(outcomes) != len(to_submit):
                raise RuntimeError("submit_many answered a different number of results than items")
            for i, outcome in zip(to_submit, outcomes, strict=True):
                if isinstance(outcome, TxError):
                    results[i] = {"tx_id": tx_ids[i].hex(), "status": "rejected",
                                  "error": {"code": outcome.code, "message": outcome.message}}
        del decoded
        accepted = [t for t, i in first.items() if results[i] is None]
        if timeout_s is not None and accepted:
            await asyncio.gather(*(self.node.wait_for(t, timeout_s) for t in accepted
                                   if self.node.store.tx_location(t) is None))
        for i, tx_id in enumerate(tx_ids):
            if tx_id is not None:
                j = first[tx_id]
                if results[j] is None:
                    results[j] = self._tx_status(tx_id)
                results[i] = results[j]
        return json_response({"results": results})

    async def get_tx(self, request: web.Request) -> web.Response:
        tx_id = parse_hex(request.match_info["tx_id"], "transaction id", size=32)
        return json_response(self._tx_status(tx_id))
