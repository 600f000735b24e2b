"""Validators killed with SIGKILL under load lose no committed transaction and never fork.

Four BFT validators and an observer run as real processes; six client senders
submit token transfers continuously (batches with ``wait=commit``, resubmitted to the
next validator when an answer does not come). Every cycle a validator is killed with
SIGKILL (every other cycle the current leader, found through ``/v1/status``), restarted
after a short pause, and must catch up with the others before the next cycle. At the
end every node, the observer included, must hold every transaction a client saw
committed, at the same height and index, and the same block header at every height.

``make test`` runs the short form (6 cycles). The long form is its own command::

    GRIDLEDGER_CRASH_CYCLES=50 .venv/bin/pytest tests/test_crash_recovery.py
    .venv/bin/python tests/soak_crash.py --cycles 50      # the same, printing a JSON summary

``GRIDLEDGER_CRASH_PROTOCOL=raft`` runs it on three Raft validators instead, and
``GRIDLEDGER_CRASH_SEED`` changes the schedule of kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest
from nodeproc import (
    HarnessError,
    Stop,
    TransferLoad,
    check_alive,
    deploy_token,
    devnet,
    fetch_chain,
    heights,
    leader_of,
    log_tail,
    logs,
    tx_status_everywhere,
    wait_for,
    wait_height,
    wait_ready,
)

from ledger.crypto import PrivateKey

CYCLES = int(os.environ.get("GRIDLEDGER_CRASH_CYCLES", "6"))
PROTOCOL = os.environ.get("GRIDLEDGER_CRASH_PROTOCOL", "bft")
SEED = int(os.environ.get("GRIDLEDGER_CRASH_SEED", "20260301"))
# A restarted validator must be back at the height the others had when it restarted
# within this time (replaying what it missed from its peers); a generous bound for a
# loaded 2-core machine, not a performance target.
CATCH_UP_S = 60.0
# After a restart the shard must commit again within this time (view changes included).
PROGRESS_S = 30.0


def _grown(load: TransferLoad, count: int):
    async def check() -> bool:
        return len(load.committed) >= count

    return check


async def crash_run(root: Path, *, cycles: int, seed: int, protocol: str = "bft", validators: int = 4,
                    senders: int = 6, batch: int = 5, log=print) -> dict:
    """Kill and restart validators ``cycles`` times under load, then check every node; returns figures."""
    rng = random.Random(seed)
    keys = [PrivateKey(rng.randbytes(32)) for _ in range(senders)]
    with devnet(root, protocol=protocol, validators=validators, observers=1) as net:
        await deploy_token(net, keys)
        vals = net.validators()
        load = TransferLoad([v.url for v in vals], net.chain_id, keys, batch=batch, seed=seed)
        stop = Stop()
        load_task = asyncio.create_task(load.run(stop))
        kills: list[dict] = []
        started = time.monotonic()
        try:
            for cycle in range(cycles):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                if load_task.done():
                    load_task.result()  # the load failed: raise its error
                check_alive(net)
                leader = await leader_of(vals)
                victim = leader if (cycle % 2 == 0 and leader is not None) else rng.choice(vals)
                committed_before = len(load.committed)
                net.kill(victim.name)
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                net.start([victim.name])
                await asyncio.to_thread(wait_ready, net, [victim.name])
                others = [v for v in vals if v is not victim]
                target = max(h for h in (await heights(others)).values() if h is not None)
                try:
                    await wait_height([victim], target, CATCH_UP_S, f"{victim.name} catching up after SIGKILL", net)
                except HarnessError as exc:
                    raise HarnessError(f"cycle {cycle}: {exc}\n{log_tail(net, victim, 40)}") from None
                # Liveness: with at most f validators down at once the shard keeps committing.
                restarted = len(load.committed)
                try:
                    await wait_for(_grown(load, restarted + batch), PROGRESS_S, "transactions committed after the restart")
                except HarnessError as exc:
                    raise HarnessError(f"cycle {cycle} ({victim.name} killed): {exc}; "
                                       f"heights {await heights(net.nodes)}\n{logs(net, 12)}") from None
                kills.append({"cycle": cycle, "victim": victim.name, "was_leader": victim is leader,
                              "committed_during": len(load.committed) - committed_before})
                log(f"cycle {cycle}: killed {victim.name}{' (leader)' if victim is leader else ''}, "
                    f"caught up to {target}; {len(load.committed)} committed so far")
        except BaseException:
            load.give_up_s = 0.0  # the test failed: do not wait for the load to finish
            raise
        finally:
            stop.set()
            await asyncio.wait_for(load_task, 120)
        elapsed = time.monotonic() - started
        verify_started = time.monotonic()

        # Convergence: every node, observer included, reaches the highest height a client saw.
        seen_top = max((h for h, _ in load.committed.values()), default=0)
        await wait_height(net.nodes, seen_top, CATCH_UP_S, "every node at the highest committed height seen", net)
        top = min((await heights(net.nodes)).values())
        chains = await asyncio.gather(*(fetch_chain(n, top) for n in net.nodes))
        statuses = await tx_status_everywhere(net.nodes, list(load.committed))
        verify_s = time.monotonic() - verify_started

    reference = chains[0]
    for chain in chains[1:]:
        for h in range(top + 1):
            assert chain.headers[h] == reference.headers[h], (
                f"{chain.name} and {reference.name} differ at height {h}:\n{chain.headers[h]}\n{reference.headers[h]}"
            )
    for chain in chains:
        where = chain.location()
        missing = [t.hex() for t, at in load.committed.items() if where.get(t.hex()) != at]
        assert not missing, f"{chain.name} lacks {len(missing)} committed transactions (first {missing[:3]})"
    for name, seen in statuses.items():
        wrong = {t.hex(): s for t, s in seen.items() if s != ("committed", *load.committed[t])}
        assert not wrong, f"{name} answers GET /v1/tx differently for {len(wrong)} transactions: {list(wrong.items())[:3]}"
    assert not load.errors, f"transactions refused: {load.errors[:5]}"
    return {
        "protocol": protocol,
        "validators": validators,
        "cycles": cycles,
        "leader_kills": sum(k["was_leader"] for k in kills),
        "committed_seen": len(load.committed),
        "height": top,
        "seconds": round(elapsed, 1),
        "verify_seconds": round(verify_s, 1),
        "failovers": load.failovers,
        "stalled_cycles": sum(k["committed_during"] == 0 for k in kills),
    }


@pytest.mark.slow
def test_sigkill_random_validator_under_load_loses_no_committed_transaction(tmp_path):
    assert CYCLES >= 1
    validators = 4 if PROTOCOL == "bft" else 3
    result = asyncio.run(crash_run(tmp_path / "net", cycles=CYCLES, seed=SEED, protocol=PROTOCOL, validators=validators))
    print(result)
    assert result["leader_kills"] >= min(CYCLES, 2) // 2
    # The load kept committing while validators died: at most one of n is down at a time.
    assert result["committed_seen"] >= 10 * CYCLES
