"""The genesis document of a shard: who validates, which protocol, which parameters,
which participants and contracts exist at height 0.

Genesis files are JSON written by ``gridledger genesis new`` (or by hand). Loading one
checks every field and names the one that is wrong. The genesis hash is the tagged
SHA-256 of the document's canonical encoding (ledger.codec with sorted maps), so two
nodes agree they run the same shard exactly when their hashes agree; a store created
from one genesis refuses to open under another.

    {
      "chain_id": "ch/zurich",
      "genesis_time": 1767225600,                 # unix seconds, start of period 0
      "protocol": "bft",                          # or "raft"
      "params": {"period_seconds": 900, ...},     # see DEFAULT_PARAMS
      "validators": [{"name", "node_key", "bls_key", "bls_pop", "tls_cert"}],
      "accounts": [{"address", "roles": [...], "label"}],
      "deployers": ["grid1..."],
      "contracts": [{"name", "source"}],          # system contracts deployed at height 0
      "app_state": {...},                         # contract-specific initial state
      "topology": {                               # optional: a shard of a grid-level tree
        "document": "<the topology TOML text>",   # e.g. genesis/three-levels.toml
        "neighbours": {"ch": [<validator entries, as "validators">], ...}
      }
    }

``topology`` makes the shard one of a tree (``shards/DESIGN.md``): ``document`` is the
whole topology text and ``neighbours`` the genesis validator set of each neighbour
(parent and children). This module checks only its shape and the validator entries (the
ledger layer knows nothing of topologies); ``shards.native.check_genesis_topology``
checks it against the document (this shard and its neighbours listed, genesis time,
period, protocol and checkpoint interval equal to the topology's). A genesis without
``topology`` is a single-shard ledger. The genesis hash covers it, as every field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import codec
from ledger.crypto import Address, CryptoError, tagged_hash
from ledger.validators import Validator, ValidatorSet, ValidatorSetError

__all__ = ["DEFAULT_PARAMS", "Genesis", "GenesisAccount", "GenesisError", "ROLES"]

ROLES = (
    "grid_operator",
    "producer",
    "consumer",
    "trader",
    "retailer",
    "bank",
    "meter",
    "regulator",
    "co2_authority",
    "deployer",
)

# Every parameter a shard may set, with its default. Integers only.
DEFAULT_PARAMS: dict[str, int] = {
    "period_seconds": 900,  # the elementary period (15 min)
    "energy_unit_wh": 1,  # the smallest energy amount
    "block_max_txs": 2000,
    "block_max_bytes": 4 * 1024 * 1024,
    "block_interval_ms": 200,  # the leader proposes at least this often when transactions wait
    "block_gas_limit": 1 << 34,
    "max_clock_skew_s": 10,  # a proposed block time may be this far ahead of a validator's clock
    "checkpoint_interval": 16,
    "view_timeout_ms": 2000,
    "tick_ms": 50,
}


class GenesisError(ValueError):
    """A genesis document is malformed; the message names the field."""


@dataclass(frozen=True)
class GenesisAccount:
    address: Address
    roles: tuple[str, ...]
    label: str = ""


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time: int
    protocol: str
    validators: ValidatorSet
    params: dict[str, int]
    tls_certs: dict[bytes, str] = field(default_factory=dict)  # node key -> PEM certificate
    accounts: tuple[GenesisAccount, ...] = ()
    deployers: tuple[Address, ...] = ()
    contracts: tuple[tuple[str, str], ...] = ()  # (name, source)
    app_state: dict = field(default_factory=dict)
    document: dict = field(default_factory=dict, compare=False, repr=False)
    # the topology TOML text and the neighbours' genesis validator sets (None: one shard)
    topology: str | None = None
    neighbour_sets: dict[str, ValidatorSet] = field(default_factory=dict)

    @property
    def hash(self) -> bytes:
        return tagged_hash(b"gridledger/genesis", codec.encode(self.document, allow_maps=True, max_depth=64))

    def param(self, name: str) -> int:
        return self.params[name]

    @classmethod
    def load(cls, path: str | Path) -> Genesis:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise GenesisError(f"genesis file {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise GenesisError(f"genesis file {path} is not valid JSON: {exc}") from None
        return cls.from_document(doc)

    @classmethod
    def from_document(cls, doc: Any) -> Genesis:
        if not isinstance(doc, dict):
            raise GenesisError("genesis must be a JSON object")
        known = {"chain_id", "genesis_time", "protocol", "params", "validators", "accounts", "deployers", "contracts", "app_state", "topology"}
        unknown = set(doc) - known
        if unknown:
            raise GenesisError(f"genesis has unknown fields {sorted(unknown)}; allowed: {sorted(known)}")
        chain_id = _text(doc, "chain_id")
        if not all(part and part.replace("_", "").replace("-", "").isalnum() for part in chain_id.split("/")):
            raise GenesisError(f"genesis.chain_id {chain_id!r} must be a shard path such as 'ch/zurich'")
        genesis_time = _int(doc, "genesis_time")
        protocol = _text(doc, "protocol")
        if protocol not in ("bft", "raft"):
            raise GenesisError(f"genesis.protocol must be 'bft' or 'raft', not {protocol!r}")
        params = dict(DEFAULT_PARAMS)
        given = doc.get("params", {})
        if not isinstance(given, dict):
            raise GenesisError("genesis.params must be an object")
        for name, value in given.items():
            if name not in DEFAULT_PARAMS:
                raise GenesisError(f"genesis.params.{name} is not a known parameter; known: {sorted(DEFAULT_PARAMS)}")
            if type(value) is not int or value <= 0:
                raise GenesisError(f"genesis.params.{name} must be a positive integer")
            params[name] = value
        validators, certs = _validators(doc.get("validators"), "genesis.validators")
        accounts = tuple(_account(i, a) for i, a in enumerate(_list(doc, "accounts")))
        deployers = tuple(_address(a, f"genesis.deployers[{i}]") for i, a in enumerate(_list(doc, "deployers")))
        contracts = []
        for i, c in enumerate(_list(doc, "contracts")):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("source"), str):
                raise GenesisError(f"genesis.contracts[{i}] must be {{\"name\": str, \"source\": str}}")
            contracts.append((c["name"], c["source"]))
        app_state = doc.get("app_state", {})
        if not isinstance(app_state, dict):
            raise GenesisError("genesis.app_state must be an object")
        topology, neighbour_sets = _topology(doc.get("topology"), chain_id)
        try:
            canonical = codec.encode(doc, allow_maps=True, max_depth=64)
        except codec.CodecError as exc:
            raise GenesisError(f"genesis cannot be encoded canonically: {exc}") from None
        return cls(
            chain_id, genesis_time, protocol, validators, params, certs, accounts, deployers, tuple(contracts),
            app_state, codec.decode(canonical, allow_maps=True, max_depth=64, max_size=len(canonical)),
            topology, neighbour_sets,
        )


def _text(doc: dict, name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise GenesisError(f"genesis.{name} is required and must be text")
    return value


def _int(doc: dict, name: str) -> int:
    value = doc.get(name)
    if type(value) is not int or value < 0:
        raise GenesisError(f"genesis.{name} is required and must be a non-negative integer")
    return value


def _list(doc: dict, name: str) -> list:
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise GenesisError(f"genesis.{name} must be a list")
    return value


def _hex(value: Any, where: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise GenesisError(f"{where} must be {size} bytes of hex")
    return raw


def _address(value: Any, where: str) -> Address:
    try:
        return Address.parse(value)
    except (CryptoError, AttributeError) as exc:
        raise GenesisError(f"{where}: {exc}") from None


def _account(i: int, value: Any) -> GenesisAccount:
    where = f"genesis.accounts[{i}]"
    if not isinstance(value, dict):
        raise GenesisError(f"{where} must be an object")
    roles = value.get("roles", [])
    if not isinstance(roles, list) or any(r not in ROLES for r in roles):
        raise GenesisError(f"{where}.roles must be a list of {list(ROLES)}")
    label = value.get("label", "")
    if not isinstance(label, str):
        raise GenesisError(f"{where}.label must be text")
    return GenesisAccount(_address(value.get("address"), f"{where}.address"), tuple(roles), label)


# A topology document is a small TOML file (a few lines per shard); this bounds what a
# genesis may carry, far above any real grid's tree.
MAX_TOPOLOGY_TEXT = 1 << 20


def _topology(value: Any, chain_id: str) -> tuple[str | None, dict[str, ValidatorSet]]:
    """The shape of the optional ``topology`` section: (document text, neighbour sets)."""
    if value is None:
        return None, {}
    where = "genesis.topology"
    if not isinstance(value, dict) or set(value) != {"document", "neighbours"}:
        raise GenesisError(f"{where} must be an object with exactly \"document\" and \"neighbours\"")
    text = value["document"]
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TOPOLOGY_TEXT:
        raise GenesisError(f"{where}.document must be the topology's TOML text (at most {MAX_TOPOLOGY_TEXT} characters)")
    neighbours = value["neighbours"]
    if not isinstance(neighbours, dict):
        raise GenesisError(f"{where}.neighbours must be an object: shard id -> its genesis validator entries")
    sets = {}
    for shard_id in sorted(neighbours):
        if shard_id == chain_id:
            raise GenesisError(f"{where}.neighbours lists this shard {chain_id!r} itself; it lists the neighbours only")
        sets[shard_id] = _validators(neighbours[shard_id], f"{where}.neighbours[{shard_id!r}]")[0]
    return text, sets


def _validators(value: Any, what: str) -> tuple[ValidatorSet, dict[bytes, str]]:
    if not isinstance(value, list) or not value:
        raise GenesisError(f"{what} must be a non-empty list")
    validators = []
    certs: dict[bytes, str] = {}
    for i, v in enumerate(value):
        where = f"{what}[{i}]"
        if not isinstance(v, dict):
            raise GenesisError(f"{where} must be an object")
        name = v.get("name", "")
        if not isinstance(name, str):
            raise GenesisError(f"{where}.name must be text")
        node_key = _hex(v.get("node_key"), f"{where}.node_key", 32)
        validator = Validator(
            node_key, _hex(v.get("bls_key"), f"{where}.bls_key", 48), _hex(v.get("bls_pop"), f"{where}.bls_pop", 96), name
        )
        validators.append(validator)
        cert = v.get("tls_cert")
        if cert is not None:
            if not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert:
                raise GenesisError(f"{where}.tls_cert must be a PEM certificate")
            certs[node_key] = cert
    try:
        return ValidatorSet(tuple(validators)), certs
    except ValidatorSetError as exc:
        raise GenesisError(f"{what}: {exc}") from None
