"""The offline client SDK: build and sign transactions, and verify what a node serves.

Nothing here talks to the network (the HTTP client comes with the node). A producer's
trading tool, a bank's back office or a meter gateway uses it to sign transactions
offline; a regulator's auditor uses it to check a read without trusting the node
that served it::

    account = Account(key, chain_id="ch/zurich", next_nonce=0)
    tx = account.call("fiat", "transfer", [recipient.raw, 125_00, "CHF"])
    # ... submit tx.encode() ...
    verify_read(read, validators)   # value + state proof + certificate, all checked

A *verified read* is three checks, each of which alone is not enough: the commit
certificate is signed by a quorum of the shard's validators for exactly this header;
the header's state root is the root the proof is checked against; the proof shows the
value (or its absence) under that root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger import codec
from ledger.block import BlockHeader
from ledger.certificate import CertificateError, CheckpointCertificate, CommitCertificate
from ledger.crypto import Address, PrivateKey
from ledger.statekeys import state_key
from ledger.tx import MAX_HEIGHT, Transaction
from ledger.validators import ValidatorSet

__all__ = ["Account", "ProofError", "StateRead", "verify_read"]


class ProofError(ValueError):
    """A read does not verify: bad certificate, wrong header, or a proof that does not match."""


class Account:
    """Signs transactions for one key on one shard, numbering them with sequential nonces."""

    def __init__(self, key: PrivateKey, *, chain_id: str, next_nonce: int = 0, gas_limit: int = 1_000_000) -> None:
        self.key = key
        self.chain_id = chain_id
        self.next_nonce = next_nonce
        self.gas_limit = gas_limit

    @property
    def address(self) -> Address:
        return self.key.address

    def call(
        self,
        contract: str,
        function: str,
        args: list | tuple = (),
        *,
        gas_limit: int | None = None,
        expiry: int = MAX_HEIGHT,
        nonce: int | None = None,
    ) -> Transaction:
        """A signed call of ``contract.function(*args)``; takes the next nonce unless one is given."""
        if nonce is None:
            nonce = self.next_nonce
            self.next_nonce += 1
        return Transaction.create(
            self.key,
            chain_id=self.chain_id,
            nonce=nonce,
            contract=contract,
            function=function,
            args=args,
            gas_limit=self.gas_limit if gas_limit is None else gas_limit,
            expiry=expiry,
        )


@dataclass(frozen=True)
class StateRead:
    """What a node serves for ``GET /v1/state/...?proof=1``, decoded."""

    contract: str
    name: str
    parts: tuple
    value: bytes | None  # the stored canonical encoding, or None when absent
    proof: bytes
    header: BlockHeader
    certificate: CommitCertificate | CheckpointCertificate

    @property
    def key(self) -> bytes:
        return state_key(self.contract, self.name, self.parts)

    def decoded_value(self) -> Any:
        return None if self.value is None else codec.decode(self.value, allow_maps=True)


def verify_read(read: StateRead, validators: ValidatorSet, *, protocol: str = "bft", chain_id: str | None = None) -> Any:
    """Check certificate, header and proof; return the decoded value (``None`` if proven absent).

    ``chain_id``, when given, is the shard the reader asked: a header of another shard is
    refused even if the same keys validate both (operators may reuse keys across shards).
    Raises :class:`ProofError` saying which of the checks failed.
    """
    from ledger.state import verify_proof

    if chain_id is not None and read.header.chain_id != chain_id:
        raise ProofError(f"the header is of shard {read.header.chain_id!r}, not of {chain_id!r}")
    chain_id = read.header.chain_id
    if read.header.validator_set_hash != validators.hash:
        raise ProofError("the header was certified by a different validator set than the one given")
    try:
        if isinstance(read.certificate, CommitCertificate):
            read.certificate.verify(chain_id, validators, height=read.header.height, digest=read.header.hash)
        else:
            read.certificate.verify(chain_id, validators, protocol=protocol)
            if read.certificate.height != read.header.height or read.certificate.block_hash != read.header.hash:
                raise ProofError("the checkpoint certificate is for another block")
            if read.certificate.state_root != read.header.state_root:
                raise ProofError("the checkpoint certifies a different state root than the header's")
    except CertificateError as exc:
        raise ProofError(f"certificate does not verify: {exc}") from None
    if not verify_proof(read.header.state_root, read.key, read.value, read.proof):
        raise ProofError("state proof does not match the certified state root")
    return read.decoded_value()
