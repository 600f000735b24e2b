"""The deterministic application inside the simulator.

It plays the part the block executor plays in a node, with the same contract towards
consensus (:class:`consensus.types.Application`):

* ``digest(batch)`` is SHA-256 of the batch;
* ``validate`` refuses batches marked invalid (a Byzantine client's junk), so an honest
  replica that commits one is caught;
* a *reconfiguration* batch names the complete validator set that takes effect after
  its height; ``validator_set_change`` decodes it. Carrying the whole set keeps the
  answer independent of what the replica has executed so far;
* executing a committed batch folds its digest into a running state root, which the
  simulator feeds back to the replica as ``Executed``; the roots of every height are
  kept so a lagging replica can be served the state at a certified checkpoint.

Batches are canonical arrays: ``["sim/batch", serial, filler]``,
``["sim/invalid", serial, filler]`` or ``["sim/reconfig", serial, validator set]``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from ledger import codec
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = ["SimApplication", "batch_kind", "make_batch", "make_invalid_batch", "make_reconfig", "reconfig_set"]

GENESIS_ROOT = hashlib.sha256(b"gridledger/sim/genesis-state").digest()


def make_batch(serial: int, filler: bytes) -> bytes:
    return codec.encode(["sim/batch", serial, filler])


def make_invalid_batch(serial: int, filler: bytes) -> bytes:
    return codec.encode(["sim/invalid", serial, filler])


def make_reconfig(serial: int, validators: ValidatorSet) -> bytes:
    return codec.encode(["sim/reconfig", serial, validators.to_fields()])


@lru_cache(maxsize=4096)
def _parse(batch: bytes) -> tuple[str, ValidatorSet | None]:
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
    if tag == "sim/reconfig":
        try:
            return "reconfig", ValidatorSet.from_fields(value[2])
        except ValidatorSetError:
            return "garbage", None
    return "garbage", None


def batch_kind(batch: bytes) -> str:
    """``"batch"``, ``"reconfig"``, ``"invalid"`` or ``"garbage"``."""
    return _parse(batch)[0]


def reconfig_set(batch: bytes) -> ValidatorSet | None:
    return _parse(batch)[1]


class SimApplication:
    """One replica's application state: height, running state root, roots by height."""

    def __init__(self) -> None:
        self.height = 0
        self.state_root = GENESIS_ROOT
        self.roots: dict[int, bytes] = {0: GENESIS_ROOT}
        self.digests: dict[int, bytes] = {}
        self.installed_at: list[int] = []  # heights at which a snapshot replaced execution

    # ---------------------------------------------------------- Application protocol

    def digest(self, batch: bytes) -> bytes:
        return hashlib.sha256(batch).digest()

    def validate(self, height: int, batch: bytes) -> bool:
        # b"" is the null batch BFT commits to fill a view-change gap: valid and empty.
        return batch == b"" or batch_kind(batch) in ("batch", "reconfig")

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
