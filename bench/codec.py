"""Codec throughput: strict transaction encode and decode, against raw msgpack in the same run.

    python -m bench.codec [--seconds S]

Prints one JSON line: tx_encode_per_s, tx_decode_per_s (strict: canonical check,
type walk and transaction field checks), raw_msgpack_decode_per_s (the baseline:
msgpack.unpackb alone on the same bytes), strict_overhead_ratio, tx_bytes.
"""

from __future__ import annotations

import argparse
import json
import time

import msgpack

from ledger.crypto import PrivateKey
from ledger.tx import Transaction


def _rate(fn, seconds: float) -> float:
    n = 0
    batch = 2000
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)
    key = PrivateKey(bytes(range(32)))
    recipient = PrivateKey(bytes(range(1, 33))).address.raw
    tx = Transaction.create(
        key, chain_id="ch/zurich", nonce=42, contract="fiat", function="transfer",
        args=[recipient, 125_000, "CHF"], gas_limit=50_000, expiry=1_000_000,
    )
    data = tx.encode()

    def encode_fresh():
        # A fresh object each time, so cached encodings do not flatter the figure.
        Transaction(tx.chain_id, tx.sender, tx.nonce, tx.contract, tx.function, tx.args, tx.gas_limit, tx.expiry, tx.signature).encode()

    encode_rate = _rate(encode_fresh, args.seconds)
    decode_rate = _rate(lambda: Transaction.decode(data), args.seconds)
    raw_rate = _rate(lambda: msgpack.unpackb(data), args.seconds)
    result = {
        "tx_encode_per_s": round(encode_rate),
        "tx_decode_per_s": round(decode_rate),
        "raw_msgpack_decode_per_s": round(raw_rate),
        "strict_overhead_ratio": round(raw_rate / decode_rate, 2),
        "tx_bytes": len(data),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
