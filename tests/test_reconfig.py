"""Validator-set changes: the system.reconfigure rules, the chain's schedule, block acceptance."""

import pytest

from cli.validators import ProposalError, approve, make_proposal, reconfigure_tx
from consensus.bft.schedule import effective_after
from contracts import reconfig
from contracts.executor import Executor
from ledger import bls, codec
from ledger.block import NULL_DIGEST, Block, BlockError, null_block
from ledger.certificate import CommitCertificate
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.store import Store
from ledger.validators import Validator, ValidatorSet
from node.chain import Chain
from shards.lightclient import decode_epoch_record

NOW = 1_767_225_600
CHAIN = "ch/test"
ALICE = PrivateKey(bytes([1]) * 32)
K = 4  # checkpoint interval of the test shards


def _member(i: int) -> tuple[PrivateKey, Validator]:
    key = PrivateKey(bytes([40 + i]) * 32)
    sk = bls.keygen(bytes([80 + i]) * 32)
    return key, Validator(key.public_key.raw, bls.sk_to_pk(sk), bls.pop_prove(sk), f"v{i}")


MEMBERS = [_member(i) for i in range(6)]
KEYS = [k for k, _ in MEMBERS]


def _genesis(protocol: str, n: int) -> Genesis:
    return Genesis.from_document({
        "chain_id": CHAIN,
        "genesis_time": NOW,
        "protocol": protocol,
        "params": {"checkpoint_interval": K},
        "validators": [{"name": v.name, "node_key": v.node_key.hex(), "bls_key": v.bls_key.hex(),
                        "bls_pop": v.bls_pop.hex()} for _, v in MEMBERS[:n]],
        "accounts": [{"address": str(ALICE.address), "roles": ["deployer"]}],
    })


def _chain(tmp_path, protocol: str = "bft", n: int = 4) -> Chain:
    genesis = _genesis(protocol, n)
    store = Store.open(str(tmp_path / f"store-{protocol}"), genesis.chain_id, genesis_hash=genesis.hash)
    chain = Chain(genesis, store, Executor(), clock=lambda: NOW + 100)
    chain.ensure_genesis()
    return chain


@pytest.fixture
def bft(tmp_path):
    chain = _chain(tmp_path, "bft", 4)
    yield chain
    chain.store.close()


@pytest.fixture
def raft(tmp_path):
    chain = _chain(tmp_path, "raft", 3)
    yield chain
    chain.store.close()


def _set(indexes) -> ValidatorSet:
    return ValidatorSet(tuple(MEMBERS[i][1] for i in indexes))


def _proposal(chain: Chain, new: ValidatorSet, approvers, *, epoch: int | None = None) -> dict:
    latest = chain.latest_epoch
    proposal = make_proposal(CHAIN, latest.number + 1 if epoch is None else epoch, latest.validators, new)
    for i in approvers:
        approve(proposal, KEYS[i])
    return proposal


def _nonce(chain: Chain) -> int:
    from contracts.executor import nonce_key

    raw = chain.store.get(nonce_key(ALICE.address.raw))
    return 0 if raw is None else codec.decode(raw)


def _commit_next(chain: Chain, txs) -> tuple[Block, list]:
    proposer = chain.validators.validators[0].node_key
    batch, executed = chain.build(list(txs), proposer)
    height = chain.height + 1
    assert chain.validate(height, batch)
    cert = CommitCertificate("bft", height, 0, executed.block.hash, ((0, bytes(64)),))
    chain.commit(height, batch, cert)
    return executed.block, executed.receipts


def _forced_block(chain: Chain, txs) -> bytes:
    """A block holding ``txs`` as a faulty leader would propose it (no build-time filter)."""
    from ledger.block import BlockHeader, receipts_root, tx_root
    from ledger.merkle import EMPTY_ROOT

    parent = chain.head_header()
    height = parent.height + 1
    proposer = chain.validators.validators[0].node_key
    header = BlockHeader(CHAIN, height, parent.hash, tx_root([t.encode() for t in txs]), bytes(32), EMPTY_ROOT,
                         parent.time, proposer, chain.validators_at(height).hash)
    executed = chain._execute(Block(header, tuple(txs)), b"")
    header = BlockHeader(CHAIN, height, parent.hash, header.tx_root, executed.prepared.root,
                         receipts_root(executed.encoded_receipts), parent.time, proposer, header.validator_set_hash)
    return Block(header, tuple(txs)).encode()


