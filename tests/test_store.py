"""The LMDB store: atomic blocks, speculative states, identity, full maps, crashes.

The crash test kills a writer process (``tests/store_crash_writer.py``) with SIGKILL at
seeded random moments and checks, after every kill, that the store is at a committed
height with exactly that height's state, tree, block and index. The default run does
~40 kills; a longer soak::

    GRIDLEDGER_CRASH_ROUNDS=1000 .venv/bin/pytest tests/test_store.py -k crash
"""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import store_crash_writer as writer

from ledger.state import EMPTY, StateProof, compute_root, value_hash, verify_proof
from ledger.state_db import BIG_RECORD, big_record
from ledger.state_tree import MAX_INLINE_VALUE, tree_path
from ledger.store import Committer, PreparedState, Store, StoreError, StoreFullError

REPO = Path(__file__).resolve().parent.parent
CHAIN = "ch/test"


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "store"), CHAIN, genesis_hash=b"g" * 32)
    yield s
    s.close()


def apply(
    store: Store, height: int, writes, parent: PreparedState | None = None, txs=()
) -> PreparedState:
    prepared = store.prepare_state(writes, parent=parent)
    store.apply_block(
        height, bytes([height % 256]) * 32, b"block %d" % height, b"cert %d" % height, prepared, txs
    )
    return prepared


def check_consistent(store: Store) -> None:
    """The stored root, the tree's root and the root recomputed from the state agree."""
    root = compute_root(store.iter_state())
    assert store.state_root == root == store.tree_root()


def test_apply_block_commits_state_tree_block_and_index_together(store):
    assert store.height is None and store.state_root == EMPTY
    txs = [(b"t" * 32, b"receipt-0"), (b"u" * 32, b"receipt-1")]
    prepared = apply(store, 0, {b"a": b"1", b"b": b"2"}, txs=txs)
    assert store.head() == (0, prepared.root)
    assert prepared.root == compute_root([(b"a", b"1"), (b"b", b"2")])
    assert store.get(b"a") == b"1" and store.get(b"zz") is None
    assert store.block(0) == b"block 0" and store.block_hash(0) == bytes(32)
    assert store.certificate(0) == b"cert 0"
    assert store.tx_location(b"u" * 32) == (0, 1, b"receipt-1")
    assert store.tx_location(b"v" * 32) is None
    apply(store, 1, {b"a": None, b"c": b"3"})
    assert store.height == 1
    assert dict(store.iter_state()) == {b"b": b"2", b"c": b"3"}
    check_consistent(store)


def test_prove_returns_value_proof_height_and_root_from_one_snapshot(store):
    apply(store, 0, {b"k%d" % i: b"v%d" % i for i in range(300)})
    read = store.prove(b"k5")
    assert (read.value, read.height, read.state_root) == (b"v5", 0, store.state_root)
    assert verify_proof(read.state_root, b"k5", b"v5", read.proof)
    missing = store.prove(b"nope")
    assert missing.value is None and verify_proof(missing.state_root, b"nope", None, missing.proof)


def test_prepared_states_pipeline_on_uncommitted_parents(store):
    apply(store, 0, {b"a": b"1"})
    first = store.prepare_state({b"b": b"2", b"a": b"9"})
    second = store.prepare_state({b"c": b"3", b"b": None}, parent=first)
    assert store.get(b"b", at=second) is None and store.get(b"a", at=second) == b"9"
    assert second.root == compute_root([(b"a", b"9"), (b"c", b"3")])
    assert store.state_root == compute_root([(b"a", b"1")])  # nothing written yet
    with pytest.raises(StoreError, match="parent .* not applied"):
        store.apply_block(1, bytes(32), b"b", None, second)
    store.apply_block(1, bytes(32), b"b1", None, first)
    store.apply_block(2, bytes(32), b"b2", None, second)
    assert store.state_root == second.root
    check_consistent(store)


