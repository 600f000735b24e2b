"""``python -m bench.consensus``: consensus throughput in the simulator, with real signatures.

Prints one JSON line::

    {"signatures": "ed25519", "bls": "arkworks", "ticks": int,
     "bft": {"4": {"batches_per_s", "batches_per_cpu_s", "messages_per_batch", "ticks_per_batch",
                   "batches", "seconds"}, "7": ..., "10": ...},
     "raft": {"3": {...}, "5": {...}}}

Each configuration runs the real replica code on a fault-free simulated network
(delays of 1 to 4 ticks) with real Ed25519 keys: every vote, commit signature and
certificate is signed and verified by ``ledger.crypto``. Checkpoints use BLS through
``ledger.bls`` when its compiled backend is installed, otherwise the simulator's cheap
stand-in (``"bls"`` says which). A client offers ``--load`` batches per tick for
``--ticks`` ticks. ``batches_per_s`` is batches committed (agreed heights) per second of
wall time (``batches_per_cpu_s`` per second of this process's CPU time, steadier on a
shared machine), so it measures the CPU cost of the protocol for all n replicas in one
process, signatures included, with the simulator's own overhead and its persist-before-
send checks; ``messages_per_batch`` counts every message sent, client forwarding
included. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import time

from consensus import protocols
from consensus.sim.simulator import Simulation

SIZES = {"bft": (4, 7, 10), "raft": (3, 5)}


def measure(protocol: str, n: int, *, ticks: int, load: int, bls: str, seed: int = 1) -> dict:
    spec = protocols.get(protocol)
    sim = Simulation(spec, seed, faults="clean", n=n, signatures="ed25519", bls=bls,
                     config_overrides={"max_batch_entries": 64, "checkpoint_interval": 16, "snapshot_interval": 256})
    started = time.perf_counter()  # after key generation, which is not consensus work
    cpu_started = time.process_time()
    sim.start()
    for tick in range(1, ticks + 1):
        for _ in range(load):
            sim.propose()
        sim.run_until(tick)
        if sim.violations:
            raise RuntimeError(f"{protocol} n={n}: {sim.violations[0]}")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    batches = sim.checker.top
    return {
        "batches_per_s": round(batches / elapsed, 1),
        "batches_per_cpu_s": round(batches / cpu, 1),
        "messages_per_batch": round(sim.network.sent / batches, 2) if batches else None,
        "ticks_per_batch": round(ticks / batches, 3) if batches else None,
        "batches": batches,
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.consensus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--load", type=int, default=2, help="batches offered per tick")
    parser.add_argument("--protocols", default="bft,raft")
    args = parser.parse_args()
    from ledger import bls as ledger_bls  # imported (and its backend loaded) before any timing

    backend = ledger_bls.backend_name()
    bls = "real" if backend != "py_ecc" else "cheap"
    out: dict = {"signatures": "ed25519", "bls": backend if bls == "real" else "cheap (py-ecc is too slow)",
                 "ticks": args.ticks, "load_per_tick": args.load}
    available = protocols.available()
    for protocol in args.protocols.split(","):
        if protocol not in available:
            out[protocol] = "not available"
            continue
        results = {}
        for n in SIZES[protocol]:
            try:
                results[str(n)] = measure(protocol, n, ticks=args.ticks, load=args.load, bls=bls)
            except Exception as exc:  # report, do not hide: a failing configuration shows its error
                results[str(n)] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out[protocol] = results
    print(json.dumps(out))


if __name__ == "__main__":
    main()
