"""``gridledger devnet up|down|status|logs``: a local consortium of real node processes.

    gridledger devnet up                   # 4 BFT validators + 1 observer under ./devnet
    gridledger devnet up --protocol raft --validators 3 --dir /tmp/net
    gridledger devnet status
    gridledger devnet logs validator-2 --lines 50
    gridledger devnet down
    gridledger devnet up --topology genesis/three-levels.toml   # a shard tree (cli/devnet_shards.py)

Everything lives under one directory: development keys (plaintext, marked as such),
the genesis document, one config, data directory and log file per node, and
``devnet.json`` recording ports and process ids. Ports are chosen free at creation
and kept, so ``up`` after ``down`` restarts the same consortium with its data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ledger.crypto import PrivateKey
from ledger.keystore import save_key

__all__ = ["Devnet", "DevnetNode", "add_parser"]

DEFAULT_DIR = "devnet"
# Devnet timing: quick blocks and short view timeouts, since all nodes share one machine.
# Blocks of at most 500 transactions keep one block's execution well under the view
# timeout when four validators share two cores.
DEVNET_PARAMS = {"block_interval_ms": 50, "view_timeout_ms": 1500, "tick_ms": 20, "checkpoint_interval": 16,
                 "block_max_txs": 500}


@dataclass
class DevnetNode:
    name: str
    role: str  # validator | observer
    api_port: int
    peer_port: int
    node_key: str = ""
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class Devnet:
    root: Path
    chain_id: str = "ch"
    protocol: str = "bft"
    nodes: list[DevnetNode] = field(default_factory=list)
    accounts: dict[str, str] = field(default_factory=dict)  # name -> key file (relative)
    # Words put before a node's command line when it starts (not saved): a benchmark uses
    # it to start each node inside a memory cgroup of its own.
    launcher: Callable[[DevnetNode], list[str]] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ files

    @property
    def state_file(self) -> Path:
        return self.root / "devnet.json"

    def save(self) -> None:
        doc = {"chain_id": self.chain_id, "protocol": self.protocol, "nodes": [asdict(n) for n in self.nodes],
               "accounts": self.accounts}
        self.state_file.write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, root: str | Path) -> Devnet:
        root = Path(root)
        try:
            doc = json.loads((root / "devnet.json").read_text())
        except FileNotFoundError:
            raise SystemExit(f"error: no devnet at {root} (run `gridledger devnet up --dir {root}`)") from None
        return cls(root, doc["chain_id"], doc["protocol"], [DevnetNode(**n) for n in doc["nodes"]], doc.get("accounts", {}))

    def node_dir(self, node: DevnetNode) -> Path:
        return self.root / "nodes" / node.name

    def log_file(self, node: DevnetNode) -> Path:
        return self.node_dir(node) / "node.log"

    def validators(self) -> list[DevnetNode]:
        return [n for n in self.nodes if n.role == "validator"]

    def observers(self) -> list[DevnetNode]:
        return [n for n in self.nodes if n.role == "observer"]

    def account_key(self, name: str) -> PrivateKey:
        from ledger.keystore import load_key

        return PrivateKey(load_key(self.root / self.accounts[name], None, allow_plaintext=True).secret[:32])

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        validators: int = 4,
        observers: int = 1,
        protocol: str = "bft",
        chain_id: str = "ch",
        accounts: dict[str, list[str]] | None = None,
        contracts: list[tuple[str, str]] | None = None,
        app_state: dict | None = None,
        params: dict | None = None,
        market: bool = True,
        market_params: dict | None = None,
        currency: str = "CHF",
        currency_fee: tuple[str, int] = ("none", 0),
        account_keys: dict[str, PrivateKey] | None = None,
    ) -> Devnet:
        """Write keys, genesis and node configs for a new devnet (nothing is started).

        With ``market`` (the default) genesis deploys the energy market's system
        contracts: the first account holding ``grid_operator`` operates the grid, the
        first ``bank`` issues ``currency``, the first ``co2_authority`` (default: the
        grid operator) collects the CO2 fee, and every account becomes a member with
        its roles. ``market_params`` override MARKET.md's parameters (``period_s``
        follows the shard's ``period_seconds``); ``currency_fee`` is the issuer fee
        ``(fee_mode, fee_value)`` of ``currency`` (none | bps | fixed). ``account_keys``
        gives some accounts a chosen key instead of a fresh one (e.g. keys whose
        addresses sort in a given order, which netting order depends on).
        """
        from cli.keys import validator_descriptor
        from ledger import bls

        root = Path(root)
        if root.exists() and (root / "devnet.json").exists():
            raise SystemExit(f"error: a devnet already exists at {root}; use --fresh to replace it")
        (root / "keys").mkdir(parents=True, exist_ok=True)
        net = cls(root, chain_id, protocol)
        descriptors = []
        for i in range(validators):
            name = f"validator-{i}"
            key = PrivateKey.generate()
            bls_sk = bls.keygen(os.urandom(32))
            save_key(root / "keys" / f"{name}.json", kind="validator", secret=key.seed + bls_sk,
                     public_key=key.public_key.raw, password=None, label=name, dev_plaintext=True)
            descriptors.append(validator_descriptor(key.seed, bls_sk, name))
            net.nodes.append(DevnetNode(name, "validator", _free_port(), _free_port(), key.public_key.hex()))
        for i in range(observers):
            net.nodes.append(DevnetNode(f"observer-{i}", "observer", _free_port(), 0))
        genesis_accounts = []
        accounts = accounts or dict(DEFAULT_ACCOUNTS)
        for name, roles in accounts.items():
            key = (account_keys or {}).get(name) or PrivateKey.generate()
            path = Path("keys") / f"{name}.json"
            save_key(root / path, kind="ed25519", secret=key.seed, public_key=key.public_key.raw, password=None,
                     label=name, address=str(key.address), dev_plaintext=True)
            net.accounts[name] = str(path)
            genesis_accounts.append({"address": str(key.address), "roles": roles, "label": name})
        shard_params = {**DEVNET_PARAMS, **(params or {})}
        period = shard_params.get("period_seconds", 900)
        genesis_time = int(time.time()) // period * period
        genesis_contracts = [{"name": n, "source": s} for n, s in (contracts or [])]
        genesis_state = dict(app_state or {})
        if market:
            genesis_contracts, genesis_state = _with_market(
                genesis_accounts, genesis_contracts, genesis_state, genesis_time, period, currency, market_params,
                currency_fee,
            )
        genesis = {
            "chain_id": chain_id,
            "genesis_time": genesis_time,
            "protocol": protocol,
            "params": shard_params,
            "validators": [{k: d[k] for k in ("name", "node_key", "bls_key", "bls_pop", "tls_cert")} for d in descriptors],
            "accounts": genesis_accounts,
            "contracts": genesis_contracts,
            "app_state": genesis_state,
        }
        (root / "genesis.json").write_text(json.dumps(genesis, indent=2) + "\n")
        for node in net.nodes:
            net._write_config(node)
        net.save()
        return net

    def _write_config(self, node: DevnetNode) -> None:
        directory = self.node_dir(node)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f'role = "{node.role}"',
            f'name = "{node.name}"',
            'data_dir = "data"',
            'genesis = "../../genesis.json"',
            "dev = true",
        ]
        if node.role == "validator":
            lines.append(f'key_file = "../../keys/{node.name}.json"')
        lines += ["", "[api]", f"port = {node.api_port}", "", "[peer]", f"port = {node.peer_port}", "tls = true"]
        if node.role == "validator":
            peers = ", ".join(f'"{v.node_key}" = "wss://127.0.0.1:{v.peer_port}/peer/v1"'
                              for v in self.validators() if v.name != node.name)
            lines.append(f"peers = {{ {peers} }}")
            urls = ", ".join(f'"{v.url}"' for v in self.validators() if v.name != node.name)
            lines += ["", "[follow]", f"urls = [{urls}]"]
        else:
            urls = ", ".join(f'"{v.url}"' for v in self.validators())
            lines += ["", "[follow]", f"urls = [{urls}]", "poll_ms = 100"]
        lines += ["", "[log]", 'mode = "json"', 'level = "info"', ""]
        (directory / "node.toml").write_text("\n".join(lines))

    # ------------------------------------------------------------------ processes

    def start(self, names: list[str] | None = None) -> None:
        for node in self.nodes:
            if names is not None and node.name not in names:
                continue
            if node.pid is not None and _alive(node.pid):
                continue
            node.pid = self.spawn(node)
        self.save()

    def spawn(self, node: DevnetNode) -> int:
        directory = self.node_dir(node)
        log = open(self.log_file(node), "ab")
        env = dict(os.environ, GRIDLEDGER_LOG="json", PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "cli.main", "node", "run", "--config", str(directory / "node.toml")]
        if self.launcher is not None:
            command = [*self.launcher(node), *command]
        process = subprocess.Popen(
            command,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        log.close()
        return process.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.node(name)
        signal_process(node.pid, sig)
        node.pid = None
        self.save()

    def node(self, name: str) -> DevnetNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise SystemExit(f"error: no node named {name!r} in this devnet")

    def stop(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes:
            if node.pid is not None and _alive(node.pid):
                os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.pid is None:
                continue
            while _alive(node.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(node.pid):
                os.kill(node.pid, signal.SIGKILL)
            _reap(node.pid)
            node.pid = None
        self.save()

    def wait_ready(self, timeout_s: float = 60.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if names is not None and node.name not in names:
                continue
            while True:
                if node.pid is not None and not _alive(node.pid):
                    tail = self.log_file(node).read_text()[-2000:] if self.log_file(node).exists() else ""
                    raise SystemExit(f"error: {node.name} exited during start-up; its log ends:\n{tail}")
                if _get(f"{node.url}/readyz") == 200:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: {node.name} not ready after {timeout_s:.0f} s (see {self.log_file(node)})")
                time.sleep(0.2)

    def status(self) -> list[dict]:
        rows = []
        for node in self.nodes:
            row = {"name": node.name, "role": node.role, "api": node.url, "pid": node.pid,
                   "running": node.pid is not None and _alive(node.pid)}
            try:
                with urllib.request.urlopen(f"{node.url}/v1/status", timeout=2) as resp:
                    row.update(json.loads(resp.read()))
            except (urllib.error.URLError, OSError, ValueError):
                row["reachable"] = False
            rows.append(row)
        return rows


DEFAULT_ACCOUNTS = {
    "operator": ["grid_operator", "deployer"],
    "bank": ["bank"],
    "co2-authority": ["co2_authority"],
}


def _with_market(accounts: list[dict], contracts: list[dict], app_state: dict, genesis_time: int, period: int,
                 currency: str, market_params: dict | None,
                 currency_fee: tuple[str, int] = ("none", 0)) -> tuple[list[dict], dict]:
    """Genesis entries deploying the energy market for these accounts (see ``Devnet.create``)."""
    from contracts.system.genesis import CurrencySpec, market_genesis

    def first(role: str) -> str | None:
        return next((a["address"] for a in accounts if role in a["roles"]), None)

    operator, bank = first("grid_operator"), first("bank")
    if operator is None or bank is None:
        raise SystemExit("error: a devnet with the market needs an account with grid_operator and one with bank")
    co2 = first("co2_authority") or operator
    members = [(a["address"], [r for r in a["roles"] if r not in ("deployer", "grid_operator", "bank", "co2_authority")])
               for a in accounts]
    members = [(address, roles) for address, roles in members if roles]
    params = {"period_s": period, **(market_params or {})}
    fee_mode, fee_value = currency_fee
    entries = market_genesis(operator, co2, [CurrencySpec(currency, bank, fee_mode, fee_value)], genesis_time,
                             members=members, params=params)
    return entries["contracts"] + contracts, {**entries["app_state"], **app_state}


_HANDED_OUT: set[int] = set()


def signal_process(pid: int | None, sig: int) -> None:
    """Send ``sig`` to a devnet process if it runs; after SIGKILL, reap it."""
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        _reap(pid)


def _free_port() -> int:
    """A port free now and not handed out before by this process (the OS may give a
    released port again, and a devnet takes many before any node binds them)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


