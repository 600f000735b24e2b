"""The client SDK over HTTP: submit transactions, wait for them, and read verified state.

Speaks the node's public API (``/openapi.json`` documents it) and nothing else: no
node code is imported, so a meter gateway, a relayer, a bank's back office or the CLI
uses it with only ``ledger`` installed::

    async with Client("https://node-1.example:8080", ssl=ctx) as node:
        result = await node.submit(account.call("fiat", "transfer", [to.raw, 125_00, "CHF"]), wait=True)
        balance = await node.state("fiat", "balances", [to.raw, "CHF"], verify_with=validators)

``state(..., verify_with=validators)`` fetches the value with its state proof, the block
header and the commit certificate, and returns the value only after
:func:`ledger.client.verify_read` has checked all three against the validator set the
caller trusts (from genesis); otherwise it raises :class:`ProofError`. A node that lies
can refuse to answer, never make the client accept a wrong value.

Every failure to get an answer raises :class:`ApiError`: ``status`` is the HTTP status
(0 when no answer came), ``code`` the API's stable error code (``unavailable`` when the
node could not be reached, ``bad_response`` when it answered outside the API), and
``body`` the JSON answer, unchanged, for tools that print it.

:class:`SyncClient` wraps the same calls for scripts and the command line.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from ledger import codec
from ledger.block import Block, BlockError, BlockHeader
from ledger.certificate import CertificateError, CheckpointCertificate, CommitCertificate
from ledger.client import ProofError, StateRead, verify_read
from ledger.crypto import Address
from ledger.tx import Event, Receipt, Transaction, TxError
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = [
    "ApiError",
    "BlockInfo",
    "Client",
    "EventRecord",
    "ProofError",
    "SyncClient",
    "TxResult",
    "encode_key_part",
]

# A raw block is at most 8 MiB, 16 MiB in hex, plus its JSON: a larger answer is not
# one the API gives, and reading it would let a hostile node pin our memory.
MAX_RESPONSE_BYTES = 40 << 20
MAX_EVENT_LINE = 1 << 20


class ApiError(Exception):
    """The node refused the request, could not be reached, or answered outside the API."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


def _int(value: Any, what: str) -> int:
    """An integer of the API: a JSON integer, or a decimal string beyond 2**53."""
    if type(value) is int:
        return value
    if type(value) is str:
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise ApiError(0, "bad_response", f"{what} is not an integer: {value!r}")


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ApiError(0, "bad_response", f"{what} is not hex") from None


def encode_key_part(part: Any) -> str:
    """The ``key=`` query value of one state key part (the server reads it back exactly)."""
    if isinstance(part, Address):
        return "addr:" + str(part)
    t = type(part)
    if t is bytes:
        return "hex:" + part.hex()
    if t is bool:
        return "bool:" + ("true" if part else "false")
    if t is int:
        return f"int:{part}"
    if t is str:
        return "str:" + part
    raise TypeError(f"a state key part is bytes, int, bool, str or Address, not {t.__name__}")


def _key_value(part: Any) -> Any:
    return part.raw if isinstance(part, Address) else part


def _address_text(address: Address | str | bytes) -> str:
    if isinstance(address, Address):
        return str(address)
    if isinstance(address, bytes):
        return str(Address(address))
    return str(Address.parse(address))


