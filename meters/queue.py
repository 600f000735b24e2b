"""The gateway's durable queue: readings, meter accounting state and signed transactions.

One SQLite file (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: a commit
returns only after the write-ahead log is on disk, so whatever a commit wrote survives
a SIGKILL or a power cut. Three rules make the gateway lose and duplicate nothing:

1. A meter's accounting state and the readings it produced are written in **one**
   transaction (:meth:`ReadingStore.record`): after a crash the store holds either
   both or neither, and the gateway re-derives the rest from the meter's counter.
2. A transaction is written (its exact signed bytes, nonce and readings) **before** it
   is sent (:meth:`ReadingStore.assign`): after a crash the gateway asks the node
   about that very transaction and re-sends the same bytes, never a second version.
3. Readings are deleted only when the node confirmed the transaction carrying them is
   committed, or that they were already on chain (:meth:`ReadingStore.resolve`).

The ``(meter, period)`` primary key makes a second reading for one period impossible.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meters.readings import Reading, TrackerState

__all__ = ["Resolution", "ReadingStore", "StoredReading", "TxRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_state (
    meter TEXT PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS readings (
    meter TEXT NOT NULL,
    period INTEGER NOT NULL,
    energy_wh INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    tx_id BLOB,
    solo INTEGER NOT NULL DEFAULT 0,
    parked_until_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (meter, period)
);
CREATE INDEX IF NOT EXISTS readings_by_tx ON readings (tx_id);
CREATE TABLE IF NOT EXISTS txs (
    tx_id BLOB PRIMARY KEY,
    meter TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    expiry INTEGER NOT NULL,
    raw BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredReading:
    reading: Reading
    tx_id: bytes | None = None
    solo: bool = False
    parked_until_ms: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class TxRecord:
    """A signed transaction carrying ``periods`` of ``meter``; ``raw`` is exactly what is sent."""

    tx_id: bytes
    meter: str
    nonce: int
    expiry: int
    raw: bytes
    periods: tuple[int, ...]
    created_ms: int


@dataclass(frozen=True, slots=True)
class Resolution:
    """What became of a transaction.

    ``committed``     its readings are on chain (or were already there): delete them.
    ``release``       it can never commit: its readings go back to the queue.
    ``release_solo``  as ``release``, and each reading goes alone next time (a batch
                      failed because one of its periods was already on chain).
    ``park``          the node refused it for a reason retrying now will not fix
                      (e.g. the meter is not registered): keep the readings, retry at
                      ``until_ms``, show ``error`` in status.
    """

    tx_id: bytes
    action: str
    until_ms: int = 0
    error: str | None = None


class ReadingStore:
    """The SQLite file. Not thread-safe by itself: the gateway calls it from one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------ accounting

    def load_states(self) -> dict[str, TrackerState]:
        with self._lock:
            rows = self._db.execute("SELECT meter, state FROM meter_state").fetchall()
        return {meter: TrackerState.decode(state) for meter, state in rows}

    def record(self, updates: Sequence[tuple[str, TrackerState, Sequence[Reading]]]) -> None:
        """Persist new accounting states with the readings they produced, atomically."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO meter_state (meter, state) VALUES (?, ?) "
                "ON CONFLICT (meter) DO UPDATE SET state = excluded.state",
                [(meter, state.encode()) for meter, state, _ in updates],
            )
            db.executemany(
                "INSERT INTO readings (meter, period, energy_wh, flags) VALUES (?, ?, ?, ?)",
                [(r.meter, r.period, r.energy_wh, r.flags) for _, _, readings in updates for r in readings],
            )

        self._write(write)

    # ------------------------------------------------------------ submission

    def load_pending(self) -> tuple[list[StoredReading], list[TxRecord]]:
        """Every reading not yet confirmed on chain, and every transaction that may be in flight."""
        with self._lock:
            rows = self._db.execute(
                "SELECT meter, period, energy_wh, flags, tx_id, solo, parked_until_ms, last_error "
                "FROM readings ORDER BY meter, period"
            ).fetchall()
            tx_rows = self._db.execute("SELECT tx_id, meter, nonce, expiry, raw, created_ms FROM txs").fetchall()
        readings = [
            StoredReading(Reading(m, p, e, f), None if t is None else bytes(t), bool(s), u, err)
            for m, p, e, f, t, s, u, err in rows
        ]
        periods: dict[bytes, list[int]] = {}
        for stored in readings:
            if stored.tx_id is not None:
                periods.setdefault(stored.tx_id, []).append(stored.reading.period)
        txs = [
            TxRecord(bytes(t), m, n, x, bytes(raw), tuple(periods.get(bytes(t), ())), c)
            for t, m, n, x, raw, c in tx_rows
        ]
        return readings, txs

    def assign(self, txs: Sequence[TxRecord]) -> None:
        """Persist signed transactions and bind their readings to them, before sending."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO txs (tx_id, meter, nonce, expiry, raw, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [(t.tx_id, t.meter, t.nonce, t.expiry, t.raw, t.created_ms) for t in txs],
            )
            db.executemany(
                "UPDATE readings SET tx_id = ?, last_error = NULL WHERE meter = ? AND period = ? AND tx_id IS NULL",
                [(t.tx_id, t.meter, p) for t in txs for p in t.periods],
            )

        self._write(write)

    def resolve(self, resolutions: Sequence[Resolution]) -> None:
        """Apply what the node said about transactions, atomically."""

        def write(db: sqlite3.Connection) -> None:
            for res in resolutions:
                if res.action == "committed":
                    db.execute("DELETE FROM readings WHERE tx_id = ?", (res.tx_id,))
                elif res.action in ("release", "release_solo"):
                    solo = 1 if res.action == "release_solo" else 0
                    db.execute("UPDATE readings SET tx_id = NULL, solo = MAX(solo, ?) WHERE tx_id = ?", (solo, res.tx_id))
                elif res.action == "park":
                    db.execute(
                        "UPDATE readings SET tx_id = NULL, parked_until_ms = ?, last_error = ? WHERE tx_id = ?",
                        (res.until_ms, res.error, res.tx_id),
                    )
                else:
                    raise ValueError(f"unknown resolution {res.action!r}")
                db.execute("DELETE FROM txs WHERE tx_id = ?", (res.tx_id,))

        self._write(write)

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