def _refusal(chain: Chain, tx) -> str:
    with pytest.raises(reconfig.ReconfigError) as info:
        chain.check_reconfigure(chain.height + 1, tx)
    return info.value.code


def _assert_unchanged(chain: Chain) -> None:
    assert chain.latest_epoch.number == 0
    assert chain.store.get(reconfig.CURRENT_KEY) is None
    assert chain.store.get(reconfig.epoch_key(1)) is None


# ------------------------------------------------------------------ accepted changes


def test_a_quorum_approved_change_is_recorded_and_takes_effect_after_the_consensus_height(bft):
    new = _set([0, 1, 2, 3, 4])
    tx = reconfigure_tx(_proposal(bft, new, [0, 1, 3]), ALICE, 0)
    block, receipts = _commit_next(bft, [tx])
    after = effective_after(1, K)
    assert receipts[0].ok and receipts[0].result == [1, after]
    assert bft.validator_set_change(1, block.encode()) == new
    # The state records, in the format the neighbours' light clients prove.
    assert codec.decode(bft.store.get(reconfig.CURRENT_KEY)) == 1
    assert decode_epoch_record(bft.store.get(reconfig.epoch_key(1))) == (after, new)
    # The old set orders up to and including ``after``; the new one from the next height.
    assert bft.validators_at(after) == _set([0, 1, 2, 3])
    assert bft.validators_at(after + 1) == new
    assert [e.validators for e in bft.scheduled()] == [new]


