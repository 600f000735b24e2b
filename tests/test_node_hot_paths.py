"""The node's per-transaction shortcuts give exactly what the long way gives.

A transaction decoded once is shared (the mempool's, the block's), its signed body is a
slice of its encoding, and blocks execute through the committed-read cache: each of
these must be invisible except in CPU time.
"""

import gc

import pytest
from chainkit import NOW, VALIDATOR, certificate, open_chain
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.tx as ledger_tx
from contracts.executor import gas_used_key, nonce_key
from ledger import codec
from ledger.crypto import PrivateKey
from ledger.tx import MAX_HEIGHT, Transaction

SENDERS = [PrivateKey(bytes([i]) * 32) for i in range(1, 5)]
_args = st.lists(
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=40), st.text(max_size=20), st.booleans(), st.none()),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(nonce=st.integers(0, 2**63 - 1), args=_args, gas=st.integers(1, 1 << 40), expiry=st.integers(0, MAX_HEIGHT))
def test_decoded_transaction_has_the_body_and_id_of_its_fields(nonce, args, gas, expiry):
    tx = Transaction.create(SENDERS[0], chain_id="ch/test", nonce=nonce, contract="token", function="transfer",
                            args=args, gas_limit=gas, expiry=expiry)
    raw = tx.encode()
    decoded = Transaction.decode(raw)
    # The long way: encode the body fields again.
    assert decoded.body_bytes == codec.encode(decoded._body_fields()) == tx.body_bytes
    assert decoded.tx_id == tx.tx_id
    assert decoded.encode() == raw == codec.encode(decoded._body_fields() + [decoded.signature])
    assert decoded.signature_ok()


def test_decode_shares_a_held_transaction_and_forgets_it_when_released():
    raw = Transaction.create(SENDERS[0], chain_id="ch/test", nonce=3, contract="c", function="f").encode()
    first = Transaction.decode(raw)
    assert Transaction.decode(bytes(raw)) is first  # equal bytes, another object: still shared
    del first
    gc.collect()
    assert raw not in ledger_tx._DECODED  # nothing holds it: the node keeps no copy
    again = Transaction.decode(raw)
    assert again.encode() == raw and again.signature_ok()


def test_a_tampered_signature_is_not_hidden_by_a_shared_decode():
    tx = Transaction.create(SENDERS[0], chain_id="ch/test", nonce=1, contract="c", function="f")
    raw = tx.encode()
    held = Transaction.decode(raw)
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    other = Transaction.decode(forged)
    assert other is not held and held.signature_ok() and not other.signature_ok()
    assert other.tx_id == held.tx_id  # the id covers the body only, as before


@pytest.fixture
def two_chains(tmp_path):
    a, b = (open_chain(tmp_path / n, SENDERS, lambda: NOW + 100) for n in "ab")
    yield a, b
    a.store.close()
    b.store.close()


def test_blocks_executed_through_the_read_cache_match_a_validator_without_it(two_chains):
    cached, fresh = two_chains
    nonces = [0] * len(SENDERS)
    for height in range(1, 6):
        txs = []
        for i, key in enumerate(SENDERS[: 1 + height % len(SENDERS)]):
            txs.append(Transaction.create(key, chain_id="ch/test", nonce=nonces[i], contract="nobody", function="f"))
            nonces[i] += 1
        batch, executed = cached.build(txs, VALIDATOR.public_key.raw)
        fresh.reads.clear()  # every read of this validator goes to the store
        assert fresh.validate(height, batch), "the other validator computes other roots"
        cert = certificate(executed.block)
        cached.commit(height, batch, cert)
        fresh.commit(height, batch, cert)
        # Every cached key holds the committed value, including the ones this block wrote.
        for key in [nonce_key(k.address.raw) for k in SENDERS] + [gas_used_key(k.address.raw) for k in SENDERS]:
            assert cached.reads.get(key) == cached.store.get(key) == fresh.store.get(key)
    assert cached.head_header() == fresh.head_header()


@settings(max_examples=50, deadline=None)
@given(address=st.binary(min_size=0, max_size=40))
def test_account_keys_are_the_state_keys_of_their_address(address):
    from ledger.statekeys import state_key

    assert nonce_key(address) == state_key("accounts", "nonce", [address])
    assert gas_used_key(address) == state_key("accounts", "gas_used", [address])
    twenty = (address * 20)[:20] if address else bytes(20)
    assert nonce_key(twenty) == state_key("accounts", "nonce", [twenty])
    assert gas_used_key(twenty) == state_key("accounts", "gas_used", [twenty])
