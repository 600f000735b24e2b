"""``gridledger devnet up --topology genesis/three-levels.toml``: a shard tree of real processes.

Every shard of the topology is its own chain with its own validators, its own genesis
(with the ``topology`` section: the document and the neighbours' genesis validator
sets) and the energy market deployed (a grid operator per shard, one bank issuing the
currency in every shard, the story's consumers and producers). Processes stay few, as
on a grid operator's machine that validates at several levels:

* ``validator-<i>``: one process per operator index, serving every shard in which it
  is validator i (``gridledger node run --config a.toml --config b.toml ...``);
* ``observers``: one process with an observer of every shard;
* ``relayer-<j>``: ``gridledger relay``, serving every channel of the tree.

Layout under the devnet directory: ``topology.toml`` (a copy), ``shards/<slug>/genesis.json``
(slug: the shard id with ``/`` written ``.``), ``keys/`` (development keys, plaintext),
``processes/<name>/`` (one node config per shard served, its log) and ``data/<name>/<slug>/``.
``devnet.json`` records ports and process ids; ports are chosen once, so ``up`` after
``down`` restarts the same tree with its data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.devnet import _alive, _get, _reap, signal_process
from ledger.crypto import PrivateKey
from ledger.keystore import load_key, save_key

__all__ = ["DEFAULT_STORY", "ShardDevnet", "ShardNode", "derive_topology", "slug"]

# Blocks and timeouts for many nodes sharing two cores: 50 ms ticks keep idle
# replicas cheap; a block is proposed every 50 ms while transactions wait.
SHARD_DEVNET_PARAMS = {"block_interval_ms": 50, "view_timeout_ms": 2000, "tick_ms": 50, "block_max_txs": 500}

# name -> {shard: roles}. The cross-shard story of the three-level tree: a consumer in
# Oerlikon buys from a producer in Breitenrain; "*" means every shard. A tree without
# those shards gets a consumer in its first leaf and a producer in its last.
DEFAULT_STORY: dict[str, dict[str, list[str]]] = {
    "consumer": {"ch/zurich/oerlikon": ["consumer"]},
    "producer": {"ch/bern/breitenrain": ["producer"]},
}


def derive_topology(text: str, *, validators: int | None = None, period_s: int | None = None,
                    genesis_time: int | None = None) -> str:
    """A copy of a topology document with every shard's validator count, the period or the
    genesis time replaced (a lighter tree for tests and benchmarks; short periods so that
    delivery, hence settlement, begins within seconds)."""
    import re

    if validators is not None:
        text = re.sub(r"(?m)^validators\s*=\s*\d+", f"validators = {validators}", text)
    if period_s is not None:
        text = re.sub(r"(?m)^period_s\s*=\s*\d+", f"period_s = {period_s}", text)
    if genesis_time is not None:
        text = re.sub(r"(?m)^genesis_time\s*=\s*\d+", f"genesis_time = {genesis_time}", text)
    return text


def slug(shard: str) -> str:
    """A file name for a shard id ("." never occurs in a shard id, so this is one-to-one)."""
    return shard.replace("/", ".")


@dataclass
class ShardNode:
    process: str  # validator-<i> | observers
    shard: str
    role: str  # validator | observer
    index: int  # the validator index in its shard; -1 for an observer
    api_port: int
    peer_port: int
    node_key: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def name(self) -> str:
        return f"{self.process}/{self.shard}"


@dataclass
class ShardProcess:
    name: str
    kind: str  # node | relayer
    http_port: int = 0  # relayer: /healthz and /metrics
    pid: int | None = None


@dataclass
class ShardDevnet:
    root: Path
    shards: list[str] = field(default_factory=list)
    nodes: list[ShardNode] = field(default_factory=list)
    processes: list[ShardProcess] = field(default_factory=list)
    accounts: dict[str, str] = field(default_factory=dict)  # name -> key file (relative)
    operators: dict[str, str] = field(default_factory=dict)  # shard -> account name of its grid operator

    # ------------------------------------------------------------------ files

    @property
    def state_file(self) -> Path:
        return self.root / "devnet.json"

    def save(self) -> None:
        doc = {"kind": "topology", "shards": self.shards, "nodes": [asdict(n) for n in self.nodes],
               "processes": [asdict(p) for p in self.processes], "accounts": self.accounts, "operators": self.operators}
        self.state_file.write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def from_document(cls, root: Path, doc: dict) -> ShardDevnet:
        return cls(root, doc["shards"], [ShardNode(**n) for n in doc["nodes"]],
                   [ShardProcess(**p) for p in doc["processes"]], doc["accounts"], doc["operators"])

    @classmethod
    def load(cls, root: str | Path) -> ShardDevnet:
        root = Path(root)
        return cls.from_document(root, json.loads((root / "devnet.json").read_text()))

    def genesis_file(self, shard: str) -> Path:
        return self.root / "shards" / slug(shard) / "genesis.json"

    def process_dir(self, name: str) -> Path:
        return self.root / "processes" / name

    def log_file(self, process: ShardProcess | str) -> Path:
        name = process if isinstance(process, str) else process.name
        return self.process_dir(name) / "process.log"

    def process(self, name: str) -> ShardProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise SystemExit(f"error: no process named {name!r} in this devnet; known: {[p.name for p in self.processes]}")

    def shard_nodes(self, shard: str, role: str | None = None) -> list[ShardNode]:
        return [n for n in self.nodes if n.shard == shard and (role is None or n.role == role)]

    def url(self, shard: str) -> str:
        """The API of validator 0 of ``shard`` (where the devnet's clients submit)."""
        return self.shard_nodes(shard, "validator")[0].url

    def account_key(self, name: str) -> PrivateKey:
        return PrivateKey(load_key(self.root / self.accounts[name], None, allow_plaintext=True).secret[:32])

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        root: str | Path,
        topology_path: str | Path,
        *,
        story: dict[str, dict[str, list[str]]] | None = None,
        relayers: int = 1,
        observers: bool = True,
        currency: str = "CHF",
        params: dict | None = None,
        market_params: dict | None = None,
        relay_poll_ms: int = 100,
    ) -> ShardDevnet:
        """Write keys, one genesis per shard and every process's configs (nothing is started)."""
        from cli.devnet import _free_port
        from cli.keys import validator_descriptor
        from ledger import bls
        from shards.topology import Topology

        root = Path(root)
        if (root / "devnet.json").exists():
            raise SystemExit(f"error: a devnet already exists at {root}; use --fresh to replace it")
        text = Path(topology_path).read_text(encoding="utf-8")
        topology = Topology.from_toml(text)
        (root / "keys").mkdir(parents=True, exist_ok=True)
        (root / "topology.toml").write_text(text)
        net = cls(root, list(topology.ids))
        descriptors: dict[str, list[dict]] = {}
        for spec in topology.shards:
            descriptors[spec.id] = []
            for i in range(spec.validators):
                name = f"validator-{i}"
                key = PrivateKey.generate()
                bls_sk = bls.keygen(os.urandom(32))
                path = root / "keys" / slug(spec.id) / f"{name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_key(path, kind="validator", secret=key.seed + bls_sk, public_key=key.public_key.raw, password=None,
                         label=f"{spec.id} {name}", dev_plaintext=True)
                descriptors[spec.id].append(validator_descriptor(key.seed, bls_sk, name))
                net.nodes.append(ShardNode(name, spec.id, "validator", i, _free_port(), _free_port(), key.public_key.hex()))
            if observers:
                net.nodes.append(ShardNode("observers", spec.id, "observer", -1, _free_port(), 0))
        # Accounts: a grid operator per shard, one bank and the relayers in every shard, the story's members.
        members: dict[str, dict[str, list[str]]] = {}
        for shard in net.shards:
            name = f"operator@{shard}"
            net.operators[shard] = name
            members[name] = {shard: ["grid_operator", "deployer"]}
        members["bank"] = {shard: ["bank"] for shard in net.shards}
        for j in range(relayers):
            # Membership needs a role; a market participant running a relayer.
            members[f"relayer-{j}"] = {shard: ["trader"] for shard in net.shards}
        if story is None:
            story = DEFAULT_STORY
            if not all(s in net.shards for by_shard in story.values() for s in by_shard):
                # Another tree: a consumer in its first leaf buys from a producer in its last
                # (or in the root, when the tree has one leaf).
                leaves = sorted(topology.leaves())
                seller = leaves[-1] if len(leaves) > 1 else topology.root
                story = {"consumer": {leaves[0]: ["consumer"]}, "producer": {seller: ["producer"]}}
        for name, by_shard in story.items():
            for shard, roles in by_shard.items():
                for target in (net.shards if shard == "*" else [shard]):
                    if target not in net.shards:
                        raise SystemExit(f"error: the story puts {name} in {target!r}, which is not in the topology")
                    members.setdefault(name, {}).setdefault(target, []).extend(roles)
        addresses = {}
        for name in members:
            key = PrivateKey.generate()
            path = Path("keys") / "accounts" / f"{name.replace('@', '-at-').replace('/', '.')}.json"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            save_key(root / path, kind="ed25519", secret=key.seed, public_key=key.public_key.raw, password=None,
                     label=name, address=str(key.address), dev_plaintext=True)
            net.accounts[name] = str(path)
            addresses[name] = str(key.address)
        validator_entries = {s: [{k: d[k] for k in ("name", "node_key", "bls_key", "bls_pop", "tls_cert")} for d in ds]
                             for s, ds in descriptors.items()}
        for spec in topology.shards:
            accounts = [{"address": addresses[n], "roles": by_shard[spec.id], "label": n}
                        for n, by_shard in members.items() if spec.id in by_shard]
            genesis = {
                "chain_id": spec.id,
                "genesis_time": topology.genesis_time,
                "protocol": spec.protocol,
                "params": {**SHARD_DEVNET_PARAMS, **(params or {}), "period_seconds": topology.period_s,
                           "checkpoint_interval": spec.checkpoint_interval},
                "validators": validator_entries[spec.id],
                "accounts": accounts,
                "topology": {"document": text,
                             "neighbours": {n: validator_entries[n] for n in topology.neighbours(spec.id)}},
            }
            genesis["contracts"], genesis["app_state"] = _market(accounts, topology.genesis_time, topology.period_s,
                                                                 currency, market_params)
            path = net.genesis_file(spec.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(genesis, indent=2) + "\n")
        for name in dict.fromkeys(n.process for n in net.nodes):
            net.processes.append(ShardProcess(name, "node"))
            net._write_node_configs(name)
        for j in range(relayers):
            relayer = ShardProcess(f"relayer-{j}", "relayer", _free_port())
            net.processes.append(relayer)
            net._write_relay_config(relayer, relay_poll_ms)
        net.save()
        return net

    def _write_node_configs(self, process: str) -> None:
        directory = self.process_dir(process)
        directory.mkdir(parents=True, exist_ok=True)
        for node in (n for n in self.nodes if n.process == process):
            lines = [
                f'role = "{node.role}"',
                f'name = "{process if node.role == "validator" else "observer"}"',
                f'data_dir = "../../data/{process}/{slug(node.shard)}"',
                f'genesis = "../../shards/{slug(node.shard)}/genesis.json"',
                "dev = true",
            ]
            if node.role == "validator":
                lines.append(f'key_file = "../../keys/{slug(node.shard)}/{process}.json"')
            lines += ["", "[api]", f"port = {node.api_port}", "", "[peer]", f"port = {node.peer_port}", "tls = true"]
            others = [v for v in self.shard_nodes(node.shard, "validator") if v is not node]
            if node.role == "validator":
                peers = ", ".join(f'"{v.node_key}" = "wss://127.0.0.1:{v.peer_port}/peer/v1"' for v in others)
                lines.append(f"peers = {{ {peers} }}")
                lines += ["", "[follow]", f"urls = [{', '.join(repr_url(v) for v in others)}]"]
            else:
                lines += ["", "[follow]", f"urls = [{', '.join(repr_url(v) for v in others)}]", "poll_ms = 100"]
            lines += ["", "[log]", 'mode = "json"', 'level = "info"', ""]
            (directory / f"{slug(node.shard)}.toml").write_text("\n".join(lines))

    def _write_relay_config(self, relayer: ShardProcess, poll_ms: int) -> None:
        directory = self.process_dir(relayer.name)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f'key_file = "../../{self.accounts[relayer.name]}"', "dev = true", f"poll_ms = {poll_ms}", "",
                 "[http]", f"port = {relayer.http_port}", ""]
        for shard in self.shards:
            # Validator 0 first; the others, then the observer, when it is down.
            urls = ", ".join(repr_url(n) for n in self.shard_nodes(shard))
            lines += [f'[shards."{shard}"]', f"urls = [{urls}]",
                      f'genesis = "../../shards/{slug(shard)}/genesis.json"', ""]
        (directory / "relay.toml").write_text("\n".join(lines))

    # ------------------------------------------------------------------ processes

    def command(self, process: ShardProcess) -> list[str]:
        directory = self.process_dir(process.name)
        if process.kind == "relayer":
            return [sys.executable, "-m", "cli.main", "relay", "--config", str(directory / "relay.toml")]
        configs = []
        for node in (n for n in self.nodes if n.process == process.name):
            configs += ["--config", str(directory / f"{slug(node.shard)}.toml")]
        return [sys.executable, "-m", "cli.main", "node", "run", *configs]

    def start(self, names: list[str] | None = None) -> None:
        for process in self.processes:
            if names is not None and process.name not in names:
                continue
            if process.pid is not None and _alive(process.pid):
                continue
            log = open(self.log_file(process), "ab")
            env = dict(os.environ, GRIDLEDGER_LOG="json", PYTHONUNBUFFERED="1")
            child = subprocess.Popen(self.command(process), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, cwd=str(Path(__file__).resolve().parent.parent))
            log.close()
            process.pid = child.pid
        self.save()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.process(name)
        signal_process(process.pid, sig)
        process.pid = None
        self.save()

    def stop(self, timeout_s: float = 15.0) -> None:
        # Relayers first (they talk to the nodes), then the nodes.
        ordered = sorted(self.processes, key=lambda p: p.kind != "relayer")
        for process in ordered:
            if process.pid is not None and _alive(process.pid):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in ordered:
            if process.pid is None:
                continue
            while _alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(process.pid):
                os.kill(process.pid, signal.SIGKILL)
            _reap(process.pid)
            process.pid = None
        self.save()

    def wait_ready(self, timeout_s: float = 120.0, names: list[str] | None = None) -> None:
        """Wait until every process named (default: every started one) serves: each node
        ``/readyz``, each relayer ``/healthz``."""
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            if (names is not None and process.name not in names) or (names is None and process.pid is None):
                continue
            urls = ([f"http://127.0.0.1:{process.http_port}/healthz"] if process.kind == "relayer"
                    else [f"{n.url}/readyz" for n in self.nodes if n.process == process.name])
            for url in urls:
                while True:
                    if process.pid is not None and not _alive(process.pid):
                        tail = self.log_file(process).read_text(errors="replace")[-3000:] if self.log_file(process).exists() else ""
                        raise SystemExit(f"error: {process.name} exited during start-up; its log ends:\n{tail}")
                    if _get(url) == 200:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"error: {process.name} not ready at {url} after {timeout_s:.0f} s "
                                         f"(see {self.log_file(process)})")
                    time.sleep(0.2)

    def status(self) -> list[dict]:
        rows = []
        alive = {p.name: p.pid is not None and _alive(p.pid) for p in self.processes}
        for node in self.nodes:
            row = {"name": node.name, "process": node.process, "shard": node.shard, "role": node.role, "api": node.url,
                   "running": alive[node.process]}
            try:
                with urllib.request.urlopen(f"{node.url}/v1/status", timeout=2) as resp:
                    row.update(json.loads(resp.read()))
            except (urllib.error.URLError, OSError, ValueError):
                row["reachable"] = False
            rows.append(row)
        for process in self.processes:
            if process.kind == "relayer":
                row = {"name": process.name, "process": process.name, "shard": "*", "role": "relayer",
                       "api": f"http://127.0.0.1:{process.http_port}", "running": alive[process.name]}
                try:
                    with urllib.request.urlopen(f"{row['api']}/healthz", timeout=2) as resp:
                        row.update(json.loads(resp.read()))
                except (urllib.error.URLError, OSError, ValueError):
                    row["reachable"] = False
                rows.append(row)
        return rows

    def shard_heights(self) -> dict[str, int | None]:
        """Each shard's highest height among its reachable nodes."""
        heights: dict[str, int | None] = {s: None for s in self.shards}
        for row in self.status():
            if row["role"] != "relayer" and row.get("height") is not None:
                heights[row["shard"]] = max(heights[row["shard"]] or 0, row["height"])
        return heights

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root)


def repr_url(node: ShardNode) -> str:
    return f'"{node.url}"'


def _market(accounts: list[dict], genesis_time: int, period: int, currency: str,
            market_params: dict | None) -> tuple[list[dict], dict]:
    """The market's genesis entries for one shard: its grid operator (also the CO2
    authority), the bank issuing ``currency``, every other account a member with its roles."""
    from contracts.system.genesis import CurrencySpec, market_genesis

    def first(role: str) -> str:
        return next(a["address"] for a in accounts if role in a["roles"])

    special = ("deployer", "grid_operator", "bank", "co2_authority")
    members = [(a["address"], [r for r in a["roles"] if r not in special]) for a in accounts
               if not set(a["roles"]) & set(special)]
    # A member needs a role (membership refuses none): an account without one is a plain
    # key holder, as on the single-shard devnet.
    members = [(address, roles) for address, roles in members if roles]
    entries = market_genesis(first("grid_operator"), first("grid_operator"), [CurrencySpec(currency, first("bank"))],
                             genesis_time, members=members, params={"period_s": period, **(market_params or {})})
    return entries["contracts"], entries["app_state"]
