"""The authenticated state: what the state root commits to, and how a value is proven.

The state of a shard is a map from state keys (``ledger.statekeys.state_key``) to
values. Its root is the root of a **binary sparse Merkle tree with leaf compression**
over 256-bit positions ``tree_path(key)`` (a domain-tagged SHA-256 of the key):

* a subtree holding no key hashes to ``EMPTY`` (32 zero bytes);
* a subtree holding exactly one key hashes to that key's leaf
  ``sha256(0x00 || path || sha256(value))``, wherever the subtree sits: a leaf is
  hoisted to the shallowest position where it is alone;
* any other subtree hashes to ``sha256(0x01 || left || right)``.

The root therefore depends only on the set of (key, value) pairs, never on the order
in which they were written or on keys written and deleted since: inserting a key and
deleting it again gives back the earlier root. The two prefixes keep a leaf from ever
being read as an internal node (and the preimages have different lengths besides).

**Proofs.** Membership and absence are proven the same way: the path from the root
down to the position where ``key`` would sit, as the list of sibling hashes (empty
siblings are elided and marked by a bitmap), and what occupies that position: the
key's own leaf (membership), nothing (absence), or the leaf of another key whose path
shares the prefix (absence). The encoding is canonical (``ledger.codec``)::

    [depth, bitmap, [sibling, ...], other]

``depth`` is the number of levels from the root to the position (0..256); ``bitmap`` has
``ceil(depth / 8)`` bytes, bit ``i`` (most significant first) set when the sibling at
depth ``i + 1`` is not empty, padding bits zero; the siblings are listed top-down,
none of them empty; ``other`` is ``[]`` or ``[path, value_hash]`` of the leaf occupying
the position. At 10^6 keys a proof is about 21 siblings, ~0.75 KB, and verifies in
~15 µs (22 SHA-256 compressions plus decoding).

**Why this structure** (measured on this machine, see ``bench/state.py``): a binary
tree gives the shortest proofs (log2(N) siblings, ~0.7 KB at 10^6 keys against
~2.3 KB for a 16-ary Merkle tree whose nodes list all 15 siblings), and leaf
compression keeps the depth at log2(N) instead of 256 without needing extension nodes.
Per-node hashing cost is what a binary tree pays: a batch of 10,000 updates at 10^6
keys computes ~105,000 SHA-256 (~75,000 nodes, and a path, value and leaf hash per
write), ~40-55 ms of the batch in CPython (~0.4-0.5 µs per call, mostly call overhead).
The storage layout that makes the batch fast (chunks of 8 binary levels, the values
inside the bottom chunks) is private to :mod:`ledger.state_tree` and
:mod:`ledger.state_db`; nothing here depends on it.

Everything in this module is pure: clients, observers and light clients verify proofs
with :func:`verify_proof` and the root alone, no store needed.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from ledger import codec
from ledger.statekeys import tree_path

__all__ = [
    "EMPTY",
    "MAX_PROOF_SIZE",
    "ProofError",
    "StateProof",
    "compute_root",
    "leaf_hash",
    "node_hash",
    "value_hash",
    "verify_proof",
]

_sha256 = hashlib.sha256

EMPTY = bytes(32)
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_LEN = 32
PATH_BITS = 256

# The deepest position a leaf can occupy is 256 (two paths differing only in their last
# bit); a proof then holds at most 256 siblings of 34 encoded bytes each, plus the other
# leaf. Anything larger is not a proof and is refused before it is decoded.
MAX_PROOF_SIZE = 9 * 1024


class ProofError(ValueError):
    """A proof is malformed: wrong shape, non-canonical, or beyond the size limits."""


def value_hash(value: bytes) -> bytes:
    return _sha256(value).digest()


def leaf_hash(path: bytes, vhash: bytes) -> bytes:
    """The hash of a subtree holding only the key at ``path`` whose value hashes to ``vhash``."""
    return _sha256(LEAF_PREFIX + path + vhash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of a subtree holding two or more keys (an empty side is ``EMPTY``)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _bit(path_int: int, depth: int) -> int:
    """Bit ``depth`` (0 = most significant) of a 256-bit path."""
    return (path_int >> (PATH_BITS - 1 - depth)) & 1


def compute_root(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The state root of a set of (key, value) pairs, computed from scratch.

    Independent of any storage: this is the definition the stored tree must agree
    with, used to check a store after a crash and to check snapshots.
    """
    leaves = sorted(
        (int.from_bytes(p := tree_path(key), "big"), leaf_hash(p, value_hash(value)))
        for key, value in items
    )
    for a, b in zip(leaves, leaves[1:], strict=False):
        if a[0] == b[0]:
            raise ValueError("two entries for the same key")
    ints = [pi for pi, _ in leaves]

    def subtree(lo: int, hi: int, depth: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo][1]
        shift = PATH_BITS - 1 - depth
        boundary = ((ints[lo] >> shift) | 1) << shift
        mid = bisect_left(ints, boundary, lo, hi)
        left = subtree(lo, mid, depth + 1) if mid > lo else EMPTY
        right = subtree(mid, hi, depth + 1) if mid < hi else EMPTY
        return node_hash(left, right)

    return subtree(0, len(leaves), 0) if leaves else EMPTY