@dataclass(frozen=True)
class TxResult:
    """What the node says about a transaction: ``pending``, ``committed``, ``rejected`` or ``unknown``."""

    tx_id: bytes | None
    status: str
    height: int | None = None
    index: int | None = None
    receipt: Receipt | None = None
    error: tuple[str, str] | None = None  # (code, message) when rejected
    json: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def committed(self) -> bool:
        return self.status == "committed"

    @property
    def ok(self) -> bool:
        """Committed and executed successfully."""
        return self.receipt is not None and self.receipt.ok

    @classmethod
    def from_json(cls, body: Any) -> TxResult:
        if not isinstance(body, dict) or body.get("status") not in ("pending", "committed", "rejected", "unknown"):
            raise ApiError(0, "bad_response", f"not a transaction status: {body!r:.200}")
        tx_id = None if body.get("tx_id") is None else _hex(body["tx_id"], "tx_id")
        receipt = None
        if body.get("receipt_hex") is not None:
            try:
                receipt = Receipt.decode(_hex(body["receipt_hex"], "receipt_hex"))
            except TxError as exc:
                raise ApiError(0, "bad_response", f"receipt does not decode: {exc}") from None
        error = body.get("error")
        return cls(
            tx_id=tx_id,
            status=body["status"],
            height=_opt_int(body.get("height"), "height"),
            index=_opt_int(body.get("index"), "index"),
            receipt=receipt,
            error=(str(error.get("code")), str(error.get("message", ""))) if isinstance(error, dict) else None,
            json=body,
        )


@dataclass(frozen=True)
class BlockInfo:
    """A block as served: its header, transaction ids, certificates, and the decoded block with ``raw``."""

    header: BlockHeader
    tx_ids: tuple[bytes, ...]
    certificate: CommitCertificate | None
    checkpoint: CheckpointCertificate | None = None
    block: Block | None = None
    json: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def height(self) -> int:
        return self.header.height


@dataclass(frozen=True)
class EventRecord:
    """One event from ``GET /v1/events``; ``id`` resumes the stream after it."""

    id: str
    height: int
    tx_index: int
    tx_id: bytes
    event: Event


def _header_from_json(h: dict) -> BlockHeader:
    try:
        return BlockHeader(
            h["chain_id"], _int(h["height"], "height"), _hex(h["prev_hash"], "prev_hash"), _hex(h["tx_root"], "tx_root"),
            _hex(h["state_root"], "state_root"), _hex(h["receipts_root"], "receipts_root"), _int(h["time"], "time"),
            _hex(h["proposer"], "proposer"), _hex(h["validator_set_hash"], "validator_set_hash"),
        )
    except (KeyError, TypeError):
        raise ApiError(0, "bad_response", "block header fields are missing") from None


def _certificate_from_json(c: dict | None) -> CommitCertificate | None:
    if c is None:
        return None
    try:
        sigs = tuple((int(s["index"]), _hex(s["signature"], "signature")) for s in c["signatures"])
        return CommitCertificate(c["protocol"], _int(c["height"], "height"), _int(c["round"], "round"), _hex(c["digest"], "digest"), sigs)
    except (KeyError, TypeError, ValueError):
        raise ApiError(0, "bad_response", "certificate fields are missing") from None