def test_a_prepared_state_of_another_base_is_refused(store):
    apply(store, 0, {b"a": b"1"})
    ours = store.prepare_state({b"x": b"1"})
    theirs = store.prepare_state({b"y": b"2"})
    store.apply_block(1, bytes(32), b"b1", None, ours)
    with pytest.raises(StoreError, match="another state"):
        store.apply_block(2, bytes(32), b"b2", None, theirs)
    with pytest.raises(StoreError, match="already applied"):
        store.apply_block(2, bytes(32), b"b2", None, ours)
    assert store.height == 1 and store.get(b"y") is None
    check_consistent(store)


def test_discarding_a_prepared_state_changes_nothing(store):
    apply(store, 0, {b"a": b"1"})
    before = (store.head(), dict(store.iter_state()))
    for i in range(5):
        store.prepare_state({b"a": None, b"n%d" % i: b"x"})
    assert (store.head(), dict(store.iter_state())) == before
    apply(store, 1, {b"b": b"2"})
    check_consistent(store)


def test_block_heights_must_follow_the_committed_height(store):
    apply(store, 0, {b"a": b"1"})
    with pytest.raises(StoreError, match="does not follow"):
        apply(store, 2, {b"a": b"2"})
    assert store.height == 0 and store.get(b"a") == b"1"


def test_an_already_indexed_transaction_is_refused_and_nothing_is_written(store):
    apply(store, 0, {b"a": b"1"}, txs=[(b"t" * 32, b"r")])
    with pytest.raises(StoreError, match="already indexed"):
        apply(store, 1, {b"a": b"2"}, txs=[(b"s" * 32, b"r"), (b"t" * 32, b"r")])
    assert store.height == 0 and store.get(b"a") == b"1" and store.tx_location(b"s" * 32) is None
    check_consistent(store)


def test_bad_writes_are_refused_with_a_clear_error(store):
    with pytest.raises(StoreError, match="state keys"):
        store.prepare_state({b"": b"x"})
    with pytest.raises(StoreError, match="state keys"):
        store.prepare_state({b"k" * 600: b"x"})
    with pytest.raises(StoreError, match="state values"):
        store.prepare_state({b"k": 5})


def test_a_store_of_another_chain_or_genesis_is_refused(tmp_path):
    path = str(tmp_path / "s")
    Store.open(path, "ch/zurich", genesis_hash=b"1" * 32).close()
    with pytest.raises(StoreError, match="belongs to chain 'ch/zurich'"):
        Store.open(path, "ch/bern")
    with pytest.raises(StoreError, match="another genesis"):
        Store.open(path, "ch/zurich", genesis_hash=b"2" * 32)
    with Store.open(path, "ch/zurich") as s:
        assert s.genesis_hash == b"1" * 32 and s.chain_id == "ch/zurich"


def test_consensus_records_are_durable_and_deletable(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path, CHAIN) as s:
        s.put_records([(b"view", b"3"), (b"vote/5", b"v"), (b"old", b"x")])
        s.put_records([(b"old", None)])
    with Store.open(path, CHAIN) as s:
        assert s.records() == {b"view": b"3", b"vote/5": b"v"}


def test_checkpoint_certificates_are_kept_by_height(store):
    apply(store, 0, {b"a": b"1"})
    store.put_checkpoint(0, b"bls-aggregate")
    assert store.checkpoint(0) == b"bls-aggregate" and store.checkpoint(1) is None
    assert store.checkpoint_heights() == [0]


def test_install_snapshot_switches_only_to_the_expected_root(store):
    apply(store, 0, {b"old": b"x"})
    snapshot = [(b"k%d" % i, b"v%d" % i) for i in range(1000)]
    with pytest.raises(StoreError, match="not the expected"):
        store.install_snapshot(
            50, bytes(32), b"b50", b"c50", snapshot, expected_root=bytes(range(32))
        )
    assert store.height == 0 and store.get(b"old") == b"x"
    root = compute_root(snapshot)
    store.install_snapshot(50, bytes(32), b"b50", b"c50", snapshot, expected_root=root)
    assert store.head() == (50, root) and store.get(b"old") is None
    check_consistent(store)
    read = store.prove(b"k7")
    assert verify_proof(root, b"k7", b"v7", read.proof)
    apply(store, 51, {b"k7": None})
    check_consistent(store)


