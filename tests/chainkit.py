"""A one-validator shard's block pipeline (``node.chain.Chain``) over a real store, for tests."""

from __future__ import annotations

from contracts.executor import Executor
from ledger import bls
from ledger.block import Block
from ledger.certificate import CommitCertificate, commit_vote_payload
from ledger.crypto import Kind, PrivateKey
from ledger.genesis import Genesis
from ledger.store import Store
from node.chain import Chain

CHAIN_ID = "ch/test"
VALIDATOR = PrivateKey(bytes([9]) * 32)
BLS_SK = bls.keygen(bytes([9]) * 32)
NOW = 1_767_225_600


def genesis(deployers: list[PrivateKey]) -> Genesis:
    """BFT genesis with ``VALIDATOR`` alone and ``deployers`` as accounts allowed to deploy."""
    return Genesis.from_document({
        "chain_id": CHAIN_ID,
        "genesis_time": NOW,
        "protocol": "bft",
        "validators": [{"name": "op", "node_key": VALIDATOR.public_key.hex(), "bls_key": bls.sk_to_pk(BLS_SK).hex(),
                        "bls_pop": bls.pop_prove(BLS_SK).hex()}],
        "accounts": [{"address": str(k.address), "roles": ["deployer"]} for k in deployers],
    })


def open_chain(path, deployers: list[PrivateKey], clock) -> Chain:
    """A chain at its genesis block in a fresh store at ``path``; ``clock()`` is its time."""
    g = genesis(deployers)
    store = Store.open(str(path), g.chain_id, genesis_hash=g.hash)
    chain = Chain(g, store, Executor(), clock=clock)
    chain.ensure_genesis()
    return chain


def certificate(block: Block) -> CommitCertificate:
    """``VALIDATOR``'s commit certificate of ``block``."""
    sig = VALIDATOR.sign(CHAIN_ID, Kind.COMMIT, commit_vote_payload(block.height, 0, block.hash))
    return CommitCertificate("bft", block.height, 0, block.hash, ((0, sig),))
