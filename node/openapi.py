"""The HTTP API's one table: every route, its parameters, bodies, answers and error codes.

The server (:mod:`node.api`) registers exactly the routes listed in :data:`ENDPOINTS`,
each with the handler named by its ``operation``, and ``GET /openapi.json`` serves
:func:`document`, the OpenAPI 3.1 document generated from the same table. A route
cannot exist without being documented, nor be documented without existing
(``tests/test_api.py`` checks both directions against the running server).

:data:`ERRORS` is the list of error codes with their HTTP status: the server takes the
status from it, the document lists each operation's codes under their statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ENDPOINTS", "ERRORS", "Endpoint", "Param", "document", "status_of"]

API_VERSION = "1.0.0"

# code -> (HTTP status, meaning). Stable words: clients switch on them.
ERRORS: dict[str, tuple[int, str]] = {
    "malformed": (400, "The request cannot be parsed: not JSON, bad hex, not a number, not a canonical transaction."),
    "bad_request": (400, "The request parses but asks for something not allowed: a missing field, a value out of range, an unknown option."),
    "wrong_chain": (400, "The transaction is signed for another shard."),
    "expired": (400, "The transaction's expiry height has passed."),
    "gas_limit": (400, "The transaction asks for more gas than a block allows."),
    "bad_nonce": (400, "The nonce is already used, or too far ahead of the sender's next nonce."),
    "bad_signature": (400, "The transaction's signature does not verify (or it is unsigned)."),
    "not_member": (403, "The sender is not an admitted participant of this shard."),
    "not_allowed": (403, "The sender's roles may not call that function."),
    "not_active": (403, "The sender is suspended or banned; it may still redeem fiat and approve allowances."),
    "not_found": (404, "No such path, block or object."),
    "method_not_allowed": (405, "The path exists but not with this HTTP method."),
    "timeout": (408, "The request body did not arrive in time."),
    "duplicate": (409, "This transaction (or another with its nonce) is already waiting."),
    "too_large": (413, "The body, the transaction or the batch exceeds its size limit."),
    "sender_limit": (429, "The sender already has the maximum number of waiting transactions; retry after some commit."),
    "mempool_full": (429, "The mempool is full; retry later."),
    "internal": (500, "The node failed to answer this request; it keeps serving others. Reported in its log."),
    "not_ready": (503, "The node has no committed state yet, or is not ready (catching up, no quorum)."),
    "not_certified": (503, "The block at the read height has no commit certificate yet; retry shortly."),
    "busy": (503, "The node is at capacity (a backlog of waiting transactions, or too many open event streams); retry shortly."),
    "unavailable": (503, "The node cannot handle this now (an observer cannot reach a validator); retry later."),
}

# Rejection codes from block building (``GET /v1/tx`` shows them, ``wait=commit`` answers
# with them) may include words not above; a client treats an unknown code as a rejection.
DEFAULT_REJECTION_STATUS = 400


def status_of(code: str) -> int:
    return ERRORS.get(code, (DEFAULT_REJECTION_STATUS, ""))[0]


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # "path" | "query" | "header"
    description: str
    schema: dict
    required: bool = False
    repeated: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    operation: str  # the OpenAPI operationId and the name of the server's handler
    summary: str
    description: str
    answers: tuple[tuple[int, str, str], ...]  # (status, description, schema name | media type)
    params: tuple[Param, ...] = ()
    body: str | None = None  # schema name of the JSON request body
    errors: tuple[str, ...] = ()
    media: str = "application/json"
    tag: str = "read"


# ---------------------------------------------------------------- schemas

HEX = {"type": "string", "pattern": "^([0-9a-f]{2})*$", "description": "bytes as lowercase hex"}
HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "32 bytes as lowercase hex"}
BIGINT = {
    "oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^-?[0-9]+$"}],
    "description": "an integer; beyond ±(2**53 - 1) it is a decimal string so that no JSON reader rounds it",
}
HEIGHT = {"type": "integer", "minimum": 0, "description": "a block height"}
ANY = {"description": "contract data in JSON form: bytes as hex, big integers as strings (see the *_hex field for the exact value)"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: tuple[str, ...], **props: Any) -> dict:
    return {"type": "object", "required": list(required), "properties": props}


def _nullable(schema: dict) -> dict:
    return {"oneOf": [schema, {"type": "null"}]}


SCHEMAS: dict[str, dict] = {
    "Error": _obj(
        ("error",),
        error=_obj(
            ("code", "message"),
            code={"type": "string", "description": "a stable snake_case word; see the list in the info section"},
            message={"type": "string", "description": "what was wrong and what is allowed"},
        ),
    ),
    "TxSubmit": _obj(("tx",), tx={**HEX, "description": "the canonical encoding of a signed transaction"}),
    "TxBatchSubmit": _obj(("txs",), txs={"type": "array", "items": HEX, "maxItems": 1000}),
    "Event": _obj(
        ("contract", "name", "fields"),
        contract={"type": "string"},
        name={"type": "string"},
        fields={"type": "object", "additionalProperties": ANY},
    ),
    "Receipt": _obj(
        ("ok", "gas_used", "events", "error"),
        ok={"type": "boolean"},
        gas_used=BIGINT,
        events={"type": "array", "items": _ref("Event")},
        error=_nullable(_obj(("code", "message"), code={"type": "string"}, message={"type": "string"})),
        result=ANY,
    ),
    "TxStatus": _obj(
        ("tx_id", "status"),
        tx_id=_nullable(HASH) | {"description": "null only for a batch item that is not a transaction"},
        status={"enum": ["pending", "committed", "rejected", "unknown"]},
        height=HEIGHT,
        index={"type": "integer", "description": "position in the block"},
        receipt=_ref("Receipt"),
        receipt_hex={**HEX, "description": "the receipt's canonical encoding"},
        error=_obj(("code", "message"), code={"type": "string"}, message={"type": "string"})
        | {"description": "why it was rejected (status rejected only)"},
    ),
    "TxBatchResult": _obj(("results",), results={"type": "array", "items": _ref("TxStatus"),
                                                 "description": "one per submitted item, in order"}),
    "BlockHeader": _obj(
        ("chain_id", "height", "hash", "prev_hash", "tx_root", "state_root", "receipts_root", "time", "proposer", "validator_set_hash"),
        chain_id={"type": "string"},
        height=HEIGHT,
        hash=HASH,
        prev_hash=HASH,
        tx_root=HASH,
        state_root=HASH,
        receipts_root=HASH,
        time={"type": "integer", "description": "integer seconds agreed by the validators"},
        proposer=HEX,
        validator_set_hash=HASH,
    ),
    "CommitCertificate": _obj(
        ("protocol", "height", "round", "digest", "signatures"),
        protocol={"enum": ["bft", "raft"]},
        height=HEIGHT,
        round={"type": "integer", "description": "the BFT view or the Raft term"},
        digest=HASH,
        signatures={"type": "array", "items": _obj(("index", "signature"), index={"type": "integer"}, signature=HEX)},
    ),
    "CheckpointCertificate": _obj(
        ("height", "block_hash", "state_root", "signers", "aggregate"),
        height=HEIGHT, block_hash=HASH, state_root=HASH, signers=HEX, aggregate=HEX,
    ),
    "Block": _obj(
        ("header", "tx_ids", "certificate"),
        header=_ref("BlockHeader"),
        tx_ids={"type": "array", "items": HASH},
        certificate=_nullable(_ref("CommitCertificate")),
        checkpoint=_nullable(_ref("CheckpointCertificate")),
        block_hex={**HEX, "description": "raw=1: the canonical block"},
        certificate_hex=_nullable({**HEX, "description": "raw=1: the canonical commit certificate"}),
        checkpoint_hex=_nullable({**HEX, "description": "raw=1: the canonical checkpoint certificate"}),
    ),
    "StateRead": _obj(
        ("contract", "name", "key", "key_hex", "found", "value", "value_hex", "height", "state_root"),
        contract={"type": "string"},
        name={"type": "string"},
        key={"type": "array", "items": ANY, "description": "the key parts as read"},
        key_hex={**HEX, "description": "the state key: the canonical encoding of [contract, name, [parts]]"},
        found={"type": "boolean"},
        value=ANY,
        value_hex=_nullable({**HEX, "description": "the stored canonical encoding, null when absent"}),
        height=_nullable(HEIGHT),
        state_root=HASH,
        proof={**HEX, "description": "proof=1: the state proof of value_hex (or its absence) under state_root"},
        header=_ref("BlockHeader"),
        header_hex={**HEX, "description": "proof=1: the canonical header of the block at height"},
        certificate=_ref("CommitCertificate"),
        certificate_hex={**HEX, "description": "proof=1: the canonical commit certificate of that block"},
    ),
    "ProofRequest": _obj(("keys",), keys={"type": "array", "items": HEX, "minItems": 1, "maxItems": 128,
                                          "description": "state keys (ledger.statekeys.state_key) in hex"}),
    "StateProofs": _obj(
        ("height", "state_root", "values", "header", "header_hex", "certificate", "certificate_hex"),
        height=HEIGHT,
        state_root=HASH,
        values={"type": "array", "description": "one per requested key, in order", "items": _obj(
            ("key_hex", "found", "value_hex", "proof"), key_hex=HEX, found={"type": "boolean"},
            value_hex=_nullable(HEX), proof={**HEX, "description": "the state proof of value_hex (or its absence) under state_root"})},
        header=_ref("BlockHeader"),
        header_hex={**HEX, "description": "the canonical header whose state_root every proof is checked against"},
        certificate=_ref("CommitCertificate"),
        certificate_hex={**HEX, "description": "the canonical commit certificate of that header"},
    ),
    "Account": _obj(
        ("address", "nonce"),
        address={"type": "string", "description": "grid1... text form"},
        nonce={"type": "integer", "description": "the next nonce in committed state (0 for an account never seen)"},
        pending_nonce={"type": "integer", "description": "the next nonce counting transactions waiting in the mempool"},
        roles={"type": "array", "items": {"type": "string"}},
    ),
    "Status": _obj(
        ("shard", "role", "protocol", "height"),
        shard={"type": "string"},
        role={"enum": ["validator", "observer"]},
        protocol={"enum": ["bft", "raft"]},
        node_key=HEX,
        genesis_hash=_nullable(HASH),
        height=_nullable(HEIGHT),
        view={"type": "integer", "description": "BFT shards"},
        term={"type": "integer", "description": "Raft shards"},
        leader=_nullable(HEX),
        peers={"type": "integer"},
        mempool={"type": "integer"},
        catching_up={"type": "boolean"},
    ),
    "Shards": _obj(("shards",), shards={"type": "array", "items": _obj(
        ("shard",), shard={"type": "string"}, height=_nullable(HEIGHT), certified_height=_nullable(HEIGHT),
        protocol={"enum": ["bft", "raft"]}, validators={"type": "integer"},
        parent=_nullable({"type": "string"}) | {"description": "shards of a tree: the parent shard (null for the root)"},
        label={"type": "string"},
        relation={"enum": ["self", "parent", "child", "other"], "description": "shards of a tree: to the shard serving"})},
        topology_hash={**HASH, "description": "shards of a tree: the topology's hash, named by every shard's genesis"}),
    "Validators": _obj(
        ("shard", "protocol", "hash", "validators", "validators_hex"),
        shard={"type": "string"},
        protocol={"enum": ["bft", "raft"]},
        hash=HASH,
        validators={"type": "array", "items": _obj(("node_key", "bls_key", "bls_pop", "name"),
                                                    node_key=HEX, bls_key=HEX, bls_pop=HEX, name={"type": "string"})},
        validators_hex={**HEX, "description": "the canonical encoding of the set (its hash is validator_set_hash)"},
        epoch={"type": "integer", "description": "the latest validator-set change decided (0: genesis)"},
        scheduled={"type": "array", "description": "changes decided but not yet in force",
                   "items": _obj(("epoch", "effective_after", "hash", "validators"), epoch={"type": "integer"},
                                 effective_after=HEIGHT, hash=HASH,
                                 validators={"type": "array", "items": {"type": "object"}})},
    ),
    "EventMessage": _obj(
        ("height", "tx_index", "tx_id", "contract", "name", "fields", "event_hex"),
        height=HEIGHT,
        tx_index={"type": "integer"},
        tx_id=HASH,
        contract={"type": "string"},
        name={"type": "string"},
        fields={"type": "object", "additionalProperties": ANY},
        event_hex={**HEX, "description": "the canonical encoding of [contract, name, [[field, value], ...]]"},
    ),
    "SyncSession": _obj(
        ("session", "height", "state_root", "block_hex", "certificate_hex", "checkpoint_hex", "idle_ms", "expires_ms",
         "max_page_bytes"),
        session={"type": "string", "pattern": "^[0-9a-f]{32}$"},
        height=HEIGHT,
        state_root=HASH,
        block_hex={**HEX, "description": "the block at the snapshot's height (its header names the state root)"},
        certificate_hex={**HEX, "description": "its commit certificate: verify it with the validators you trust"},
        checkpoint_hex=_nullable(HEX),
        idle_ms={"type": "integer"},
        expires_ms={"type": "integer"},
        max_page_bytes={"type": "integer"},
    ),
    "SyncPage": _obj(
        ("session", "height", "from", "next", "count", "bytes", "items_base64"),
        session={"type": "string"},
        height=HEIGHT,
        **{"from": {**HEX, "description": "the tree position of the first item"}},
        next=_nullable({**HEX, "description": "the tree position to ask next (null: the last page)"}),
        count={"type": "integer"},
        bytes={"type": "integer"},
        items_base64={"type": "string", "description": "base64 of the canonical encoding of [[key, value], ...] in tree order"},
    ),
    "SyncClosed": _obj(("session", "closed"), session={"type": "string"}, closed={"type": "boolean"}),
    "Handover": _obj(
        ("shard", "epoch", "height", "bundle_hex"),
        shard={"type": "string"},
        epoch={"type": "integer", "minimum": 1},
        height=HEIGHT,
        bundle_hex={**HEX, "description": "[1, epoch, header, certificate, [schedule proofs]]: deliver it to a neighbour's light client"},
    ),
    "Health": _obj(("status",), status={"enum": ["ok"]}),
    "Ready": _obj(("ready",), ready={"type": "boolean"}),
}

# ---------------------------------------------------------------- parameters

WAIT = Param("wait", "query", "`commit`: answer only once the transaction is committed or rejected, or the timeout passes (then 202 pending).",
             {"enum": ["commit"]})
TIMEOUT = Param("timeout_ms", "query", "How long wait=commit waits, in milliseconds (default 10000).",
                {"type": "integer", "minimum": 0, "maximum": 60000})
TX_ERRORS = ("malformed", "bad_request", "too_large", "timeout", "wrong_chain", "expired", "gas_limit", "bad_nonce",
             "bad_signature", "not_member", "not_allowed", "not_active", "duplicate", "sender_limit", "mempool_full", "busy", "unavailable")

# ---------------------------------------------------------------- the table

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST", "/v1/tx", "submit_tx", "Submit a signed transaction",
        "Admits the transaction into the mempool (an observer forwards it). Submitting a transaction that is "
        "already committed answers 200 with its receipt, and one already waiting answers as pending, so "
        "retries are safe.",
        ((202, "admitted, waiting for a block", "TxStatus"), (200, "committed (wait=commit, or already committed)", "TxStatus")),
        params=(WAIT, TIMEOUT), body="TxSubmit", errors=TX_ERRORS, tag="submit",
    ),
    Endpoint(
        "POST", "/v1/txs", "submit_txs", "Submit a batch of signed transactions",
        "For meter gateways and load generators. Each item is admitted or refused on its own; the answer "
        "lists one TxStatus per item, in order (refused items have status rejected and an error).",
        ((200, "one result per item", "TxBatchResult"),),
        params=(WAIT, TIMEOUT), body="TxBatchSubmit", errors=("malformed", "bad_request", "too_large"), tag="submit",
    ),
    Endpoint(
        "GET", "/v1/tx/{tx_id}", "get_tx", "Transaction status and receipt",
        "pending (in the mempool), committed (with height, index and receipt), rejected (dropped at block "
        "building, with the reason) or unknown.",
        ((200, "the status", "TxStatus"),),
        params=(Param("tx_id", "path", "the transaction id", HASH, required=True),),
        errors=("malformed",),
    ),
    Endpoint(
        "GET", "/v1/blocks/{height}", "get_block", "A block and its certificate",
        "The header, the transaction ids and the commit certificate (and checkpoint certificate, if any). "
        "raw=1 adds the canonical block and certificates in hex, for observers that verify them.",
        ((200, "the block", "Block"),),
        params=(
            Param("height", "path", "a height, or `latest`", {"oneOf": [HEIGHT, {"enum": ["latest"]}]}, required=True),
            Param("raw", "query", "1: include the canonical encodings", {"enum": ["0", "1", "true", "false"]}),
        ),
        errors=("malformed", "bad_request", "not_found"),
    ),
    Endpoint(
        "GET", "/v1/state/{contract}/{name}", "get_state", "A contract's stored value, optionally with proof",
        "The value of contract variable `name` under the key parts given by repeated `key` parameters, in order. "
        "A key part is typed by a prefix: `hex:<hex>` bytes, `int:<decimal>` an integer, `addr:grid1...` an "
        "address's 20 bytes, `bool:true|false`, `str:<text>` text verbatim; a part without a `word:` prefix is "
        "text, and an unknown prefix is refused (write text that starts with one as `str:...`). "
        "With proof=1 the answer also holds the state proof, the block header at `height` and its commit "
        "certificate: everything a client needs to check the value (or its absence) against the shard's "
        "validators without trusting this node.",
        ((200, "the value (null when absent)", "StateRead"),),
        params=(
            Param("contract", "path", "contract name", {"type": "string", "maxLength": 64}, required=True),
            Param("name", "path", "state variable name", {"type": "string", "maxLength": 64}, required=True),
            Param("key", "query", "a key part (repeat for each part, at most 16)", {"type": "string"}, repeated=True),
            Param("proof", "query", "1: include proof, header and certificate", {"enum": ["0", "1", "true", "false"]}),
        ),
        errors=("malformed", "bad_request", "not_ready", "not_certified"),
    ),
    Endpoint(
        "POST", "/v1/state/proofs", "prove_states", "Several state keys proven under one header",
        "Up to 128 state keys (hex of ledger.statekeys.state_key), each value (or its absence) with its proof, all "
        "from one committed state, with that block's header and commit certificate. A relayer proves a "
        "channel's packets and the shard's validator-set records this way: a delivery carries one header.",
        ((200, "the values and proofs, in the order asked", "StateProofs"),),
        body="ProofRequest", errors=("malformed", "bad_request", "too_large", "timeout", "not_ready", "not_certified", "unavailable"),
    ),
    Endpoint(
        "GET", "/v1/accounts/{address}", "get_account", "An account's next nonce and roles",
        "The address is the grid1... text form (40 hex digits of the raw address are accepted too).",
        ((200, "the account", "Account"),),
        params=(Param("address", "path", "grid1... address", {"type": "string"}, required=True),),
        errors=("malformed",),
    ),
    Endpoint(
        "GET", "/v1/events", "get_events", "Contract events as server-sent events",
        "A text/event-stream of past events from from_height on, then live ones. Each message's data is one "
        "EventMessage in JSON; its id (`height-tx_index-n`) resumes the stream: send it back as the "
        "Last-Event-ID header (or last_event_id) with the same filters. A comment line is sent every 15 s "
        "when nothing happens.",
        ((200, "the stream", "text/event-stream"),),
        params=(
            Param("contract", "query", "only events of this contract", {"type": "string", "maxLength": 64}),
            Param("name", "query", "only events with this name", {"type": "string", "maxLength": 64}),
            Param("from_height", "query", "first height to replay (default: the next block)", HEIGHT),
            Param("last_event_id", "query", "resume after this event id", {"type": "string"}),
            Param("Last-Event-ID", "header", "resume after this event id (browsers send it)", {"type": "string"}),
        ),
        errors=("malformed", "bad_request", "busy"),
        media="text/event-stream",
    ),
    Endpoint(
        "GET", "/v1/status", "get_status", "Node status",
        "Shard, role, protocol, height, view (BFT) or term (Raft), leader, peers, mempool size, catching up.",
        ((200, "the status", "Status"),), tag="operate",
    ),
    Endpoint(
        "GET", "/v1/shards", "get_shards", "The shards this node knows",
        "The shard tree this node knows, with each shard's latest certified height. A shard of a tree lists "
        "every shard of its genesis topology (heights only for the one served here), its parent and its relation "
        "to this shard, and the topology's hash.",
        ((200, "the shards", "Shards"),),
    ),
    Endpoint(
        "GET", "/v1/validators", "get_validators", "The shard's current validator set",
        "A client must not trust this answer to verify reads from the same node: compare `hash` with the "
        "validator set hash it trusts (from genesis, or proven by a certified reconfiguration).",
        ((200, "the validator set", "Validators"),),
    ),
    Endpoint("GET", "/healthz", "healthz", "Liveness", "200 whenever the process serves.",
             ((200, "serving", "Health"),), tag="operate"),
    Endpoint("GET", "/readyz", "readyz", "Readiness", "200 when caught up and connected to a quorum; 503 otherwise.",
             ((200, "ready", "Ready"),), errors=("not_ready",), tag="operate"),
    Endpoint("GET", "/metrics", "metrics", "Prometheus metrics", "The Prometheus text exposition format 0.0.4.",
             ((200, "the metrics", "text/plain"),), tag="operate"),
    Endpoint("GET", "/openapi.json", "openapi", "This document", "The OpenAPI 3.1 description of this API.",
             ((200, "the document", "application/json"),), tag="operate"),
)

_INFO = """The public API of a gridledger node (validator or observer). JSON over HTTP(S), versioned under /v1.

