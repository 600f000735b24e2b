"""How the HTTP API spells ledger values in JSON, and how it reads what clients send.

Output rules (every response):

* bytes are lowercase hex strings;
* integers whose magnitude exceeds 2**53 - 1 are decimal strings, because JavaScript
  and many JSON libraries read every number as a double and would silently round
  them (an energy token of 2**60 Wh must not become another amount);
* maps keep their text keys; lists stay lists; there are no floats anywhere.

A JSON rendering of contract data is for people and dashboards: a hex string and a
text string, or a big integer and a numeric string, look alike. Wherever exactness
matters the response also carries the canonical encoding (``value_hex``,
``receipt_hex``, ``event_hex``, ``header_hex``...), which the SDK decodes and verifies.

Input rules: integers are accepted as JSON integers or as decimal strings; hex is
accepted in either case; everything is checked against a named range, and anything
else raises :class:`ApiError` with a stable code (``malformed``: cannot be parsed;
``bad_request``: parsed, but not an allowed value).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from ledger.block import BlockHeader
from ledger.certificate import CheckpointCertificate, CommitCertificate
from ledger.crypto import Address, CryptoError
from ledger.tx import MAX_NAME_LEN, Event, Receipt
from node.openapi import status_of

__all__ = [
    "ApiError",
    "MAX_SAFE_INT",
    "api_error",
    "check_name",
    "json_response",
    "certificate_json",
    "checkpoint_json",
    "dumps",
    "event_json",
    "header_json",
    "loads",
    "parse_bool",
    "parse_hex",
    "parse_int",
    "parse_key_part",
    "receipt_json",
    "to_json",
]

MAX_SAFE_INT = (1 << 53) - 1
# The codec's integer range: what a key part may hold.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_DECIMAL = re.compile(r"-?[0-9]{1,20}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_PREFIX = re.compile(r"[a-z][a-z0-9_]*")
# API bodies nest two levels; 64 leaves room for any future body and keeps parsing far
# from the recursion that would exhaust the C stack.
MAX_JSON_DEPTH = 64
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class ApiError(Exception):
    """A request the API answers with an error: HTTP ``status``, stable ``code``, and a message."""

    def __init__(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}  # more fields of the answer, e.g. the tx_id of a rejected transaction

    def body(self) -> dict:
        return {**self.extra, "error": {"code": self.code, "message": self.message}}


def api_error(code: str, message: str, **extra: Any) -> ApiError:
    """An error answer with the HTTP status :data:`node.openapi.ERRORS` gives ``code``."""
    return ApiError(status_of(code), code, message, extra)


def malformed(message: str) -> ApiError:
    return ApiError(400, "malformed", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


# ---------------------------------------------------------------- output


def to_json(value: Any) -> Any:
    """The JSON form of a ledger value (see the module docstring)."""
    t = type(value)
    if t is int:
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if t is bytes or t is bytearray or t is memoryview:
        return bytes(value).hex()
    if t is str or t is bool or value is None:
        return value
    if t is list or t is tuple:
        return [to_json(v) for v in value]
    if t is dict:
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, int):  # an IntEnum or another int subclass
        return to_json(int(value))
    raise TypeError(f"{t.__name__} has no JSON form in the API")


def dumps(body: Any) -> bytes:
    """Serialize an already-converted body (compact, UTF-8)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


def header_json(header: BlockHeader) -> dict:
    return to_json(
        {
            "chain_id": header.chain_id,
            "height": header.height,
            "hash": header.hash,
            "prev_hash": header.prev_hash,
            "tx_root": header.tx_root,
            "state_root": header.state_root,
            "receipts_root": header.receipts_root,
            "time": header.time,
            "proposer": header.proposer,
            "validator_set_hash": header.validator_set_hash,
        }
    )


def certificate_json(cert: CommitCertificate) -> dict:
    return to_json(
        {
            "protocol": cert.protocol,
            "height": cert.height,
            "round": cert.round,
            "digest": cert.digest,
            "signatures": [{"index": i, "signature": s} for i, s in cert.signatures],
        }
    )


def checkpoint_json(cert: CheckpointCertificate) -> dict:
    return to_json(
        {
            "height": cert.height,
            "block_hash": cert.block_hash,
            "state_root": cert.state_root,
            "signers": cert.signers,
            "aggregate": cert.aggregate,
        }
    )


def receipt_json(receipt: Receipt) -> dict:
    return to_json(receipt.as_dict())


