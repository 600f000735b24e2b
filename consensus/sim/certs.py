"""Certificate checks through an injected ``Verifier``.

:meth:`ledger.certificate.CommitCertificate.verify` and
:meth:`~ledger.certificate.CheckpointCertificate.verify` check real Ed25519 and BLS
signatures. A simulation with cheap signers needs the same rules (same payloads,
kinds, quorums and signer ordering) with its own verifier; these functions are those
rules, written once against the ``Verifier`` protocol. With real keys the simulator
calls the protocol's ``verify_certificate`` (the ledger code) instead.
"""

from __future__ import annotations

from consensus.types import Verifier
from ledger.certificate import (
    CertificateError,
    CheckpointCertificate,
    CommitCertificate,
    bitmap_indexes,
    checkpoint_message,
    commit_vote_payload,
)
from ledger.crypto import Kind
from ledger.validators import ValidatorSet

__all__ = ["verify_checkpoint_certificate", "verify_commit_certificate"]


def verify_commit_certificate(chain_id: str, validators: ValidatorSet, cert: CommitCertificate, verifier: Verifier) -> None:
    """Raise :class:`CertificateError` unless ``cert`` carries enough valid commit signatures.

    BFT needs ``validators.bft_quorum`` distinct signers, Raft the leader's one.
    """
    if cert.protocol not in ("bft", "raft"):
        raise CertificateError(f"unknown consensus protocol {cert.protocol!r}")
    needed = validators.bft_quorum if cert.protocol == "bft" else 1
    kind = Kind.COMMIT if cert.protocol == "bft" else Kind.RAFT_COMMIT
    payload = commit_vote_payload(cert.height, cert.round, cert.digest)
    last = -1
    for index, signature in cert.signatures:
        if index <= last:
            raise CertificateError("certificate signatures must be in ascending validator order, without repeats")
        last = index
        if index >= validators.n:
            raise CertificateError(f"certificate names validator {index}; the set has {validators.n}")
        if not verifier.verify(validators.validators[index].node_key, kind, payload, signature):
            raise CertificateError(f"signature of validator {index} does not verify")
    if len(cert.signatures) < needed:
        raise CertificateError(f"certificate has {len(cert.signatures)} valid signatures; {needed} are needed")


def verify_checkpoint_certificate(
    chain_id: str, validators: ValidatorSet, cert: CheckpointCertificate, verifier: Verifier, *, protocol: str
) -> None:
    """Raise :class:`CertificateError` unless a quorum of ``validators`` BLS-signed ``cert``.

    The quorum is 2f + 1 (BFT) or a majority (Raft), as in the ledger's own check.
    """
    indexes = bitmap_indexes(cert.signers, validators.n)
    needed = validators.bft_quorum if protocol == "bft" else validators.majority
    if len(indexes) < needed:
        raise CertificateError(f"checkpoint has {len(indexes)} signers; {needed} are needed")
    keys = [validators.validators[i].bls_key for i in indexes]
    message = checkpoint_message(chain_id, cert.height, cert.block_hash, cert.state_root)
    if not verifier.bls_fast_aggregate_verify(keys, message, cert.aggregate):
        raise CertificateError("checkpoint aggregate signature does not verify")
