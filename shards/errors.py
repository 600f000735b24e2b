"""The one error type of the shards layer, and its named refinements.

Every refusal in ``shards`` is a :class:`BridgeError` with a stable snake_case ``code``
(what a receipt or a relayer's log shows) and a message saying what was wrong and
what is allowed. The subclasses only say which part refused, so a caller that does
not care catches :class:`BridgeError`.
"""

from __future__ import annotations

__all__ = ["BridgeError", "FlowRefused", "LightClientError", "PacketError", "ProtocolViolation", "TopologyError"]


class BridgeError(ValueError):
    """A refusal of the shards layer. ``code`` is stable; ``message`` explains it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TopologyError(BridgeError):
    """A topology document is malformed, or a shard id is not in the tree."""


class LightClientError(BridgeError):
    """A neighbour's header, certificate, validator-set update or evidence does not verify."""


class PacketError(BridgeError):
    """A packet or delivery is malformed, oversized, or its proof does not verify."""


class FlowRefused(BridgeError):
    """A flow operation is refused by the rules (capacity, funds, roles, state); nothing changed."""


class ProtocolViolation(BridgeError):
    """A certified neighbour sent a packet no honest shard sends; the bridge is frozen."""
