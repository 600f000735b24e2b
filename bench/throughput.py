"""``python -m bench.throughput``: committed token transfers per second on a local devnet.

    .venv/bin/python -m bench.throughput --protocol bft --validators 4
    .venv/bin/python -m bench.throughput --protocol raft --validators 3 --profile /tmp/prof

Starts a devnet of real node processes (``cli.devnet``, no observer, LMDB with sync on)
in a temporary directory, deploys a token crediting ``--accounts`` accounts, and offers
signed transfers from ``--workers`` client processes. Each worker signs its share of a
probe *before* the probe starts, then submits it at the offered rate in batches
(``POST /v1/txs``, rotating over the validators). The offered rate is searched:
doubling from ``--start-rate`` until a rate fails, then bisecting. A rate **holds** when
at least 90 % of the transactions offered in a ``--window`` of seconds are committed
within the window plus ``--grace`` seconds. A poller follows the blocks of one validator
and stamps each transaction with the time its block was first seen, so commit latency
is that time minus the submission time (a few tens of ms of polling included).

Prints one JSON line::

    {"protocol", "validators", "max_committed_tx_per_s", "p50_commit_ms", "p99_commit_ms",
     "cpu_s_per_1000_tx", "ed25519_bound_tx_per_s", "node_rss_mb", "stalled_after_rates",
     "load_average", "probes": [...], ...}

Each probe lists the non-empty blocks first seen in its window and their mean size
(``txs_per_block``): a size at ``block_max_txs`` means the block cap, not CPU, limits
the rate. ``load_average`` is the machine's 1-minute load when the run began and ended.

A failing rate leaves a backlog; the next probe starts once it is committed (at most
``--drain`` seconds). Transactions a node refused as ``busy`` (its backlog is full) are
resubmitted meanwhile, in nonce order, as a client retries them (``retried`` in a
probe's summary); dropped, they would leave nonce gaps that keep every later
transaction of their accounts waiting. A shard that does not work off its backlog in
that time is reported in ``stalled_after_rates`` and replaced by a fresh devnet, so one
overload that wedges the shard does not hide the figures of the rates below it.

``max_committed_tx_per_s`` is the committed rate (in time) of the highest holding
probe; p50 and p99 are measured at half that rate; ``cpu_s_per_1000_tx`` is CPU seconds
of all node processes per 1,000 transactions committed in the highest holding probe;
``ed25519_bound_tx_per_s`` is this process's Ed25519 verifications per second divided by
the number of validators (every validator verifies every transaction once). All
processes share this machine, clients included: compare figures within one run.

``--profile DIR`` finally offers one more window at the highest holding rate with
``py-spy record`` attached to every node (``pip install py-spy`` into the venv first),
writing collapsed stacks to DIR/<node>.txt and a summary of where time goes to
DIR/summary.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TOKEN_SOURCE", "main"]

TOKEN_SOURCE = '''
"""A fungible token for load: balances, one minter, transfers that emit an event."""

balances = Map(default=0)
minter = Value(default=None)
Transfer = Event("sender", "to", "amount", indexed=["sender", "to"])


@constructor
def setup(holders: list, amount: int):
    minter.set(ctx.sender)
    credit(holders, amount)


@export
def mint(holders: list, amount: int):
    require(ctx.sender == minter.get(), "only the minter mints")
    credit(holders, amount)


def credit(holders, amount):
    require(amount > 0, "amount must be positive")
    for holder in holders:
        balances[Address(holder)] += amount


@export
def transfer(to: Address, amount: int):
    require(amount > 0, "amount must be positive")
    require(balances[ctx.sender] >= amount, "insufficient balance")
    balances[ctx.sender] -= amount
    balances[to] += amount
    Transfer.emit(sender=ctx.sender, to=to, amount=amount)
'''

HOLD_FRACTION = 0.9
TICK_S = 0.05  # workers submit what is due every tick
MAX_BATCH = 1000  # the API's batch limit
MINT_CHUNK = 2000  # holders credited per deploy/mint transaction (about 3.5 M gas)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def account_seed(i: int) -> bytes:
    return hashlib.sha256(b"gridledger bench account %d" % i).digest()


# ---------------------------------------------------------------------- client worker processes


def _worker(conn, urls: list[str], chain_id: str, seeds: list[bytes], recipients: list[bytes]) -> None:
    """One client process: signs transfers for its accounts, submits them at a paced rate."""
    from ledger.crypto import PrivateKey
    from ledger.httpclient import Client
    from ledger.tx import Transaction

    keys = [PrivateKey(s) for s in seeds]
    nonces = [0] * len(keys)
    prepared: list[tuple[bytes, bytes, int]] = []  # (tx id, encoded, account index)
    retry: list[tuple[bytes, bytes, int]] = []  # refused as busy in the last probe, in nonce order
    loop = asyncio.new_event_loop()
    clients = [Client(u, timeout=60.0, max_connections=16) for u in urls]
    turn = 0
    try:
        while True:
            command, *args = conn.recv()
            if command == "prepare":
                (count,) = args
                prepared = []
                for n in range(count):
                    a = (turn + n) % len(keys)
                    tx = Transaction.create(keys[a], chain_id=chain_id, nonce=nonces[a], contract="token",
                                            function="transfer", args=[recipients[(turn + 7 * n) % len(recipients)], 1])
                    nonces[a] += 1
                    prepared.append((tx.tx_id, tx.encode(), a))
                turn += count
                conn.send(len(prepared))
            elif command == "go":
                start_at, rate = args
                result = loop.run_until_complete(_submit_all(clients, prepared, start_at, rate))
                retry = result.pop("retry")
                conn.send(result)
            elif command == "retry":
                (until,) = args
                conn.send(loop.run_until_complete(_retry(clients, retry, until)))
            elif command == "resync":
                (dirty,) = args
                conn.send(loop.run_until_complete(_resync(clients[0], keys, nonces, dirty)))
            elif command == "stop":
                return
    finally:
        for c in clients:
            loop.run_until_complete(c.close())
        loop.close()


# Refusals a client retries shortly (the node said so); any other refusal makes the
# worker take the account's next nonce from the node before its next probe.
RETRY_CODES = frozenset({"busy", "mempool_full"})


async def _submit_all(clients, prepared, start_at: float, rate: float) -> dict:
    """Submit ``prepared`` at ``rate`` per second from ``start_at``; returns what was accepted when.

    Items refused with a retry code are kept (``retry``, in nonce order) for :func:`_retry`:
    a client that drops them would leave a gap in its account's nonces, and every later
    transaction of that account would wait in the mempool for ever.
    """
    from ledger.httpclient import ApiError

    sent: list[tuple[bytes, float]] = []
    rejected: dict[str, int] = {}
    dirty: set[int] = set()
    retry: list[tuple[int, tuple[bytes, bytes, int]]] = []
    tasks = []
    turn = 0

    def refused(position: int, item: tuple[bytes, bytes, int], code: str) -> None:
        rejected[code] = rejected.get(code, 0) + 1
        if code in RETRY_CODES:
            retry.append((position, item))
        else:
            dirty.add(item[2])

    async def submit(client, first: int, batch) -> None:
        at = time.monotonic()
        try:
            results = await client.submit_many([raw for _, raw, _ in batch])
        except ApiError as exc:
            for i, item in enumerate(batch):
                refused(first + i, item, exc.code)
            return
        for i, (item, r) in enumerate(zip(batch, results, strict=True)):
            if r.status in ("pending", "committed"):
                sent.append((item[0], at))
            else:
                refused(first + i, item, r.error[0] if r.error else r.status)

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    done = 0
    while done < len(prepared):
        due = min(len(prepared), int((time.monotonic() - start_at + TICK_S) * rate))
        while done < due:
            batch = prepared[done:min(due, done + MAX_BATCH)]
            tasks.append(asyncio.create_task(submit(clients[turn % len(clients)], done, batch)))
            done += len(batch)
            turn += 1
        await asyncio.sleep(TICK_S)
    finished = time.monotonic()
    await asyncio.gather(*tasks)
    retry.sort(key=lambda r: r[0])
    return {"sent": sent, "rejected": rejected, "dirty": sorted(dirty), "send_s": finished - start_at,
            "retry": [item for _, item in retry]}


async def _retry(clients, items: list[tuple[bytes, bytes, int]], until: float) -> dict:
    """Resubmit refused items in nonce order, backing off while the node is busy, until ``until``.

    Returns the accepted ones (``sent``, not counted as in time) and the accounts whose
    items were still refused, or refused for another reason (``dirty``).
    """
    from ledger.httpclient import ApiError

    sent: list[tuple[bytes, float]] = []
    dirty: set[int] = set()
    delay = 0.1
    turn = 0
    while items and time.monotonic() < until:
        batch = items[:MAX_BATCH]
        try:
            results = await clients[turn % len(clients)].submit_many([raw for _, raw, _ in batch])
        except ApiError:
            results = None
        turn += 1
        left = []
        if results is not None:
            for item, r in zip(batch, results, strict=True):
                if r.status in ("pending", "committed"):
                    sent.append((item[0], time.monotonic()))
                elif r.error and r.error[0] in RETRY_CODES:
                    left.append(item)
                else:
                    dirty.add(item[2])
        else:
            left = batch
        items = left + items[MAX_BATCH:]
        if left:
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
        else:
            delay = 0.1
    dirty.update(a for _, _, a in items)
    return {"sent": sent, "dirty": sorted(dirty)}


async def _resync(client, keys, nonces: list[int], dirty: list[int]) -> int:
    """Take the next nonce of accounts whose transactions were refused from the node."""
    for a in dirty:
        nonces[a] = await client.next_nonce(keys[a].address)
    return len(dirty)


# ---------------------------------------------------------------------- the parent


@dataclass
class Probe:
    rate: int
    offered: int = 0
    accepted: int = 0
    committed_in_time: int = 0
    committed: int = 0
    cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    window_s: float = 0.0
    drained: bool = True  # every accepted transaction committed before the drain deadline
    retried: int = 0  # refused as busy in the window, accepted when resubmitted during the drain
    blocks: int = 0  # blocks first seen within the window and its grace
    block_txs: int = 0  # their transactions

    @property
    def holds(self) -> bool:
        return self.committed_in_time >= HOLD_FRACTION * self.offered

    @property
    def committed_per_s(self) -> float:
        return self.committed_in_time / self.window_s

    def summary(self) -> dict:
        out = {"rate": self.rate, "offered": self.offered, "committed_in_time": self.committed_in_time,
               "holds": self.holds, "committed_per_s": round(self.committed_per_s)}
        if self.rejected:
            out["rejected"] = self.rejected
        if self.retried:
            out["retried"] = self.retried
        if self.blocks:
            out["blocks"] = self.blocks
            out["txs_per_block"] = round(self.block_txs / self.blocks)
        if not self.drained:
            out["drained"] = False
        return out


class BlockWatcher:
    """Follows the blocks of one node; remembers when each transaction's block was first seen."""

    def __init__(self, url: str, poll_s: float = 0.02) -> None:
        from ledger.httpclient import Client

        self.client = Client(url, timeout=30.0)
        self.poll_s = poll_s
        self.height = -1
        self.seen: dict[bytes, float] = {}
        self.blocks: list[tuple[float, int]] = []  # (first seen, transactions) of each block

    async def run(self) -> None:
        from ledger.httpclient import ApiError

        while True:
            try:
                _, latest = await self.client.request("GET", "/v1/blocks/latest")
                now = time.monotonic()
                top = int(latest["header"]["height"])
                for h in range(self.height + 1, top + 1):
                    body = latest if h == top else (await self.client.request("GET", f"/v1/blocks/{h}"))[1]
                    for t in body["tx_ids"]:
                        self.seen.setdefault(bytes.fromhex(t), now)
                    self.blocks.append((now, len(body["tx_ids"])))
                    self.height = h
            except ApiError:
                pass
            await asyncio.sleep(self.poll_s)


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
    return total / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """A process's memory figures in MB from one read of ``/proc/PID/status`` (VmRSS,
    VmHWM, RssAnon, RssFile...); empty when the process is gone."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if rest.endswith(" kB"):
            out[name] = int(rest.split()[0]) / 1024
    return out


def _rss_mb(pid: int) -> float:
    return memory_mb(pid).get("VmRSS", 0.0)


def ed25519_verifications_per_s(seconds: float = 1.0) -> float:
    from ledger.crypto import Kind, PrivateKey, verify_signature

    key = PrivateKey(account_seed(10**9))
    payload = b"x" * 120  # about a transfer's signed body
    signature = key.sign("ch", Kind.TX, payload)
    public = key.public_key.raw
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            verify_signature(public, "ch", Kind.TX, payload, signature)
        count += 200
    return count / (time.perf_counter() - started)


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.net = None
        self.launcher = None  # cli.devnet.Devnet.launcher for the nodes it starts
        self.workers: list = []
        self.watcher: BlockWatcher | None = None
        self._watch: asyncio.Task | None = None
        self.probes: list[Probe] = []
        self.stalls: list[int] = []  # offered rates after which the shard did not recover
        # Blocks of up to 1,000 transfers: at the highest rates the devnet's 500 (kept short
        # for the test suite's loaded machine) is the limit, not the CPU (measured +10-18 %
        # with the same p99). --param block_max_txs=... overrides it.
        self.params = {"block_max_txs": 1000} | dict(_param(p) for p in args.param)

    # ------------------------------------------------------------------ set-up

    async def up(self) -> None:
        """A fresh devnet with the token deployed, a block watcher and the client workers."""
        self.start_devnet()
        await self.deploy()
        self.watcher = BlockWatcher(self.net.validators()[0].url)
        self._watch = asyncio.create_task(self.watcher.run())
        self.start_workers()

    async def down(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await self.watcher.client.close()
            self._watch = None
        self.close()

    async def restart(self) -> None:
        """After an overload the shard did not recover from: go on measuring on a fresh devnet."""
        print(f"  the shard did not drain its backlog after {self.probes[-1].rate}/s: restarting the devnet",
              file=sys.stderr)
        self.stalls.append(self.probes[-1].rate)
        await self.down()
        await self.up()

    def start_devnet(self) -> None:
        from cli.devnet import Devnet

        a = self.args
        # No energy market in genesis: the load is plain token transfers from any account.
        self.net = Devnet.create(self.root / f"net-{len(self.stalls)}", validators=a.validators, observers=0,
                                 protocol=a.protocol, params=self.params, market=False)
        self.net.launcher = self.launcher
        self.net.start()
        try:
            self.net.wait_ready(120)
        except SystemExit as exc:
            raise RuntimeError(str(exc)) from None

    async def deploy(self) -> None:
        from ledger.client import Account
        from ledger.crypto import PrivateKey
        from ledger.httpclient import Client

        net = self.net
        holders = [PrivateKey(account_seed(i)).address.raw for i in range(self.args.accounts)]
        operator = Account(net.account_key("operator"), chain_id=net.chain_id, gas_limit=10_000_000)
        async with Client(net.validators()[0].url, timeout=60.0) as c:
            calls = [("system", "deploy", ["token", TOKEN_SOURCE, [holders[:MINT_CHUNK], 10**15]])]
            calls += [("token", "mint", [holders[i:i + MINT_CHUNK], 10**15])
                      for i in range(MINT_CHUNK, len(holders), MINT_CHUNK)]
            for contract, function, args in calls:
                r = await c.submit(operator.call(contract, function, args), wait=True, timeout_s=60)
                if not r.ok:
                    raise RuntimeError(f"token set-up failed: {r.status} {r.receipt and r.receipt.error}")

    def start_workers(self) -> None:
        from ledger.crypto import PrivateKey

        a = self.args
        ctx = multiprocessing.get_context("spawn")
        urls = [v.url for v in self.net.validators()]
        recipients = [PrivateKey(account_seed(a.accounts + i)).address.raw for i in range(64)]
        for w in range(a.workers):
            seeds = [account_seed(i) for i in range(w, a.accounts, a.workers)]
            parent, child = ctx.Pipe()
            # Each worker starts with a different validator so batches spread over all of them.
            rotated = urls[w % len(urls):] + urls[:w % len(urls)]
            proc = ctx.Process(target=_worker, args=(child, rotated, self.net.chain_id, seeds, recipients), daemon=True)
            proc.start()
            self.workers.append((proc, parent))

    def node_pids(self) -> list[int]:
        return [n.pid for n in self.net.nodes if n.pid]

    # ------------------------------------------------------------------ one probe

    async def probe(self, rate: int, *, window_s: float | None = None) -> Probe:
        a = self.args
        window_s = window_s or a.window
        p = Probe(rate, window_s=window_s)
        total = int(rate * window_s)
        shares = [total // a.workers + (1 if w < total % a.workers else 0) for w in range(a.workers)]
        loop = asyncio.get_running_loop()
        for (_, conn), share in zip(self.workers, shares, strict=True):
            conn.send(("prepare", share))
        await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for _, conn in self.workers))
        p.offered = total
        start_at = time.monotonic() + 0.3
        cpu_before = _cpu_s(self.node_pids())
        for (_, conn), share in zip(self.workers, shares, strict=True):
            conn.send(("go", start_at, rate * share / total if total else rate))
        results = await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for _, conn in self.workers))
        deadline = start_at + window_s + a.grace
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        sent = [s for r in results for s in r["sent"]]
        for r in results:
            for code, n in r["rejected"].items():
                p.rejected[code] = p.rejected.get(code, 0) + n
        p.accepted = len(sent)
        seen = self.watcher.seen
        p.committed_in_time = sum(1 for t, _ in sent if seen.get(t, float("inf")) <= deadline)
        in_window = [n for at, n in self.watcher.blocks if start_at <= at <= deadline and n]
        p.blocks, p.block_txs = len(in_window), sum(in_window)
        # Let the backlog drain before the next probe; its CPU counts against this probe.
        # Transactions refused as busy are resubmitted meanwhile, as a client does.
        drain_deadline = time.monotonic() + a.drain
        for _, conn in self.workers:
            conn.send(("retry", drain_deadline))
        retried = await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for _, conn in self.workers))
        late = [s for r in retried for s in r["sent"]]
        while time.monotonic() < drain_deadline and any(t not in seen for t, _ in sent + late):
            await asyncio.sleep(0.1)
        p.cpu_s = _cpu_s(self.node_pids()) - cpu_before
        p.committed = sum(1 for t, _ in sent if t in seen)
        p.retried = len(late)
        p.drained = p.committed == p.accepted and all(t in seen for t, _ in late) and not any(r["dirty"] for r in retried)
        p.latencies_ms = [(seen[t] - at) * 1000 for t, at in sent if t in seen]
        dirty = [sorted(set(r["dirty"]) | set(q["dirty"])) for r, q in zip(results, retried, strict=True)]
        if any(dirty):
            for (_, conn), d in zip(self.workers, dirty, strict=True):
                conn.send(("resync", d))
            await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for _, conn in self.workers))
        self.probes.append(p)
        print(f"  rate {rate:>6}/s: {p.committed_in_time}/{p.offered} committed in time "
              f"({p.committed_per_s:.0f}/s), {p.committed} in all, node CPU {p.cpu_s:.1f} s"
              f"{', rejected ' + str(p.rejected) if p.rejected else ''}", file=sys.stderr)
        return p

    async def search(self) -> Probe | None:
        a = self.args
        best: Probe | None = None
        failed: int | None = None
        rate = a.start_rate
        while failed is None and rate <= a.max_rate:
            p = await self.probe(rate)
            if p.holds:
                best = p
                rate *= 2
            else:
                failed = rate
        low = best.rate if best else 0
        for _ in range(a.bisect):
            if failed is None or failed - low <= max(50, low * 0.08):
                break
            if not self.probes[-1].drained:
                await self.restart()
            mid = (low + failed) // 2
            p = await self.probe(mid)
            if p.holds:
                best, low = (p if best is None or p.committed_per_s > best.committed_per_s else best), mid
            else:
                failed = mid
        return best

    # ------------------------------------------------------------------ profile

    async def profile(self, rate: int, directory: Path) -> Probe | None:
        """One probe at ``rate`` with py-spy recording every node."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            print("  --profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
            return None
        directory.mkdir(parents=True, exist_ok=True)
        duration = int(self.args.window + self.args.grace)
        spies = [subprocess.Popen([py_spy, "record", "--pid", str(n.pid), "--duration", str(duration), "--rate", "200",
                                   "--format", "raw", "--nonblocking", "--output", str(directory / f"{n.name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for n in self.net.nodes if n.pid]
        await asyncio.sleep(1.0)
        p = await self.probe(rate)
        for spy in spies:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)
        (directory / "summary.txt").write_text(summarise_profiles(sorted(directory.glob("*-*.txt"))))
        return p

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict:
        a = self.args
        load_before = os.getloadavg()
        bound = ed25519_verifications_per_s() / a.validators
        await self.up()
        try:
            if a.rate:
                best = await (self.profile(a.rate, Path(a.profile)) if a.profile else self.probe(a.rate))
            else:
                best = await self.search()
            half = None
            if best is not None:
                if not self.probes[-1].drained:
                    await self.restart()
                half = await self.probe(max(1, best.rate // 2))
                if a.profile and not a.rate:
                    await self.profile(best.rate, Path(a.profile))
            rss = max((_rss_mb(pid) for pid in self.node_pids()), default=0.0)
        finally:
            await self.down()
        lat = sorted(half.latencies_ms) if half and half.latencies_ms else []
        p99 = _percentile(lat, 99, half.offered) if lat else None
        return {
            "protocol": a.protocol,
            "validators": a.validators,
            "max_committed_tx_per_s": round(best.committed_per_s) if best and best.holds else 0,
            "p50_commit_ms": round(statistics.median(lat)) if lat else None,
            # None when more than 1 % of the half rate's transactions never committed.
            "p99_commit_ms": round(p99) if p99 is not None and p99 != float("inf") else None,
            "cpu_s_per_1000_tx": round(1000 * best.cpu_s / best.committed, 3) if best and best.committed else None,
            "ed25519_bound_tx_per_s": round(bound),
            "node_rss_mb": round(rss),
            "committed_total": sum(p.committed for p in self.probes),
            "stalled_after_rates": self.stalls + ([self.probes[-1].rate] if self.probes and not self.probes[-1].drained else []),
            "params": self.params,
            # The machine is shared: the 1-minute load average when the run began and ended.
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "half_rate": half.rate if half else None,
            "mode": "fixed_rate" if a.rate else "search",
            "probes": [p.summary() for p in self.probes],
        }

    def close(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        self.workers = []
        if self.net is not None:
            self.net.stop(timeout_s=10.0)
            self.net = None


def _param(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if not name or not value.isdigit():
        raise SystemExit(f"error: --param takes NAME=VALUE with an integer value, got {text!r}")
    return name, int(value)


def _percentile(sorted_ms: list[float], q: float, offered: int) -> float:
    """The q-th percentile of commit latency over all offered transactions (never committed: infinite)."""
    rank = max(0, int(round(q / 100 * offered + 0.5)) - 1)
    if rank >= len(sorted_ms):
        return float("inf")
    return sorted_ms[rank]


# Where a node spends its time: the activity a sample belongs to (the outermost matching
# frame) and the kind of work at its leaf (the innermost matching frame).
PHASES = (  # in priority order: inbound peer frames arrive through the HTTP server too
    ("leader builds a block", ("Chain.build",)),
    ("validating proposals", ("Chain.validate", "Chain.check_proposal")),
    ("committing blocks", ("Chain.commit", "Node._consensus_commit")),
    ("catching up", ("Node._catch_up", "BlockSource.apply_next")),
    ("consensus messages", ("ConsensusDriver.", "Replica.")),
    ("admission: gossip", ("Node._admit_gossip",)),
    ("admission: API", ("SubmitHandlers.submit", "Node.submit_many", "Node.submit ")),
    ("API reads", ("ReadHandlers.", "SubmitHandlers.get_tx", "EventHandlers.")),
    ("peer transport", ("PeerMesh.", "WebSocket", "peer_protocol")),
    ("HTTP server", ("RequestHandler.", "web_protocol")),
    ("idle (event loop waits)", ("select (selectors", "EpollSelector.select")),
)
WORK = (
    ("ed25519", ("crypto_sign_open", "crypto_sign ", "verify_signature", "PrivateKey.sign")),
    ("BLS", ("bls.", "/bls.py", "arkworks", "py_ecc")),
    ("LMDB write + fsync", ("_WriteTxn.__exit__",)),
    ("state tree (roots, proofs)", ("state_tree.py", "StateDB.prepare", "TreeBatch")),
    ("state reads", ("StateDB.get", "Store.get", "state_db.py")),
    ("contract runtime", ("contracts/runtime",)),
    ("block/tx decoding", ("Block.decode", "Transaction.decode", "Transaction.from_fields")),
    ("canonical msgpack", ("ledger/codec.py", "msgpack")),
    ("JSON", ("json/", "api_json.py")),
    ("TLS / websocket", ("ssl.py", "sslproto.py", "_websocket", "http_websocket")),
    ("hashing", ("tagged_hash", "hashlib", "merkle.py")),
    ("mempool bookkeeping", ("mempool.py",)),
    ("HTTP (aiohttp)", ("aiohttp/",)),
)


def _activity(frames: list[str]) -> str:
    """The first activity of PHASES (in table order) that any frame of the stack belongs to."""
    for name, markers in PHASES:
        if any(m in frame for frame in frames for m in markers):
            return name
    return "other"


def _work(frames: list[str]) -> str:
    """The kind of work of the innermost frame that has one."""
    for frame in reversed(frames):
        for name, markers in WORK:
            if any(m in frame for m in markers):
                return name
    return "other"


def _frame_name(frame: str) -> str:
    function, _, where = frame.rpartition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def summarise_profiles(paths: list[Path], top: int = 25) -> str:
    """Where the nodes' time goes, from the collapsed stacks py-spy wrote (one file per node)."""
    own: dict[str, int] = {}
    matrix: dict[tuple[str, str], int] = {}
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            leaf = _frame_name(frames[-1])
            own[leaf] = own.get(leaf, 0) + n
            key = (_activity(frames), _work(frames))
            matrix[key] = matrix.get(key, 0) + n
    if not total:
        return "no samples\n"
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    lines = [f"{total} samples over {len(paths)} nodes", "", "by activity (and the work inside it):"]
    for phase in sorted({p for p, _ in matrix}, key=lambda p: -sum(n for (q, _), n in matrix.items() if q == p)):
        inside = sorted(((w, n) for (q, w), n in matrix.items() if q == phase), key=lambda kv: -kv[1])
        lines.append(f"  {pct(sum(n for _, n in inside))}  {phase}: " + ", ".join(f"{w} {pct(n).strip()}" for w, n in inside[:6]))
    lines += ["", "by work (all activities):"]
    works: dict[str, int] = {}
    for (_, w), n in matrix.items():
        works[w] = works.get(w, 0) + n
    lines += [f"  {pct(n)}  {w}" for w, n in sorted(works.items(), key=lambda kv: -kv[1])]
    lines += ["", "self time, top functions:"]
    lines += [f"  {pct(n)}  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    parser.add_argument("--validators", type=int, default=None, help="default: 4 for BFT, 3 for Raft")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--window", type=float, default=4.0, help="seconds a rate is offered")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds after the window to commit")
    parser.add_argument("--drain", type=float, default=30.0, help="at most this long for a backlog to drain")
    parser.add_argument("--start-rate", type=int, default=500)
    parser.add_argument("--max-rate", type=int, default=64_000)
    parser.add_argument("--bisect", type=int, default=3, help="bisection steps after the first failing rate")
    parser.add_argument("--rate", type=int, help="offer this one rate (and its half) instead of searching")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a genesis parameter for the devnet (e.g. block_max_txs=500); repeatable")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the nodes in a last window at the highest rate")
    parser.add_argument("--keep", action="store_true", help="keep the devnet directory")
    args = parser.parse_args(argv)
    if args.validators is None:
        args.validators = 4 if args.protocol == "bft" else 3
    root = Path(tempfile.mkdtemp(prefix="gridledger-bench-"))
    bench = Bench(args, root)
    try:
        result = asyncio.run(bench.run())
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