class Client:
    """An asyncio client of one node's public API. Use ``async with``, or call :meth:`close`."""

    def __init__(self, base_url: str, *, ssl: Any = None, timeout: float = 10.0, max_connections: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._ssl = ssl
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    # ------------------------------------------------------------ transport

    async def request(
        self, method: str, path: str, *, params: Any = None, json_body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """One API call: (HTTP status, JSON body) for 2xx answers; :class:`ApiError` otherwise.

        The body is the node's JSON, unchanged (the CLI's ``--json`` prints it).
        """
        budget = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        try:
            async with self._http().request(method, self.base_url + path, params=params, json=json_body, timeout=budget) as resp:
                raw = await self._read(resp)
                status = resp.status
        except ApiError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "unavailable", f"{method} {path}: {type(exc).__name__}: {exc}") from None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if status >= 400 or (status >= 300 and body is None):
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                raise ApiError(status, error["code"], str(error.get("message", "")), body)
            raise ApiError(status, "unavailable" if status >= 500 else "bad_response", f"{method} {path}: HTTP {status}", body)
        if body is None:
            raise ApiError(status, "bad_response", f"{method} {path}: the answer is not JSON")
        return status, body

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
            raise ApiError(resp.status, "bad_response", f"answer of {resp.content_length} bytes exceeds {MAX_RESPONSE_BYTES}")
        data = bytearray()
        while chunk := await resp.content.read(1 << 16):
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                raise ApiError(resp.status, "bad_response", f"answer exceeds {MAX_RESPONSE_BYTES} bytes")
        return bytes(data)

    async def _get(self, path: str, params: Any = None) -> Any:
        return (await self.request("GET", path, params=params))[1]

    # ------------------------------------------------------------ submitting

    @staticmethod
    def _raw(tx: Transaction | bytes) -> bytes:
        return tx.encode() if isinstance(tx, Transaction) else bytes(tx)

    @staticmethod
    def _wait_params(wait: bool, timeout_s: float) -> dict | None:
        return {"wait": "commit", "timeout_ms": str(int(timeout_s * 1000))} if wait else None

    async def submit(self, tx: Transaction | bytes, *, wait: bool = False, timeout_s: float = 10.0) -> TxResult:
        """Submit one transaction; with ``wait``, answer once committed (or still pending at the timeout).

        Raises :class:`ApiError` with the rejection code (``bad_nonce``, ``not_member``...).
        """
        _, body = await self.request(
            "POST", "/v1/tx", params=self._wait_params(wait, timeout_s), json_body={"tx": self._raw(tx).hex()},
            timeout=self.timeout + (timeout_s if wait else 0),
        )
        return TxResult.from_json(body)

    async def submit_many(self, txs: Sequence[Transaction | bytes], *, wait: bool = False, timeout_s: float = 10.0) -> list[TxResult]:
        """Submit a batch; one result per item, in order (refused items: status ``rejected`` with ``error``)."""
        _, body = await self.request(
            "POST", "/v1/txs", params=self._wait_params(wait, timeout_s),
            json_body={"txs": [self._raw(t).hex() for t in txs]}, timeout=self.timeout + (timeout_s if wait else 0),
        )
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(txs):
            raise ApiError(200, "bad_response", "the batch answer does not hold one result per item", body)
        return [TxResult.from_json(r) for r in results]

    async def tx(self, tx_id: bytes) -> TxResult:
        return TxResult.from_json(await self._get(f"/v1/tx/{tx_id.hex()}"))

    # ------------------------------------------------------------ blocks

    async def block(
        self, height: int | str = "latest", *, raw: bool = False, verify_with: ValidatorSet | None = None
    ) -> BlockInfo:
        """The block at ``height`` (or ``"latest"``).

        With ``verify_with`` the canonical block and certificate are fetched and checked:
        the certificate commits this header at this height under that validator set, and
        the transactions match the header's root. Raises :class:`ProofError` otherwise.
        """
        want_raw = raw or verify_with is not None
        body = await self._get(f"/v1/blocks/{quote(str(height), safe='')}", {"raw": "1"} if want_raw else None)
        try:
            header = _header_from_json(body["header"])
            tx_ids = tuple(_hex(t, "tx id") for t in body["tx_ids"])
            certificate = _certificate_from_json(body.get("certificate"))
            checkpoint = None
            if body.get("checkpoint_hex"):
                checkpoint = CheckpointCertificate.decode(_hex(body["checkpoint_hex"], "checkpoint_hex"))
        except (KeyError, TypeError, CertificateError) as exc:
            raise ApiError(200, "bad_response", f"not a block answer: {exc}", body) from None
        block = None
        if want_raw:
            try:
                block = Block.decode(_hex(body["block_hex"], "block_hex"))
                if body.get("certificate_hex"):
                    certificate = CommitCertificate.decode(_hex(body["certificate_hex"], "certificate_hex"))
            except (KeyError, TypeError, BlockError, CertificateError) as exc:
                raise ProofError(f"the served block does not decode: {exc}") from None
            header = block.header
            tx_ids = tuple(block.tx_ids)
        if verify_with is not None:
            _verify_block(block, certificate, verify_with)
        return BlockInfo(header, tx_ids, certificate, checkpoint, block, body)

    # ------------------------------------------------------------ state

    async def read_state(self, contract: str, name: str, parts: Sequence[Any] = ()) -> StateRead:
        """The value with everything needed to verify it (not verified here: see :func:`verify_read`)."""
        params = [("key", encode_key_part(p)) for p in parts] + [("proof", "1")]
        body = await self._get(f"/v1/state/{quote(contract, safe='')}/{quote(name, safe='')}", params)
        try:
            value_hex = body["value_hex"]
            certificate = CommitCertificate.decode(_hex(body["certificate_hex"], "certificate_hex"))
            header = BlockHeader.decode(_hex(body["header_hex"], "header_hex"))
            return StateRead(
                contract, name, tuple(_key_value(p) for p in parts),
                None if value_hex is None else _hex(value_hex, "value_hex"),
                _hex(body["proof"], "proof"), header, certificate,
            )
        except (KeyError, TypeError, CertificateError, BlockError) as exc:
            raise ProofError(f"the node's answer does not carry a usable proof: {exc}") from None

    async def state(
        self,
        contract: str,
        name: str,
        parts: Sequence[Any] = (),
        *,
        verify_with: ValidatorSet | None = None,
        protocol: str = "bft",
        chain_id: str | None = None,
    ) -> Any:
        """The decoded value of ``contract.name[parts...]`` (None when absent).

        With ``verify_with`` (the shard's validator set, as the caller trusts it) the value
        is returned only once proof, header and certificate verify; :class:`ProofError` otherwise.
        ``chain_id`` also requires the header to be of that shard.
        """
        if verify_with is not None:
            read = await self.read_state(contract, name, parts)
            return verify_read(read, verify_with, protocol=protocol, chain_id=chain_id)
        params = [("key", encode_key_part(p)) for p in parts]
        body = await self._get(f"/v1/state/{quote(contract, safe='')}/{quote(name, safe='')}", params)
        value_hex = body.get("value_hex") if isinstance(body, dict) else None
        if value_hex is None:
            return None
        try:
            return codec.decode(_hex(value_hex, "value_hex"), max_size=MAX_RESPONSE_BYTES, allow_maps=True)
        except codec.CodecError as exc:
            raise ApiError(200, "bad_response", f"value does not decode: {exc}", body) from None

    # ------------------------------------------------------------ accounts, status

    async def account(self, address: Address | str | bytes) -> dict:
        """``{"address", "nonce", "pending_nonce", "roles", ...}`` as the node serves it."""
        return await self._get(f"/v1/accounts/{_address_text(address)}")

    async def next_nonce(self, address: Address | str | bytes) -> int:
        """The nonce the account's next transaction should carry, counting its waiting ones."""
        body = await self.account(address)
        value = body.get("pending_nonce", body.get("nonce"))
        return _int(value, "nonce")

    async def status(self) -> dict:
        return await self._get("/v1/status")

    async def shards(self) -> list[dict]:
        return (await self._get("/v1/shards"))["shards"]

    async def validators(self) -> ValidatorSet:
        """The validator set the node says is current (check its hash against one you trust)."""
        body = await self._get("/v1/validators")
        try:
            vset = ValidatorSet.from_fields(codec.decode(_hex(body["validators_hex"], "validators_hex")))
        except (KeyError, TypeError, codec.CodecError, ValidatorSetError) as exc:
            raise ApiError(200, "bad_response", f"validator set does not decode: {exc}", body) from None
        if vset.hash.hex() != body.get("hash"):
            raise ApiError(200, "bad_response", "the validator set does not match its stated hash", body)
        return vset

    async def health(self) -> bool:
        try:
            await self._get("/healthz")
        except ApiError:
            return False
        return True

    async def ready(self) -> bool:
        try:
            await self._get("/readyz")
        except ApiError as exc:
            if exc.code == "not_ready":
                return False
            raise
        return True

    async def metrics(self) -> str:
        try:
            async with self._http().get(self.base_url + "/metrics", timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                text = (await self._read(resp)).decode()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "unavailable", f"GET /metrics: {exc}") from None
        if status != 200:
            raise ApiError(status, "unavailable", f"GET /metrics: HTTP {status}")
        return text

    async def openapi(self) -> dict:
        return await self._get("/openapi.json")

    # ------------------------------------------------------------ events

    async def events(
        self,
        contract: str | None = None,
        name: str | None = None,
        *,
        from_height: int | None = None,
        last_event_id: str | None = None,
    ) -> AsyncIterator[EventRecord]:
        """Events as they commit (past ones first, from ``from_height``). Resume with a record's ``id``.

        Ends when the node closes the stream; raises :class:`ApiError` when it cannot be opened.
        """
        params = {k: v for k, v in (("contract", contract), ("name", name)) if v}
        if from_height is not None:
            params["from_height"] = str(from_height)
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        budget = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        try:
            async with self._http().get(self.base_url + "/v1/events", params=params, headers=headers, timeout=budget) as resp:
                if resp.status != 200:
                    raw = await self._read(resp)
                    try:
                        error = json.loads(raw)["error"]
                        raise ApiError(resp.status, error["code"], error["message"], json.loads(raw))
                    except (ValueError, KeyError, TypeError):
                        raise ApiError(resp.status, "bad_response", f"GET /v1/events: HTTP {resp.status}") from None
                event_id, data = "", []
                async for line in _lines(resp.content):
                    if not line:
                        if data:
                            yield _event_record(event_id, "\n".join(data))
                        data = []
                    elif line.startswith(":"):
                        continue
                    else:
                        fname, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if fname == "id":
                            event_id = value
                        elif fname == "data":
                            data.append(value)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "unavailable", f"GET /v1/events: {type(exc).__name__}: {exc}") from None


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    buffer = b""
    while chunk := await content.readany():
        buffer += chunk
        if len(buffer) > MAX_EVENT_LINE and b"\n" not in buffer:
            raise ApiError(200, "bad_response", f"an event stream line exceeds {MAX_EVENT_LINE} bytes")
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")


