"""The in-memory log of the current view: one slot per sequence number in the window,
and the batches waiting to be ordered."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Pending", "Slot"]


@dataclass
class Slot:
    """What this replica knows about one sequence number in the current view.

    Votes are kept per sender (the first one wins; an honest replica never sends two
    different ones), so quorums count distinct validators and a flood of duplicates
    costs nothing.
    """

    seq: int
    view: int
    since: int  # tick at which the slot started waiting (for the view-change timer)
    digest: bytes | None = None  # the accepted pre-prepare's digest
    pp_signature: bytes | None = None
    batch: bytes | None = None  # the batch with that digest, once validated (b"" for null)
    invalid: bool = False  # the application refused the batch: never vote for it
    # The pre-prepare's batch while the application cannot judge it yet (its parent is
    # not executed here): judged once the height below is executed.
    unchecked: bytes | None = None
    prepares: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)  # sender -> (digest, sig)
    commits: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)
    sent_prepare: bool = False
    sent_commit: bool = False

    def matching(self, votes: dict[bytes, tuple[bytes, bytes]], digest: bytes) -> dict[bytes, bytes]:
        return {k: s for k, (d, s) in votes.items() if d == digest}


@dataclass
class Pending:
    """A batch offered for ordering and not yet committed."""

    batch: bytes
    since: int
    origin: bytes  # node key of the replica that first offered it
    announced: bool = False  # broadcast to every validator (done once, if it waits)
    ahead: int = 0  # batches already waiting when it arrived (they go first)
