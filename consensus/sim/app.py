"""The deterministic application inside the simulator.

It plays the part the block executor plays in a node, with the same contract towards
consensus (:class:`consensus.types.Application`):

* ``digest(batch)`` is SHA-256 of the batch;
* ``validate`` refuses batches marked invalid (a Byzantine client's junk), so an honest
  replica that commits one is caught;
* a *height-bound* batch is valid at one height only, like a node's block, which names
  its height and parent: offered when another batch fills that height, it can never be
  ordered, and replicas must let it go rather than wait for it;
* a *reconfiguration* batch names the complete validator set that takes effect after
  its height; ``validator_set_change`` decodes it. Carrying the whole set keeps the
  answer independent of what the replica has executed so far;
* executing a committed batch folds its digest into a running state root, which the
  simulator feeds back to the replica as ``Executed``; the roots of every height are
  kept so a lagging replica can be served the state at a certified checkpoint.

Batches are canonical arrays: ``["sim/batch", serial, filler]``,
``["sim/invalid", serial, filler]``, ``["sim/at", serial, height]`` or
``["sim/reconfig", serial, validator set]``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from ledger import codec
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = [
    "SimApplication",
    "batch_kind",
    "bound_height",
    "make_batch",
    "make_bound_batch",
    "make_invalid_batch",
    "make_reconfig",
    "reconfig_set",
]

GENESIS_ROOT = hashlib.sha256(b"gridledger/sim/genesis-state").digest()


def make_batch(serial: int, filler: bytes) -> bytes:
    return codec.encode(["sim/batch", serial, filler])


def make_invalid_batch(serial: int, filler: bytes) -> bytes:
    return codec.encode(["sim/invalid", serial, filler])


def make_bound_batch(serial: int, height: int) -> bytes:
    return codec.encode(["sim/at", serial, height])


def make_reconfig(serial: int, validators: ValidatorSet) -> bytes:
    return codec.encode(["sim/reconfig", serial, validators.to_fields()])


@lru_cache(maxsize=4096)
def _parse(batch: bytes) -> tuple[str, ValidatorSet | int | None]:
    try:
        value = codec.decode(batch)
    except codec.CodecError:
        return "garbage", None
    if not isinstance(value, list) or len(value) != 3 or type(value[1]) is not int:
        return "garbage", None
    tag = value[0]
    if tag == "sim/batch" and isinstance(value[2], bytes):
        return "batch", None
    if tag == "sim/invalid":
        return "invalid", None
    if tag == "sim/at" and type(value[2]) is int and value[2] >= 1:
        return "bound", value[2]
    if tag == "sim/reconfig":
        try:
            return "reconfig", ValidatorSet.from_fields(value[2])
        except ValidatorSetError:
            return "garbage", None
    return "garbage", None


def batch_kind(batch: bytes) -> str:
    """``"batch"``, ``"bound"``, ``"reconfig"``, ``"invalid"`` or ``"garbage"``."""
    return _parse(batch)[0]


def reconfig_set(batch: bytes) -> ValidatorSet | None:
    kind, extra = _parse(batch)
    return extra if kind == "reconfig" else None


def bound_height(batch: bytes) -> int | None:
    """The one height a height-bound batch is valid at (None for other batches)."""
    kind, extra = _parse(batch)
    return extra if kind == "bound" else None


class SimApplication:
    """One replica's application state: height, running state root, roots by height."""

    def __init__(self, *, in_order: bool = False) -> None:
        self.in_order = in_order  # judge a height-bound batch only once its parent is executed
        self.height = 0
        self.state_root = GENESIS_ROOT
        self.roots: dict[int, bytes] = {0: GENESIS_ROOT}
        self.digests: dict[int, bytes] = {}
        self.installed_at: list[int] = []  # heights at which a snapshot replaced execution

    # ---------------------------------------------------------- Application protocol

    def digest(self, batch: bytes) -> bytes:
        return hashlib.sha256(batch).digest()

    def validate(self, height: int, batch: bytes) -> bool | None:
        # b"" is the null batch BFT commits to fill a view-change gap: valid and empty.
        if batch == b"":
            return True
        kind, extra = _parse(batch)
        if kind == "bound" and self.in_order and height > self.height + 1:
            return None  # like a ledger's block: checkable on its parent's state only
        return kind in ("batch", "reconfig") or (kind == "bound" and extra == height)

    def validator_set_change(self, height: int, batch: bytes) -> ValidatorSet | None:
        return reconfig_set(batch)

    # ------------------------------------------------------------------- execution

    def execute(self, height: int, digest: bytes) -> bytes:
        """Apply the batch committed at ``height`` (which must be the next one)."""
        if height != self.height + 1:
            raise ValueError(f"application at height {self.height} cannot execute height {height}")
        self.state_root = hashlib.sha256(self.state_root + height.to_bytes(8, "big") + digest).digest()
        self.height = height
        self.roots[height] = self.state_root
        self.digests[height] = digest
        return self.state_root

    def install(self, height: int, state_root: bytes) -> None:
        """Replace the state by a snapshot taken at ``height`` (fetched from an honest peer)."""
        self.height = height
        self.state_root = state_root
        self.roots[height] = state_root
        self.installed_at.append(height)
