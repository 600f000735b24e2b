"""How contract storage maps to keys of the authenticated state.

Every stored value lives under the canonical encoding of
``[contract name, variable name, [key parts...]]``. One scheme for the runtime, the
store, the HTTP API (``/v1/state/{contract}/{name}?key=K1&key=K2``) and proofs, so a
client can compute the key of anything it wants proven without asking the node.
The authenticated tree places a key at ``sha256("gridledger/state-key" + key)``.
"""

from __future__ import annotations

from ledger import codec
from ledger.crypto import tagged_hash

__all__ = ["state_key", "split_state_key", "tree_path"]


def state_key(contract: str, name: str, parts: tuple | list = ()) -> bytes:
    return codec.encode([contract, name, list(parts)])


def split_state_key(key: bytes) -> tuple[str, str, list]:
    contract, name, parts = codec.decode(key)
    return contract, name, parts


def tree_path(key: bytes) -> bytes:
    """The 32-byte position of ``key`` in the state tree."""
    return tagged_hash(b"gridledger/state-key", key)
