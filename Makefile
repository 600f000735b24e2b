# gridledger: the two commands a newcomer needs are `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs; nothing else is required
# but Python 3.11+ and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test soak lint bench clean-venv

# The install also builds the state tree's optional compiled part (setup.py); without a
# C compiler it is skipped and the same code runs in pure Python, slower.
$(STAMP): pyproject.toml setup.py ledger/_state_native.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gridledger needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@rm -f ledger/_state_native*.so  # a failed rebuild must not leave the old one in use
	@PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,fast]'
	@GRIDLEDGER_PURE_TREE= $(PY) -c 'from ledger.state_native import BACKEND as b; b == "compiled" or print("gridledger: the state tree'"'"'s compiled part did not build (no C compiler or OpenSSL headers?): it runs in pure Python (same results, slower)")'
	@touch $(STAMP)

demo: $(STAMP)
	@$(PY) -m cli.main demo

test: $(STAMP)
	@GRIDLEDGER_REQUIRE_FAST_BLS=1 GRIDLEDGER_REQUIRE_NATIVE_TREE=1 $(PY) -m pytest

# Long runs outside the test budget: simulator sweeps, the 50-cycle SIGKILL soak and the
# full shard tree.
soak: $(STAMP)
	@$(PY) -m consensus.sim --protocol bft --seeds 20000 --jobs 2
	@$(PY) -m consensus.sim --protocol raft --seeds 20000 --jobs 2
	@$(PY) -m shards.sim --seeds 1000
	@$(PY) tests/soak_crash.py --cycles 50
	@GRIDLEDGER_SHARDS_DEVNET_FULL=1 $(PY) -m pytest tests/test_shards_devnet.py

lint: $(STAMP)
	@$(PY) -m pip install --quiet ruff
	@$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
