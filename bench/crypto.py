"""``python -m bench.crypto``: signature speed of the ledger's two signature schemes.

Prints one JSON line::

    {"ed25519_sign_per_s": int, "ed25519_verify_per_s": int,
     "bls_backends": {name: {"sign_ms", "verify_ms", "aggregate_verify_ms"}}, ...}

Ed25519 is measured through ``ledger.crypto`` (``PrivateKey.sign`` and
``verify_signature``, domain separation included) on a 150-byte payload, the size of a
typical transaction body. ``aggregate_verify_ms`` is a fast aggregate verification of 4
signers over one checkpoint message, which is how a checkpoint certificate is checked.
Every installed BLS backend is measured; figures are medians of repeated runs (the
machine is shared, so compare ratios within one run). Total run time is ~10 s, most
of it the py-ecc reference.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from ledger import bls
from ledger.certificate import checkpoint_message
from ledger.crypto import Kind, PrivateKey, verify_signature

CHAIN_ID = "grid-north"
PAYLOAD = bytes(range(150))
SIGNERS = 4
ED25519_SECONDS = 1.0
# Per backend and operation: stop after this much time or this many runs, whichever first.
BLS_SECONDS = 0.6
BLS_MAX_RUNS = 200
BLS_MIN_RUNS = 3


def _rate(fn: Callable[[], object], seconds: float) -> int:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return int(count / (now - start))


def _median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds per call of ``fn``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < BLS_MIN_RUNS or (
        len(times) < BLS_MAX_RUNS and time.perf_counter() - start < BLS_SECONDS
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def bench_ed25519() -> dict[str, int]:
    key = PrivateKey(bytes(range(32)))
    public = key.public_key.raw
    signature = key.sign(CHAIN_ID, Kind.TX, PAYLOAD)
    if not verify_signature(public, CHAIN_ID, Kind.TX, PAYLOAD, signature):
        raise SystemExit("bench.crypto: an Ed25519 signature did not verify")
    return {
        "ed25519_sign_per_s": _rate(lambda: key.sign(CHAIN_ID, Kind.TX, PAYLOAD), ED25519_SECONDS),
        "ed25519_verify_per_s": _rate(
            lambda: verify_signature(public, CHAIN_ID, Kind.TX, PAYLOAD, signature), ED25519_SECONDS
        ),
    }


def bench_bls(name: str) -> dict[str, float]:
    scheme = bls.scheme(name)
    message = checkpoint_message(CHAIN_ID, 1_200, bytes(range(32)), bytes(range(32, 64)))
    sks = [scheme.keygen(bytes([i + 1]) * 32) for i in range(SIGNERS)]
    pks = [scheme.sk_to_pk(sk) for sk in sks]
    sigs = [scheme.sign(sk, message) for sk in sks]
    aggregate = scheme.aggregate(sigs)
    # Time the accepting path only: a bug that made verification fail fast must not pass as speed.
    if not (
        scheme.verify(pks[0], message, sigs[0])
        and scheme.fast_aggregate_verify(pks, message, aggregate)
    ):
        raise SystemExit(f"bench.crypto: BLS backend {name} rejected a valid signature")
    return {
        "sign_ms": _median_ms(lambda: scheme.sign(sks[0], message)),
        "verify_ms": _median_ms(lambda: scheme.verify(pks[0], message, sigs[0])),
        "aggregate_verify_ms": _median_ms(
            lambda: scheme.fast_aggregate_verify(pks, message, aggregate)
        ),
    }


def main() -> None:
    started = time.perf_counter()
    result: dict[str, object] = bench_ed25519()
    result["bls_backends"] = {name: bench_bls(name) for name in bls.available_backends()}
    result["bls_default_backend"] = bls.backend_name()
    result["bls_signers"] = SIGNERS
    result["payload_bytes"] = len(PAYLOAD)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
