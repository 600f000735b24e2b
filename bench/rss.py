"""``python -m bench.rss``: node memory after a million committed transactions.

    .venv/bin/python -m bench.rss --transactions 1000000 --rate 1000

The node issue's target: RSS <= 300 MB per node after 1,000,000 transactions. Starts the
devnet of ``bench.throughput`` (BFT n=4 by default, LMDB with sync on, a token crediting
``--accounts`` accounts) and offers signed transfers at a fixed ``--rate`` in windows of
``--window`` seconds until ``--transactions`` are committed, reading every node's
memory from ``/proc`` after each window, so a leak shows as a rising line rather than
one figure at the end.

**What RSS counts.** A node's resident set has two parts. ``RssAnon`` is the node's own
memory (Python objects, caches, buffers). ``RssFile`` is mostly the store: LMDB reads
through a memory map, and every page of ``data.mdb`` the node touches stays mapped while
the kernel keeps it in its page cache. The kernel maps up to 16 neighbouring cached pages
on every fault ("fault-around", not switched off by ``MADV_RANDOM``), and blocks and the
transaction index are written moments before they are read, so on a machine with free
memory nearly the whole store ends up mapped (measured: at 150,000 transactions the
store's 52 MB were all resident, half blocks, half transaction index). Those pages are
clean page cache: the kernel drops them whenever memory is wanted, and they grow with
the store, not with the node.

So by default (``--memory-limit 256``) every node process runs in a memory cgroup of its
own whose hard limit counts the page cache too (cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``), as an operator's service manager would run it (systemd
``MemoryMax=256M``): the figures then say whether the node does its work within that
memory, reclaiming mapped store pages as it goes, rather than how much spare memory the
machine lent it. VmRSS also counts the interpreter's and libraries' pages already cached
for other processes (charged to whoever read them first, ~17 MB here), so it settles a
little above the limit: measured at 1,020,000 transactions with a 300 MB limit, VmRSS
317 MB (RssAnon 67 MB), the cgroup at its 300 MB, no OOM kill, 1,000 tx/s held
throughout. 256 MB leaves VmRSS under the node issue's 300 MB. Needs permission to
create cgroups (root here); ``--memory-limit 0`` runs without one.

Prints one JSON line::

    {"transactions", "node_rss_mb", "node_peak_rss_mb", "node_anon_mb", "node_file_mb",
     "memory_limit_mb", "cgroup_peak_mb", "oom_kills", "rss_by_window_mb", "rate", "seconds", ...}

where the ``node_*`` figures are the largest over the nodes at the end (VmRSS, VmHWM,
RssAnon, RssFile), ``cgroup_peak_mb`` the largest peak of a node's cgroup (page cache
included) and ``oom_kills`` how many times the kernel killed a node for want of memory
(any is a failure). ``rss_by_window_mb`` holds ``[committed, max VmRSS, max RssAnon]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.throughput import Bench, memory_mb
from cli.devnet import DevnetNode

__all__ = ["main"]


class MemoryCgroups:
    """One memory cgroup per node process, each with a hard limit that counts the page cache."""

    def __init__(self, limit_mb: int) -> None:
        self.limit = limit_mb << 20
        self.groups: dict[str, Path] = {}
        v2 = next((p for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                   if "memory" in _read(p / "cgroup.controllers").split()), None)
        if v2 is not None:
            self.root, self.v2 = v2, True
        elif Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
            self.root, self.v2 = Path("/sys/fs/cgroup/memory"), False
        else:
            raise RuntimeError("no memory cgroup controller here; run with --memory-limit 0")
        self.base = self.root / f"gridledger-rss-{os.getpid()}"
        try:
            self.base.mkdir()
            if self.v2:
                (self.base / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            raise RuntimeError(f"cannot create a memory cgroup under {self.root} ({exc}); "
                               "run as root or with --memory-limit 0") from None

    def launcher(self, node: DevnetNode) -> list[str]:
        """The words that start ``node`` inside its own cgroup, from its first byte of memory on."""
        group = self.groups.get(node.name)
        if group is None:
            group = self.base / node.name
            group.mkdir()
            self.groups[node.name] = group
            if self.v2:
                (group / "memory.max").write_text(str(self.limit))
                if (group / "memory.swap.max").exists():
                    (group / "memory.swap.max").write_text("0")
            else:
                (group / "memory.limit_in_bytes").write_text(str(self.limit))
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]

    def peak_mb(self) -> float:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return max((int(_read(g / name) or 0) / (1 << 20) for g in self.groups.values()), default=0.0)

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        total = 0
        for group in self.groups.values():
            for line in _read(group / name).splitlines():
                if line.startswith("oom_kill "):
                    total += int(line.split()[1])
        return total

    def remove(self) -> None:
        for group in [*self.groups.values(), self.base]:
            try:
                group.rmdir()
            except OSError:
                pass  # a process still in it; the kernel drops it once empty


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


async def _run(bench: Bench, args: argparse.Namespace, cgroups: MemoryCgroups | None) -> dict:
    load_before = os.getloadavg()
    started = time.monotonic()
    committed = 0
    by_window: list[list[float]] = []
    await bench.up()
    try:
        while committed < args.transactions:
            probe = await bench.probe(args.rate, window_s=args.window)
            committed += probe.committed
            memory = [memory_mb(pid) for pid in bench.node_pids()]
            rss = [round(m.get("VmRSS", 0.0), 1) for m in memory]
            anon = [round(m.get("RssAnon", 0.0), 1) for m in memory]
            by_window.append([committed, max(rss, default=0.0), max(anon, default=0.0)])
            print(f"  {committed:>9} committed, node RSS {rss} MB, own (anonymous) {anon} MB",
                  file=sys.stderr, flush=True)
            if not probe.drained:
                raise RuntimeError(f"the shard did not keep up with {args.rate}/s; choose a lower --rate")
        pids = bench.node_pids()
        if len(pids) != len(bench.net.nodes):
            raise RuntimeError("a node exited during the run")
        memory = [memory_mb(pid) for pid in pids]
        rss, peak, anon, mapped = ([m.get(name, 0.0) for m in memory] for name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"))
    finally:
        await bench.down()
    return {
        "transactions": committed,
        "node_rss_mb": round(max(rss, default=0.0)),
        "node_peak_rss_mb": round(max(peak, default=0.0)),
        "node_anon_mb": round(max(anon, default=0.0)),
        "node_file_mb": round(max(mapped, default=0.0)),
        "memory_limit_mb": args.memory_limit or None,
        "cgroup_peak_mb": round(cgroups.peak_mb()) if cgroups is not None else None,
        "oom_kills": cgroups.oom_kills() if cgroups is not None else None,
        "rss_by_window_mb": by_window,
        "rate": args.rate,
        "protocol": args.protocol,
        "validators": args.validators,
        "seconds": round(time.monotonic() - started),
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=1200, help="transfers offered per second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window (RSS is read after each)")
    parser.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    parser.add_argument("--validators", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--memory-limit", type=int, default=256, metavar="MB",
                        help="hard memory limit of each node's cgroup, page cache included (0: none)")
    args = parser.parse_args(argv)
    if args.validators is None:
        args.validators = 4 if args.protocol == "bft" else 3
    # What bench.throughput's Bench reads besides the above.
    args.grace, args.drain, args.param, args.rate_search = 10.0, 120.0, [], False
    root = Path(tempfile.mkdtemp(prefix="gridledger-rss-"))
    try:
        cgroups = MemoryCgroups(args.memory_limit) if args.memory_limit else None
    except RuntimeError as exc:
        print(f"bench.rss: {exc}", file=sys.stderr)
        return 2
    bench = Bench(args, root)
    bench.launcher = cgroups.launcher if cgroups is not None else None
    try:
        result = asyncio.run(_run(bench, args, cgroups))
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
        if cgroups is not None:
            cgroups.remove()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