def _event_record(event_id: str, data: str) -> EventRecord:
    try:
        body = json.loads(data)
        event = Event.from_fields(codec.decode(_hex(body["event_hex"], "event_hex"), allow_maps=True))
        return EventRecord(event_id, _int(body["height"], "height"), _int(body["tx_index"], "tx_index"), _hex(body["tx_id"], "tx_id"), event)
    except (ValueError, KeyError, TypeError, codec.CodecError, TxError) as exc:
        raise ApiError(200, "bad_response", f"not an event message: {exc}") from None


def _verify_block(block: Block | None, certificate: CommitCertificate | None, validators: ValidatorSet) -> None:
    if block is None or certificate is None:
        raise ProofError("the node served no certificate for this block")
    header = block.header
    if header.validator_set_hash != validators.hash:
        raise ProofError("the block was certified by a different validator set than the one given")
    try:
        block.check_tx_root()
        certificate.verify(header.chain_id, validators, height=header.height, digest=header.hash)
    except (BlockError, CertificateError) as exc:
        raise ProofError(f"block does not verify: {exc}") from None


class SyncClient:
    """The same calls, blocking, for scripts and the CLI (one private event loop)."""

    def __init__(self, base_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = Client(base_url, **options)

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.client.close())
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, *args: Any, **kwargs: Any) -> Iterator[EventRecord]:
        stream = self.client.events(*args, **kwargs)
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())


def _blocking(name: str):
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(self: SyncClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self.client, name)(*args, **kwargs))

    return call


for _name in ("request", "submit", "submit_many", "tx", "block", "read_state", "state", "account", "next_nonce",
              "status", "shards", "validators", "health", "ready", "metrics", "openapi"):
    setattr(SyncClient, _name, _blocking(_name))
del _name