# ---------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    devnet = sub.add_parser("devnet", help="a local consortium of real node processes", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = devnet.add_subparsers(dest="devnet_command", required=True)
    up = dsub.add_parser("up", help="create (if needed) and start the devnet")
    up.add_argument("--dir", default=DEFAULT_DIR)
    up.add_argument("--validators", type=int, default=4)
    up.add_argument("--observers", type=int, default=1)
    up.add_argument("--protocol", choices=("bft", "raft"), default="bft")
    up.add_argument("--shard", default="ch", help="the shard id (chain id)")
    up.add_argument("--topology", help="a topology document (e.g. genesis/three-levels.toml): one chain per shard, "
                                       "validators grouped by operator index, an observer per shard, relayers")
    up.add_argument("--relayers", type=int, default=1, help="with --topology: relayer processes")
    up.add_argument("--fresh", action="store_true", help="delete an existing devnet in --dir first")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_up)
    down = dsub.add_parser("down", help="stop every node (data is kept)")
    down.add_argument("--dir", default=DEFAULT_DIR)
    down.set_defaults(func=cmd_down)
    status = dsub.add_parser("status", help="each node's height, role and health")
    status.add_argument("--dir", default=DEFAULT_DIR)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    logs = dsub.add_parser("logs", help="the end of a node's log (or of all)")
    logs.add_argument("name", nargs="?")
    logs.add_argument("--dir", default=DEFAULT_DIR)
    logs.add_argument("--lines", type=int, default=20)
    logs.set_defaults(func=cmd_logs)


