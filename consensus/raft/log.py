"""The in-memory Raft log: entries after the snapshot, their heights and configurations.

Indexes count every entry (no-ops included) from 1; *heights* count only batches, so
height h is the h-th batch ever committed. A batch that the application recognises as
a validator-set change is also a configuration entry: as Raft requires, a replica
uses the latest configuration in its log for elections and quorums as soon as the
entry is appended, and the ledger's rule (the set in force at height h is the one
named by the last reconfiguration below h) decides who may sign certificates.
"""

from __future__ import annotations

import bisect

from consensus.raft.messages import BATCH, Entry, SnapshotMeta
from consensus.types import Application
from ledger.validators import ValidatorSet

__all__ = ["RaftLog"]


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, app: Application) -> None:
        self._app = app
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        self._heights: list[int] = []  # height after each entry
        self._digests_list: list[bytes | None] = []
        # (index of the entry, height it takes effect after, set); the first is the snapshot's.
        self.configs: list[tuple[int, int, ValidatorSet]] = [(snapshot.last_index, snapshot.height, snapshot.config)]
        self.digests: dict[bytes, int] = {}  # batch digest -> index, for entries still in the log

    # ------------------------------------------------------------------ reading

    @property
    def first_index(self) -> int:
        return self.snapshot.last_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.last_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.last_term

    @property
    def last_height(self) -> int:
        return self._heights[-1] if self._heights else self.snapshot.height

    def term_at(self, index: int) -> int | None:
        """The term of entry ``index``; None when it is compacted away or beyond the end."""
        base = self.snapshot.last_index
        if index == base:
            return self.snapshot.last_term
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.last_index - 1]

    def height_at(self, index: int) -> int:
        base = self.snapshot.last_index
        return self.snapshot.height if index == base else self._heights[index - base - 1]

    def digest_at(self, index: int) -> bytes | None:
        return self._digests_list[index - self.snapshot.last_index - 1]

    def index_of_height(self, height: int) -> int | None:
        """The index of the batch entry at ``height`` (None if it is not in the log)."""
        if height == self.snapshot.height:
            return None
        i = bisect.bisect_left(self._heights, height)
        if i >= len(self._heights) or self._heights[i] != height:
            return None
        return self.snapshot.last_index + 1 + i

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo`` .. ``hi`` inclusive (both after the snapshot)."""
        base = self.snapshot.last_index + 1
        return self.entries[lo - base : hi - base + 1]

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries with the term of ``index`` (for fast back-off)."""
        term = self.term_at(index)
        while index - 1 > self.snapshot.last_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    # ---------------------------------------------------------- configurations

    def latest_config(self) -> ValidatorSet:
        return self.configs[-1][2]

    def config_at_index(self, index: int) -> ValidatorSet:
        for at, _, validators in reversed(self.configs):
            if at <= index:
                return validators
        return self.configs[0][2]

    def config_in_flight(self, commit_index: int) -> bool:
        return len(self.configs) > 1 and self.configs[-1][0] > commit_index

    def set_for_height(self, height: int) -> ValidatorSet | None:
        """The validator set in force at ``height`` (certifies it); None if the log no longer knows."""
        for _, effective_after, validators in reversed(self.configs):
            if effective_after < height:
                return validators
        if height == self.snapshot.height:
            return self.snapshot.checkpoint_validators
        return None

    def sets_from_height(self, height: int) -> list[ValidatorSet]:
        """Every set in force at ``height`` or above, as far as this log knows."""
        out = []
        for _, effective_after, validators in reversed(self.configs):
            out.append(validators)
            if effective_after < height:
                break
        return out

    # ---------------------------------------------------------------- changing

    def append(self, entry: Entry) -> None:
        height = self.last_height
        index = self.last_index + 1
        digest = None
        if entry.kind == BATCH:
            height += 1
            digest = self._app.digest(entry.data)
            self.digests[digest] = index
            change = self._app.validator_set_change(height, entry.data)
            if change is not None:
                self.configs.append((index, height, change))
        self.entries.append(entry)
        self._heights.append(height)
        self._digests_list.append(digest)

    def truncate_from(self, index: int) -> list[int]:
        """Drop entries ``index`` .. end (a conflict with the leader); return the dropped indexes."""
        keep = index - self.snapshot.last_index - 1
        dropped = list(range(index, self.last_index + 1))
        for digest in self._digests_list[keep:]:
            if digest is not None and self.digests.get(digest, 0) >= index:
                del self.digests[digest]
        del self.entries[keep:]
        del self._heights[keep:]
        del self._digests_list[keep:]
        while len(self.configs) > 1 and self.configs[-1][0] >= index:
            self.configs.pop()
        return dropped

    def compact(self, snapshot: SnapshotMeta) -> list[int]:
        """Replace entries up to ``snapshot.last_index`` by the snapshot; return the dropped indexes.

        Entries after the snapshot are kept when the log holds the snapshot's last entry
        with its term; otherwise (a follower installing a leader's snapshot) the whole
        log goes, as Raft's InstallSnapshot prescribes.
        """
        old_base = self.snapshot.last_index
        keep_tail = self.term_at(snapshot.last_index) == snapshot.last_term and snapshot.last_index <= self.last_index
        if keep_tail:
            cut = snapshot.last_index - old_base
        else:
            cut = len(self.entries)
        dropped = list(range(old_base + 1, old_base + cut + 1))
        for digest in self._digests_list[:cut]:
            if digest is not None and self.digests.get(digest, -1) <= snapshot.last_index:
                self.digests.pop(digest, None)
        del self.entries[:cut]
        del self._heights[:cut]
        del self._digests_list[:cut]
        later = [c for c in self.configs[1:] if c[0] > snapshot.last_index] if keep_tail else []
        self.snapshot = snapshot
        self.configs = [(snapshot.last_index, snapshot.height, snapshot.config)] + later
        return dropped
