"""Merkle roots and inclusion proofs over ordered lists (transactions, receipts).

The tree is RFC 6962's (Certificate Transparency): leaves hash as
``H(0x00 || leaf)``, interior nodes as ``H(0x01 || left || right)``, and a list of n
items splits at the largest power of two below n. The distinct prefixes keep a leaf
from ever being passed off as an interior node; the split rule makes the root unique
for every list length without padding.
"""

from __future__ import annotations

import hashlib

__all__ = ["EMPTY_ROOT", "MerkleError", "inclusion_proof", "merkle_root", "verify_inclusion"]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


class MerkleError(ValueError):
    """An inclusion proof is malformed."""


def _leaf(item: bytes) -> bytes:
    return _sha256(b"\x00" + item).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def _root_of_hashes(level: list[bytes]) -> bytes:
    # Bottom-up pairing gives the RFC 6962 root: an odd node is carried up unchanged,
    # which is the same tree as splitting at the largest power of two below n.
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(items: list[bytes]) -> bytes:
    """The root of ``items`` (each hashed as a leaf); ``EMPTY_ROOT`` for an empty list."""
    if not items:
        return EMPTY_ROOT
    return _root_of_hashes([_leaf(x) for x in items])


def inclusion_proof(items: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the leaf at ``index`` up to the root."""
    if not 0 <= index < len(items):
        raise MerkleError(f"index {index} outside a list of {len(items)}")
    return _path(index, [_leaf(x) for x in items])


def _path(index: int, hashes: list[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return _path(index, hashes[:k]) + [_root_of_hashes(hashes[k:])]
    return _path(index - k, hashes[k:]) + [_root_of_hashes(hashes[:k])]


def verify_inclusion(root: bytes, item: bytes, index: int, size: int, proof: list[bytes]) -> bool:
    """True when ``item`` is at ``index`` of a list of ``size`` items whose root is ``root``."""
    if not 0 <= index < size or not isinstance(proof, list):
        return False
    if any(not isinstance(p, bytes) or len(p) != 32 for p in proof):
        return False
    # Recompute the sides top-down (RFC 9162 section 2.1.3.2), then fold bottom-up.
    sides: list[bool] = []  # True: sibling on the right
    lo, n = index, size
    while n > 1:
        k = _split(n)
        if lo < k:
            sides.append(True)
            n = k
        else:
            sides.append(False)
            lo -= k
            n -= k
    if len(sides) != len(proof):
        return False
    h = _leaf(item)
    for sibling, right in zip(proof, reversed(sides), strict=True):
        h = _node(h, sibling) if right else _node(sibling, h)
    return h == root
