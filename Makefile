# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test lint format demo demo-quick clean

setup: $(STAMP)

# Re-run only when the dependency list or the system-package script changes.
$(STAMP): pyproject.toml scripts/install_system_packages.sh
	bash scripts/install_system_packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch; an existing torch (a CUDA build, say) is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[torch,dev]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when a selection collects nothing; that is not a failure.
test: lint
	$(VENV)/bin/pytest -q -x --durations=15; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

demo: setup
	$(VENV)/bin/u2moe demo --out exp/demo

demo-quick: setup
	$(VENV)/bin/u2moe demo --quick --out exp/demo-quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
