"""Mempool admission: every rejection has a reason code; blocks take transactions fairly."""

import pytest

from ledger import codec
from ledger.crypto import PrivateKey
from ledger.tx import Transaction
from node.mempool import Mempool, TxRejected

CHAIN = "ch/zurich"
ALICE = PrivateKey(bytes([1]) * 32)
BOB = PrivateKey(bytes([2]) * 32)


def _tx(key=ALICE, nonce=0, **kw):
    fields = dict(chain_id=CHAIN, nonce=nonce, contract="fiat", function="transfer", args=[b"x" * 20, 1])
    fields.update(kw)
    return Transaction.create(key, **fields)


def _pool(nonces=None, **kw):
    nonces = nonces if nonces is not None else {}
    return Mempool(CHAIN, next_nonce=lambda sender: nonces.get(sender, 0), **kw)


def _code(pool, raw, height=0):
    with pytest.raises(TxRejected) as err:
        pool.add(raw, height)
    return err.value.code


def test_admits_a_valid_transaction_once():
    pool = _pool()
    tx = _tx()
    assert pool.add(tx.encode(), 0).tx_id == tx.tx_id
    assert tx.tx_id in pool and len(pool) == 1
    assert _code(pool, tx.encode()) == "duplicate"


def test_rejects_malformed_and_too_large():
    pool = _pool()
    assert _code(pool, b"\x93garbage") == "malformed"
    assert _code(pool, b"\x00" * 200_000) == "too_large"


def test_rejects_wrong_chain_expired_and_gas_limit():
    pool = _pool(max_gas=1000)
    assert _code(pool, _tx(chain_id="ch/bern").encode()) == "wrong_chain"
    assert _code(pool, _tx(expiry=5, gas_limit=10).encode(), height=5) == "expired"
    assert _code(pool, _tx(gas_limit=1001).encode()) == "gas_limit"


def test_rejects_used_nonce_and_nonce_beyond_window():
    pool = _pool({ALICE.public_key.raw: 5}, nonce_window=10)
    assert _code(pool, _tx(nonce=4).encode()) == "bad_nonce"
    assert _code(pool, _tx(nonce=15).encode()) == "bad_nonce"
    pool.add(_tx(nonce=14).encode(), 0)


def test_rejects_forged_signature():
    fields = codec.decode(_tx().encode())
    fields[-1] = bytes(64)
    assert _code(_pool(), codec.encode(fields)) == "bad_signature"


def test_rejects_second_transaction_with_the_same_nonce():
    pool = _pool()
    pool.add(_tx(nonce=0).encode(), 0)
    assert _code(pool, _tx(nonce=0, args=[b"y" * 20, 2]).encode()) == "duplicate"


def test_policy_refusals_pass_through_with_their_code():
    def members_only(tx):
        if tx.sender != ALICE.public_key.raw:
            raise TxRejected("not_member", "the sender is not a participant of this shard")

    pool = Mempool(CHAIN, next_nonce=lambda s: 0, policy=members_only)
    pool.add(_tx().encode(), 0)
    assert _code(pool, _tx(key=BOB).encode()) == "not_member"
    assert pool.rejected["not_member"] == 1


def test_per_sender_cap():
    pool = _pool(max_per_sender=2)
    pool.add(_tx(nonce=0).encode(), 0)
    pool.add(_tx(nonce=1).encode(), 0)
    assert _code(pool, _tx(nonce=2).encode()) == "sender_limit"
    pool.add(_tx(key=BOB).encode(), 0)


def test_full_pool_evicts_transactions_that_cannot_run_next():
    pool = _pool(max_txs=2)
    pool.add(_tx(nonce=5).encode(), 0)  # a gap: cannot run until nonces 0..4 arrive
    pool.add(_tx(key=BOB, nonce=0).encode(), 0)
    pool.add(_tx(nonce=0).encode(), 0)  # evicts the gapped one
    assert len(pool) == 2
    assert _code(pool, _tx(key=BOB, nonce=1, args=[b"z" * 20, 3]).encode()) == "mempool_full"


def test_select_is_round_robin_over_senders_in_nonce_order():
    pool = _pool()
    for n in range(3):
        pool.add(_tx(nonce=n).encode(), 0)
    pool.add(_tx(key=BOB, nonce=0).encode(), 0)
    chosen = pool.select(max_txs=10, max_bytes=1 << 20, height=0)
    order = [(e.sender, e.tx.nonce) for e in chosen]
    assert order[:2] == [(ALICE.public_key.raw, 0), (BOB.public_key.raw, 0)]
    assert [n for s, n in order if s == ALICE.public_key.raw] == [0, 1, 2]


