"""One structlog configuration for all of gridledger.

Production (a node, a gateway, a relayer run by an operator) writes one JSON object
per line to stderr, ready for a log shipper; development (a devnet on a laptop, the
demo) writes readable, aligned console lines. Choose with ``configure(mode)`` or the
environment variable ``GRIDLEDGER_LOG`` (``json`` or ``console``); the level with
``GRIDLEDGER_LOG_LEVEL`` (``debug``, ``info``, ``warning``, ``error``).

Bind context once and it travels with every event: a node binds ``shard``, ``node``,
and then ``height`` and ``view`` as they change.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure", "get_logger"]

class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the moment of writing (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_configured: str | None = None


def configure(mode: str | None = None, level: str | None = None, stream=None) -> str:
    """Configure structlog once for the process; returns the mode chosen."""
    global _configured
    mode = (mode or os.environ.get("GRIDLEDGER_LOG") or ("console" if sys.stderr.isatty() else "json")).lower()
    if mode not in ("json", "console"):
        raise ValueError(f"GRIDLEDGER_LOG must be 'json' or 'console', not {mode!r}")
    level_name = (level or os.environ.get("GRIDLEDGER_LOG_LEVEL") or "info").lower()
    if level_name not in _LEVELS:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, not {level_name!r}")
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if mode == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level_name]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or _CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _configured = mode
    return mode


def get_logger(**bound):
    """A logger with ``bound`` context; configures logging on first use if nobody did."""
    if _configured is None:
        configure()
    return structlog.get_logger().bind(**bound)
