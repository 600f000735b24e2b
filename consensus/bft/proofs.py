"""Checking and building the BFT proofs with the injected ``Verifier``.

The rules match :meth:`ledger.certificate.CommitCertificate.verify` and
:meth:`~ledger.certificate.CheckpointCertificate.verify` exactly (same payloads,
kinds, quorums, signer order); they go through the injected verifier so the simulator
can run them with cheap signatures. Quorums count distinct validators of the set that
orders the height, never messages.
"""

from __future__ import annotations

from consensus.bft.messages import PreparedCertificate, vote_payload
from consensus.types import Verifier
from ledger.certificate import (
    CertificateError,
    CheckpointCertificate,
    CommitCertificate,
    bitmap_indexes,
    checkpoint_message,
)
from ledger.crypto import Kind
from ledger.validators import ValidatorSet

__all__ = [
    "build_commit_certificate",
    "leader_of",
    "prepared_is_valid",
    "verify_checkpoint_certificate",
    "verify_commit_certificate",
]


def leader_of(validators: ValidatorSet, view: int) -> bytes:
    """Leader rotation: view mod n over the set that orders the height."""
    return validators.validators[view % validators.n].node_key


def prepared_is_valid(cert: PreparedCertificate, validators: ValidatorSet, verifier: Verifier) -> bool:
    """A pre-prepare by the view's leader and quorum - 1 prepares of distinct other members."""
    leader = leader_of(validators, cert.view)
    payload = vote_payload(cert.seq, cert.view, cert.digest)
    if not verifier.verify(leader, Kind.PRE_PREPARE, payload, cert.pre_prepare_signature):
        return False
    if len(cert.prepares) < validators.bft_quorum - 1:
        return False
    for key, signature in cert.prepares:
        if key == leader or key not in validators:
            return False
        if not verifier.verify(key, Kind.PREPARE, payload, signature):
            return False
    return True


def build_commit_certificate(
    validators: ValidatorSet, seq: int, view: int, digest: bytes, signatures: dict[bytes, bytes]
) -> CommitCertificate:
    """The commit certificate of already verified commit votes (node key -> signature)."""
    pairs = sorted((validators.index_of(key), sig) for key, sig in signatures.items() if key in validators)
    return CommitCertificate("bft", seq, view, digest, tuple(pairs))


def verify_commit_certificate(
    validators: ValidatorSet, cert: CommitCertificate, verifier: Verifier
) -> None:
    """Raise :class:`CertificateError` unless a BFT quorum of ``validators`` signed ``cert``."""
    if cert.protocol != "bft":
        raise CertificateError("not a BFT commit certificate")
    payload = vote_payload(cert.height, cert.round, cert.digest)
    last = -1
    for index, signature in cert.signatures:
        if index <= last:
            raise CertificateError("certificate signatures must be in ascending validator order, without repeats")
        last = index
        if index >= validators.n:
            raise CertificateError(f"certificate names validator {index}; the set has {validators.n}")
        if not verifier.verify(validators.validators[index].node_key, Kind.COMMIT, payload, signature):
            raise CertificateError(f"signature of validator {index} does not verify")
    if len(cert.signatures) < validators.bft_quorum:
        raise CertificateError(
            f"certificate has {len(cert.signatures)} signatures; {validators.bft_quorum} are needed"
        )


def verify_checkpoint_certificate(
    chain_id: str, validators: ValidatorSet, cert: CheckpointCertificate, verifier: Verifier
) -> None:
    """Raise :class:`CertificateError` unless a BFT quorum of ``validators`` BLS-signed ``cert``."""
    indexes = bitmap_indexes(cert.signers, validators.n)
    if len(indexes) < validators.bft_quorum:
        raise CertificateError(f"checkpoint has {len(indexes)} signers; {validators.bft_quorum} are needed")
    keys = [validators.validators[i].bls_key for i in indexes]
    message = checkpoint_message(chain_id, cert.height, cert.block_hash, cert.state_root)
    if not verifier.bls_fast_aggregate_verify(keys, message, cert.aggregate):
        raise CertificateError("checkpoint aggregate signature does not verify")