def test_blocks_name_and_are_proposed_by_the_set_in_force_at_their_height(bft):
    _commit_next(bft, [reconfigure_tx(_proposal(bft, _set([1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)])
    after = effective_after(1, K)
    while bft.height < after:
        _commit_next(bft, [])
    # Validator 0 was removed: from now on its proposals are refused, and blocks name the new set.
    removed = MEMBERS[0][1].node_key
    batch, _ = bft.build([], removed)
    assert not bft.validate(after + 1, batch)
    block, _ = _commit_next(bft, [])
    assert block.header.validator_set_hash == _set([1, 2, 3, 4]).hash
    assert bft.scheduled() == []


def test_a_null_batch_at_the_first_height_of_a_new_set_names_the_new_set(bft):
    _commit_next(bft, [reconfigure_tx(_proposal(bft, _set([1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)])
    after = effective_after(1, K)
    while bft.height < after:
        _commit_next(bft, [])
    assert bft.head_header().validator_set_hash == _set([0, 1, 2, 3]).hash
    bft.commit(after + 1, b"", CommitCertificate("bft", after + 1, 1, NULL_DIGEST, ()))
    null = bft.head_header()
    assert null.proposer == b"" and null.validator_set_hash == _set([1, 2, 3, 4]).hash
    assert null == null_block(bft.header(after), after + 1, _set([1, 2, 3, 4]).hash).header
    block, _ = _commit_next(bft, [])  # and the chain goes on from it
    assert block.header.prev_hash == null.hash


def test_the_schedule_is_reloaded_from_state_after_a_restart(tmp_path):
    chain = _chain(tmp_path, "bft", 4)
    _commit_next(chain, [reconfigure_tx(_proposal(chain, _set([0, 1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)])
    chain.store.close()
    again = _chain(tmp_path, "bft", 4)
    try:
        assert again.latest_epoch.number == 1
        assert again.validators_at(effective_after(1, K) + 1) == _set([0, 1, 2, 3, 4])
    finally:
        again.store.close()


def test_a_raft_change_takes_effect_right_after_its_block(raft):
    tx = reconfigure_tx(_proposal(raft, _set([0, 1, 2, 3]), [0, 2]), ALICE, 0)
    _, receipts = _commit_next(raft, [tx])
    assert receipts[0].result == [1, 1]
    assert raft.validators == _set([0, 1, 2, 3])


# ------------------------------------------------------------------ refused changes


def test_approvals_short_of_quorum_are_refused_and_change_nothing(bft):
    tx = reconfigure_tx(_proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1]), ALICE, 0)
    assert _refusal(bft, tx) == "no_quorum"
    # A leader leaves it out of its block; a block holding it is not voted for.
    block, _ = _commit_next(bft, [tx])
    assert block.txs == () and bft.dropped == [(tx.tx_id, "no_quorum", bft.dropped[0][2])]
    assert not bft.validate(2, _forced_block(bft, [reconfigure_tx(_proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1]), ALICE, 0)]))
    _assert_unchanged(bft)


def test_an_approval_by_a_non_validator_is_refused(bft):
    proposal = _proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1])
    outsider = make_proposal(CHAIN, 1, _set([0, 1, 2, 3]), _set([0, 1, 2, 3, 4]))
    # The new validator (not yet a member) signs in the place of validator 2.
    from ledger.crypto import Kind

    sig = KEYS[4].sign(CHAIN, Kind.RECONFIG, reconfig.approval_payload(1, _set([0, 1, 2, 3]).hash, _set([0, 1, 2, 3, 4]).hash))
    args = [1, _set([0, 1, 2, 3]).hash, _set([0, 1, 2, 3, 4]).to_fields(),
            [[0, bytes.fromhex(proposal["approvals"]["0"])], [1, bytes.fromhex(proposal["approvals"]["1"])], [2, sig]], []]
    from ledger.tx import Transaction

    tx = Transaction.create(ALICE, chain_id=CHAIN, nonce=0, contract="system", function="reconfigure", args=args)
    assert _refusal(bft, tx) == "bad_approval"
    args[3][2] = [4, sig]  # or under an index beyond the set
    tx = Transaction.create(ALICE, chain_id=CHAIN, nonce=0, contract="system", function="reconfigure", args=args)
    assert _refusal(bft, tx) == "unknown_approver"
    with pytest.raises(ProposalError):
        approve(outsider, KEYS[4])
    _assert_unchanged(bft)


def test_approvals_of_another_epoch_or_another_current_set_are_refused(bft):
    new = _set([0, 1, 2, 3, 4])
    wrong_epoch = reconfigure_tx(_proposal(bft, new, [0, 1, 2], epoch=2), ALICE, 0)
    assert _refusal(bft, wrong_epoch) == "wrong_epoch"
    other = make_proposal(CHAIN, 1, _set([0, 1, 2, 5]), new)
    for i in (0, 1, 2):
        approve(other, KEYS[i])
    assert _refusal(bft, reconfigure_tx(other, ALICE, 0)) == "wrong_set"
    # Approvals signed for epoch 2 but presented as epoch 1 do not verify.
    signed_for_2 = _proposal(bft, new, [0, 1, 2], epoch=2)
    moved = dict(signed_for_2, epoch=1)
    with pytest.raises(ProposalError):
        reconfigure_tx(moved, ALICE, 0)
    _assert_unchanged(bft)


def test_two_changes_in_one_block_are_refused(bft):
    a = reconfigure_tx(_proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)
    b = reconfigure_tx(_proposal(bft, _set([0, 1, 2, 3, 5]), [0, 1, 2]), ALICE, 1)
    batch = _forced_block(bft, [a, b])
    with pytest.raises(BlockError) as info:
        bft.check_proposal(1, batch)
    assert info.value.code == "bad_reconfig" and "at most one" in str(info.value)
    # An honest leader puts only the first in its block; the second waits.
    block, _ = _commit_next(bft, [a, b])
    assert [t.tx_id for t in block.txs] == [a.tx_id]
    assert bft.latest_epoch.number == 1


def test_a_raft_change_of_more_than_one_validator_is_refused(raft):
    tx = reconfigure_tx(_proposal(raft, _set([0, 1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)
    assert _refusal(raft, tx) == "not_single_change"
    swap = list(_set([0, 1, 2]).validators)
    swap[2] = MEMBERS[3][1]
    tx = reconfigure_tx(_proposal(raft, ValidatorSet(tuple(swap)), [0, 1, 2]), ALICE, 0)
    assert _refusal(raft, tx) == "not_single_change"
    assert raft.latest_epoch.number == 0


def test_a_replayed_old_change_is_refused(bft):
    proposal = _proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1, 2])
    _commit_next(bft, [reconfigure_tx(proposal, ALICE, 0)])
    after = effective_after(1, K)
    while bft.height < after:
        _commit_next(bft, [])
    replay = reconfigure_tx(proposal, ALICE, _nonce(bft))
    assert _refusal(bft, replay) == "wrong_epoch"
    before = bft.store.get(reconfig.epoch_key(1))
    block, _ = _commit_next(bft, [replay])
    assert block.txs == () and bft.latest_epoch.number == 1 and bft.store.get(reconfig.epoch_key(2)) is None
    assert bft.store.get(reconfig.epoch_key(1)) == before


def test_a_bft_change_waits_until_the_previous_one_is_in_force(bft):
    _commit_next(bft, [reconfigure_tx(_proposal(bft, _set([0, 1, 2, 3, 4]), [0, 1, 2]), ALICE, 0)])
    second = reconfigure_tx(_proposal(bft, _set([0, 1, 2, 4]), [0, 1, 2, 3]), ALICE, 1)
    assert _refusal(bft, second) == "change_pending"
    while bft.height < effective_after(1, K):
        _commit_next(bft, [])
    assert bft.check_reconfigure(bft.height + 1, second).number == 2


def test_an_unchanged_set_or_a_bad_proof_of_possession_is_refused(bft):
    from ledger.tx import Transaction

    same = [1, _set([0, 1, 2, 3]).hash, _set([0, 1, 2, 3]).to_fields(), [], []]
    tx = Transaction.create(ALICE, chain_id=CHAIN, nonce=0, contract="system", function="reconfigure", args=same)
    assert _refusal(bft, tx) == "no_change"
    key, v = MEMBERS[4]
    forged = Validator(v.node_key, v.bls_key, MEMBERS[5][1].bls_pop, v.name)
    new = ValidatorSet(_set([0, 1, 2, 3]).validators + (forged,))
    assert _refusal(bft, reconfigure_tx(_proposal(bft, new, [0, 1, 2]), ALICE, 0)) == "bad_validator_set"


def test_the_executor_refuses_a_change_that_skipped_the_block_check(bft):
    """Defence in depth: executed without the chain's check, a bad change fails and writes nothing."""
    from contracts.executor import BlockContext
    from ledger.tx import Transaction

    args = [1, _set([0, 1, 2, 3]).hash, _set([0, 1, 2, 3, 4]).to_fields(), [], []]
    tx = Transaction.create(ALICE, chain_id=CHAIN, nonce=0, contract="system", function="reconfigure", args=args)
    with bft.store.reader() as reader:
        result = bft.executor.execute_block(reader, BlockContext(CHAIN, 1, NOW, b""), [tx])
    assert result.receipts[0].error[0] == "no_quorum"
    assert not any(key.startswith(reconfig.CURRENT_KEY[:8]) and key in (reconfig.CURRENT_KEY, reconfig.epoch_key(1))
                   for key in result.writes)
    plain = Executor()
    with bft.store.reader() as reader:
        result = plain.execute_block(reader, BlockContext(CHAIN, 1, NOW, b""), [tx])
    assert result.receipts[0].error[0] == "not_allowed"


def test_malformed_arguments_are_refused_with_bad_args(bft):
    from ledger.tx import Transaction

    for args in ([], [0, bytes(32), [], [], []], [1, b"short", [], [], []], [1, bytes(32), _set([0]).to_fields(), [[0]], []]):
        tx = Transaction.create(ALICE, chain_id=CHAIN, nonce=0, contract="system", function="reconfigure", args=args)
        assert _refusal(bft, tx) in ("bad_args", "bad_validator_set")
    assert bft.validator_set_change(1, b"") is None
