"""The block pipeline: what a validator refuses to vote for, and how blocks commit."""

import pytest
from chainkit import NOW, VALIDATOR, certificate, open_chain

from ledger.block import NULL_DIGEST, Block, BlockHeader
from ledger.certificate import CommitCertificate
from ledger.crypto import PrivateKey
from ledger.tx import Transaction
from node.chain import ChainError

ALICE = PrivateKey(bytes([1]) * 32)


@pytest.fixture
def chain(tmp_path):
    clock = [NOW + 100]
    c = open_chain(tmp_path / "store", [ALICE], lambda: clock[0])
    c.test_clock = clock
    yield c
    c.store.close()


def _tx(nonce=0):
    return Transaction.create(ALICE, chain_id="ch/test", nonce=nonce, contract="nobody", function="f")


def test_genesis_is_block_zero_with_the_genesis_state(chain):
    assert chain.height == 0 and chain.head_header().time == NOW


def test_a_block_is_valid_only_at_its_own_height(chain):
    batch, _ = chain.build([], VALIDATOR.public_key.raw)
    assert chain.validate(1, batch) is True
    assert chain.validate(0, batch) is False  # a committed height
    # Above the next height the parent's state is not here yet: no answer (a BFT backup
    # holds the block until its parent commits), never a refusal.
    assert chain.validate(2, batch) is None and chain.validate(7, batch) is None


def test_block_with_a_wrong_state_root_is_not_voted_for(chain):
    batch, executed = chain.build([_tx()], VALIDATOR.public_key.raw)
    h = executed.block.header
    forged = Block(BlockHeader(h.chain_id, h.height, h.prev_hash, h.tx_root, b"\x01" * 32, h.receipts_root, h.time,
                               h.proposer, h.validator_set_hash), executed.block.txs)
    assert not chain.validate(1, forged.encode())


def test_block_time_earlier_than_parent_or_far_ahead_is_refused(chain):
    chain.test_clock[0] = NOW + 10_000
    batch, _ = chain.build([], VALIDATOR.public_key.raw)
    chain.test_clock[0] = NOW + 100  # this validator's clock is behind the proposer's by far more than the skew
    chain._executed.clear()
    assert not chain.validate(1, batch)


def test_block_from_a_non_validator_or_another_shard_is_refused(chain):
    batch, _ = chain.build([], ALICE.public_key.raw)
    assert not chain.validate(1, batch)
    assert not chain.validate(1, b"\x93not a block")


def test_committed_block_applies_with_its_certificate_and_receipts(chain):
    tx = _tx()
    batch, executed = chain.build([tx], VALIDATOR.public_key.raw)
    chain.commit(1, batch, certificate(executed.block))
    assert chain.height == 1
    height, index, _ = chain.store.tx_location(tx.tx_id)
    assert (height, index) == (1, 0)


def test_null_batch_commits_the_derived_null_block(chain):
    cert = CommitCertificate("bft", 1, 1, NULL_DIGEST, ())
    chain.commit(1, b"", cert)
    header = chain.head_header()
    assert header.height == 1 and header.state_root == chain.header(0).state_root and header.proposer == b""


def test_commit_of_a_height_that_does_not_follow_stops_the_node(chain):
    batch, executed = chain.build([], VALIDATOR.public_key.raw)
    with pytest.raises(ChainError, match="store is at 0"):
        chain.commit(2, batch, certificate(executed.block))


def test_cached_committed_reads_follow_every_commit(chain):
    from contracts.executor import nonce_key

    key = nonce_key(ALICE.address.raw)
    assert chain.reads.get(key) is None  # cached: the sender has never sent anything
    batch, executed = chain.build([_tx(0)], VALIDATOR.public_key.raw)
    chain.commit(1, batch, certificate(executed.block))
    assert chain.reads.get(key) == chain.store.get(key) is not None
