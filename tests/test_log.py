"""One logging configuration: JSON lines in production, readable lines in development."""

import io
import json

import pytest
import structlog

from ledger import log


@pytest.fixture(autouse=True)
def _restore_logging():
    # These tests reconfigure the process-wide logger (level warning, a private
    # stream); later tests must not inherit that.
    yield
    structlog.reset_defaults()
    log._configured = None


def test_json_mode_writes_one_json_object_per_line_with_bound_context():
    out = io.StringIO()
    log.configure("json", "info", stream=out)
    log.get_logger(shard="ch/zurich", node="v1").bind(height=7).info("block committed", txs=3)
    record = json.loads(out.getvalue().strip().splitlines()[-1])
    assert record["event"] == "block committed"
    assert record["shard"] == "ch/zurich" and record["height"] == 7 and record["txs"] == 3
    assert record["level"] == "info"


def test_console_mode_is_readable_text():
    out = io.StringIO()
    log.configure("console", "info", stream=out)
    log.get_logger(shard="ch").info("validator started")
    line = out.getvalue()
    assert "validator started" in line and "shard=ch" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_filters_and_bad_settings_are_refused():
    out = io.StringIO()
    log.configure("json", "warning", stream=out)
    log.get_logger().info("quiet")
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="must be 'json' or 'console'"):
        log.configure("xml")
    with pytest.raises(ValueError, match="log level"):
        log.configure("json", "loud")
