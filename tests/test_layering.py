"""The direction of dependencies from ARCHITECTURE.md: an arrow only points down.

    cli > node > shards > {contracts, consensus} > ledger;  meters > ledger
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"ledger", "consensus", "contracts", "shards", "node", "meters", "cli", "bench", "genesis", "tests"}
ALLOWED = {
    "ledger": set(),
    "consensus": {"ledger"},
    "contracts": {"ledger"},
    "meters": {"ledger"},
    "shards": {"ledger", "consensus", "contracts"},
    "node": {"ledger", "consensus", "contracts", "shards", "meters"},
    "cli": {"ledger", "consensus", "contracts", "shards", "node", "meters", "genesis"},
    "genesis": {"ledger"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below_it(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "layering violated:\n" + "\n".join(offenders)
