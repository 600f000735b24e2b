"""The authenticated state tree: canonical roots, membership and absence proofs.

The stored, chunked tree (``ledger.state_tree``) is checked against the from-scratch
definition (``ledger.state.compute_root``) and against a tiny reference written here
for crafted paths (long shared prefixes, which random keys never produce).
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.state import (
    EMPTY,
    MAX_PROOF_SIZE,
    ProofError,
    StateProof,
    compute_root,
    leaf_hash,
    node_hash,
    value_hash,
    verify_proof,
)
from ledger.state_tree import (
    MAX_INLINE_VALUE,
    TreeBatch,
    decode_chunk,
    encode_chunk,
    encoded_size,
    iter_leaves,
    op,
    prove_path,
)
from ledger.statekeys import state_key, tree_path


class MemoryTree:
    """The stored tree over an in-memory record map (the store uses LMDB).

    ``path_of`` places keys (``tree_path`` unless a test crafts paths).
    """

    def __init__(self, path_of=tree_path) -> None:
        self.records: dict[bytes, bytes] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.root = EMPTY
        self.path_of = path_of

    def load(self, key: bytes):
        raw = self.records.get(key)
        return None if raw is None else decode_chunk(raw)

    def apply_ops(self, ops) -> bytes:
        batch = TreeBatch(self.load, self.path_of)
        self.root = batch.apply(sorted(ops, key=lambda o: o[0]))
        for key, chunk in batch.writes.items():
            if chunk is None:
                self.records.pop(key, None)
            else:
                # Compact records at the top, as the store writes them.
                self.records[key] = encode_chunk(chunk, compact=key[-1] <= 1)
        for path, value in batch.blobs.items():
            if value is None:
                self.blobs.pop(path, None)
            else:
                self.blobs[path] = value
        return self.root

    def write(self, writes: dict[bytes, bytes | None]) -> bytes:
        return self.apply_ops([op(k, v, self.path_of(k)) for k, v in writes.items()])

    def chunks(self) -> dict:
        """The stored records (canonical bytes) by key."""
        return dict(self.records)

    def state(self) -> dict[bytes, bytes]:
        return {
            key: self.blobs[self.path_of(key)] if outside else value
            for key, value, outside in iter_leaves(self.load, b"", self.path_of)
        }

    def proof(self, key: bytes) -> bytes:
        leaf, _, proof = prove_path(self.load, self.path_of(key))
        if leaf is not None and leaf[0] != key:
            path = self.path_of(leaf[0])
            value = self.blobs[path] if leaf[2] else leaf[1]
            proof = StateProof(proof.depth, proof.bitmap, proof.siblings, (path, value_hash(value)))
        return proof.encode()


def reference_root(leaves: dict[bytes, bytes]) -> bytes:
    """The tree's definition over paths directly: path -> leaf hash."""
    items = sorted(leaves.items())

    def sub(group, depth):
        if not group:
            return EMPTY
        if len(group) == 1:
            return group[0][1]
        left = [g for g in group if not (g[0][depth // 8] >> (7 - depth % 8)) & 1]
        right = [g for g in group if (g[0][depth // 8] >> (7 - depth % 8)) & 1]
        return node_hash(sub(left, depth + 1), sub(right, depth + 1))

    return sub(items, 0)


def verify_crafted(tree: MemoryTree, path: bytes, value: bytes) -> bool:
    """verify_proof's walk for a key placed at a crafted path (verify_proof hashes real keys)."""
    proof = StateProof.decode(tree.proof(path))
    cur = leaf_hash(path, value_hash(value))
    bits = int.from_bytes(proof.bitmap, "big") >> (len(proof.bitmap) * 8 - proof.depth)
    siblings = list(proof.siblings)
    for d in range(proof.depth - 1, -1, -1):
        sib = siblings.pop() if bits & 1 else EMPTY
        bits >>= 1
        if (int.from_bytes(path, "big") >> (255 - d)) & 1:
            cur = node_hash(sib, cur)
        else:
            cur = node_hash(cur, sib)
    return cur == tree.root


keys_st = st.binary(min_size=1, max_size=12)
# Mostly short values (kept in their chunk), sometimes one longer than MAX_INLINE_VALUE
# (kept in a record of its own).
values_st = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=4).map(lambda b: b + bytes(MAX_INLINE_VALUE)),
)
state_st = st.dictionaries(keys_st, values_st, max_size=60)


@settings(max_examples=60, deadline=None)
@given(state=state_st, seed=st.integers(0, 2**32))
def test_root_is_independent_of_insertion_order_and_batching(state, seed):
    rng = random.Random(seed)
    items = list(state.items())
    rng.shuffle(items)
    tree = MemoryTree()
    i = 0
    while i < len(items):
        n = rng.randrange(1, 8)
        tree.write(dict(items[i : i + n]))
        i += n
    assert tree.root == compute_root(state.items())
    one_batch = MemoryTree()
    one_batch.write(dict(state))
    assert one_batch.root == tree.root
    assert one_batch.chunks() == tree.chunks()  # the stored layout is canonical too
    assert one_batch.blobs == tree.blobs
    assert tree.state() == state


@settings(max_examples=60, deadline=None)
@given(state=state_st, extra=state_st, seed=st.integers(0, 2**32))
def test_insert_then_delete_restores_the_earlier_root(state, extra, seed):
    tree = MemoryTree()
    tree.write(dict(state))
    before = tree.root
    chunks_before = tree.chunks()
    added = {k: v for k, v in extra.items() if k not in state}
    tree.write(added)
    changed = {k: v + b"!" for k, v in list(state.items())[: len(state) // 2]}
    tree.write(changed)
    tree.write({k: state[k] for k in changed} | {k: None for k in added})
    assert tree.root == before
    assert tree.chunks() == chunks_before  # deletions collapse: no stale chunks remain
    assert tree.blobs == {tree_path(k): v for k, v in state.items() if len(v) > MAX_INLINE_VALUE}


def test_deleting_every_key_gives_the_empty_root():
    tree = MemoryTree()
    state = {b"key%d" % i: b"v" for i in range(2000)}
    tree.write(state)
    tree.write(dict.fromkeys(list(state)[:1999]))
    assert tree.root == leaf_hash(tree_path(b"key1999"), value_hash(b"v"))
    tree.write({b"key1999": None})
    assert tree.root == EMPTY == compute_root([])
    assert len(tree.records) == 0 or list(tree.records) == [b"\x00"]


def test_crafted_paths_with_long_shared_prefixes_match_the_definition():
    rng = random.Random(7)
    base = rng.randbytes(32)
    paths = set()
    for shared in (0, 3, 8, 9, 15, 16, 17, 63, 64, 100, 200, 248, 250, 254, 255):
        flip = bytearray(base)
        flip[shared // 8] ^= 0x80 >> (shared % 8)
        paths.add(bytes(flip))
        paths.add(bytes(flip[:-1]) + bytes([flip[-1] ^ 1]))
    paths.add(base)
    # Each key is its own path here (SHA-256 never gives such prefixes).
    leaves: dict[bytes, bytes] = {}
    tree = MemoryTree(path_of=lambda key: key)
    for step, path in enumerate(sorted(paths, key=lambda _: rng.random())):
        value = b"%d" % step
        leaves[path] = leaf_hash(path, value_hash(value))
        tree.write({path: value})
        assert tree.root == reference_root(leaves)
    for path in paths:
        assert verify_crafted(tree, path, tree.state()[path])
    for path in sorted(paths, key=lambda _: rng.random()):
        del leaves[path]
        tree.write({path: None})
        assert tree.root == reference_root(leaves)
    assert tree.root == EMPTY


@settings(max_examples=40, deadline=None)
@given(state=state_st, absent=st.lists(keys_st, max_size=10))
def test_every_key_has_a_membership_proof_and_every_other_key_an_absence_proof(state, absent):
    tree = MemoryTree()
    tree.write(dict(state))
    for key, value in state.items():
        assert verify_proof(tree.root, key, value, tree.proof(key))
    for key in absent:
        if key not in state:
            assert verify_proof(tree.root, key, None, tree.proof(key))


@settings(max_examples=40, deadline=None)
@given(state=st.dictionaries(keys_st, values_st, min_size=1, max_size=40), other=keys_st)
def test_a_proof_never_verifies_a_wrong_value_key_or_root(state, other):
    tree = MemoryTree()
    tree.write(dict(state))
    for key, value in state.items():
        proof = tree.proof(key)
        assert not verify_proof(tree.root, key, value + b"x", proof)
        assert not verify_proof(tree.root, key, None, proof)
        if other != key:
            assert not verify_proof(tree.root, other, value, proof)
            assert not verify_proof(tree.root, other, None, proof)
        assert not verify_proof(hashlib.sha256(tree.root).digest(), key, value, proof)
    if other not in state:
        absence = tree.proof(other)
        assert not verify_proof(tree.root, other, b"", absence)
        for key in state:
            if tree_path(key)[:1] != tree_path(other)[:1]:
                assert not verify_proof(tree.root, key, None, absence)


@settings(max_examples=80, deadline=None)
@given(
    state=st.dictionaries(keys_st, values_st, min_size=2, max_size=40),
    pick=st.integers(0, 10**6),
    flip=st.integers(0, 10**6),
    bit=st.integers(0, 7),
    present=st.booleans(),
)
def test_mutated_proofs_are_refused(state, pick, flip, bit, present):
    tree = MemoryTree()
    tree.write(dict(state))
    keys = sorted(state)
    key = keys[pick % len(keys)] if present else b"\xff" * 13
    value = state.get(key)
    proof = bytearray(tree.proof(key))
    proof[flip % len(proof)] ^= 1 << bit
    try:
        assert not verify_proof(tree.root, key, value, bytes(proof))
    except ProofError:
        pass


def test_truncated_and_extended_proofs_are_refused():
    tree = MemoryTree()
    tree.write({b"k%d" % i: b"v%d" % i for i in range(500)})
    proof = tree.proof(b"k7")
    assert verify_proof(tree.root, b"k7", b"v7", proof)
    for bad in (proof[:-1], proof + b"\x00", b"", b"\x90", proof[:10]):
        with pytest.raises(ProofError):
            verify_proof(tree.root, b"k7", b"v7", bad)


def test_proof_decoding_refuses_non_canonical_forms():
    sib = hashlib.sha256(b"s").digest()
    ok = StateProof(3, bytes([0b10100000]), (sib, sib), None)
    assert StateProof.decode(ok.encode()) == ok
    bad_forms = [
        [3, bytes([0b10100001]), [sib, sib], []],  # padding bit set
        [3, bytes([0b10100000]), [sib], []],  # fewer siblings than marked
        [3, bytes([0b11100000]), [sib, EMPTY, sib], []],  # an empty sibling listed
        [3, b"\xa0\x00", [sib, sib], []],  # bitmap too long
        [257, bytes(33), [], []],  # deeper than a path
        [3, bytes([0b10100000]), [sib, sib[:31]], []],  # short hash
        [3, bytes([0b10100000]), [sib, sib], [sib]],  # other leaf without value hash
        [3, bytes([0b10100000]), [sib, sib]],  # missing field
        [-1, b"", [], []],
    ]
    for form in bad_forms:
        with pytest.raises(ProofError):
            StateProof.decode(codec.encode(form))
    with pytest.raises(ProofError):
        StateProof.decode(bytes(MAX_PROOF_SIZE + 1))
    with pytest.raises(ProofError):
        StateProof.decode("not bytes")  # type: ignore[arg-type]


def test_empty_and_single_key_trees():
    tree = MemoryTree()
    assert tree.write({}) == EMPTY
    assert verify_proof(EMPTY, b"anything", None, tree.proof(b"anything"))
    tree.write({b"only": b"one"})
    assert tree.root == leaf_hash(tree_path(b"only"), value_hash(b"one"))
    assert verify_proof(tree.root, b"only", b"one", tree.proof(b"only"))
    # The absent key's position is the root itself, occupied by the other leaf.
    absence = tree.proof(b"other")
    assert StateProof.decode(absence).other == (tree_path(b"only"), value_hash(b"one"))
    assert verify_proof(tree.root, b"other", None, absence)
    assert not verify_proof(tree.root, b"only", None, absence)


def test_proof_is_compact_at_scale():
    # 20,000 keys: ~15 levels. At 10^6 keys proofs are ~0.75 KB (bench.state).
    tree = MemoryTree()
    state = {
        state_key("energy", "balance", [i.to_bytes(20, "big")]): b"%d" % i for i in range(20_000)
    }
    tree.write(state)
    sizes = [len(tree.proof(k)) for k in list(state)[:200]]
    assert max(sizes) < 40 * 34
    proof = StateProof.decode(tree.proof(next(iter(state))))
    assert proof.depth - len(proof.siblings) <= 3  # empty siblings are elided, not listed


def test_long_values_live_outside_their_chunk_and_follow_their_key():
    tree = MemoryTree()
    small = {b"k%d" % i: b"v%d" % i for i in range(400)}
    long_value = bytes(range(256)) * 5  # longer than MAX_INLINE_VALUE
    tree.write(small | {b"k7": long_value, b"big": long_value})
    expected = small | {b"k7": long_value, b"big": long_value}
    assert tree.root == compute_root(expected.items())
    assert tree.blobs == {tree_path(b"k7"): long_value, tree_path(b"big"): long_value}
    assert not any(long_value in raw for raw in tree.records.values())
    # Keys move between chunks as others arrive: a long value's record stays keyed by path.
    tree.write({b"n%d" % i: b"x" for i in range(2000)})
    expected |= {b"n%d" % i: b"x" for i in range(2000)}
    assert tree.state() == expected
    assert verify_proof(tree.root, b"big", long_value, tree.proof(b"big"))
    # Short again, then deleted: its record goes.
    tree.write({b"k7": b"short", b"big": None})
    expected |= {b"k7": b"short"}
    del expected[b"big"]
    assert tree.blobs == {}
    assert tree.state() == expected
    assert tree.root == compute_root(expected.items())


def test_iteration_is_in_tree_order_from_any_position():
    tree = MemoryTree()
    state = {b"key%d" % i: b"%d" % i for i in range(3000)}
    tree.write(state)
    ordered = sorted(state, key=tree_path)
    assert [k for k, _, _ in iter_leaves(tree.load)] == ordered
    for cut in (1, 17, 1500, 2999):
        start = tree_path(ordered[cut])
        assert [k for k, _, _ in iter_leaves(tree.load, start)] == ordered[cut:]
        after = (int.from_bytes(start, "big") + 1).to_bytes(32, "big")
        assert [k for k, _, _ in iter_leaves(tree.load, after)] == ordered[cut + 1 :]
    assert list(iter_leaves(tree.load, b"\xff" * 32)) == []
    assert list(iter_leaves(MemoryTree().load)) == []


@settings(max_examples=40, deadline=None)
@given(state=st.dictionaries(keys_st, values_st, min_size=1, max_size=600))
def test_compact_records_decode_to_the_same_chunk(state):
    tree = MemoryTree()
    tree.write(dict(state))
    for raw in tree.records.values():
        chunk = decode_chunk(raw)
        for compact in (False, True):
            again = decode_chunk(encode_chunk(chunk, compact))
            assert again.items() == chunk.items()
            assert len(encode_chunk(chunk, compact)) == encoded_size(chunk, compact)
