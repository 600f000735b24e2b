"""The safety invariants, checked on every commit of every honest replica.

* **Agreement**: one digest per height across all replicas and all time, restarted
  replicas and validator-set changes included.
* **Certificates**: every ``Commit`` carries a certificate of this protocol, for this
  height and digest, that verifies against the validator set in force at that height.
* **Order**: a replica commits height h + 1 after h, without gaps (a re-commit of a
  height it already has, with the same digest, is allowed: a replica may replay its
  log after a restart and the application ignores what it already executed).
* **Validity**: the digest is the application's digest of the batch, and the batch is
  one the application accepts.

The validator set in force at height h: a reconfiguration batch committed at height
r names a set that certifies the heights above ``effective_after(r)`` (r itself by
default, as in Raft; the next checkpoint for BFT). Several changes with the same
``effective_after``: the last one wins. Genesis until the first change takes effect.
The null batch ``b""`` (BFT fills view-change gaps with it) is a valid, empty batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from consensus.sim.app import SimApplication, reconfig_set
from consensus.sim.certs import verify_commit_certificate
from consensus.types import Commit, Verifier
from ledger.certificate import CertificateError, CommitCertificate
from ledger.validators import ValidatorSet

__all__ = ["SafetyChecker"]


class SafetyChecker:
    def __init__(self, protocol: str, chain_id: str, genesis: ValidatorSet, verifier: Verifier,
                 verify_certificate: Callable[[str, ValidatorSet, CommitCertificate], None] | None,
                 effective_after: Callable[[int], int] = lambda height: height) -> None:
        self.protocol = protocol
        self.chain_id = chain_id
        self.genesis = genesis
        self._verifier = verifier
        # With real keys the protocol's own check runs; with cheap keys the same rules via the verifier.
        self._verify_certificate = verify_certificate
        self.digest_at: dict[int, bytes] = {}
        self.first_committer: dict[int, str] = {}
        self._effective_after = effective_after
        # (last height of the previous set, set), ascending; a set certifies heights above its "after".
        self._after: list[int] = [0]
        self._sets: list[ValidatorSet] = [genesis]
        self.reconfig_heights: list[int] = []
        self._changes: list[tuple[int, int, ValidatorSet]] = []  # (height, effective after, set)
        self.violations: list[str] = []
        self.commits = 0
        self.recommits = 0

    # --------------------------------------------------------------- validator sets

    def set_in_force(self, height: int) -> ValidatorSet:
        """The set that orders and certifies ``height`` (as far as commits so far tell)."""
        i = bisect.bisect_left(self._after, height)
        return self._sets[max(i - 1, 0)]

    def latest_set(self) -> ValidatorSet:
        """The set named by the last committed change, in force or about to be."""
        return self._sets[-1]

    def recorded_sets(self, height: int) -> tuple[tuple[int, ValidatorSet], ...]:
        """The validator sets the state at ``height`` records, as ``(after height, set)``: the
        set ordering ``height + 1`` (paired with ``height``) and every change committed at or
        below ``height`` that takes effect later (paired with its last old height)."""
        later: dict[int, ValidatorSet] = {}
        for committed_at, after, validators in self._changes:
            if committed_at <= height < after:
                later[after] = validators  # the last change with one "after" wins
        return ((height, self.set_in_force(height + 1)), *sorted(later.items(), key=lambda item: item[0]))

    def sets_from(self, height: int) -> list[ValidatorSet]:
        """Every set in force at ``height`` or above, as far as commits so far tell."""
        i = max(bisect.bisect_left(self._after, height) - 1, 0)
        return self._sets[i:]

    @property
    def top(self) -> int:
        """The highest height any honest replica has committed."""
        return max(self.digest_at, default=0)

    # ---------------------------------------------------------------------- checks

    def _fail(self, message: str) -> None:
        self.violations.append(message)

    def on_commit(self, replica: str, app: SimApplication, commit: Commit, now: int) -> bool:
        """Check one ``Commit`` of an honest replica; return True when the application should execute it."""
        h = commit.height
        where = f"t={now} {replica} height {h}"
        if not isinstance(commit.batch, bytes) or not isinstance(commit.digest, bytes) or type(h) is not int:
            self._fail(f"{where}: malformed Commit action {commit!r:.200}")
            return False
        if app.digest(commit.batch) != commit.digest:
            self._fail(f"{where}: committed digest {commit.digest.hex()[:16]} is not the digest of the batch")
            return False
        if h <= app.height:
            # A replay of a height this replica already has: the digest must be the one it has.
            self.recommits += 1
            known = self.digest_at.get(h)
            if known is not None and known != commit.digest:
                self._fail(f"{where}: re-committed {commit.digest.hex()[:16]} but {known.hex()[:16]} was committed there")
            else:
                self._check_certificate(where, commit)
            return False
        if h != app.height + 1:
            self._fail(f"{where}: gap, the replica's last height is {app.height}")
            return False
        if commit.batch != b"" and not app.validate(h, commit.batch):
            self._fail(f"{where}: committed a batch the application refuses")
        known = self.digest_at.get(h)
        if known is not None and known != commit.digest:
            self._fail(
                f"{where}: AGREEMENT violated, committed {commit.digest.hex()[:16]} but "
                f"{self.first_committer[h]} committed {known.hex()[:16]}"
            )
            return False
        self._check_certificate(where, commit)
        if known is None:
            self.digest_at[h] = commit.digest
            self.first_committer[h] = replica
            new_set = reconfig_set(commit.batch)
            if new_set is not None:
                after = self._effective_after(h)
                self.reconfig_heights.append(h)
                self._changes.append((h, after, new_set))
                if after < h or after < self._after[-1]:
                    self._fail(f"{where}: the change takes effect after {after}, before its own height or an earlier change")
                elif after == self._after[-1]:
                    self._sets[-1] = new_set
                else:
                    self._after.append(after)
                    self._sets.append(new_set)
        self.commits += 1
        return True

    def _check_certificate(self, where: str, commit: Commit) -> None:
        cert = commit.certificate
        if not isinstance(cert, CommitCertificate):
            self._fail(f"{where}: the commit carries no CommitCertificate")
            return
        if cert.protocol != self.protocol or cert.height != commit.height or cert.digest != commit.digest:
            self._fail(
                f"{where}: certificate is for {cert.protocol} height {cert.height} digest {cert.digest.hex()[:16]}"
            )
            return
        validators = self.set_in_force(commit.height)
        try:
            if self._verify_certificate is not None:
                self._verify_certificate(self.chain_id, validators, cert)
            else:
                verify_commit_certificate(self.chain_id, validators, cert, self._verifier)
        except CertificateError as exc:
            self._fail(f"{where}: certificate does not verify against the set in force ({exc})")
