"""Configuration files, keys, command entry points and the simulator's determinism."""

from pathlib import Path

import pytest

from meters import gateway, simulator
from meters.config import load_config, load_meter_keys, parse_endpoint
from meters.errors import ConfigError
from meters.maps import load_map
from meters.simulator import ManualClock, Simulator, load_sim_config
from meters.testbed import gateway_toml, make_meter_keys

EXAMPLES = Path(__file__).resolve().parent.parent / "meters" / "examples"


def test_example_configurations_parse():
    config = load_config(EXAMPLES / "meters.toml")
    by_name = {m.name: m for m in config.meters}
    assert sorted(by_name) == ["house-1", "house-2", "house-3", "pv-roof", "wind-1"]
    assert by_name["house-1"].keystore == EXAMPLES / "keys" / "house-1.json"
    assert config.chain.period_seconds == 900
    sim = Simulator(load_sim_config(EXAMPLES / "sim.toml"), clock=ManualClock(1_767_225_600))
    assert len(sim.meters) == 5
    assert load_map("plant-meter.toml", EXAMPLES).name == "plant-meter"


def write(tmp_path, meters, **kw):
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml(data_dir="data", node_url="http://127.0.0.1:1", meters=meters, **kw))
    return path


METER = {"name": "m1", "endpoint": "tcp://127.0.0.1:1502", "unit_id": 1, "map": "sdm630", "rated_power_w": 1000,
         "keystore": "keys/m1.json"}


@pytest.mark.parametrize("change,message", [
    ({"rated_power_w": 0}, "rated_power_w must be positive"),
    ({"channel": "both"}, "channel must be"),
    ({"endpoint": "udp://x:1"}, "scheme must be"),
    ({"unit_id": 300}, "unit_id 300"),
    ({"colour": "red"}, "must be a table with keys"),
])
def test_configuration_errors_name_the_meter_and_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, [{**METER, **change}]))


def test_duplicate_meter_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(write(tmp_path, [METER, {**METER, "unit_id": 2}]))


def test_meter_group_expands_its_unit_range(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml(data_dir="d", node_url="http://x", meters=[]).replace("meter = []", "") + """
[[meter_group]]
name = "pv-{port}-{unit}"
endpoint = "tcp://10.0.0.1:1502"
unit_ids = [3, 5]
map = "sunspec"
channel = "export"
rated_power_w = 5000
keystore = "keys/{name}.json"
""")
    config = load_config(path)
    assert [(m.name, m.unit_id) for m in config.meters] == [("pv-1502-3", 3), ("pv-1502-4", 4), ("pv-1502-5", 5)]
    assert config.meters[2].keystore == tmp_path / "keys" / "pv-1502-5.json"


def test_rtu_endpoints_parse_with_line_settings():
    e = parse_endpoint("rtu:///dev/ttyUSB0?baudrate=19200&parity=E")
    assert (e.kind, e.device, e.baudrate, e.parity) == ("rtu", "/dev/ttyUSB0", 19200, "E")
    assert parse_endpoint("rtu+tcp://gw.local:4001").port == 4001


def test_encrypted_keys_open_with_the_password_and_plaintext_only_in_dev_mode(tmp_path, monkeypatch):
    sealed = make_meter_keys(tmp_path / "keys", ["m1"], password="s3cret")
    config = load_config(write(tmp_path, [METER], keys={"dev_plaintext": False}))
    monkeypatch.setenv("GRIDLEDGER_METER_PASSWORD", "wrong")
    with pytest.raises(ConfigError, match="wrong password"):
        load_meter_keys(config)
    monkeypatch.setenv("GRIDLEDGER_METER_PASSWORD", "s3cret")
    assert load_meter_keys(config)["m1"].public_key == sealed["m1"].public_key
    make_meter_keys(tmp_path / "keys", ["m1"])  # now a plaintext development key
    with pytest.raises(ConfigError, match="development mode"):
        load_meter_keys(config)
    assert load_meter_keys(config, dev=True)["m1"].public_key != sealed["m1"].public_key


def test_gateway_main_checks_configuration_and_exits_with_usage_codes(tmp_path, capsys, monkeypatch):
    # Keep the suite's logging as it is: structlog would bind to this test's captured stderr.
    monkeypatch.setattr(gateway, "configure", lambda *a, **k: None)
    monkeypatch.setattr(gateway, "get_logger", lambda **k: None)
    make_meter_keys(tmp_path / "keys", ["m1"])
    good = write(tmp_path, [METER])
    assert gateway.main(["--config", str(good), "--check"]) == 0
    assert "1 meters" in capsys.readouterr().out
    assert gateway.main(["--config", str(tmp_path / "missing.toml")]) == 2
    with pytest.raises(SystemExit) as exit_:
        gateway.main(["--help"])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        simulator.main(["--help"])
    assert exit_.value.code == 0
    assert simulator.main(["--config", str(tmp_path / "missing.toml")]) == 2


def test_simulator_is_deterministic_from_seed_and_clock():
    doc = {"simulator": {"seed": 99}, "meters": [
        {"ports": 1502, "unit_ids": [1, 3], "profile": "solar", "peak_w": 8000, "initial_kwh": [0, 9000]},
        {"ports": 1503, "unit_ids": [1, 3], "profile": "wind", "peak_w": 3000000},
        {"ports": 1504, "unit_ids": [1, 3], "profile": "household", "peak_w": 7000},
    ]}
    t0 = 1_767_225_600 + 10 * 3600

    def trace(seed, reads):
        clock = ManualClock(t0)
        sim = Simulator({**doc, "simulator": {"seed": seed}}, clock=clock)
        out = []
        for dt in reads:
            clock.advance(dt)
            out.append([(m.values_at(clock.now()).import_j, m.values_at(clock.now()).export_j)
                         for _, m in sorted(sim.meters.items())])
        return out

    # The same seed gives the same counters, however the time is sliced into reads.
    assert trace(99, [3600])[-1] == trace(99, [600] * 6)[-1] == trace(99, [17, 3583])[-1]
    assert trace(99, [3600]) != trace(100, [3600])


def test_simulator_refuses_unknown_profiles_and_faults():
    with pytest.raises(ConfigError, match="unknown profile"):
        Simulator({"meters": [{"ports": 1502, "unit_ids": 1, "profile": "tidal"}]}, clock=ManualClock(0))
    with pytest.raises(ConfigError, match=r"\[\[meters\]\] has unknown keys \['peak'\]"):
        Simulator({"meters": [{"ports": 1502, "unit_ids": 1, "peak": 5}]}, clock=ManualClock(0))
    sim = Simulator({"meters": [{"ports": 1502, "unit_ids": 1}]}, clock=ManualClock(0))
    with pytest.raises(ConfigError, match="unknown fault"):
        sim.inject(1502, 1, "fire")