def test_a_full_map_raises_store_full_error_and_keeps_the_last_committed_height(tmp_path):
    path = str(tmp_path / "s")
    rng = random.Random(3)
    s = Store.open(path, CHAIN, map_size=1 << 20)
    height = -1
    with pytest.raises(StoreFullError, match=r"Store.grow\(new_size\)") as info:
        for height in range(1000):  # noqa: B007
            apply(s, height, {rng.randbytes(8): rng.randbytes(3000) for _ in range(20)})
    assert "GRIDLEDGER_STORE_MAP_SIZE" in str(info.value)
    assert s.height == height - 1 >= 0
    check_consistent(s)
    s.grow(8 << 20)
    apply(s, height, {b"after": b"growing"})
    check_consistent(s)
    s.close()
    with Store.open(path, CHAIN, map_size=8 << 20) as s:
        assert s.height == height and s.get(b"after") == b"growing"
        check_consistent(s)


def test_long_values_are_read_proven_and_iterated_like_short_ones(store):
    long_value = bytes(range(256)) * 5
    assert len(long_value) > MAX_INLINE_VALUE
    apply(store, 0, {b"long": long_value})
    absent = store.prove(b"other")  # the other leaf on its path holds the long value
    assert StateProof.decode(absent.proof).other == (tree_path(b"long"), value_hash(long_value))
    assert verify_proof(absent.state_root, b"other", None, absent.proof)
    writes = {b"k%d" % i: b"v%d" % i for i in range(500)}
    apply(store, 1, writes)
    assert store.get(b"long") == long_value
    read = store.prove(b"long")
    assert read.value == long_value and verify_proof(read.state_root, b"long", long_value, read.proof)
    assert dict(store.iter_state()) == writes | {b"long": long_value}
    apply(store, 2, {b"long": b"short now"})
    assert store.get(b"long") == b"short now"
    with store._env.begin() as txn:
        assert txn.stat(store._state._values)["entries"] == 0
    check_consistent(store)


def chunk_keys(store: Store) -> tuple[set[bytes], set[bytes]]:
    with store._env.begin() as txn:
        return tuple(
            set(txn.cursor(db=db).iternext(values=False))
            for db in (store._state._tree, store._state._small)
        )


def test_the_big_record_threshold_is_where_lmdb_starts_overflow_pages(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=1)
    db = env.open_db(b"x")
    assert big_record(env.stat()["psize"]) == BIG_RECORD or env.stat()["psize"] != 4096
    big = big_record(env.stat()["psize"])
    with env.begin(write=True) as txn:
        txn.put(b"k", bytes(big - 1), db=db)  # shortest key: still on its page
        assert txn.stat(db)["overflow_pages"] == 0
        for key in (b"k", b"k" * 32):
            txn.put(key, bytes(big), db=db)
        assert txn.stat(db)["overflow_pages"] == 2
    env.close()


def test_a_chunk_moves_between_record_sizes_without_leaving_a_copy(store):
    apply(store, 0, {b"a": bytes(900)})
    big, small = chunk_keys(store)
    assert small == {b"\x00"} and not big
    apply(store, 1, {b"b": bytes(900), b"c": bytes(900)})  # the root chunk outgrows BIG_RECORD
    big, small = chunk_keys(store)
    assert big == {b"\x00"} and not small
    with store._env.begin() as txn:
        assert len(txn.get(b"\x00", db=store._state._tree)) >= BIG_RECORD
    apply(store, 2, {b"b": None, b"c": None})
    assert chunk_keys(store) == (set(), {b"\x00"})
    check_consistent(store)


