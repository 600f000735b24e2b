"""The command line: typed arguments, key files, genesis documents, exit codes."""

import json

import pytest

from cli.client_cmds import UsageError, parse_value
from cli.main import main
from ledger.crypto import Address, PrivateKey
from ledger.genesis import Genesis

ADDRESS = PrivateKey(bytes([3]) * 32).address


def test_typed_arguments_parse_by_prefix():
    assert parse_value("int:5") == 5 and parse_value("42") == 42 and parse_value("-7") == -7
    assert parse_value(f"addr:{ADDRESS}") == ADDRESS.raw == parse_value(str(ADDRESS))
    assert parse_value("hex:00ff") == b"\x00\xff"
    assert parse_value("str:42") == "42" and parse_value("solar") == "solar"
    assert parse_value("bool:true") is True and parse_value("false") is False
    assert parse_value('json:[1, "a", ["int:2"]]') == [1, "a", [2]]


def test_typed_arguments_refuse_floats_typos_and_bad_values():
    with pytest.raises(UsageError, match="floats are not allowed"):
        parse_value("json:[1.5]")
    typo = str(ADDRESS)[:-1] + ("q" if str(ADDRESS)[-1] != "q" else "p")
    with pytest.raises(UsageError, match="checksum"):
        parse_value(typo)
    with pytest.raises(UsageError):
        parse_value("int:five")
    with pytest.raises(UsageError, match="true or false"):
        parse_value("bool:yes")


def test_keys_new_and_show_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRIDLEDGER_PASSWORD", "grid operator secret")
    path = tmp_path / "op.json"
    assert main(["keys", "new", "--out", str(path), "--role", "validator", "--strength", "test", "--label", "op1", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main(["keys", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["address"] == created["address"] and shown["bls_key"] == created["bls_key"]
    descriptor = json.loads((tmp_path / "op.pub.json").read_text())
    assert "BEGIN CERTIFICATE" in descriptor["tls_cert"]
    monkeypatch.setenv("GRIDLEDGER_PASSWORD", "wrong")
    assert main(["keys", "show", str(path)]) == 1
    assert "wrong password" in capsys.readouterr().err


def test_keys_new_refuses_to_overwrite_or_to_go_without_password(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GRIDLEDGER_PASSWORD", raising=False)
    assert main(["keys", "new", "--out", str(tmp_path / "k.json")]) == 2
    assert "no password" in capsys.readouterr().err
    assert main(["keys", "new", "--out", str(tmp_path / "k.json"), "--dev"]) == 0
    assert main(["keys", "new", "--out", str(tmp_path / "k.json"), "--dev"]) == 2


def test_genesis_new_writes_a_document_the_node_accepts(tmp_path, capsys):
    descriptors = []
    for i in range(4):
        path = tmp_path / f"op{i}.json"
        assert main(["keys", "new", "--out", str(path), "--role", "validator", "--dev", "--label", f"op{i}"]) == 0
        descriptors += ["--validator", str(tmp_path / f"op{i}.pub.json")]
    out = tmp_path / "genesis.json"
    code = main(["genesis", "new", "--chain-id", "ch/zurich", *descriptors, "--account", f"{ADDRESS}=producer,deployer:solar",
                 "--param", "period_seconds=900", "--out", str(out)])
    assert code == 0
    genesis = Genesis.load(out)
    assert genesis.validators.n == 4 and genesis.accounts[0].address == Address.parse(str(ADDRESS))
    assert genesis.accounts[0].roles == ("producer", "deployer")
    assert genesis.hash.hex() in capsys.readouterr().out


def test_genesis_new_names_the_bad_field(tmp_path, capsys):
    code = main(["genesis", "new", "--chain-id", "ch/zurich", "--out", str(tmp_path / "g.json")])
    assert code == 2
    assert "genesis.validators must be a non-empty list" in capsys.readouterr().err
    assert main(["keys", "new", "--out", str(tmp_path / "op.json"), "--role", "validator", "--dev", "--label", "op"]) == 0
    code = main(["genesis", "new", "--chain-id", "ch/zurich", "--validator", str(tmp_path / "op.pub.json"),
                 "--account", "grid1xyz=producer", "--out", str(tmp_path / "g.json")])
    assert code == 2
    assert "genesis.accounts[0].address" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()
