"""``gridledger demo --part tree``: the three-level story as a process, checked by what it prints.

The demo's cross-shard half runs once (about 80 s on two cores: one validator per shard,
an observer of every shard, one relayer) and each test checks one fact a grid operator
reads in its output: the fees per level, the flow's phases, the refusal over capacity,
local reconciliation, settlement per level and the regulator's verified reads. Every
figure printed comes from a receipt or a state proof, so a wrong ledger fails here.
With the topology's own validator counts, as ``make demo`` runs it (about 100 s)::

    GRIDLEDGER_DEMO_FULL=1 .venv/bin/pytest tests/test_demo_shards.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PATH = ("ch/zurich/oerlikon", "ch/zurich", "ch", "ch/bern", "ch/bern/breitenrain")
# genesis/three-levels.toml, 100,000 Wh: oerlikon's bridge 5/kWh (zurich), zurich's and
# bern's 3/kWh each (ch), breitenrain's 4/kWh (bern); the ends hold no bridge.
FEES = {"ch/zurich/oerlikon": "CHF 0.00", "ch/zurich": "CHF 5.00", "ch": "CHF 6.00", "ch/bern": "CHF 4.00",
        "ch/bern/breitenrain": "CHF 0.00"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("demo") / "net"
    validators = "0" if os.environ.get("GRIDLEDGER_DEMO_FULL") else "1"
    done = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--part", "tree", "--tree-validators", validators,
                           "--dir", str(root)], capture_output=True, text=True, timeout=420, cwd=REPO)
    if done.returncode != 0:
        logs = sorted((root / "tree" / "processes").glob("*/process.log"))
        tails = "\n".join(f"--- {p.parent.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                          for p in logs)
        pytest.fail(f"the demo exited with {done.returncode}:\n{done.stdout}\n{done.stderr}\n{tails}")
    return done, root


def section(out: str, title: str) -> str:
    """The lines of the numbered section whose heading contains ``title``."""
    match = re.search(rf"^\d+\. [^\n]*{re.escape(title)}[^\n]*\n(.*?)(?=^\d+\. |\Z)", out, re.M | re.S)
    assert match, f"no section {title!r} in:\n{out}"
    return match.group(1)


def phase_rows(text: str) -> list[list[str]]:
    return [line.split()[2:] for line in text.splitlines() if re.match(r"^\s+\+\d+\.\d s ", line)]


def test_the_tree_shows_every_shard_with_its_level_and_every_bridge_with_capacity_and_fee(demo):
    out = section(demo[0].stdout, "tree of shards")
    for level, shard in ((0, "ch"), (1, "ch/zurich"), (1, "ch/bern"), (2, "ch/zurich/oerlikon"),
                         (2, "ch/bern/breitenrain"), (2, "ch/zurich/altstetten"), (2, "ch/bern/bethlehem")):
        assert re.search(rf"level {level} .* {re.escape(shard)} ", out), shard
    assert re.search(r"ch/zurich -> ch/zurich/oerlikon\s+capacity\s+400,000 Wh per period, grid fee 5/kWh", out)
    assert re.search(r"ch -> ch/bern\s+capacity\s+1,500,000 Wh per period, grid fee 3/kWh", out)


def test_the_quote_names_the_five_shard_path_and_each_level_its_fee(demo):
    out = section(demo[0].stdout, "buys the producer's energy")
    assert "path " + " -> ".join(PATH) in out
    for shard, fee in FEES.items():
        assert re.search(rf"^\s+{re.escape(shard)}\s+grid fee\s+{re.escape(fee)}", out, re.M), shard
    assert "total grid fees                  CHF 15.00; price CHF 50.00; the consumer locks CHF 65.00" in out


def test_the_purchase_is_locked_at_the_origin_reserved_hop_by_hop_and_committed_back(demo):
    out = section(demo[0].stdout, "buys the producer's energy")
    rows = phase_rows(out)
    assert rows[0][0] == "locked"
    assert rows[-1] == ["committed"] * 5
    # The destination commits before the origin hears of it; no hop is ever refunded.
    assert any(r[-1] == "committed" and r[0] == "locked" for r in rows)
    assert not any("refunded" in r for r in rows)
    assert any("reserved" in r for r in rows)
    assert "the relayer carried 8 packets for it" in out
    assert "the consumer paid CHF 65.00 = price CHF 50.00 + grid fees CHF 15.00" in out
    # One token per shard, the bridges as counterparties.
    assert re.search(r"ch/zurich\s+token #\d+\s+the bridge to ch -> the bridge to ch/zurich/oerlikon", out)
    assert re.search(r"ch/zurich/oerlikon\s+token #\d+\s+the bridge to ch/zurich -> the consumer", out)
    assert re.search(r"ch/bern/breitenrain\s+token #\d+\s+the producer -> the bridge to ch/bern", out)


def test_a_purchase_over_a_bridge_capacity_is_refused_before_anything_is_locked(demo):
    out = section(demo[0].stdout, "refused by the quote")
    assert ("refused (capacity_exceeded): bridge ch/zurich -> ch/zurich/oerlikon has 300000 Wh left" in out)
    assert "nothing was locked" in out


def test_each_shard_reconciles_its_own_meters_and_not_the_bridge_points(demo):
    out = section(demo[0].stdout, "Delivery in period")
    assert re.search(r"the consumer's meter\s+in oerlikon\s+signs 102,000 Wh", out)
    assert re.search(r"the producer's meter\s+in breitenrain\s+signs 99,000 Wh", out)
    assert "the consumer's meter shows over-consumption of 2,000 Wh" in out
    assert "the producer's meter shows under-production of 1,000 Wh" in out
    for shard in PATH[1:4]:
        assert re.search(rf"^\s+{re.escape(shard)}\s+reconciled: nothing to settle .*bridge points", out, re.M), shard


def test_settlement_pays_each_level_its_own_fee_and_the_producer_the_price(demo):
    out = section(demo[0].stdout, "Settlement")
    assert phase_rows(out)[-1] == ["settled"] * 5
    for shard, fee in FEES.items():
        assert re.search(rf"the grid operator of {re.escape(shard)}\s+collected\s+{re.escape(fee)}$", out, re.M), shard
    assert re.search(r"the producer in breitenrain\s+received\s+CHF 50.00", out)


def test_the_regulator_reads_every_path_shard_from_its_observer_and_verifies_each_read(demo):
    out = section(demo[0].stdout, "regulator's observers")
    for shard in PATH:
        assert re.search(rf"^\s+{re.escape(shard)}\s+flow settled, grid operator holds {re.escape(FEES[shard])}",
                         out, re.M), shard
    assert len(re.findall(r"verified: (?:commit|BLS checkpoint) certificate", out)) == 5
    assert "consumer CHF 99,935.00" in out and "producer CHF 50.00" in out
    assert "12 reads verified" in out
    assert "is refused: state proof does not match the certified state root" in out


def test_the_demo_stops_every_process_it_started(demo):
    from cli.devnet import _alive

    done, root = demo
    state = json.loads((root / "tree" / "devnet.json").read_text())
    assert state["processes"] and all(p["pid"] is None for p in state["processes"])
    assert "The demo took" in done.stdout
    assert not any(_alive(int(pid)) for pid in re.findall(r'"pid": (\d+)', (root / "tree" / "devnet.json").read_text()))
