"""Several shards in one node process: one store, consensus replica, peer mesh and API each.

Real processes on loopback: ``gridledger node run --config a.toml --config b.toml``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli.devnet import Devnet
from node.config import ConfigError, load_many

ROOT = Path(__file__).resolve().parent.parent


def _shard(tmp_path: Path, chain_id: str, protocol: str = "bft") -> Devnet:
    return Devnet.create(tmp_path / chain_id.replace("/", "."), validators=1, observers=0, protocol=protocol,
                         chain_id=chain_id, market=False)


def _config(net: Devnet) -> Path:
    return net.node_dir(net.validators()[0]) / "node.toml"


def _run(*configs: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli.main", "node", "run"]
    for config in configs:
        args += ["--config", str(config)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, GRIDLEDGER_LOG="json"), start_new_session=True)


def _status(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/status", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _wait_heights(urls: list[str], height: int, process: subprocess.Popen, timeout_s: float = 60.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}): {process.stderr.read()[-3000:]}")
        statuses = {u: _status(u) for u in urls}
        if all(s is not None and (s.get("height") or 0) >= height for s in statuses.values()):
            return statuses
        time.sleep(0.2)
    raise AssertionError(f"not every shard reached height {height}: {statuses}")


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
    return process.returncode, err


def test_one_process_serves_two_shards_with_their_own_chains_and_stops_cleanly(tmp_path):
    a, b = _shard(tmp_path, "ch"), _shard(tmp_path, "ch/zurich/oerlikon", protocol="raft")
    url_a, url_b = a.validators()[0].url, b.validators()[0].url
    process = _run(_config(a), _config(b))
    try:
        statuses = _wait_heights([url_a, url_b], 2, process)
    finally:
        code, err = _stop(process)
    assert code == 0, err[-3000:]
    assert statuses[url_a]["shard"] == "ch" and statuses[url_a]["protocol"] == "bft"
    assert statuses[url_b]["shard"] == "ch/zurich/oerlikon" and statuses[url_b]["protocol"] == "raft"
    assert statuses[url_a]["genesis_hash"] != statuses[url_b]["genesis_hash"]
    # Each shard keeps its own store: a restart resumes both from where they stopped.
    heights = {u: s["height"] for u, s in statuses.items()}
    process = _run(_config(a), _config(b))
    try:
        again = _wait_heights([url_a, url_b], 0, process)
        for url in (url_a, url_b):
            assert again[url]["height"] >= heights[url]
    finally:
        code, err = _stop(process)
    assert code == 0, err[-3000:]


def test_a_bad_field_in_one_shard_config_names_the_file_and_the_field(tmp_path):
    a, b = _shard(tmp_path, "ch"), _shard(tmp_path, "ch/bern")
    bad = _config(b)
    bad.write_text(bad.read_text().replace('[api]\nport = ', '[api]\nport = "eighty" #'))
    process = _run(_config(a), bad)
    code = process.wait(timeout=60)
    err = process.stderr.read()
    assert code == 2
    assert str(bad) in err and "api.port must be an integer" in err


def test_two_configs_may_not_share_a_port_or_a_data_directory(tmp_path):
    a, b = _shard(tmp_path, "ch"), _shard(tmp_path, "ch/bern")
    second = _config(b)
    text = second.read_text()
    port_a = a.validators()[0].api_port
    second.write_text(text.replace(f"port = {b.validators()[0].api_port}", f"port = {port_a}"))
    with pytest.raises(ConfigError, match=rf"{second}: api.port {port_a} is already used by {_config(a)}"):
        load_many([_config(a), second], environ={})
    second.write_text(text.replace('data_dir = "data"', f'data_dir = "{a.node_dir(a.validators()[0]) / "data"}"'))
    with pytest.raises(ConfigError, match="data_dir .* is already used by"):
        load_many([_config(a), second], environ={})


def test_the_same_shard_twice_in_one_process_is_refused_naming_both_files(tmp_path):
    a = _shard(tmp_path, "ch")
    copy = tmp_path / "copy.toml"
    # Another data dir and ports, same genesis: the process must not run a shard twice.
    text = _config(a).read_text()
    node = a.validators()[0]
    text = (text.replace(f"port = {node.api_port}", "port = 0").replace(f"port = {node.peer_port}", "port = 0")
            .replace('data_dir = "data"', f'data_dir = "{tmp_path / "other"}"')
            .replace('genesis = "../../genesis.json"', f'genesis = "{a.root / "genesis.json"}"')
            .replace('key_file = "../../keys/', f'key_file = "{a.root}/keys/'))
    copy.write_text(text)
    process = _run(_config(a), copy)
    process.wait(timeout=60)
    err = process.stderr.read()
    assert process.returncode == 2
    assert f"{copy}: shard ch is already served by {_config(a)}" in err


def test_a_port_in_use_stops_every_shard_of_the_process_and_names_the_config(tmp_path):
    import socket

    a, b = _shard(tmp_path, "ch"), _shard(tmp_path, "ch/bern")
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", b.validators()[0].api_port))
        busy.listen()
        process = _run(_config(a), _config(b))
        code = process.wait(timeout=60)
    err = process.stderr.read()
    assert code == 2
    assert f"{_config(b)}: cannot start shard ch/bern" in err
    # The shard that did start was stopped cleanly: its store opens again at once.
    process = _run(_config(a))
    try:
        _wait_heights([a.validators()[0].url], 1, process)
    finally:
        code, err = _stop(process)
    assert code == 0, err[-3000:]
