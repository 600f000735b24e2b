"""RFC 6962 Merkle roots and inclusion proofs."""

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from ledger.merkle import EMPTY_ROOT, inclusion_proof, merkle_root, verify_inclusion


def _reference_root(items):
    # RFC 6962 section 2.1, written recursively as the RFC states it.
    if not items:
        return hashlib.sha256(b"").digest()
    if len(items) == 1:
        return hashlib.sha256(b"\x00" + items[0]).digest()
    k = 1
    while k * 2 < len(items):
        k *= 2
    return hashlib.sha256(b"\x01" + _reference_root(items[:k]) + _reference_root(items[k:])).digest()


@given(st.lists(st.binary(max_size=20), max_size=40))
def test_merkle_root_matches_rfc6962(items):
    assert merkle_root(items) == _reference_root(items)


@given(st.lists(st.binary(max_size=10), min_size=1, max_size=40), st.data())
def test_every_item_has_an_inclusion_proof(items, data):
    i = data.draw(st.integers(0, len(items) - 1))
    root = merkle_root(items)
    proof = inclusion_proof(items, i)
    assert verify_inclusion(root, items[i], i, len(items), proof)
    assert not verify_inclusion(root, items[i] + b"x", i, len(items), proof)
    if len(items) > 1:
        assert not verify_inclusion(root, items[i], (i + 1) % len(items), len(items), proof) or items[i] == items[(i + 1) % len(items)]


def test_empty_list_has_the_empty_root():
    assert merkle_root([]) == EMPTY_ROOT


def test_leaf_cannot_pose_as_interior_node():
    a, b = b"a", b"b"
    interior = merkle_root([a, b])
    assert merkle_root([interior]) != interior