def test_every_chunk_record_lives_in_the_database_its_length_picks(store):
    # The writer measures a record's bitmaps only when its body is within their length
    # of BIG_RECORD. Two keys whose paths share two bytes and then go on with bytes 0xfe
    # and 0xff sit at the last positions of a depth-2 chunk's bottom row: its bitmaps
    # are 64 bytes each, and stepping one value's length moves the record across the
    # limit both ways, sometimes by its bitmaps alone.
    seen: dict[bytes, bytes] = {}
    for i in range(1_000_000):
        key = b"deep%d" % i
        path = tree_path(key)
        if path[2] >> 1 != 0x7F:
            continue
        other = seen.get(path[:2] + bytes([path[2] ^ 1]))
        if other is not None:
            break
        seen[path[:3]] = key
    rng = random.Random(5)
    apply(store, 0, {other: bytes(800)})
    sizes = set()
    for height in range(1, 80):
        apply(store, height, {key: bytes(rng.randrange(550, 1000))})
        with store._env.begin() as txn:
            for db, is_big in ((store._state._tree, True), (store._state._small, False)):
                for ckey, record in txn.cursor(db=db):
                    assert (len(record) >= BIG_RECORD) is is_big, (height, ckey, len(record))
                    if ckey[-1] == 2:
                        sizes.add(len(record) - BIG_RECORD)
        big, small = chunk_keys(store)
        assert not big & small
    assert min(sizes) < -100 and max(sizes) >= 0 and any(0 <= d < 60 for d in sizes)
    check_consistent(store)


def test_iter_state_resumes_from_a_tree_position(store):
    state = {b"k%d" % i: b"v%d" % i for i in range(2000)}
    apply(store, 0, state)
    ordered = sorted(state, key=tree_path)
    assert [k for k, _ in store.iter_state()] == ordered
    resume = (int.from_bytes(tree_path(ordered[999]), "big") + 1).to_bytes(32, "big")
    assert [k for k, _ in store.iter_state(resume)] == ordered[1000:]


def test_a_committer_thread_applies_while_the_next_block_is_prepared_and_read(tmp_path):
    # The threading contract: block N commits in another thread while this one prepares
    # N + 1 on top of it, reads through it, and proves committed values.
    store = Store.open(str(tmp_path / "s"), CHAIN)
    rng = random.Random(5)
    model: dict[bytes, bytes] = {}
    keys = [b"key%d" % i for i in range(3000)]
    with ThreadPoolExecutor(max_workers=1) as committer:
        parent = None
        pending = None
        for height in range(25):
            writes = {rng.choice(keys): rng.randbytes(rng.randrange(1, 80)) for _ in range(800)}
            for key in rng.sample(keys, 20):
                writes[key] = None
            prepared = store.prepare_state(writes, parent=parent)
            model.update(writes)
            for key in rng.sample(keys, 50):
                assert store.get(key, at=prepared) == model.get(key)
            while pending is not None and not pending.done():
                read = store.prove(rng.choice(keys))  # a committed snapshot, never a mix
                assert verify_proof(read.state_root, read.key, read.value, read.proof)
            if pending is not None:
                pending.result()
            pending = committer.submit(
                store.apply_block, height, bytes(32), b"b%d" % height, None, prepared
            )
            parent = prepared
        pending.result()
    model = {k: v for k, v in model.items() if v is not None}
    assert dict(store.iter_state()) == model
    assert store.state_root == compute_root(model.items()) == parent.root
    check_consistent(store)
    store.close()


def test_the_committer_applies_blocks_in_order_each_durable_when_its_future_completes(tmp_path):
    path = str(tmp_path / "s")
    store = Store.open(path, CHAIN)
    model: dict[bytes, bytes] = {}
    with Committer(store) as committer:
        parent = None
        futures = []
        for height in range(12):
            writes = {b"k%d" % (height * 7 + i): b"v%d" % height for i in range(300)}
            model.update(writes)
            prepared = store.prepare_state(writes, parent=parent)
            futures.append(committer.apply_block(height, bytes(32), b"b%d" % height, None, prepared))
            parent = prepared
        futures[-1].result()
        assert all(f.done() and f.exception() is None for f in futures)
    store.close()
    with Store.open(path, CHAIN) as again:  # durable: a fresh environment sees it all
        assert again.height == 11 and dict(again.iter_state()) == model
        check_consistent(again)


