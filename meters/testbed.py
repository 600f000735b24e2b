"""A meter testbed on one machine: meter keys and gateway configurations, written for you.

Used by the tests and ``bench.meters``, and handy for a developer who wants a gateway
talking to the simulator: :func:`make_meter_keys` seals one Ed25519 key per meter in
the keystore, :func:`gateway_toml` writes a configuration for meters described as
plain dicts (the ``[[meter]]`` keys of ``meters.config``), and :func:`audit_meter`
proves that a gateway lost and duplicated nothing.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ledger.crypto import PrivateKey
from ledger.keystore import save_key
from meters.queue import ReadingStore

__all__ = ["audit_meter", "free_port", "gateway_toml", "make_meter_keys", "toml_text"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_meter_keys(directory: str | Path, names: list[str], *, password: str | None = None,
                    strength: str = "test") -> dict[str, PrivateKey]:
    """One key file per meter (``<directory>/<name>.json``); plaintext dev keys when no password."""
    directory = Path(directory)
    keys: dict[str, PrivateKey] = {}
    for name in names:
        key = PrivateKey.generate()
        save_key(directory / f"{name}.json", kind="ed25519", secret=key.seed, public_key=key.public_key.raw,
                 password=password, label=name, address=str(key.address), strength=strength,
                 dev_plaintext=password is None)
        keys[name] = key
    return keys


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_text(doc: dict[str, Any]) -> str:
    """TOML for a document of tables and arrays of tables holding scalars and lists."""
    lines: list[str] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_value(v)}" for k, v in value.items()]
            lines.append("")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for table in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_value(v)}" for k, v in table.items()]
                lines.append("")
        else:
            lines.insert(0, f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"


def gateway_toml(*, data_dir: str, node_url: str, meters: list[dict], shard: str = "devnet",
                 genesis_time: int = 0, period_seconds: int = 1, poll_interval_s: float = 0.25,
                 gateway: dict | None = None, chain: dict | None = None, keys: dict | None = None) -> str:
    doc = {
        "gateway": {"data_dir": data_dir, "status_listen": "127.0.0.1:0", "poll_interval_s": poll_interval_s,
                    "read_timeout_s": 0.3, "read_retries": 1, "retry_backoff_s": 0.05, **(gateway or {})},
        "chain": {"node_url": node_url, "shard": shard, "genesis_time": genesis_time,
                  "period_seconds": period_seconds, "wait_commit_ms": 1000, **(chain or {})},
        "keys": {"dev_plaintext": True, **(keys or {})},
        "meter": meters,
    }
    return toml_text(doc)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def audit_meter(queue_file: str | Path, node, sender: bytes, name: str, *, exact_counter: bool = True):
    """Check one meter's books after a gateway stopped; raises AssertionError saying what is wrong.

    ``node`` is a :class:`meters.fakenode.FakeNode`. Every period from the first to the
    open one is on chain or still queued (never both, unless it is bound to the very
    transaction the node committed while the gateway was stopped), and the energy on
    chain, queued, open and refused adds up to all the energy the gateway accounted;
    with ``exact_counter`` (no reset, rollover or re-base) that is the counter's advance.
    Returns (chain, queued, state).
    """
    store = ReadingStore(queue_file)
    try:
        state = store.load_states()[name]
        pending, _ = store.load_pending()
    finally:
        store.close()
    chain = node.readings_of(sender)
    mine = [s for s in pending if s.reading.meter == name]
    queued = {s.reading.period: (s.reading.energy_wh, s.reading.flags) for s in mine}
    for stored in mine:
        held = node.readings.get((sender, stored.reading.period))
        if held is not None:
            _require(stored.tx_id == held[2] and (stored.reading.energy_wh, stored.reading.flags) == held[:2],
                     f"{name}: period {stored.reading.period} is on chain and queued again")
            del queued[stored.reading.period]
    periods = sorted(set(chain) | set(queued))
    _require(bool(periods), f"{name}: no readings at all")
    missing = sorted(set(range(periods[0], state.open_period)) - set(periods))
    _require(not missing and periods[-1] < state.open_period, f"{name}: periods missing: {missing[:10]}")
    total = sum(e for e, _ in chain.values()) + sum(e for e, _ in queued.values()) + state.open_wh
    _require(total + state.refused_wh == state.accounted_wh,
             f"{name}: {total} Wh on chain, queued and open plus {state.refused_wh} refused != {state.accounted_wh} accounted")
    if exact_counter:
        _require(state.accounted_wh == state.last_wh - state.first_wh,
                 f"{name}: accounted {state.accounted_wh} Wh but the counter advanced {state.last_wh - state.first_wh} Wh")
    _require(node.conflicting_duplicates == 0, "a period was sent twice with different content")
    return chain, queued, state
