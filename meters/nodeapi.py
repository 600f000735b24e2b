"""The gateway's whole boundary with the node and the ``meters`` contract.

Everything the gateway assumes about the rest of gridledger is here, so it changes in
one place when the node and the contract land:

- a reading batch is the signed call ``meters.submit_readings([[period, energy_wh,
  flags], ...])`` from the meter's own key (:func:`build_submission`);
- ``POST /v1/tx`` (optionally ``?wait=commit&timeout_ms=N``), ``GET /v1/tx/{id}``,
  ``GET /v1/accounts/{address}`` (the next nonce) and ``GET /v1/status`` (the height,
  for transaction expiry), as in ``API.md``;
- the codes that mean "already there": a transaction id the node already knows
  (``duplicate`` at submission) and a ``(meter, period)`` the contract already holds
  (:data:`DUPLICATE_READING_CODES` in the receipt).

:class:`NodeClient` turns every answer into a :class:`TxStatus`; connection failures,
timeouts and 5xx answers raise :class:`~meters.errors.NodeUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from ledger.crypto import Address, PrivateKey
from ledger.tx import Transaction
from meters.errors import NodeUnavailable
from meters.readings import Reading

__all__ = [
    "CONTRACT",
    "DUPLICATE_READING_CODES",
    "FUNCTION",
    "NodeClient",
    "TxStatus",
    "build_submission",
]

CONTRACT = "meters"
FUNCTION = "submit_readings"
# Receipt error codes with which the contract refuses a reading for a (meter, period)
# it already holds. "duplicate" until the contract fixes its word.
DUPLICATE_READING_CODES = frozenset({"duplicate", "duplicate_reading"})


def build_submission(
    key: PrivateKey,
    readings: Sequence[Reading],
    *,
    chain_id: str,
    nonce: int,
    gas_limit: int,
    expiry: int,
) -> Transaction:
    """The signed transaction submitting ``readings`` (one meter, increasing periods)."""
    return Transaction.create(
        key,
        chain_id=chain_id,
        nonce=nonce,
        contract=CONTRACT,
        function=FUNCTION,
        args=[[r.as_arg() for r in readings]],
        gas_limit=gas_limit,
        expiry=expiry,
    )


@dataclass(frozen=True, slots=True)
class TxStatus:
    """What the node says about a transaction.

    ``status`` is ``pending``, ``committed``, ``rejected`` (refused at submission,
    ``code`` says why) or ``unknown``. For ``committed``, ``ok`` is the receipt's
    verdict and ``code``/``message`` its error when it failed.
    """

    status: str
    code: str | None = None
    message: str = ""
    ok: bool = True
    height: int | None = None


def _from_body(body: dict) -> TxStatus:
    status = body.get("status", "unknown")
    receipt = body.get("receipt") or {}
    error = receipt.get("error") or {}
    return TxStatus(
        status=status if status in ("pending", "committed", "rejected", "unknown") else "unknown",
        code=error.get("code"),
        message=error.get("message", ""),
        ok=bool(receipt.get("ok", True)) if status == "committed" else True,
        height=body.get("height"),
    )


class NodeClient:
    """A small aiohttp client of the node's public API, for one gateway."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, max_connections: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections), timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, *, params=None, json=None, timeout_s: float | None = None) -> tuple[int, dict]:
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._http().request(method, self.base_url + path, params=params, json=json, timeout=timeout) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
                if resp.status >= 500 or not isinstance(body, dict):
                    raise NodeUnavailable(f"{method} {path}: HTTP {resp.status}")
                return resp.status, body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NodeUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    async def submit(self, raw: bytes, *, wait_ms: int = 0) -> TxStatus:
        """``POST /v1/tx``; with ``wait_ms`` the node answers once committed (or pending at timeout)."""
        params = {"wait": "commit", "timeout_ms": str(wait_ms)} if wait_ms > 0 else None
        status, body = await self._request("POST", "/v1/tx", params=params, json={"tx": raw.hex()},
                                           timeout_s=self._timeout.total + wait_ms / 1000)
        if status >= 400:
            error = body.get("error") or {}
            if status == 429:
                raise NodeUnavailable(f"node is busy: {error.get('message', '')}")
            return TxStatus("rejected", code=error.get("code", "unknown"), message=error.get("message", ""))
        return _from_body(body)

    async def tx_status(self, tx_id: bytes) -> TxStatus:
        status, body = await self._request("GET", f"/v1/tx/{tx_id.hex()}")
        if status == 404:
            return TxStatus("unknown")
        return _from_body(body)

    async def next_nonce(self, address: Address) -> int:
        """The nonce the account's next transaction must carry (0 for an account never seen)."""
        status, body = await self._request("GET", f"/v1/accounts/{address}")
        if status == 404:
            return 0
        nonce = body.get("nonce")
        if type(nonce) is not int or nonce < 0:
            raise NodeUnavailable(f"GET /v1/accounts/{address}: no valid nonce in {body!r}")
        return nonce

    async def height(self) -> int:
        _, body = await self._request("GET", "/v1/status")
        height = body.get("height")
        if type(height) is not int or height < 0:
            raise NodeUnavailable(f"GET /v1/status: no valid height in {body!r}")
        return height
