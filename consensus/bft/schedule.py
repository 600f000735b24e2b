"""Which validator set orders and certifies each height, and how far the window reaches.

**The rule.** A set returned by ``Application.validator_set_change(h, batch)`` for the
batch committed at height ``h`` takes effect after :func:`effective_after` ``(h, K)`` =
the checkpoint at or above ``h`` plus ``LAG_INTERVALS`` checkpoint intervals (K = the
checkpoint interval): the heights above it are ordered, voted and certified by the new
set; the checkpoint at that height itself is still signed by the old set and is the
hand-over. Several changes with the same answer: the last one wins (each answer is a
complete set).

**Why the lag.** A replica orders up to ``span = min(window, LAG_INTERVALS * K)``
heights above its stable checkpoint ``low``, without waiting for the checkpoints in
between, so the pipeline never drains. Every change that affects those heights was
made at or below ``low``, so every replica knows the sets of its whole window. The
window also stops at the first height where the set changes (:meth:`ValidatorSchedule
.window_end`): all messages a replica handles, all quorums it counts and every view
change it takes part in concern one validator set.
"""

from __future__ import annotations

from ledger import codec
from ledger.crypto import tagged_hash
from ledger.validators import ValidatorSet, ValidatorSetError

__all__ = ["LAG_INTERVALS", "ScheduleError", "ValidatorSchedule", "effective_after"]

# How many checkpoint intervals a validator-set change waits before taking effect, and
# so how far beyond its stable checkpoint a replica may order (4 x 16 = the default
# window of 64 heights).
LAG_INTERVALS = 4
# Reconfigurations are rare governance events; this many are remembered so that old
# view-change proofs and lagging replicas can still be checked. Older ones are dropped.
MAX_ENTRIES = 64


class ScheduleError(ValueError):
    """A schedule record is malformed."""


def effective_after(height: int, checkpoint_interval: int) -> int:
    """The last height still ordered by the old set when the batch at ``height`` changes it."""
    if height < 1 or checkpoint_interval < 1:
        raise ValueError("heights and checkpoint intervals are positive")
    return (-(-height // checkpoint_interval) + LAG_INTERVALS) * checkpoint_interval


class ValidatorSchedule:
    """Validator sets by the height after which each takes effect (genesis after 0)."""

    def __init__(self, genesis: ValidatorSet) -> None:
        self._entries: list[tuple[int, ValidatorSet]] = [(0, genesis)]

    def set_for(self, height: int) -> ValidatorSet:
        """The set that orders ``height`` (as far as this replica knows the changes)."""
        chosen = self._entries[0][1]
        for after, validators in self._entries:
            if after < height:
                chosen = validators
            else:
                break
        return chosen

    def set_after(self, checkpoint: int) -> ValidatorSet:
        """The set ordering the heights just above ``checkpoint``."""
        return self.set_for(checkpoint + 1)

    def window_end(self, low: int, span: int) -> int:
        """The last height a replica with stable checkpoint ``low`` may order: ``low + span``,
        or earlier where the set changes."""
        current = self.set_after(low)
        for after, validators in self._entries:
            if after >= low + span:
                break
            if after > low and validators != current:
                return after
        return low + span

    def window_digest(self, low: int, span: int) -> bytes:
        """A digest of the sets that order (low, window_end]: equal digests, equal beliefs."""
        end = self.window_end(low, span)
        return tagged_hash(b"gridledger/bft-window", codec.encode([low, end, self.set_after(low).hash]))

    def add(self, after: int, validators: ValidatorSet) -> bool:
        """Record that ``validators`` takes effect after height ``after``; True if new.

        A set equal to the one already in force there is no change and is not recorded
        (every replica must draw its window boundaries at the same heights).
        """
        if validators == self.set_after(after) and all(at != after for at, _ in self._entries):
            return False
        for i, (at, current) in enumerate(self._entries):
            if at == after:
                if current == validators:
                    return False
                self._entries[i] = (after, validators)
                return True
            if at > after:
                self._entries.insert(i, (after, validators))
                break
        else:
            self._entries.append((after, validators))
        if len(self._entries) > MAX_ENTRIES:
            del self._entries[0]
        return True

    def members(self) -> set[bytes]:
        """Every node key of every remembered set."""
        return {v.node_key for _, s in self._entries for v in s}

    def to_fields(self) -> list:
        return [[after, s.to_fields()] for after, s in self._entries]

    @classmethod
    def from_fields(cls, fields: object) -> ValidatorSchedule:
        if not isinstance(fields, list) or not fields:
            raise ScheduleError("a validator schedule is a non-empty list of [after height, set]")
        entries = []
        last = -1
        for item in fields:
            if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int:
                raise ScheduleError("a schedule entry is [after height, validator set]")
            if item[0] <= last:
                raise ScheduleError("schedule entries must be in ascending height order")
            last = item[0]
            try:
                entries.append((item[0], ValidatorSet.from_fields(item[1])))
            except ValidatorSetError as exc:
                raise ScheduleError(f"schedule entry after height {item[0]}: {exc}") from None
        schedule = cls(entries[0][1])
        schedule._entries = entries
        return schedule