def test_select_skips_senders_with_a_nonce_gap():
    pool = _pool()
    pool.add(_tx(nonce=1).encode(), 0)
    assert pool.select(max_txs=10, max_bytes=1 << 20, height=0) == []


def test_remove_committed_drops_included_and_stale():
    nonces = {}
    pool = _pool(nonces)
    a0, a1 = _tx(nonce=0), _tx(nonce=1)
    pool.add(a0.encode(), 0)
    pool.add(a1.encode(), 0)
    nonces[ALICE.public_key.raw] = 2  # a block carried nonces 0 and 1 (a1 via another node)
    pool.remove_committed([a0.tx_id], 1)
    assert len(pool) == 0


def test_a_backlog_makes_client_submissions_busy_but_not_relayed_ones():
    pool = _pool(max_txs=4, max_backlog=2)
    pool.refuse_if_busy()
    pool.add(_tx(nonce=0).encode(), 0)
    pool.add(_tx(nonce=1).encode(), 0)
    with pytest.raises(TxRejected) as exc:
        pool.refuse_if_busy()
    assert exc.value.code == "busy" and "2 transactions waiting" in exc.value.message
    assert pool.rejected["busy"] == 1
    pool.add(_tx(nonce=2).encode(), 0)  # a validator's relay is still taken, up to max_txs
    pool.remove_committed([_tx(nonce=n).tx_id for n in range(3)], 1)
    pool.refuse_if_busy()  # room again
    assert _pool(max_txs=3, max_backlog=10).max_backlog == 3


def test_config_refuses_a_backlog_above_the_pool():
    from node.config import ConfigError, NodeConfig

    with pytest.raises(ConfigError, match="max_backlog .* cannot exceed mempool.max_txs"):
        NodeConfig.from_dict({"key_file": "k.json", "mempool": {"max_txs": 10, "max_backlog": 11}}).check()


def test_under_a_backlog_a_transaction_filling_its_senders_nonce_gap_is_still_taken():
    pool = _pool(max_txs=10, max_backlog=2)
    pool.add(_tx(nonce=1).encode(), 0)  # waits for nonce 0, which was refused earlier
    pool.add(_tx(key=BOB, nonce=0).encode(), 0)
    assert _check_code(pool, _tx(key=BOB, nonce=1).encode()) == "busy"  # nothing of Bob's waits above it
    gap = pool.check(_tx(nonce=0).encode(), 0, client=True)  # lets Alice's waiting nonce 1 run
    pool.add(gap.encode(), 0, verified=gap)
    assert len(pool) == 3
    assert _check_code(pool, _tx(nonce=2).encode()) == "busy"


def _check_code(pool, raw):
    with pytest.raises(TxRejected) as err:
        pool.check(raw, 0, client=True)
    return err.value.code


def test_a_transaction_admitted_by_evicting_its_senders_last_waiting_one_is_still_selected():
    pool = _pool(max_txs=2)
    pool.add(_tx(nonce=5).encode(), 0)  # Alice's only waiting transaction, behind a gap
    pool.add(_tx(key=BOB, nonce=0).encode(), 0)
    zero = _tx(nonce=0)
    pool.add(zero.encode(), 0)  # evicts Alice's nonce 5, her last waiting one
    chosen = [e.tx.tx_id for e in pool.select(max_txs=10, max_bytes=1 << 20, height=1)]
    assert zero.tx_id in chosen and len(chosen) == 2


def test_the_pool_is_bounded_in_bytes_and_evicts_what_cannot_run_next():
    big = [b"x" * 20, b"y" * 3000]
    gapped = _tx(nonce=7, args=big).encode()
    first = _tx(key=BOB, nonce=0, args=big).encode()
    pool = _pool(max_bytes=len(gapped) + len(first) + 100)
    pool.add(gapped, 0)
    pool.add(first, 0)
    assert pool.bytes == len(gapped) + len(first)
    second = _tx(key=BOB, nonce=1, args=big).encode()
    pool.add(second, 0)  # room made by evicting the gapped one
    assert len(pool) == 2 and pool.bytes == len(first) + len(second)
    # Bob's nonce 1 waits for nonce 0 but is not evicted for his nonce 2, which needs it
    code = _code(pool, _tx(key=BOB, nonce=2, args=big).encode())
    assert code == "mempool_full" and len(pool) == 2
    pool.remove_committed([_tx(key=BOB, nonce=0, args=big).tx_id], 1)
    assert pool.bytes == len(second)
    pool.drop(_tx(key=BOB, nonce=1, args=big).tx_id)
    assert pool.bytes == 0 and len(pool) == 0