def event_json(event: Event) -> dict:
    return to_json(event.as_dict())


# ---------------------------------------------------------------- input


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number the API accepts")


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # the common case: no need to look closer
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(body: bytes) -> Any:
    """Parse a JSON request body; raises ``ApiError(malformed)`` for anything that is not JSON.

    Non-UTF-8 bytes, NaN and Infinity, numbers of thousands of digits and nesting
    deeper than :data:`MAX_JSON_DEPTH` are all refused here. The nesting is checked
    before parsing because CPython's C JSON scanner can overflow the C stack (a
    segmentation fault, not an exception) on input like ``[[[[...`` a few tens of
    thousands deep, well inside any body size limit.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(f"the request body is not UTF-8 (byte {exc.start})") from None
    if _nesting(text) > MAX_JSON_DEPTH:
        raise malformed(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise malformed("the request body nests too deeply") from None
    except ValueError as exc:
        raise malformed(f"the request body is not JSON: {exc}") from None


def parse_int(value: Any, what: str, lo: int, hi: int) -> int:
    """An integer given as a JSON integer or a decimal string, within ``lo..hi``."""
    if type(value) is int:
        n = value
    elif type(value) is str and _DECIMAL.fullmatch(value):
        n = int(value)
    else:
        raise malformed(f"{what} must be an integer (a JSON number or a decimal string) in {lo}..{hi}")
    if not lo <= n <= hi:
        raise bad_request(f"{what} must be in {lo}..{hi}, got {n}")
    return n


def parse_hex(value: Any, what: str, *, size: int | None = None, max_bytes: int | None = None) -> bytes:
    """Bytes given as hex (either case), of exactly ``size`` or at most ``max_bytes`` bytes."""
    if type(value) is not str:
        raise malformed(f"{what} must be a hex string")
    if max_bytes is not None and len(value) > 2 * max_bytes:
        raise ApiError(413, "too_large", f"{what} is {len(value) // 2} bytes; the limit is {max_bytes}")
    if not _HEX.fullmatch(value):
        raise malformed(f"{what} is not hex (an even number of digits 0-9, a-f)")
    raw = bytes.fromhex(value)
    if size is not None and len(raw) != size:
        raise malformed(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
    return raw


def check_name(value: str, what: str) -> str:
    """A contract, variable or event name from a URL: 1..64 characters, as in transactions."""
    if not value or len(value) > MAX_NAME_LEN:
        raise bad_request(f"{what} must be 1..{MAX_NAME_LEN} characters")
    return value


def parse_bool(value: str | None, what: str) -> bool:
    """A query flag: absent, ``0``/``false`` or ``1``/``true``."""
    if value is None or value in ("0", "false"):
        return False
    if value in ("1", "true", ""):
        return True
    raise bad_request(f"{what} must be 1, true, 0 or false")


def parse_key_part(text: str) -> Any:
    """One ``key=`` query value of a state read, typed by its prefix.

    ``hex:<hex>`` bytes · ``int:<decimal>`` integer · ``addr:grid1...`` an address's
    20 bytes · ``bool:true|false`` · ``str:<text>`` text verbatim · anything without a
    ``word:`` prefix is text. An unknown lowercase ``word:`` prefix is refused rather
    than read as text, so a future type never changes what an existing URL means; text
    that starts with one is written ``str:...``.
    """
    prefix, sep, rest = text.partition(":")
    if not sep or not _PREFIX.fullmatch(prefix):
        return text
    if prefix == "str":
        return rest
    if prefix == "hex":
        if not _HEX.fullmatch(rest):
            raise malformed(f"key part {text!r}: hex: takes an even number of hex digits")
        return bytes.fromhex(rest)
    if prefix == "int":
        if not _DECIMAL.fullmatch(rest) or not _INT_MIN <= int(rest) <= _INT_MAX:
            raise malformed(f"key part {text!r}: int: takes a decimal integer in -2**63..2**64-1")
        return int(rest)
    if prefix == "addr":
        try:
            return Address.parse(rest).raw
        except (CryptoError, ValueError, TypeError) as exc:
            raise malformed(f"key part {text!r}: not an address: {exc}") from None
    if prefix == "bool":
        if rest not in ("true", "false"):
            raise malformed(f"key part {text!r}: bool: takes true or false")
        return rest == "true"
    raise bad_request(f"key part {text!r}: unknown type {prefix!r}; use hex:, int:, addr:, bool: or str:")
