"""The state tree's hot loops: pure-Python references and their optional compiled twins.

A block of 10,000 writes at 10^6 keys recomputes ~100,000 binary nodes of the tree
(:mod:`ledger.state_tree`) and edits ~10,000 chunks; in Python each hash costs a slice, a
concatenation, a SHA-256 call and a slot write, and the interpreter's overhead dwarfs
the hash itself (SHA-NI hashes 65 bytes in well under 0.1 µs). The loops that do most
of those hashes live here:

* :func:`walk_up`: a single write's way up a chunk (the bulk of the lower chunks);
* :func:`rehash_full`: the touched positions of a full chunk, level by level (the top
  chunks of a large tree);
* :func:`leaf_hash` and :func:`path_leaf`: a write's leaf hash (and its path).

``ledger/_state_native.c`` computes the same bytes in C, and also holds twins of the
chunk edits ``set_hash`` and ``set_leaf`` and of ``decode_chunk``, which
:mod:`ledger.state_chunk` binds in place of its own (kept there as ``py_*``). SHA-256
comes from the system's OpenSSL library (``libcrypto``, linked when the extension is
built). The extension is built by ``make`` (``setup.py``) where a C compiler and
OpenSSL's headers are present and skipped otherwise: then the Python definitions run
and nothing changes but the speed (~43,000 against ~60,000 updates/s in ``bench.state``
at 10^6 keys). ``tests/test_state_native.py`` holds each twin to its reference on random
chunks and runs the tree's tests on the pure path as well. ``GRIDLEDGER_PURE_TREE=1`` forces the Python definitions; :data:`BACKEND`
names the one in use, and :data:`native` is the compiled module or None.
"""

from __future__ import annotations

import hashlib
import os

from ledger.crypto import tagged_hash
from ledger.state import EMPTY, NODE_PREFIX
from ledger.state import leaf_hash as _leaf_hash
from ledger.state import value_hash as _value_hash

__all__ = [
    "BACKEND",
    "leaf_hash",
    "native",
    "path_leaf",
    "py_leaf_hash",
    "py_path_leaf",
    "py_rehash_full",
    "py_walk_up",
    "rehash_full",
    "walk_up",
]

_sha256 = hashlib.sha256
_NODE_EMPTY = NODE_PREFIX + EMPTY
_LOW = [(1 << p) - 1 for p in range(513)]


def py_walk_up(b: bytearray, eb: int, pos: int, cur: bytes) -> bytes:
    """From ``pos`` (its hash ``cur`` already in its slot) up to the chunk root; return the root's hash.

    Every ancestor's hash is recomputed and written into its slot (``b`` is a chunk's
    body, ``eb`` its bitmap of existing positions). An existing sibling is the adjacent
    slot; a missing one is the empty hash.
    """
    low = _LOW
    sha = _sha256
    prefix = NODE_PREFIX
    view = memoryview(b)  # writes through a view are cheaper; nothing resizes b here
    s = (eb & low[pos]).bit_count() << 5
    while pos > 1:
        if pos & 1:
            if (eb >> (pos - 1)) & 1:
                cur = sha(prefix + b[s - 32 : s + 32]).digest()
            else:
                cur = sha(_NODE_EMPTY + cur).digest()
        elif (eb >> (pos + 1)) & 1:
            cur = sha(prefix + b[s : s + 64]).digest()
        else:
            cur = sha(prefix + cur + EMPTY).digest()
        pos >>= 1
        s = (eb & low[pos]).bit_count() << 5
        view[s : s + 32] = cur
    view.release()
    return cur


def py_rehash_full(b: bytearray, dirty, levels: int) -> None:
    """Recompute the ancestors of ``dirty`` (positions on one row), ``levels`` levels up, in a full chunk.

    In a full chunk every position exists, so the slot of ``p`` is ``p - 1`` and the two
    children of ``a`` are the 64 bytes at ``32 (2a - 1)``. Each level is done before its
    parents.
    """
    sha = _sha256
    prefix = NODE_PREFIX
    level = dirty
    view = memoryview(b)
    for _ in range(levels):
        level = {p >> 1 for p in level}
        for a in level:
            x = (a + a - 1) << 5
            view[(a - 1) << 5 : a << 5] = sha(prefix + b[x : x + 64]).digest()
    view.release()


def py_leaf_hash(path: bytes, value: bytes) -> bytes:
    """The hash of a leaf holding ``value`` at ``path``."""
    return _leaf_hash(path, _value_hash(value))


def py_path_leaf(tag: bytes, key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """(``sha256(tag + key)``: the key's path, the hash of a leaf holding ``value`` there)."""
    path = tagged_hash(tag, key)
    return path, _leaf_hash(path, _value_hash(value))


native = None
if not os.environ.get("GRIDLEDGER_PURE_TREE"):
    try:
        from ledger import _state_native as native
    except ImportError:  # built only where a C compiler and OpenSSL's headers exist
        pass

if native is None:
    walk_up = py_walk_up
    rehash_full = py_rehash_full
    leaf_hash = py_leaf_hash
    path_leaf = py_path_leaf
    BACKEND = "python"
else:
    walk_up = native.walk_up
    rehash_full = native.rehash_full
    leaf_hash = native.leaf_hash
    path_leaf = native.path_leaf
    BACKEND = "compiled"