@dataclass(frozen=True, slots=True)
class StateProof:
    """A decoded proof (see the module docstring for the meaning of each field)."""

    depth: int
    bitmap: bytes
    siblings: tuple[bytes, ...]
    other: tuple[bytes, bytes] | None  # (path, value hash) of another key's leaf

    def encode(self) -> bytes:
        other = list(self.other) if self.other is not None else []
        return codec.encode([self.depth, self.bitmap, list(self.siblings), other])

    @classmethod
    def decode(cls, data: bytes) -> StateProof:
        """Parse and check the shape of a proof. Raises :class:`ProofError`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProofError(f"a proof is bytes, got {type(data).__name__}")
        if len(data) > MAX_PROOF_SIZE:
            raise ProofError(f"proof is {len(data)} bytes; at most {MAX_PROOF_SIZE} allowed")
        try:
            fields = codec.decode(bytes(data), max_size=MAX_PROOF_SIZE, max_depth=3)
        except codec.CodecError as exc:
            raise ProofError(f"proof is not canonical msgpack: {exc}") from None
        if not isinstance(fields, list) or len(fields) != 4:
            raise ProofError("a proof is [depth, bitmap, siblings, other]")
        depth, bitmap, siblings, other = fields
        if type(depth) is not int or not 0 <= depth <= PATH_BITS:
            raise ProofError(f"proof depth must be an integer in 0..{PATH_BITS}")
        if type(bitmap) is not bytes or len(bitmap) != (depth + 7) // 8:
            raise ProofError(f"proof bitmap must be {(depth + 7) // 8} bytes for depth {depth}")
        bits = int.from_bytes(bitmap, "big")
        pad = len(bitmap) * 8 - depth
        if pad and bits & ((1 << pad) - 1):
            raise ProofError("proof bitmap has padding bits set")
        if not isinstance(siblings, list) or len(siblings) != bits.bit_count():
            raise ProofError("proof lists a different number of siblings than its bitmap marks")
        for s in siblings:
            if type(s) is not bytes or len(s) != HASH_LEN or s == EMPTY:
                raise ProofError("every listed sibling must be a non-empty 32-byte hash")
        if not isinstance(other, list) or len(other) not in (0, 2):
            raise ProofError("proof 'other' must be [] or [path, value_hash]")
        if other and not all(type(x) is bytes and len(x) == HASH_LEN for x in other):
            raise ProofError("proof 'other' must hold a 32-byte path and a 32-byte value hash")
        return cls(depth, bitmap, tuple(siblings), (other[0], other[1]) if other else None)


def verify_proof(root: bytes, key: bytes, value: bytes | None, proof: bytes | StateProof) -> bool:
    """True when ``proof`` shows that ``key`` holds ``value`` (or is absent, for None) under ``root``.

    Pure and safe on untrusted input: a malformed proof raises :class:`ProofError`; a
    well-formed proof of anything else returns False.
    """
    if not isinstance(proof, StateProof):
        proof = StateProof.decode(proof)
    if type(root) is not bytes or len(root) != HASH_LEN:
        return False
    path = tree_path(key)
    path_int = int.from_bytes(path, "big")
    depth = proof.depth
    if value is not None:
        if proof.other is not None:
            return False
        cur = _sha256(LEAF_PREFIX + path + _sha256(value).digest()).digest()
    elif proof.other is None:
        cur = EMPTY
    else:
        other_path, other_vhash = proof.other
        if other_path == path:
            return False
        if depth and (int.from_bytes(other_path, "big") ^ path_int) >> (PATH_BITS - depth):
            return False  # the other leaf does not sit at this position
        cur = _sha256(LEAF_PREFIX + other_path + other_vhash).digest()
    if depth == 0:
        return cur == root
    bits = int.from_bytes(proof.bitmap, "big") >> (len(proof.bitmap) * 8 - depth)
    # A position whose own sibling is empty is never where a leaf or an empty subtree
    # sits (the leaf would be hoisted, the empty pair would be empty), so a canonical
    # proof always has a sibling at its deepest level.
    if not bits & 1:
        return False
    siblings = proof.siblings
    k = len(siblings)
    sha = _sha256
    for d in range(depth - 1, -1, -1):
        if bits & 1:
            k -= 1
            sib = siblings[k]
        else:
            sib = EMPTY
        bits >>= 1
        if (path_int >> (PATH_BITS - 1 - d)) & 1:
            cur = sha(NODE_PREFIX + sib + cur).digest()
        else:
            cur = sha(NODE_PREFIX + cur + sib).digest()
    return cur == root