def _is_tree(root: str | Path) -> bool:
    try:
        return json.loads((Path(root) / "devnet.json").read_text()).get("kind") == "topology"
    except (OSError, ValueError):
        return False


def load_any(root: str | Path):
    """The devnet at ``root``: a :class:`Devnet` or a shard tree (``ShardDevnet``)."""
    if _is_tree(root):
        from cli.devnet_shards import ShardDevnet

        return ShardDevnet.load(root)
    return Devnet.load(root)


def cmd_up(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if args.fresh and root.exists():
        if (root / "devnet.json").exists():
            load_any(root).stop()
        shutil.rmtree(root)
    if args.topology or _is_tree(root):
        return _up_tree(args, root)
    if (root / "devnet.json").exists():
        net = Devnet.load(root)
    else:
        if args.validators < 1 or (args.protocol == "bft" and args.validators < 4 and args.validators != 1):
            print("error: a BFT devnet needs 1 or at least 4 validators (n = 3f + 1)", file=sys.stderr)
            return 2
        net = Devnet.create(root, validators=args.validators, observers=args.observers, protocol=args.protocol,
                            chain_id=args.shard)
    net.start()
    net.wait_ready()
    if args.json:
        print(json.dumps({"dir": str(root), "nodes": [asdict(n) | {"url": n.url} for n in net.nodes]}))
    else:
        print(f"devnet {net.chain_id} ({net.protocol}) is up in {root}:")
        for node in net.nodes:
            print(f"  {node.name:<13} {node.role:<9} {node.url}  pid {node.pid}")
    return 0


def _up_tree(args: argparse.Namespace, root: Path) -> int:
    from cli.devnet_shards import ShardDevnet
    from shards.errors import TopologyError

    if (root / "devnet.json").exists():
        if not _is_tree(root):
            print(f"error: the devnet at {root} is a single shard; use --fresh to replace it with a tree", file=sys.stderr)
            return 2
        net = ShardDevnet.load(root)
    else:
        try:
            net = ShardDevnet.create(root, args.topology, relayers=args.relayers, observers=args.observers > 0)
        except (OSError, TopologyError) as exc:
            print(f"error: topology {args.topology}: {exc}", file=sys.stderr)
            return 2
    net.start()
    net.wait_ready()
    if args.json:
        print(json.dumps({"dir": str(root), "shards": net.shards, "nodes": [asdict(n) | {"url": n.url} for n in net.nodes],
                          "processes": [asdict(p) for p in net.processes]}))
    else:
        print(f"devnet of {len(net.shards)} shards is up in {root}:")
        for process in net.processes:
            served = [n.shard for n in net.nodes if n.process == process.name]
            what = f"relayer, metrics on http://127.0.0.1:{process.http_port}" if process.kind == "relayer" else ", ".join(served)
            print(f"  {process.name:<12} pid {process.pid:<8} {what}")
        for shard in net.shards:
            print(f"  {shard:<22} {net.url(shard)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    net = load_any(args.dir)
    net.stop()
    print(f"devnet in {args.dir} stopped (data kept; `gridledger devnet up --dir {args.dir}` restarts it)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    net = load_any(args.dir)
    rows = net.status()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not isinstance(net, Devnet):
        return _status_tree(rows)
    healthy = True
    for row in rows:
        if not row.get("running") or row.get("reachable") is False:
            healthy = False
            print(f"  {row['name']:<13} {row['role']:<9} DOWN")
            continue
        extra = f"view {row['view']}" if row.get("view") is not None else (f"term {row['term']}" if row.get("term") is not None else "")
        lead = " (leader)" if row.get("is_leader") else ""
        print(f"  {row['name']:<13} {row['role']:<9} height {row.get('height'):<7} {extra}{lead}")
    return 0 if healthy else 1


def _status_tree(rows: list[dict]) -> int:
    healthy = True
    for row in rows:
        name = f"{row['shard']:<22} {row['process']:<12} {row['role']:<9}"
        if not row.get("running") or row.get("reachable") is False:
            healthy = False
            print(f"  {name} DOWN")
        elif row["role"] == "relayer":
            print(f"  {name} {row.get('status')}, {row.get('packets')} packets delivered")
        else:
            extra = f"view {row['view']}" if row.get("view") is not None else (f"term {row['term']}" if row.get("term") is not None else "")
            lead = " (leader)" if row.get("is_leader") else ""
            print(f"  {name} height {row.get('height'):<7} {extra}{lead}")
    return 0 if healthy else 1


def cmd_logs(args: argparse.Namespace) -> int:
    net = load_any(args.dir)
    if not isinstance(net, Devnet):
        processes = [net.process(args.name)] if args.name else net.processes
        for process in processes:
            path = net.log_file(process)
            for line in (path.read_text(errors="replace").splitlines()[-args.lines:] if path.exists() else []):
                print(f"{process.name}: {line}")
        return 0
    nodes = [net.node(args.name)] if args.name else net.nodes
    for node in nodes:
        path = net.log_file(node)
        lines = path.read_text(errors="replace").splitlines()[-args.lines:] if path.exists() else []
        for line in lines:
            print(f"{node.name}: {line}")
    return 0