def test_a_backlog_of_bytes_makes_client_submissions_busy():
    big = [b"x" * 20, b"y" * 3000]
    raw = _tx(nonce=0, args=big).encode()
    pool = _pool(max_txs=10, max_backlog=5, max_bytes=4 * len(raw))  # backlog: half the bytes
    assert pool.max_backlog_bytes == 2 * len(raw)
    pool.add(raw, 0)
    pool.refuse_if_busy()
    pool.add(_tx(nonce=1, args=big).encode(), 0)
    assert _check_code(pool, _tx(key=BOB, nonce=0).encode()) == "busy"  # 2 of 5 transactions, but the bytes
    pool.add(_tx(nonce=2, args=big).encode(), 0)  # relays still fill max_bytes


def test_config_refuses_a_byte_bound_below_one_transaction():
    from node.config import ConfigError, NodeConfig

    with pytest.raises(ConfigError, match="mempool.max_bytes must be at least"):
        NodeConfig.from_dict({"key_file": "k.json", "mempool": {"max_bytes": 1000}}).check()


def test_a_transaction_too_large_for_the_room_that_can_be_made_costs_no_other_its_place():
    big = [b"x" * 20, b"y" * 3000]
    gapped = _tx(nonce=7).encode()  # small, behind a gap: evictable
    first = _tx(key=BOB, nonce=0, args=big).encode()  # next in line: not evictable
    pool = _pool(max_bytes=len(gapped) + len(first) + 100)
    pool.add(gapped, 0)
    pool.add(first, 0)
    carol = PrivateKey(bytes([3]) * 32)
    # evicting the gapped one frees too little for it: refused, and both stay
    assert _code(pool, _tx(key=carol, nonce=0, args=big).encode()) == "mempool_full"
    assert len(pool) == 2 and pool.bytes == len(gapped) + len(first)


def test_an_empty_pool_never_answers_busy_whatever_its_bounds():
    pool = _pool(max_txs=200_000, max_backlog=1, max_bytes=1 << 17)  # its share of the bytes rounds to 0
    assert pool.max_backlog_bytes == 1
    pool.refuse_if_busy(_tx())


def test_a_senders_run_of_consecutive_nonces_is_never_evicted_for_a_newcomer():
    pool = _pool(max_txs=3)
    run = [_tx(key=BOB, nonce=n) for n in range(2)]  # will run in the next blocks
    for tx in run:
        pool.add(tx.encode(), 0)
    gapped = _tx(nonce=4)  # Alice's 0..3 are missing: it cannot run
    pool.add(gapped.encode(), 0)
    carol = PrivateKey(bytes([3]) * 32)
    pool.add(_tx(key=carol).encode(), 0)  # takes the gapped one's place
    assert gapped.tx_id not in pool and all(tx.tx_id in pool for tx in run)
    assert _code(pool, _tx(key=PrivateKey(bytes([4]) * 32)).encode()) == "mempool_full"
    assert all(tx.tx_id in pool for tx in run) and len(pool) == 3


def test_a_flood_into_a_full_pool_of_runnable_transactions_is_refused_without_rescanning_it():
    reads = []

    def next_nonce(sender):
        reads.append(sender)
        return 0

    pool = Mempool(CHAIN, next_nonce=next_nonce, max_txs=20)
    keys = [PrivateKey(bytes([10 + i]) * 32) for i in range(5)]
    for key in keys:
        for n in range(4):  # runs from each sender's next nonce: nothing may be evicted
            pool.add(_tx(key=key, nonce=n).encode(), 0)
    newcomers = [PrivateKey(bytes([40 + i]) * 32) for i in range(3)]
    assert _code(pool, _tx(key=newcomers[0]).encode()) == "mempool_full"
    scanned = len(reads)
    for key in newcomers[1:]:
        assert _code(pool, _tx(key=key).encode()) == "mempool_full"
    # each later refusal read only its own sender's nonce (the admission check), not the pool's
    assert reads[scanned:] == [_tx(key=key).sender for key in newcomers[1:]]
    pool.remove_committed([_tx(key=keys[0], nonce=0).tx_id], 1)  # the pool changed: room again
    pool.add(_tx(key=newcomers[1]).encode(), 1)
    assert len(pool) == 20
