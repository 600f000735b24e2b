"""Checkpoint votes and their aggregation into a checkpoint certificate.

Every K heights each validator BLS-signs ``checkpoint_message(chain_id, height, block
hash, state root)`` once it has executed that height. 2f + 1 matching shares of
distinct members of the set in force at that height aggregate into a
:class:`~ledger.certificate.CheckpointCertificate`: the stable checkpoint, below which
the replica forgets its log.

BLS verification is costly (py-ecc takes ~0.3 s), so shares are not checked one by
one on arrival: once a quorum of matching shares is in, their aggregate is checked
once; only if that fails is each share checked, and a bad one is dropped and its
sender barred from that height (so a Byzantine share costs at most one extra round of
checks, not one per retransmission).
"""

from __future__ import annotations

from consensus.bft.messages import CheckpointVote
from consensus.types import Verifier
from ledger.certificate import CheckpointCertificate, checkpoint_message, signer_bitmap
from ledger.validators import ValidatorSet

__all__ = ["CheckpointTracker"]


class CheckpointTracker:
    """Checkpoint shares by height and signer (one share per signer and height)."""

    def __init__(self, chain_id: str, verifier: Verifier) -> None:
        self._chain_id = chain_id
        self._verifier = verifier
        self._votes: dict[int, dict[bytes, CheckpointVote]] = {}
        self._barred: dict[int, set[bytes]] = {}

    def add(self, signer: bytes, vote: CheckpointVote, validators: ValidatorSet) -> CheckpointCertificate | None:
        """Record ``signer``'s share; return the certificate once a quorum verifies.

        ``validators`` is the set in force at ``vote.height``; the caller checked that
        ``signer`` is in it.
        """
        per_height = self._votes.setdefault(vote.height, {})
        if signer in per_height or signer in self._barred.get(vote.height, ()):
            return None
        per_height[signer] = vote
        return self._certify(vote.height, vote.digest, vote.state_root, validators)

    def _certify(self, height: int, digest: bytes, root: bytes, validators: ValidatorSet) -> CheckpointCertificate | None:
        per_height = self._votes[height]
        group = sorted(
            (validators.index_of(key), key, vote)
            for key, vote in per_height.items()
            if vote.digest == digest and vote.state_root == root and key in validators
        )
        if len(group) < validators.bft_quorum:
            return None
        message = checkpoint_message(self._chain_id, height, digest, root)
        keys = [validators.validators[i].bls_key for i, _, _ in group]
        try:
            aggregate = self._verifier.bls_aggregate([v.signature for _, _, v in group])
            good = self._verifier.bls_fast_aggregate_verify(keys, message, aggregate)
        except Exception:  # a malformed share can make the BLS backend raise
            good = False
        if good:
            return CheckpointCertificate(height, digest, root, signer_bitmap([i for i, _, _ in group], validators.n), aggregate)
        bad = [
            key
            for i, key, vote in group
            if not self._share_ok(validators.validators[i].bls_key, message, vote.signature)
        ]
        if not bad:  # the aggregate failed but no single share did: refuse rather than loop
            return None
        for key in bad:
            del per_height[key]
            self._barred.setdefault(height, set()).add(key)
        return self._certify(height, digest, root, validators)

    def _share_ok(self, bls_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            return bool(self._verifier.bls_fast_aggregate_verify([bls_key], message, signature))
        except Exception:
            return False

    def forget_through(self, height: int) -> None:
        """Drop everything at or below ``height`` (the new stable checkpoint)."""
        for h in [h for h in self._votes if h <= height]:
            del self._votes[h]
        for h in [h for h in self._barred if h <= height]:
            del self._barred[h]

    def heights(self) -> list[int]:
        return sorted(self._votes)