def test_a_failed_block_fails_its_future_and_its_children_in_the_committer(store):
    apply(store, 0, {b"a": b"1"})
    with Committer(store) as committer:
        bad = store.prepare_state({b"b": b"2"})
        child = store.prepare_state({b"c": b"3"}, parent=bad)
        first = committer.apply_block(5, bytes(32), b"b5", None, bad)  # height 5 does not follow 0
        second = committer.apply_block(6, bytes(32), b"b6", None, child)
        with pytest.raises(StoreError, match="does not follow"):
            first.result()
        with pytest.raises(StoreError, match="not applied yet"):
            second.result()
    assert store.height == 0 and store.get(b"b") is None
    check_consistent(store)


def test_a_reader_sees_one_state_through_its_prepared_parents_while_they_commit(store):
    apply(store, 0, {b"a": b"1", b"b": b"2"})
    first = store.prepare_state({b"a": b"9"})
    second = store.prepare_state({b"b": None, b"c": b"3"}, parent=first)
    with store.reader(at=second) as view:
        store.apply_block(1, bytes(32), b"b1", None, first)  # committed under the reader
        assert (view.get(b"a"), view.get(b"b"), view.get(b"c")) == (b"9", None, b"3")
        assert view.get(b"zz") is None
    with store.reader() as view:
        assert (view.get(b"a"), view.get(b"b"), view.get(b"c")) == (b"9", b"2", None)
    stale = store.prepare_state({b"d": b"4"})
    stale_child = store.prepare_state({b"e": b"5"}, parent=stale)
    store.apply_block(2, bytes(32), b"b2", None, second)
    with pytest.raises(StoreError, match="not on the committed chain"):
        store.reader(at=stale_child)


def test_an_applied_prepared_state_lets_go_of_its_parents(store):
    apply(store, 0, {b"a": b"1"})
    first = store.prepare_state({b"b": b"2"})
    second = store.prepare_state({b"c": b"3"}, parent=first)
    store.apply_block(1, bytes(32), b"b1", None, first)
    store.apply_block(2, bytes(32), b"b2", None, second)
    assert second.parent is None
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # a chain of applied states does not grow without bound


def test_preparing_on_a_chain_another_block_replaced_is_refused(store):
    apply(store, 0, {b"a": b"1"})
    ours = store.prepare_state({b"x": b"1"})
    child = store.prepare_state({b"y": b"2"}, parent=ours)
    theirs = store.prepare_state({b"z": b"3"})
    store.apply_block(1, bytes(32), b"b1", None, theirs)
    with pytest.raises(StoreError, match="not on the committed chain"):
        store.prepare_state({b"w": b"4"}, parent=child)
    check_consistent(store)


def expected_at(seed: int, height: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for h in range(height + 1):
        for key, value in writer.block_writes(seed, h).items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
    return state


@pytest.mark.slow
def test_crash_safe_store_is_always_at_a_committed_height_after_sigkill(tmp_path):
    rounds = int(os.environ.get("GRIDLEDGER_CRASH_ROUNDS", "40"))
    seed = 11
    rng = random.Random(seed)
    path = str(tmp_path / "crash")
    script = str(Path(writer.__file__))
    last = -1
    for _ in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, script, path, str(seed), str(REPO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Let the writer commit past the last height seen, then kill it at a random
        # moment (between puts, during the fsync, between blocks): every round checks
        # new progress, however loaded the machine.
        for line in proc.stdout:
            if int(line) > last:
                break
        time.sleep(rng.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        with Store.open(path, writer.CHAIN_ID) as s:
            height = s.height
            assert height is not None and height > last
            state = dict(s.iter_state())
            assert state == expected_at(seed, height)
            assert s.state_root == compute_root(state.items()) == s.tree_root()
            assert s.block(height) == writer.block_bytes(seed, height)
            assert s.block_hash(height) == writer.block_hash(seed, height)
            assert s.certificate(height) == b"cert %d" % height
            assert s.block(height + 1) is None
            assert s.meta("last") == b"%d" % height
            for i, (tx_id, receipt) in enumerate(writer.block_txs(seed, height)):
                assert s.tx_location(tx_id) == (height, i, receipt)
            for tx_id, _ in writer.block_txs(seed, height + 1):
                assert s.tx_location(tx_id) is None
        last = height
