"""consensus/ is sans-IO: it imports only ledger and the standard library, and nothing that
reaches a socket, a clock, a thread or unseeded randomness."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSENSUS = ROOT / "consensus"

# Modules that would let a replica do I/O, read a clock or draw unseeded randomness.
FORBIDDEN = {
    "socket", "ssl", "asyncio", "selectors", "select", "threading", "_thread", "concurrent",
    "time", "datetime", "calendar", "os", "secrets", "uuid", "http", "urllib", "subprocess",
    "signal", "sched", "aiohttp", "lmdb", "structlog",
}
# The seed runner may fan seeds out to worker processes; nothing else may.
ALLOWED_EXCEPTIONS = {("consensus/sim/runner.py", "multiprocessing")}
FORBIDDEN_EVERYWHERE_ELSE = {"multiprocessing"}

FILES = sorted(CONSENSUS.rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def import_problems(source: str, relative: str) -> list[str]:
    problems = []
    for module, line in _imports(ast.parse(source, filename=relative)):
        if module in ("consensus", "ledger") or (relative, module) in ALLOWED_EXCEPTIONS:
            continue
        if module in FORBIDDEN or module in FORBIDDEN_EVERYWHERE_ELSE:
            problems.append(f"{relative}:{line} imports {module} (I/O, clocks or unseeded randomness)")
        elif module not in sys.stdlib_module_names:
            problems.append(f"{relative}:{line} imports {module}, which is neither ledger nor the standard library")
    return problems


def randomness_problems(source: str, relative: str) -> list[str]:
    """``random`` may only be used as ``random.Random(seed)``; module-level functions share a
    hidden, unseeded generator."""
    problems = []
    for node in ast.walk(ast.parse(source, filename=relative)):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            names = [a.name for a in node.names]
            if names != ["Random"]:
                problems.append(f"{relative}:{node.lineno} imports {names} from random")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            if node.attr != "Random":
                problems.append(f"{relative}:{node.lineno} uses random.{node.attr} (the unseeded global generator)")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("Random", "SystemRandom") and (name == "SystemRandom" or not (node.args or node.keywords)):
                problems.append(f"{relative}:{node.lineno} makes an unseeded {name}()")
    return problems


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_consensus_imports_only_ledger_and_the_standard_library(path):
    relative = str(path.relative_to(ROOT))
    problems = import_problems(path.read_text(), relative)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_consensus_randomness_is_always_seeded(path):
    relative = str(path.relative_to(ROOT))
    problems = randomness_problems(path.read_text(), relative)
    assert not problems, "\n".join(problems)


def test_consensus_layering_check_finds_forbidden_code():
    bad = "import time\nimport numpy\nfrom asyncio import sleep\nimport multiprocessing\n"
    assert len(import_problems(bad, "consensus/x.py")) == 4
    assert import_problems("import multiprocessing\n", "consensus/sim/runner.py") == []
    sloppy = "import random\nfrom random import choice\nrandom.random()\nrandom.Random()\nrandom.SystemRandom(1)\n"
    assert {p.split(":")[1].split()[0] for p in randomness_problems(sloppy, "consensus/x.py")} == {"2", "3", "4", "5"}
    assert randomness_problems("import random\nrng = random.Random(7)\n", "consensus/x.py") == []
