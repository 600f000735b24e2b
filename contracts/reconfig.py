"""Validator-set changes: the ``system.reconfigure`` transaction and the records it writes.

    Transaction(contract="system", function="reconfigure",
                args=[epoch, current_set_hash, new_set_fields, approvals, tls_certs])

* ``epoch``: the number of this change (1, 2, ...; genesis is epoch 0), exactly one
  more than the shard's latest change.
* ``current_set_hash``: the hash of the latest set (the one the approvals come from).
* ``new_set_fields``: the complete new set, ``ValidatorSet.to_fields()``.
* ``approvals``: ``[[index, signature], ...]`` in strictly ascending index order; each an
  Ed25519 signature by the node key of validator ``index`` of the current set over
  ``signing_bytes(chain_id, Kind.RECONFIG, approval_payload(epoch, current, new))``.
  At least ``bft_quorum`` (n - f) of them on a BFT shard, a majority on a Raft shard.
* ``tls_certs``: ``[[node_key, certificate PEM bytes], ...]``, one for each validator the
  change adds (the peer transport pins it), when the shard's genesis pins certificates.

Rules beyond the approvals: the set must really change; on Raft it differs from the
current set by exactly one validator added or one removed (single-server changes:
replacing a key is an add then a remove); on BFT a change waits until the previous one
is in force (one change scheduled at a time). Every added validator's BLS proof of
possession must verify.

**Records.** ``state_key("validators", "current", []) -> epoch`` and
``state_key("validators", "epoch", [e]) -> [effective_after, set fields]`` (the format
``shards.lightclient`` proves), and ``state_key("validators", "tls", [node_key]) ->
certificate`` for added validators. The receipt's result is ``[epoch, effective_after]``.

The same check runs three times with the same answer: at mempool admission, when a
validator accepts a block (``node.chain``: a block with a change that fails it is
refused, so every change in a certified block is effective), and in the executor.
All read only committed state through ``get(key)`` and the shard's fixed
:class:`ReconfigRules`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ledger import codec
from ledger.crypto import Kind, verify_signature
from ledger.statekeys import state_key
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = [
    "Epoch",
    "ReconfigError",
    "ReconfigRules",
    "Reconfiguration",
    "approval_payload",
    "check_reconfiguration",
    "current_epoch",
    "epoch_key",
    "CURRENT_KEY",
    "is_reconfigure",
    "load_epochs",
    "parse_reconfiguration",
    "tls_key",
]

CONTRACT = "validators"
CURRENT_KEY = state_key(CONTRACT, "current", [])
# The most approvals one change may carry (a few hundred validators at most).
MAX_APPROVALS = 1024
MAX_TLS_CERT_BYTES = 4096


def epoch_key(epoch: int) -> bytes:
    return state_key(CONTRACT, "epoch", [epoch])


def tls_key(node_key: bytes) -> bytes:
    return state_key(CONTRACT, "tls", [node_key])


class ReconfigError(ValueError):
    """A validator-set change is refused: ``code`` names the rule, the message says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ReconfigRules:
    """What a shard fixes at genesis about its validator-set changes.

    ``effective_after(height)`` is consensus's rule (BFT: the checkpoint at or above the
    height plus four intervals; Raft: the height itself). ``check_certificate(cert,
    node_key)`` raises ``ValueError`` unless ``cert`` is that node's self-signed peer
    certificate; ``None`` means the shard pins no certificates.
    """

    chain_id: str
    protocol: str  # "bft" | "raft"
    genesis: ValidatorSet
    effective_after: Callable[[int], int]
    check_certificate: Callable[[bytes, bytes], None] | None = None

    def quorum(self, validators: ValidatorSet) -> int:
        return validators.bft_quorum if self.protocol == "bft" else validators.majority


@dataclass(frozen=True)
class Epoch:
    """A validator set and the last height before it is in force (``after``; 0 for genesis)."""

    number: int
    after: int
    validators: ValidatorSet


