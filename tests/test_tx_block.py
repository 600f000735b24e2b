"""Transactions, receipts, block headers and blocks: formats and validation errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import codec
from ledger.block import ZERO_HASH, Block, BlockError, BlockHeader, receipts_root, tx_root
from ledger.crypto import PrivateKey
from ledger.tx import MAX_TX_SIZE, Event, Receipt, Transaction, TxError

PRODUCER = PrivateKey(bytes([7]) * 32)

args_strategy = st.lists(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1), st.text(max_size=20), st.binary(max_size=20)),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=10,
    ),
    max_size=5,
)


def _tx(**kw):
    fields = dict(chain_id="ch/zurich", nonce=3, contract="fiat", function="transfer", args=["grid1x", 500])
    fields.update(kw)
    return Transaction.create(PRODUCER, **fields)


@given(args_strategy, st.integers(0, (1 << 63) - 1))
def test_transaction_round_trips_and_verifies(args, nonce):
    tx = _tx(args=args, nonce=nonce)
    again = Transaction.decode(tx.encode())
    assert again == tx and again.tx_id == tx.tx_id
    again.verify("ch/zurich")


def test_transaction_id_does_not_depend_on_signature_bytes():
    tx = _tx()
    assert tx.tx_id == Transaction(*[getattr(tx, f) for f in ("chain_id", "sender", "nonce", "contract", "function", "args", "gas_limit", "expiry")]).tx_id


def test_tampered_transaction_fails_signature_check():
    tx = _tx()
    fields = codec.decode(tx.encode())
    fields[3] = 4  # nonce
    forged = Transaction.decode(codec.encode(fields))
    with pytest.raises(TxError) as err:
        forged.verify("ch/zurich")
    assert err.value.code == "bad_signature"


def test_transaction_for_another_shard_is_refused():
    with pytest.raises(TxError) as err:
        _tx().verify("ch/bern")
    assert err.value.code == "wrong_chain"


def test_expired_transaction_is_refused():
    tx = _tx(expiry=10)
    tx.verify("ch/zurich", height=10)
    with pytest.raises(TxError) as err:
        tx.verify("ch/zurich", height=11)
    assert err.value.code == "expired"


def test_malformed_transactions_get_reason_codes():
    good = codec.decode(_tx().encode())
    cases = {
        "wrong field count": good[:-1],
        "unknown version": [2] + good[1:],
        "short sender key": good[:2] + [b"x" * 31] + good[3:],
        "negative nonce": good[:3] + [-1] + good[4:],
        "empty contract": good[:4] + [""] + good[5:],
        "args not a list": good[:6] + [5] + good[7:],
    }
    for what, fields in cases.items():
        with pytest.raises(TxError) as err:
            Transaction.decode(codec.encode(fields))
        assert err.value.code == "malformed", what
    with pytest.raises(TxError) as err:
        Transaction.decode(codec.encode(good[:7] + [0] + good[8:]))
    assert err.value.code == "gas_limit"
    with pytest.raises(TxError) as err:
        Transaction.decode(b"\xc1garbage")
    assert err.value.code == "malformed"


def test_oversized_transaction_is_refused_before_decoding():
    with pytest.raises(TxError) as err:
        Transaction.decode(b"\x00" * (MAX_TX_SIZE + 1))
    assert err.value.code == "too_large"


def test_unsigned_transaction_cannot_be_encoded_or_decoded():
    unsigned = Transaction("ch", PRODUCER.public_key.raw, 0, "fiat", "transfer", (), 10, 10)
    with pytest.raises(TxError) as err:
        unsigned.encode()
    assert err.value.code == "bad_signature"
    fields = codec.decode(_tx().encode())
    fields[-1] = b""
    with pytest.raises(TxError) as err:
        Transaction.decode(codec.encode(fields))
    assert err.value.code == "bad_signature"


def test_transaction_with_float_argument_cannot_be_created():
    with pytest.raises(TxError) as err:
        _tx(args=[1.5])
    assert err.value.code == "malformed"


def test_receipt_round_trips():
    receipt = Receipt(True, 1234, (Event("fiat", "Transfer", (("amount", 5), ("to", b"\x01" * 20))),), None, [1, 2])
    assert Receipt.decode(receipt.encode()) == receipt
    failed = Receipt(False, 99, (), ("out_of_gas", "ran out of gas after 99"), None)
    assert Receipt.decode(failed.encode()) == failed


def _header(txs, **kw):
    fields = dict(
        chain_id="ch/zurich", height=1, prev_hash=ZERO_HASH, tx_root=tx_root([t.encode() for t in txs]),
        state_root=b"\x11" * 32, receipts_root=receipts_root([]), time=1_700_000_000,
        proposer=PRODUCER.public_key.raw, validator_set_hash=b"\x22" * 32,
    )
    fields.update(kw)
    return BlockHeader(**fields)


def test_block_round_trips_and_its_hash_is_the_header_hash():
    txs = (_tx(nonce=1), _tx(nonce=2))
    block = Block(_header(txs), txs)
    again = Block.decode(block.encode())
    assert again.header == block.header and again.txs == txs
    assert again.hash == block.header.hash == BlockHeader.decode(block.header.encode()).hash
    again.check_tx_root()


def test_block_with_wrong_tx_root_is_refused():
    txs = (_tx(nonce=1),)
    block = Block(_header(txs, tx_root=b"\x00" * 32), txs)
    with pytest.raises(BlockError) as err:
        Block.decode(block.encode()).check_tx_root()
    assert err.value.code == "bad_tx_root"


def test_block_with_a_malformed_transaction_is_refused():
    data = codec.encode([_header(()).to_fields(), [b"\x93garbage"]], max_depth=4)
    with pytest.raises(BlockError, match="transaction 0"):
        Block.decode(data)


def test_header_changes_change_the_block_hash():
    h = _header(())
    assert _header((), time=h.time + 1).hash != h.hash
    assert _header((), state_root=b"\x12" * 32).hash != h.hash


def test_header_rejects_wrong_hash_sizes():
    fields = _header(()).to_fields()
    fields[5] = b"short"
    with pytest.raises(BlockError, match="state root must be 32 bytes"):
        BlockHeader.from_fields(fields)
