"""How the state and its tree (:mod:`ledger.state`) are stored and updated in batches.

The binary tree is stored in **chunks** (as Jellyfish Merkle trees do): a chunk is the
binary subtree of height ``CHUNK_BITS`` below a chunk-aligned position, stored as one
record keyed by that position. Inside a chunk the binary positions are numbered as a
heap (1 is the chunk's root, ``2p`` and ``2p + 1`` the children of ``p``, and
``SLOT0 .. 2*SLOT0 - 1`` the bottom row, each of which is the root of a child chunk when
it holds two or more keys). A chunk holds the hash of every non-empty position and, for
every leaf, the key and its value: **the state lives in the tree's chunks**. A position
that exists and holds no leaf is an internal node (or, on the bottom row, a child
chunk); positions below a leaf do not exist. Only the current version of each chunk is
kept.

**Why chunks, and why the values inside them** (measured at 10^6 keys, blocks of
10,000 random writes, LMDB with fsync; details in :mod:`ledger.state_db`): a batch
touches ~75,000 binary nodes but only ~10,000 chunks, so the per-record costs (LMDB
lookups, puts, dirty pages, decoding) are paid per chunk, while the hashing stays binary
and proofs stay log2(N) siblings. A durable commit costs what it writes, in whole 4 KB
pages: with the values in a table of their own (the first version), an update dirtied
the value's page and its chunk's page, ~85 MB per block; with the values in the chunk,
an update rewrites one record (~2.9 KB at 10^6 keys: ~15 keys), ~51 MB per block, and
half as many puts. The price is a read: the key's path, the cached top chunks, and one
bottom chunk read in place (:func:`lookup`): about twice a plain key lookup. Values
longer than ``MAX_INLINE_VALUE`` are kept in a record of their own (keyed by path) so
that a large value is not rewritten with its neighbours; the chunk then holds the key
and a flag. ``CHUNK_BITS = 8``: 4 would double the records per update.

The chunk's representation, record format and edits are in :mod:`ledger.state_chunk`.
At 10^6 keys the 257 top chunks are full (all 511 positions, no leaves): there the slot
of ``p`` is ``p - 1``, the two children of a node are one 64-byte slice, and the touched
positions are rehashed level by level (:meth:`TreeBatch._update_full`). Most lower chunks
receive one write per batch: a straight walk up (:meth:`TreeBatch._update_one`), since a
write never leaves a leaf alone to hoist.

A batch (:class:`TreeBatch`) sorts the writes by path, descends once, and recomputes
each touched position once, bottom-up; structural changes (a new key landing on another
key's leaf, a deletion leaving a lone leaf to hoist) are rebuilt locally. The batch
never writes: it returns the new root, the chunks to store (``writes``) and the
separate value records to put or delete (``blobs``), which the store commits in the
block's write transaction, or discards.

The hottest loops (a write's walk up a chunk, the rehash of a full chunk, a write's path
and leaf hash) and the chunk edits have compiled twins, used where ``make`` could build
them (:mod:`ledger.state_native`): the same bytes, ~35 % less time per block.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
from operator import itemgetter

from ledger.state import EMPTY, NODE_PREFIX, StateProof
from ledger.state_chunk import (
    ANC,
    CHUNK_BITS,
    DEPTH_BYTE,
    FULL,
    KV,
    LOW,
    MASK,
    MAX_INLINE_VALUE,
    ROOT_CHUNK,
    SLOT0,
    U32,
    WALK,
    WALK_BITS,
    Chunk,
    chunk_key,
    copy_chunk,
    cut_leaf,
    decode_chunk,
    del_leaf,
    delete_position,
    encode_chunk,
    encoded_size,
    landing,
    lookup,
    new_chunk,
    payload,
    set_hash,
    set_leaf,
)
from ledger.state_native import leaf_hash, rehash_full, walk_up
from ledger.statekeys import tree_path

__all__ = [
    "CHUNK_BITS",
    "MAX_INLINE_VALUE",
    "ROOT_CHUNK",
    "Chunk",
    "TreeBatch",
    "chunk_key",
    "copy_chunk",
    "decode_chunk",
    "encode_chunk",
    "encoded_size",
    "find_leaf",
    "iter_leaves",
    "lookup",
    "op",
    "prove_path",
    "tree_path",
]

_sha256 = hashlib.sha256
_NODE_EMPTY = NODE_PREFIX + EMPTY
_PATH_INT = itemgetter(1)
# A batch touching more keys than this in one chunk splits them by position with
# bisect; fewer are walked one by one (cheaper for the sparse lower chunks).
_SPLIT_THRESHOLD = 6


def op(key: bytes, value: bytes | None, path: bytes | None = None) -> tuple:
    """The tree op writing ``value`` (None: deleting) at ``key``, for :meth:`TreeBatch.apply`.

    ``(path, path as int, leaf hash | None, key, value kept in the chunk, stored outside)``,
    and for a value stored outside its chunk the value itself as a seventh field.
    """
    if path is None:
        path = tree_path(key)
    pint = int.from_bytes(path, "big")
    if value is None:
        return (path, pint, None, key, None, 0)
    lh = leaf_hash(path, value)
    if len(value) > MAX_INLINE_VALUE:
        return (path, pint, lh, key, b"", 1, value)
    return (path, pint, lh, key, value, 0)


def _item(c: Chunk, pos: int, path_of: Callable[[bytes], bytes]) -> tuple:
    """The leaf at ``pos`` as an item to place elsewhere (same shape as an op)."""
    key, value, x = payload(c, pos)
    path = path_of(key)
    return (path, int.from_bytes(path, "big"), c.get(pos), key, value, x)


# ---------------------------------------------------------------------- batches


class TreeBatch:
    """One batch of writes applied to the tree on top of a chunk source.

    ``load(key)`` returns a chunk the batch may change (a private copy, see
    :func:`copy_chunk`), or None when no such chunk exists. After :meth:`apply`,
    ``writes`` maps chunk keys to the chunks to store (None: delete the record) and
    ``blobs`` maps paths to the values to store outside their chunk (None: delete).
    ``path_of`` gives a stored key's path (:func:`tree_path`; tests place crafted paths).
    """

    __slots__ = ("load", "writes", "blobs", "path_of")

    def __init__(
        self, load: Callable[[bytes], Chunk | None], path_of: Callable[[bytes], bytes] = tree_path
    ) -> None:
        self.load = load
        self.path_of = path_of
        self.writes: dict[bytes, Chunk | None] = {}
        self.blobs: dict[bytes, bytes | None] = {}

    def apply(self, ops: list[tuple]) -> bytes:
        """Apply ``ops`` (see :func:`op`), sorted by path; return the new root."""
        root = self.load(ROOT_CHUNK)
        if root is None:
            root = new_chunk()
        if not ops:
            return root.get(1) or EMPTY
        for o in ops:
            if o[5]:
                self.blobs[o[0]] = o[6]
        pis = [o[1] for o in ops]
        h, _ = self._update(ROOT_CHUNK, 0, root, ops, pis, 0, len(ops))
        return EMPTY if h is None else h

    def _update(self, key, k, c, ops, pis, lo, hi):
        """Apply ops[lo:hi] (all below this chunk); return the chunk root's new (hash, lone leaf).

        The lone leaf is the payload of the only key left below a chunk (other than the
        root chunk), which then no longer exists: its parent takes the leaf.
        """
        if hi - lo == 1 and ops[lo][2] is not None:
            return self._update_one(key, k, c, ops[lo]), None
        old_root = c.get(1)
        shift = 256 - CHUNK_BITS * (k + 1)
        # Which positions exist is decided before any change below them, so the
        # bitmaps as they are now answer for every group of ops.
        eb = c.eb
        lb = c.lb
        if eb == FULL and not lb:
            self._update_full(k, c, ops, pis, lo, hi, shift)
        else:
            landings = []
            if hi - lo < _SPLIT_THRESHOLD:
                i = lo
                while i < hi:
                    pi = pis[i]
                    pos, child = landing(eb, lb, (pi >> shift) & MASK)
                    if child:
                        j = bisect_left(pis, ((pi >> shift) + 1) << shift, i + 1, hi)
                        self._descend(c, pos, k, ops, pis, i, j)
                    else:
                        s2 = shift + CHUNK_BITS - pos.bit_length() + 1
                        j = bisect_left(pis, ((pi >> s2) + 1) << s2, i + 1, hi)
                        self._land(c, pos, k, ops, i, j)
                    landings.append(pos)
                    i = j
            else:
                stack = [(1, lo, hi)]
                base = 256 - CHUNK_BITS * k
                while stack:
                    pos, i, j = stack.pop()
                    if (eb >> pos) & 1 and not (lb >> pos) & 1:
                        if pos >= SLOT0:
                            self._descend(c, pos, k, ops, pis, i, j)
                            landings.append(pos)
                        else:
                            s = base - pos.bit_length()
                            m = bisect_left(pis, ((pis[i] >> s) | 1) << s, i, j)
                            if m > i:
                                stack.append((pos + pos, i, m))
                            if m < j:
                                stack.append((pos + pos + 1, m, j))
                    else:
                        self._land(c, pos, k, ops, i, j)
                        landings.append(pos)
            if len(landings) == 1:
                anc = ANC[landings[0]]
            else:
                s = set()
                for pos in landings:
                    s.update(ANC[pos])
                anc = sorted(s, reverse=True)
            _rehash(c, anc)
        new_root = c.get(1)
        if k and (new_root is None or c.lb & 2):
            # At most one key is left below this chunk: it no longer exists, and the
            # lone leaf (if any) moves up into the parent.
            self.writes[key] = None
            return new_root, (c.leaf(1) if new_root is not None else None)
        if new_root != old_root:
            # An empty tree has no root chunk either, so the records depend only on the keys.
            self.writes[key] = c if new_root is not None else None
        return new_root, None

    def _update_full(self, k, c, ops, pis, lo, hi, shift):
        """:meth:`_update` for a full chunk without leaves (the top of a large tree).

        Every path ends in a child chunk on the bottom row; the touched positions are
        then rehashed level by level (each level before its parents). The slot of
        position p is p - 1, so the two children of a are the 64 bytes at 32 (2a - 1).
        """
        dirty = []
        b = c.b
        i = lo
        while i < hi:
            pi = pis[i]
            top = pi >> shift
            pos = (top & MASK) | SLOT0
            j = i + 1
            if j < hi and pis[j] >> shift == top:
                j = bisect_left(pis, (top + 1) << shift, j + 1, hi)
            if j == i + 1 and ops[i][2] is not None:
                ckey = ops[i][0][: k + 1] + DEPTH_BYTE[k + 1]
                child = self.load(ckey)
                if child is None:
                    raise AssertionError(f"state tree chunk {ckey.hex()} is missing (store corrupted)")
                s = (pos - 1) << 5
                b[s : s + 32] = self._update_one(ckey, k + 1, child, ops[i])
            else:
                self._descend(c, pos, k, ops, pis, i, j)
            dirty.append(pos)
            i = j
        if c.eb != FULL or c.lb:
            # A child chunk was emptied or left a lone leaf: the general case.
            s = set()
            for pos in dirty:
                s.update(ANC[pos])
            _rehash(c, sorted(s, reverse=True))
            return
        rehash_full(c.b, dirty, CHUNK_BITS)

    def _update_one(self, key, k, c, o) -> bytes:
        """:meth:`_update` for a single write (no deletion): the bulk of the lower chunks.

        Writing a key never leaves a leaf alone, so nothing is hoisted and the new hashes
        are one straight walk up from where the key lands. Returns the new chunk root.
        """
        v = (o[1] >> (248 - CHUNK_BITS * k)) & MASK
        wm = WALK_BITS[v]
        lb = c.lb
        low = LOW
        cur = o[2]
        if lb & wm:  # a leaf on the way: this key's or another's
            pos = (lb & wm).bit_length() - 1
            b = c.b
            r = (lb & low[pos]).bit_count() << 1
            ln = c.ne << 5
            at = ln + (r << 2)
            kl, vl = KV.unpack_from(b, at)
            at_key = ln + (c.nl << 3) + sum(U32[r].unpack_from(b, ln))
            if b[at_key : at_key + kl] == o[3]:  # a new value for this key
                m = at_key + kl
                b[m : m + vl] = o[4]
                if vl != len(o[4]):
                    KV.pack_into(b, at, kl, len(o[4]))
                s = (c.eb & low[pos]).bit_count() << 5
                b[s : s + 32] = cur
                if (c.xb >> pos) & 1 and not o[5]:
                    c.xb ^= 1 << pos
                    self.blobs[o[0]] = None  # its value no longer lives outside
                elif o[5]:
                    c.xb |= 1 << pos
            else:  # both keys go below the other's leaf
                cur = self._split(c, pos, k, o, at, at_key, kl, vl)
        else:
            e = (c.eb & wm).bit_count()
            if e > CHUNK_BITS:  # a child chunk
                pos = WALK[v][CHUNK_BITS]
                ckey = chunk_key(o[0], k + 1)
                sub = self.load(ckey)
                if sub is None:
                    raise AssertionError(f"state tree chunk {ckey.hex()} is missing (store corrupted)")
                cur = self._update_one(ckey, k + 1, sub, o)
            else:  # an empty position
                pos = WALK[v][e]
                set_leaf(c, pos, o[3], o[4], o[5])
            set_hash(c, pos, cur)
        # Up to the chunk root: ``cur`` is the hash at ``pos``, already in its slot.
        cur = walk_up(c.b, c.eb, pos, cur)
        self.writes[key] = c
        return cur

    def _split(self, c, pos, k, o, at, at_key, kl, vl) -> bytes:
        """Place the new key of ``o`` and the other key whose leaf is at ``pos``; return pos's new hash.

        (:meth:`_update_one`: ``at`` is the offset of that leaf's lengths, ``at_key`` of its
        key, ``kl`` and ``vl`` their lengths.) The two paths part at the first bit where
        they differ: the leaves go to the two children of that node, and the positions
        from ``pos`` down to it hold one child each. When they share the rest of the
        chunk, the general :meth:`_build` makes them a child chunk.
        """
        b = c.b
        m = at_key + kl
        key = bytes(b[at_key:m])
        value = bytes(b[m : m + vl])
        x = (c.xb >> pos) & 1
        lh = c.get(pos)
        path = self.path_of(key)
        pi = int.from_bytes(path, "big")
        cut_leaf(c, pos, at, at_key, kl, vl)
        # The node where the paths part, in chunk levels below this chunk's root.
        d = 256 - (pi ^ o[1]).bit_length() - CHUNK_BITS * k
        if d >= CHUNK_BITS:
            old = (path, pi, lh, key, value, x)
            return self._build(c, pos, k, [old, o] if path < o[0] else [o, old], 0, 2)
        shift = 256 - CHUNK_BITS * (k + 1)
        here = WALK[(o[1] >> shift) & MASK][d + 1]
        there = here ^ 1
        set_hash(c, there, lh)
        set_leaf(c, there, key, value, x)
        set_hash(c, here, o[2])
        set_leaf(c, here, o[3], o[4], o[5])
        sha = _sha256
        h = sha(NODE_PREFIX + (o[2] + lh if here < there else lh + o[2])).digest()
        q = here >> 1
        set_hash(c, q, h)
        while q > pos:
            h = sha(_NODE_EMPTY + h).digest() if q & 1 else sha(NODE_PREFIX + h + EMPTY).digest()
            q >>= 1
            set_hash(c, q, h)
        return h

    def _descend(self, c, pos, k, ops, pis, i, j):
        """Apply ops[i:j] to the child chunk at bottom-row position ``pos``."""
        ckey = chunk_key(ops[i][0], k + 1)
        child = self.load(ckey)
        if child is None:
            raise AssertionError(f"state tree chunk {ckey.hex()} is missing (store corrupted)")
        ch, lone = self._update(ckey, k + 1, child, ops, pis, i, j)
        if ch is None:
            delete_position(c, pos)
        else:
            set_hash(c, pos, ch)
            if lone is not None:
                set_leaf(c, pos, *lone)

    def _land(self, c, pos, k, ops, i, j):
        """Apply ops[i:j] at ``pos``, which is empty or holds one leaf."""
        old = _item(c, pos, self.path_of) if (c.lb >> pos) & 1 else None
        items = []
        pending = old is not None
        for t in range(i, j):
            o = ops[t]
            if pending and o[0] == old[0]:
                pending = False
                if old[5] and not o[5]:
                    self.blobs[o[0]] = None  # its value no longer lives outside
                if o[2] is not None:
                    items.append(o)
            elif o[2] is not None:
                if pending and o[0] > old[0]:
                    items.append(old)
                    pending = False
                items.append(o)
        if pending:
            items.append(old)
        if items:
            del_leaf(c, pos)
            self._build(c, pos, k, items, 0, len(items))
        else:
            delete_position(c, pos)

    def _build(self, c, pos, k, items, lo, hi) -> bytes:
        """Place the sorted ``items[lo:hi]`` in the empty subtree at ``pos``; return its hash."""
        if hi - lo == 1:
            item = items[lo]
            set_hash(c, pos, item[2])
            set_leaf(c, pos, item[3], item[4], item[5])
            return item[2]
        if pos >= SLOT0:
            child = new_chunk()
            h = self._build(child, 1, k + 1, items, lo, hi)
            self.writes[chunk_key(items[lo][0], k + 1)] = child
            set_hash(c, pos, h)
            return h
        s = 256 - CHUNK_BITS * k - pos.bit_length()
        mid = bisect_left(items, ((items[lo][1] >> s) | 1) << s, lo, hi, key=_PATH_INT)
        left = self._build(c, pos + pos, k, items, lo, mid) if mid > lo else EMPTY
        right = self._build(c, pos + pos + 1, k, items, mid, hi) if mid < hi else EMPTY
        h = _sha256(NODE_PREFIX + left + right).digest()
        set_hash(c, pos, h)
        return h


def _rehash(c: Chunk, anc) -> None:
    """Recompute positions ``anc`` (children first; each exists and holds no leaf)."""
    sha = _sha256
    prefix = NODE_PREFIX
    b = c.b
    low = LOW
    for a in anc:
        eb = c.eb
        a2 = a + a
        two = (eb >> a2) & 3
        x = (eb & low[a2]).bit_count() << 5
        if two == 3:
            h = sha(prefix + b[x : x + 64]).digest()  # adjacent slots
        elif two == 1:
            if (c.lb >> a2) & 1:
                _hoist(c, a2, a)
                continue
            h = sha(prefix + b[x : x + 32] + EMPTY).digest()
        elif two == 2:
            if (c.lb >> (a2 + 1)) & 1:
                _hoist(c, a2 + 1, a)
                continue
            h = sha(_NODE_EMPTY + b[x : x + 32]).digest()
        else:
            delete_position(c, a)  # both children gone
            continue
        s = (eb & low[a]).bit_count() << 5
        b[s : s + 32] = h


def _hoist(c: Chunk, child: int, a: int) -> None:
    """Move the lone leaf at ``child`` up to its parent ``a``."""
    h = c.get(child)
    key, value, x = payload(c, child)
    delete_position(c, child)
    set_hash(c, a, h)
    set_leaf(c, a, key, value, x)


# ---------------------------------------------------------------------- reads


def find_leaf(
    load: Callable[[bytes], Chunk | None], path: bytes
) -> tuple[Chunk, int] | None:
    """The chunk and position of the leaf where ``path``'s walk ends, or None (empty).

    The leaf is the key's own or, when the key is absent, another key's.
    """
    pi = int.from_bytes(path, "big")
    k = 0
    chunk = load(ROOT_CHUNK)
    while chunk is not None:
        pos, child = landing(chunk.eb, chunk.lb, (pi >> (248 - CHUNK_BITS * k)) & MASK)
        if child:
            k += 1
            chunk = load(chunk_key(path, k))
            if chunk is None:
                raise AssertionError("state tree chunk missing (store corrupted)")
        elif (chunk.lb >> pos) & 1:
            return chunk, pos
        else:
            return None
    return None


def prove_path(
    load: Callable[[bytes], Chunk | None], path: bytes
) -> tuple[tuple[bytes, bytes, int] | None, bytes | None, StateProof]:
    """Walk to the position of ``path``: (leaf payload there, its leaf hash, proof without ``other``).

    The leaf found is the key's own (membership), another key's (absence; the caller
    adds that key's path and value hash as the proof's ``other``), or none (absence).
    ``load`` returns stored chunks (not changed here).
    """
    pi = int.from_bytes(path, "big")
    siblings: list[bytes] = []
    bits = 0
    depth = 0
    k = 0
    chunk = load(ROOT_CHUNK)
    pos = 1
    while chunk is not None:
        h = chunk.get(pos)
        if h is None:  # empty position
            return None, None, _proof(depth, bits, siblings)
        leaf = chunk.leaf(pos)
        if leaf is not None:
            return leaf, h, _proof(depth, bits, siblings)
        if pos >= SLOT0:  # a child chunk
            k += 1
            chunk = load(chunk_key(path, k))
            if chunk is None:
                raise AssertionError("state tree chunk missing (store corrupted)")
            pos = 1
            continue
        bit = (pi >> (255 - depth)) & 1
        sib = chunk.get((pos + pos) | (bit ^ 1))
        bits <<= 1
        if sib is not None:
            bits |= 1
            siblings.append(sib)
        depth += 1
        pos = (pos + pos) | bit
    # Only an empty tree has no root chunk.
    return None, None, _proof(0, 0, [])


def _proof(depth: int, bits: int, siblings: list[bytes]) -> StateProof:
    nbytes = (depth + 7) // 8
    bitmap = (bits << (nbytes * 8 - depth)).to_bytes(nbytes, "big") if depth else b""
    return StateProof(depth, bitmap, tuple(siblings), None)


def iter_leaves(
    load: Callable[[bytes], Chunk | None],
    start: bytes = b"",
    path_of: Callable[[bytes], bytes] = tree_path,
) -> Iterator[tuple[bytes, bytes, int]]:
    """Every leaf's (key, value, stored outside) in tree order, from the first path ``>= start``.

    ``start`` is a tree position of up to 32 bytes (shorter ones are padded with zero
    bits). Subtrees that end before ``start`` are skipped, not read.
    """
    s = int.from_bytes(start[:32].ljust(32, b"\x00"), "big")
    root = load(ROOT_CHUNK)
    if root is None:
        return
    # (chunk, position, chunk depth, bits of the position's path, number of those bits)
    stack = [(root, 1, 0, 0, 0)]
    while stack:
        chunk, pos, k, prefix, depth = stack.pop()
        if not (chunk.eb >> pos) & 1:
            continue
        first = prefix << (256 - depth)
        if first + (1 << (256 - depth)) <= s:
            continue  # the whole subtree lies before start
        if (chunk.lb >> pos) & 1:
            key, value, x = payload(chunk, pos)
            if first >= s or int.from_bytes(path_of(key), "big") >= s:
                yield key, value, x
        elif pos >= SLOT0:
            child = load(chunk_key(first.to_bytes(32, "big"), k + 1))
            if child is None:
                raise AssertionError("state tree chunk missing (store corrupted)")
            stack.append((child, 1, k + 1, prefix, depth))
        else:
            stack.append((chunk, pos + pos + 1, k, (prefix << 1) | 1, depth + 1))
            stack.append((chunk, pos + pos, k, prefix << 1, depth + 1))