@dataclass(frozen=True)
class Reconfiguration:
    epoch: int
    current_hash: bytes
    validators: ValidatorSet
    approvals: tuple[tuple[int, bytes], ...]
    tls_certs: tuple[tuple[bytes, bytes], ...]


def approval_payload(epoch: int, current_hash: bytes, new_hash: bytes) -> bytes:
    """What a current validator signs (kind ``Kind.RECONFIG``) to approve a change."""
    return codec.encode([epoch, current_hash, new_hash])


def is_reconfigure(tx) -> bool:
    return tx.contract == "system" and tx.function == "reconfigure"


def parse_reconfiguration(args) -> Reconfiguration:
    """Decode the arguments of ``system.reconfigure``; raises :class:`ReconfigError` (``bad_args``)."""
    args = list(args)
    if len(args) != 5:
        raise ReconfigError("bad_args", "reconfigure takes [epoch, current_set_hash, new_set, approvals, tls_certs]")
    epoch, current_hash, fields, approvals, certs = args
    if type(epoch) is not int or epoch < 1:
        raise ReconfigError("bad_args", "the epoch is an integer >= 1")
    if not isinstance(current_hash, bytes) or len(current_hash) != 32:
        raise ReconfigError("bad_args", "the current set hash is 32 bytes")
    try:
        validators = ValidatorSet.from_fields(fields)
    except (ValidatorSetError, TypeError) as exc:
        raise ReconfigError("bad_validator_set", str(exc)) from None
    if not isinstance(approvals, list) or len(approvals) > MAX_APPROVALS:
        raise ReconfigError("bad_args", f"approvals are a list of at most {MAX_APPROVALS} [index, signature]")
    parsed = []
    for item in approvals:
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int or item[0] < 0
                or not isinstance(item[1], bytes)):
            raise ReconfigError("bad_args", "an approval is [validator index, signature]")
        if parsed and item[0] <= parsed[-1][0]:
            raise ReconfigError("duplicate_approval", "approvals are in strictly ascending validator index order")
        parsed.append((item[0], item[1]))
    if not isinstance(certs, list) or len(certs) > validators.n:
        raise ReconfigError("bad_args", "tls_certs is a list of [node_key, certificate], one per added validator")
    cert_pairs = []
    for item in certs:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes)
                or not isinstance(item[1], bytes) or len(item[1]) > MAX_TLS_CERT_BYTES):
            raise ReconfigError("bad_args", f"a TLS certificate is [node_key, certificate of at most {MAX_TLS_CERT_BYTES} bytes]")
        cert_pairs.append((item[0], item[1]))
    return Reconfiguration(epoch, current_hash, validators, tuple(parsed), tuple(cert_pairs))


def _decode_int(raw: bytes | None) -> int:
    return 0 if raw is None else codec.decode(raw)


def current_epoch(get: Callable[[bytes], bytes | None], rules: ReconfigRules) -> Epoch:
    """The shard's latest validator set (decided; possibly not yet in force) from its records."""
    number = _decode_int(get(CURRENT_KEY))
    if number == 0:
        return Epoch(0, 0, rules.genesis)
    return _read_epoch(get, number)


def _read_epoch(get: Callable[[bytes], bytes | None], number: int) -> Epoch:
    raw = get(epoch_key(number))
    if raw is None:
        raise ReconfigError("bad_state", f"the record of validator epoch {number} is missing")
    after, fields = codec.decode(raw)
    return Epoch(number, after, ValidatorSet.from_fields(fields))


def load_epochs(get: Callable[[bytes], bytes | None], rules: ReconfigRules) -> list[Epoch]:
    """Every epoch from genesis to the latest, in order."""
    latest = _decode_int(get(CURRENT_KEY))
    return [Epoch(0, 0, rules.genesis)] + [_read_epoch(get, e) for e in range(1, latest + 1)]


