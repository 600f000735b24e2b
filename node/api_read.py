"""The API's read routes: blocks, state with proofs, accounts, status, shards, validators."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import TYPE_CHECKING

from aiohttp import web

from ledger import codec
from ledger.block import MAX_BLOCK_SIZE, Block, BlockHeader
from ledger.certificate import CheckpointCertificate, CommitCertificate
from ledger.crypto import Address, CryptoError
from ledger.statekeys import state_key
from ledger.store import MAX_KEY_SIZE
from ledger.tx import MAX_HEIGHT
from node.api_json import (
    api_error,
    bad_request,
    certificate_json,
    check_name,
    checkpoint_json,
    header_json,
    json_response,
    malformed,
    parse_bool,
    parse_hex,
    parse_int,
    parse_key_part,
    to_json,
)

if TYPE_CHECKING:
    from node.api import NodeView

__all__ = ["MAX_KEY_PARTS", "MAX_PROOF_KEYS", "ReadHandlers"]

MAX_KEY_PARTS = 16
# Keys per batch proof: a relayer proves at most 64 packets plus a few validator-set
# records under one header; 128 leaves room and bounds the answer (~1.5 MB of proofs).
MAX_PROOF_KEYS = 128
# Headers of committed blocks never change; a state read with proof needs the header
# at the read height, which is nearly always one of the last few.
HEADER_CACHE = 512
# How far back a proof may look for a certified header with the same state root (see
# _certified_header); consecutive null batches are rare, a few are already a sick shard.
NULL_LOOKBACK = 16


class ReadHandlers:
    """Handlers of :class:`node.api.ApiServer` (a mixin: ``node`` comes from it)."""

    node: NodeView
    _headers: OrderedDict[int, tuple[BlockHeader, bytes]]

    def _height(self, text: str) -> int:
        if text == "latest":
            height = self.node.store.height
            if height is None:
                raise api_error("not_found", "no block is committed yet")
            return height
        return parse_int(text, "height", 0, MAX_HEIGHT)

    async def get_block(self, request: web.Request) -> web.Response:
        height = self._height(request.match_info["height"])
        raw_wanted = parse_bool(request.query.get("raw"), "raw")
        store = self.node.store
        raw = store.block(height)
        if raw is None:
            base = store.base_height
            if base is not None and height < base:
                raise api_error("not_found", f"no block at height {height} here: this node's store starts at height {base} "
                                "(installed from a certified state snapshot); ask a node that holds the full history")
            raise api_error("not_found", f"no block at height {height}; the chain is at {store.height}")
        block = Block.decode(raw)
        cert_raw = store.certificate(height)
        checkpoint_raw = store.checkpoint(height)
        body = {
            "header": header_json(block.header),
            "tx_ids": [t.hex() for t in block.tx_ids],
            "certificate": None if cert_raw is None else certificate_json(CommitCertificate.decode(cert_raw)),
            "checkpoint": None if checkpoint_raw is None else checkpoint_json(CheckpointCertificate.decode(checkpoint_raw)),
        }
        if raw_wanted:
            body["block_hex"] = raw.hex()
            body["certificate_hex"] = None if cert_raw is None else cert_raw.hex()
            body["checkpoint_hex"] = None if checkpoint_raw is None else checkpoint_raw.hex()
        return json_response(body)

    def _header(self, height: int) -> tuple[BlockHeader, bytes]:
        """The header of a committed block (immutable, so cached) and its encoding."""
        cached = self._headers.get(height)
        if cached is not None:
            self._headers.move_to_end(height)
            return cached
        raw = self.node.store.block(height)
        if raw is None:
            raise RuntimeError(f"the store has state at height {height} but no block")
        fields = codec.decode(raw, max_size=MAX_BLOCK_SIZE, max_depth=4)
        header = BlockHeader.from_fields(fields[0])
        entry = self._headers[height] = (header, header.encode())
        if len(self._headers) > HEADER_CACHE:
            self._headers.popitem(last=False)
        return entry

    def _certified_header(self, height: int, state_root: bytes) -> tuple[BlockHeader, bytes, CommitCertificate]:
        """The latest header at or below ``height`` with ``state_root`` whose certificate commits it.

        Usually the header at ``height`` itself. A BFT null batch (a view change filling a
        gap) is certified over a constant digest rather than its derived header, and
        leaves the state as its parent had it: the parent's header and certificate then
        prove the same root.
        """
        store = self.node.store
        # A store started from a snapshot holds no block below its base to look back to.
        lowest = store.base_height or 0
        for h in range(height, max(lowest - 1, height - NULL_LOOKBACK - 1), -1):
            header, header_raw = self._header(h)
            if header.state_root != state_root:
                break
            cert_raw = store.certificate(h)
            if cert_raw is not None:
                cert = CommitCertificate.decode(cert_raw)
                if cert.digest == header.hash and cert.height == h:
                    return header, header_raw, cert
        raise api_error("not_certified", f"the block at height {height} has no commit certificate for its header yet")

    async def get_state(self, request: web.Request) -> web.Response:
        contract = check_name(request.match_info["contract"], "contract")
        name = check_name(request.match_info["name"], "state variable name")
        texts = request.query.getall("key", [])
        if len(texts) > MAX_KEY_PARTS:
            raise bad_request(f"at most {MAX_KEY_PARTS} key parts, got {len(texts)}")
        parts = [parse_key_part(t) for t in texts]
        with_proof = parse_bool(request.query.get("proof"), "proof")
        key = state_key(contract, name, parts)
        if len(key) > MAX_KEY_SIZE:
            raise bad_request(f"the state key is {len(key)} bytes; keys are at most {MAX_KEY_SIZE}")
        proven = self.node.store.prove(key)
        value = None
        if proven.value is not None:
            value = to_json(codec.decode(proven.value, max_size=len(proven.value), allow_maps=True))
        body = {
            "contract": contract,
            "name": name,
            "key": to_json(parts),
            "key_hex": key.hex(),
            "found": proven.value is not None,
            "value": value,
            "value_hex": None if proven.value is None else proven.value.hex(),
            "height": None if proven.height is None else to_json(proven.height),
            "state_root": proven.state_root.hex(),
        }
        if with_proof:
            if proven.height is None:
                raise api_error("not_ready", "no block is committed yet, so no state can be proven")
            header, header_raw, cert = self._certified_header(proven.height, proven.state_root)
            body.update(
                proof=proven.proof.hex(),
                header=header_json(header),
                header_hex=header_raw.hex(),
                certificate=certificate_json(cert),
                certificate_hex=cert.encode().hex(),
            )
        return json_response(body)

    async def prove_states(self, request: web.Request) -> web.Response:
        """Several state keys proven under one certified header (a relayer's packets and
        validator-set records must all verify against the same state root)."""
        body = await self._json_body(request)
        if type(body) is not dict or type(body.get("keys")) is not list:
            raise bad_request('the body must be {"keys": ["<hex of a state key>", ...]}')
        if not 1 <= len(body["keys"]) <= MAX_PROOF_KEYS:
            raise bad_request(f"between 1 and {MAX_PROOF_KEYS} keys, got {len(body['keys'])}")
        keys = [parse_hex(k, f"keys[{i}]", max_bytes=MAX_KEY_SIZE) for i, k in enumerate(body["keys"])]
        store = self.node.store
        # Commits run on this event loop and nothing here awaits, so every proof comes from
        # the same committed state; the check below says so rather than assuming it.
        proven = [store.prove(key) for key in keys]
        if len({(p.height, p.state_root) for p in proven}) != 1:
            raise api_error("unavailable", "a block committed while the proofs were read; retry")
        height, root = proven[0].height, proven[0].state_root
        if height is None:
            raise api_error("not_ready", "no block is committed yet, so no state can be proven")
        header, header_raw, cert = self._certified_header(height, root)
        return json_response({
            "height": to_json(height),
            "state_root": root.hex(),
            "values": [{"key_hex": p.key.hex(), "found": p.value is not None,
                        "value_hex": None if p.value is None else p.value.hex(), "proof": p.proof.hex()} for p in proven],
            "header": header_json(header),
            "header_hex": header_raw.hex(),
            "certificate": certificate_json(cert),
            "certificate_hex": cert.encode().hex(),
        })

    async def get_account(self, request: web.Request) -> web.Response:
        text = request.match_info["address"]
        if re.fullmatch(r"[0-9a-fA-F]{40}", text):
            raw = bytes.fromhex(text)
        else:
            try:
                raw = Address.parse(text).raw
            except (CryptoError, ValueError, TypeError) as exc:
                raise malformed(f"{text[:100]!r} is not an address (grid1... or 40 hex digits): {exc}") from None
        info = self.node.account(raw)
        return json_response({**to_json(info), "address": str(Address(raw))})

    async def get_status(self, request: web.Request) -> web.Response:
        node = self.node
        body = {
            "shard": node.chain_id,
            "role": node.role,
            "protocol": node.protocol,
            "node_key": node.node_key,
            "genesis_hash": node.genesis_hash,
            "height": node.store.height,
        }
        body.update(node.status())
        return json_response(to_json(body))

    async def get_shards(self, request: web.Request) -> web.Response:
        shards = [dict(entry) for entry in self.node.shards()]
        body: dict = {"shards": shards}
        # A shard of a tree lists the whole topology from its genesis (heights only for
        # the shards this process serves), so a relayer or a wallet finds the tree.
        text = getattr(getattr(self.node, "genesis", None), "topology", None)
        if text:
            from shards.topology import Topology, parent_of

            topology = Topology.from_toml(text)
            here = self.node.chain_id
            served = {entry["shard"] for entry in shards}
            for spec in topology.shards:
                if spec.id not in served:
                    shards.append({"shard": spec.id, "height": None, "certified_height": None,
                                   "protocol": spec.protocol, "validators": spec.validators})
            for entry in shards:
                shard = entry["shard"]
                entry["parent"] = parent_of(shard)
                entry["label"] = topology.shard(shard).label if shard in topology else ""
                entry["relation"] = ("self" if shard == here else "parent" if shard == parent_of(here)
                                     else "child" if parent_of(shard) == here else "other")
            body["topology_hash"] = topology.hash.hex()
        return json_response(to_json(body))

    async def get_validators(self, request: web.Request) -> web.Response:
        vset = self.node.validators
        # Decided changes live in the chain's schedule; a node without a chain (a test
        # double of the API's node) has made none.
        chain = getattr(self.node, "chain", None)
        latest = chain.latest_epoch.number if chain is not None else 0
        scheduled = chain.scheduled() if chain is not None else []

        def members(validators) -> list[dict]:
            return [{"node_key": v.node_key, "bls_key": v.bls_key, "bls_pop": v.bls_pop, "name": v.name} for v in validators]

        return json_response(
            to_json(
                {
                    "shard": self.node.chain_id,
                    "protocol": self.node.protocol,
                    "hash": vset.hash,
                    "validators": members(vset),
                    "validators_hex": codec.encode(vset.to_fields()),
                    "epoch": latest,
                    "scheduled": [
                        {"epoch": e.number, "effective_after": e.after, "hash": e.validators.hash,
                         "validators": members(e.validators)}
                        for e in scheduled
                    ],
                }
            )
        )
