"""The fast paths of the state tree write exactly the records the format defines.

The batch code has shortcuts for the common cases (a single write walking up a chunk,
a new leaf inserted in place, two keys parting below a former leaf, a chunk decoded
from a database buffer). Each must leave the store byte for byte where the record
format says it should be. The reference here
builds every record from scratch out of the set of keys, following the format in
``ledger.state_chunk`` directly (positions as dicts, no shortcuts), and every batch's
stored records and root are compared with it.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from test_state import MemoryTree, reference_root

from ledger.state import EMPTY, leaf_hash, node_hash, value_hash
from ledger.state_chunk import CHUNK_BITS, DEPTH_BYTE, FULL, MAX_INLINE_VALUE, SLOT0
from ledger.state_tree import decode_chunk, encode_chunk


def _bit(path: bytes, depth: int) -> int:
    return (path[depth // 8] >> (7 - depth % 8)) & 1


def reference_records(state: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Every chunk record of the state ``{path: value}`` (keys are their own paths), from scratch."""
    records: dict[bytes, bytes] = {}

    def chunk(k: int, prefix: bytes, items: list[bytes]) -> bytes:
        """Build the chunk at depth ``k`` holding ``items`` (2 or more, or 1 at the root); return its root hash."""
        hashes: dict[int, bytes] = {}
        leaves: dict[int, bytes] = {}

        def place(pos: int, depth: int, group: list[bytes]) -> bytes:
            if len(group) == 1:
                path = group[0]
                h = leaf_hash(path, value_hash(state[path]))
                leaves[pos] = path
            elif pos >= SLOT0:
                h = chunk(k + 1, group[0][: k + 1], group)
            else:
                left = [p for p in group if not _bit(p, depth)]
                right = [p for p in group if _bit(p, depth)]
                lh = place(pos * 2, depth + 1, left) if left else EMPTY
                rh = place(pos * 2 + 1, depth + 1, right) if right else EMPTY
                h = node_hash(lh, rh)
            hashes[pos] = h
            return h

        root = place(1, CHUNK_BITS * k, items)
        eb = sum(1 << p for p in hashes)
        lb = sum(1 << p for p in leaves)
        xb = sum(1 << p for p, path in leaves.items() if len(state[path]) > MAX_INLINE_VALUE)

        def bits(n: int) -> bytes:
            return n.to_bytes((n.bit_length() + 7) // 8, "little")

        kv = []
        for p in sorted(leaves):
            value = state[leaves[p]]
            kv.append((leaves[p], b"" if len(value) > MAX_INLINE_VALUE else value))
        head = b"".join(bytes([len(bits(x))]) + bits(x) for x in (eb, lb, xb))
        if k <= 1 and eb == FULL and not lb:
            # The compact form of a full top chunk: the bottom row only.
            body = b"".join(hashes[p] for p in range(SLOT0, 2 * SLOT0))
            head = bytes([0x80 | head[0]]) + head[1:]
        else:
            body = b"".join(hashes[p] for p in sorted(hashes))
            body += b"".join(struct.pack("<II", len(key), len(v)) for key, v in kv)
            body += b"".join(key + v for key, v in kv)
        records[prefix + DEPTH_BYTE[k]] = head + body
        return root

    if state:
        chunk(0, b"", sorted(state))
    return records


# Paths with long shared prefixes: the pairs part at every depth, chunk edges included.
_BASE = random.Random(11).randbytes(32)


@st.composite
def crafted_paths(draw) -> bytes:
    shared = draw(st.sampled_from([0, 1, 6, 7, 8, 9, 14, 15, 16, 17, 23, 24, 25, 31, 32, 40, 100, 247, 248, 255]))
    tail = draw(st.binary(min_size=32, max_size=32))
    path = bytearray(_BASE)
    path[shared // 8] ^= 0x80 >> (shared % 8)
    # Keep the shared prefix, then anything below the parting bit.
    for i in range(shared + 1, 256):
        if _bit(tail, i):
            path[i // 8] ^= 0x80 >> (i % 8)
    return bytes(path)


paths_st = st.one_of(crafted_paths(), st.binary(min_size=32, max_size=32))
values_st = st.one_of(
    st.binary(max_size=24),
    st.binary(max_size=3).map(lambda b: b + bytes(MAX_INLINE_VALUE)),
)
batches_st = st.lists(
    st.dictionaries(paths_st, st.one_of(st.none(), values_st), max_size=30), min_size=1, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(batches=batches_st)
def test_incremental_batches_store_exactly_the_records_of_the_state_built_from_scratch(batches):
    tree = MemoryTree(path_of=lambda key: key)
    state: dict[bytes, bytes] = {}
    for writes in batches:
        tree.write(writes)
        for path, value in writes.items():
            if value is None:
                state.pop(path, None)
            else:
                state[path] = value
        assert tree.root == reference_root(
            {p: leaf_hash(p, value_hash(v)) for p, v in state.items()}
        )
        assert tree.records == reference_records(state)
        assert tree.blobs == {p: v for p, v in state.items() if len(v) > MAX_INLINE_VALUE}


@settings(max_examples=60, deadline=None)
@given(writes=st.dictionaries(paths_st, values_st, min_size=1, max_size=40), new=paths_st, value=values_st)
def test_a_single_write_after_a_batch_gives_the_records_of_its_state(writes, new, value):
    # One write in a batch takes the single-write walk (and, onto another key's leaf,
    # the two-key split): the paths the bulk of a large state's blocks take.
    tree = MemoryTree(path_of=lambda key: key)
    tree.write(writes)
    tree.write({new: value})
    state = dict(writes)
    state[new] = value
    assert tree.records == reference_records(state)


def _flip(path: bytes, bit: int, rng: random.Random) -> bytes:
    """A path equal to ``path`` before ``bit``, different at it, random after it."""
    out = bytearray(path)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    for i in range(bit + 1, 256):
        if rng.random() < 0.5:
            out[i // 8] ^= 0x80 >> (i % 8)
    return bytes(out)


def test_a_new_key_parts_from_the_leaf_it_lands_on_at_every_depth_of_three_chunk_levels():
    # A write landing on another key's leaf places both keys in one step: every depth at
    # which the two paths can part (inside the leaf's chunk, and past its bottom row into
    # a new child chunk), below leaves in chunks at depths 0, 1 and 2, with values kept in
    # the chunk, empty, and stored outside it.
    rng = random.Random(11)
    values = [b"v", b"", b"x" + bytes(MAX_INLINE_VALUE)]
    for leaf_depth in (None, 3, 8, 12, 16, 21):  # where the first key's leaf sits (None: alone)
        first = rng.randbytes(32)
        base = {first: b"A"}
        if leaf_depth is not None:
            base[_flip(first, leaf_depth - 1, rng)] = b"B"  # pushes the first key's leaf down
        start = 0 if leaf_depth is None else leaf_depth
        for bit in range(start, min(start + 10, 256)):
            new = _flip(first, bit, rng)
            for old_value in values:
                value = values[bit % 3]
                tree = MemoryTree(path_of=lambda key: key)
                state = dict(base)
                state[first] = old_value
                tree.write(state)
                tree.write({new: value})
                state[new] = value
                assert tree.records == reference_records(state), (leaf_depth, bit)
                assert tree.root == reference_root({p: leaf_hash(p, value_hash(v)) for p, v in state.items()})
                assert tree.blobs == {p: v for p, v in state.items() if len(v) > MAX_INLINE_VALUE}


def test_a_chunk_decodes_the_same_from_bytes_and_from_a_database_buffer():
    rng = random.Random(3)
    tree = MemoryTree()
    tree.write({rng.randbytes(8): rng.randbytes(rng.randrange(60)) for _ in range(3000)})
    for key, raw in tree.records.items():
        from_bytes = decode_chunk(raw)
        from_buffer = decode_chunk(memoryview(bytearray(raw)))
        assert from_buffer.items() == from_bytes.items()
        assert encode_chunk(from_buffer, key[-1] <= 1) == raw