**Binary values** (keys, hashes, signatures, proofs, canonical encodings) are lowercase hex.

**Integers** are JSON integers up to ±(2**53 - 1); beyond that they are decimal strings, so that no client
loses precision. Integer inputs are accepted as JSON integers or decimal strings.

**Errors** are `{"error": {"code": "...", "message": "..."}}` with a stable code:

""" + "\n".join(f"* `{code}` (HTTP {status}): {meaning}" for code, (status, meaning) in ERRORS.items()) + """

Rejection codes from block building (for example `expired`) may include words not listed; treat an unknown
code as a rejection. Request bodies are limited in size (`too_large`). Malformed HTTP itself (a request
line or header beyond 8 KiB) is refused by the HTTP layer with a plain-text 400.
"""


def _media_schema(what: str) -> dict:
    if what in SCHEMAS:
        return {"application/json": {"schema": _ref(what)}}
    if what == "application/json":
        return {"application/json": {"schema": {"type": "object"}}}
    return {what: {"schema": {"type": "string"}}}


def _operation(ep: Endpoint) -> dict:
    op: dict[str, Any] = {
        "operationId": ep.operation,
        "summary": ep.summary,
        "description": ep.description,
        "tags": [ep.tag],
    }
    if ep.params:
        params = []
        for p in ep.params:
            schema = {"type": "array", "items": p.schema} if p.repeated else p.schema
            entry = {"name": p.name, "in": p.location, "description": p.description, "required": p.required or p.location == "path", "schema": schema}
            if p.repeated:
                entry.update(style="form", explode=True)
            params.append(entry)
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(ep.body)}}}
    responses: dict[str, Any] = {}
    for status, description, what in ep.answers:
        responses[str(status)] = {"description": description, "content": _media_schema(what)}
    by_status: dict[int, list[str]] = {}
    for code in (*ep.errors, "internal"):
        by_status.setdefault(ERRORS[code][0], []).append(code)
    for status, codes in sorted(by_status.items()):
        text = "; ".join(f"`{c}`: {ERRORS[c][1]}" for c in codes)
        responses[str(status)] = {
            "description": text,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    op["responses"] = responses
    op["x-error-codes"] = [*ep.errors, "internal"]
    return op


SESSION = Param("session", "path", "the sync session id", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, required=True)

# Routes a node adds beside the API server's own, registered by their modules
# (node/api_sync.py, node/api_handover.py) and documented here with the others.
MODULE_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST", "/v1/sync/snapshots", "open_snapshot", "Open a state snapshot session",
        "Pins the state at the committed head (whose commit certificate covers its header) for a node that is far "
        "behind. Sessions are few and short: idle and age limits end them, since a pinned snapshot grows the store.",
        ((201, "the session", "SyncSession"),), errors=("busy", "not_ready", "not_certified"), tag="operate",
    ),
    Endpoint(
        "GET", "/v1/sync/snapshots/{session}", "snapshot_page", "One page of a snapshot",
        "Items in tree order from the position `from`, at most `max_bytes` encoded (one longer item travels alone).",
        ((200, "a page", "SyncPage"),),
        params=(SESSION,
                Param("from", "query", "the tree position to start at (hex, default: the beginning)", HEX),
                Param("max_bytes", "query", "the page's size limit", {"type": "integer"})),
        errors=("malformed", "bad_request", "not_found"), tag="operate",
    ),
    Endpoint(
        "DELETE", "/v1/sync/snapshots/{session}", "close_snapshot", "Close a snapshot session",
        "Releases the pinned snapshot at once.", ((200, "closed", "SyncClosed"),), params=(SESSION,),
        errors=("malformed", "not_found"), tag="operate",
    ),
    Endpoint(
        "GET", "/v1/shards/handover/{epoch}", "get_handover", "A validator-set hand-over bundle",
        "What a neighbouring shard's light client needs to learn this shard's validator epoch `epoch`: the header at "
        "the hand-over height, its commit certificate and the proofs of the epoch records. Relayers deliver it.",
        ((200, "the bundle", "Handover"),),
        params=(Param("epoch", "path", "the validator epoch (1, 2, ...)", {"type": "integer", "minimum": 1}, required=True),),
        errors=("malformed", "bad_request", "not_found"),
    ),
)


def document() -> dict:
    """The OpenAPI 3.1 document of :data:`ENDPOINTS` and :data:`MODULE_ENDPOINTS`."""
    paths: dict[str, dict] = {}
    for ep in ENDPOINTS + MODULE_ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gridledger node API", "version": API_VERSION, "description": _INFO},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