def check_reconfiguration(get: Callable[[bytes], bytes | None], rules: ReconfigRules, height: int, args) -> tuple[Reconfiguration, Epoch]:
    """Check a ``system.reconfigure`` at ``height`` against state ``get``; the change and the new epoch.

    Raises :class:`ReconfigError` saying which rule the change breaks.
    """
    change = parse_reconfiguration(args)
    latest = current_epoch(get, rules)
    current = latest.validators
    if change.epoch != latest.number + 1:
        raise ReconfigError("wrong_epoch", f"this change is numbered epoch {change.epoch}; the next change is epoch {latest.number + 1}")
    if change.current_hash != current.hash:
        raise ReconfigError("wrong_set", "the change names another current validator set than this shard's latest")
    if latest.after >= height:
        raise ReconfigError("change_pending", f"the previous change takes effect after height {latest.after}; "
                                              "submit the next one once it is in force")
    new = change.validators
    if new == current:
        raise ReconfigError("no_change", "the new validator set equals the current one")
    old_keys = {v.node_key for v in current}
    new_keys = {v.node_key for v in new}
    added = [v for v in new if v.node_key not in old_keys]
    if rules.protocol == "raft":
        removed = old_keys - new_keys
        kept = [v for v in new if v.node_key in old_keys]
        changed = len(added) + len(removed)
        if changed != 1 or any(v != current.validators[current.index_of(v.node_key)] for v in kept):
            raise ReconfigError("not_single_change", "a Raft shard changes one validator at a time: add one or "
                                                     "remove one (replacing a key is an add, then a remove)")
    old_bls = {v.bls_key for v in current}
    for v in added:
        if v.bls_key in old_bls:
            raise ReconfigError("bad_validator_set", f"validator {v.name!r} reuses a current validator's BLS key")
    try:
        ValidatorSet(tuple(added)).verify_proofs_of_possession() if added else None
    except ValidatorSetError as exc:
        raise ReconfigError("bad_validator_set", str(exc)) from None
    _check_certificates(rules, change, added)
    payload = approval_payload(change.epoch, current.hash, new.hash)
    for index, signature in change.approvals:
        if index >= current.n:
            raise ReconfigError("unknown_approver", f"approval index {index} is not a validator (the set has {current.n})")
        if not verify_signature(current.validators[index].node_key, rules.chain_id, Kind.RECONFIG, payload, signature):
            raise ReconfigError("bad_approval", f"the approval of validator {index} does not verify for epoch "
                                                f"{change.epoch}, this current set and this new set")
    need = rules.quorum(current)
    if len(change.approvals) < need:
        raise ReconfigError("no_quorum", f"{len(change.approvals)} approvals; this change needs {need} of the "
                                         f"{current.n} current validators")
    return change, Epoch(change.epoch, rules.effective_after(height), new)


def _check_certificates(rules: ReconfigRules, change: Reconfiguration, added) -> None:
    given = dict(change.tls_certs)
    if len(given) != len(change.tls_certs):
        raise ReconfigError("bad_tls_cert", "a node key has two TLS certificates")
    added_keys = {v.node_key for v in added}
    extra = set(given) - added_keys
    if extra:
        raise ReconfigError("bad_tls_cert", "TLS certificates are given only for the validators the change adds")
    if rules.check_certificate is None:
        return
    for v in added:
        cert = given.get(v.node_key)
        if cert is None:
            raise ReconfigError("missing_tls_cert", f"added validator {v.name!r} needs its peer TLS certificate")
        try:
            rules.check_certificate(cert, v.node_key)
        except ValueError as exc:
            raise ReconfigError("bad_tls_cert", f"validator {v.name!r}: {exc}") from None


def record_writes(change: Reconfiguration, epoch: Epoch) -> dict[bytes, bytes]:
    """The state writes of an accepted change."""
    writes = {
        CURRENT_KEY: codec.encode(epoch.number),
        epoch_key(epoch.number): codec.encode([epoch.after, epoch.validators.to_fields()]),
    }
    for node_key, cert in change.tls_certs:
        writes[tls_key(node_key)] = codec.encode(cert)
    return writes
