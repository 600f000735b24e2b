"""Node configuration: documented fields, environment overrides, errors that name the field."""

import pytest

from node.config import ConfigError, NodeConfig

VALIDATOR = """
role = "validator"
data_dir = "data/op1"
genesis = "genesis.json"
key_file = "keys/op1.json"
[api]
port = 8081
[peer]
port = 9081
peers = { "%s" = "wss://127.0.0.1:9082/peer/v1" }
""" % ("ab" * 32)


def test_config_loads_with_paths_relative_to_the_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(VALIDATOR)
    config = NodeConfig.load(path, environ={})
    assert config.api.port == 8081 and config.peer.port == 9081
    assert config.data_dir == str(tmp_path / "data/op1")
    assert config.mempool.max_txs > 0


def test_environment_overrides_any_field(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(VALIDATOR)
    config = NodeConfig.load(path, environ={"GRIDLEDGER_API_PORT": "7000", "GRIDLEDGER_DEV": "true",
                                            "GRIDLEDGER_FOLLOW_URLS": "http://a,http://b"})
    assert config.api.port == 7000 and config.dev is True and config.follow.urls == ["http://a", "http://b"]
    with pytest.raises(ConfigError, match="GRIDLEDGER_API_PORT must be an integer"):
        NodeConfig.load(path, environ={"GRIDLEDGER_API_PORT": "eighty"})


@pytest.mark.parametrize(
    "text, field",
    [
        ('role = "miner"', "role must be 'validator' or 'observer'"),
        ('role = "validator"\n[api]\nport = "80"', "api.port must be an integer"),
        ('role = "validator"\nkey_file = "k"\n[api]\nport = 70000', "api.port must be a TCP port"),
        ('colour = "blue"', "unknown field"),
        ('[api]\nspeed = 1', "api.speed"),
        ('role = "observer"', "follow.urls is required"),
        ('key_file = "k"\n[peer]\npeers = { "zz" = "wss://x" }', "peer.peers"),
        ('key_file = "k"\n[log]\nmode = "xml"', "log.mode"),
        ("role = ", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field):
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field):
        NodeConfig.load(path, environ={})
