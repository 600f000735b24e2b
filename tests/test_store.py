"""The LMDB store: atomic blocks, speculative states, identity, full maps, crashes.

The crash test kills a writer process (``tests/store_crash_writer.py``) with SIGKILL at
seeded random moments and checks, after every kill, that the store is at a committed
height with exactly that height's state, tree, block and index. The default run does
~40 kills; a longer soak::

    GRIDLEDGER_CRASH_ROUNDS=1000 .venv/bin/pytest tests/test_store.py -k crash
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import store_crash_writer as writer

from ledger.state import EMPTY, compute_root, verify_proof
from ledger.store import PreparedState, Store, StoreError, StoreFullError

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
    heights = []
    for _ in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, script, path, str(seed), str(REPO)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0.15, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        with Store.open(path, writer.CHAIN_ID) as s:
            height = s.height
            heights.append(height)
            if height is None:
                continue
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
    # The kills landed at many different heights, so the check covered real progress.
    assert len({h for h in heights if h is not None}) >= rounds // 2
