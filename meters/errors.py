"""The errors of the meter gateway and simulator.

One base type, :class:`MeterError`, for the whole ``meters`` layer; each subtype names
where the problem is, and every message says what was wrong and what is allowed:

- :class:`ConfigError`: a gateway, simulator or register-map file is invalid.
- :class:`DeviceError`: a device did not answer, answered with a Modbus exception, or
  the connection failed. Retried with back-off; never loses anything.
- :class:`DecodeError`: a device answered with values that cannot be a measurement
  (NaN or infinite floats, "not implemented" markers, a SunSpec chain that moved).
  The sample is refused and logged.
- :class:`NodeUnavailable`: the node did not answer (connection refused, timeout, 5xx).
  Submissions wait and retry; the readings stay in the durable queue.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DecodeError", "DeviceError", "MeterError", "NodeUnavailable"]


class MeterError(Exception):
    """Base of every error raised by ``meters``."""


class ConfigError(MeterError):
    """A configuration or register-map file is invalid; the message names the field."""


class DeviceError(MeterError):
    """A Modbus read failed. ``kind`` is ``timeout``, ``exception``, ``connection`` or ``protocol``."""

    def __init__(self, kind: str, message: str, exception_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.exception_code = exception_code


class DecodeError(MeterError):
    """Register values that cannot be a measurement. ``reason`` is a stable snake_case word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NodeUnavailable(MeterError):
    """The node could not be reached or failed internally; try again later."""
