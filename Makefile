# medlake: `make run` (demo on the embedded default) and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MEDLAKE_HOME ?= $(CURDIR)/.medlake
export DAGSTER_HOME ?= $(MEDLAKE_HOME)/dagster
DEMO_ENV := $(MEDLAKE_HOME)/demo.env

.PHONY: install run demo-data ingest ui test test-e2e test-all lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@scripts/ensure_system_deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/uv sync --frozen --extra dev
	@touch $@

# The demo secret: random per checkout, kept out of git, the same for the generator and ingestion.
$(DEMO_ENV):
	@mkdir -p $(MEDLAKE_HOME)
	@umask 077 && echo "MEDLAKE_ARCHIVE_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))')" > $@

run: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml && \
	  { test -f $(MEDLAKE_HOME)/manifest.json || $(BIN)/medlake generate --out $(MEDLAKE_HOME) \
	      --facilities 6 --archives 80 --bad-rate 0.08 --size-scale 0.15 --seed 42; } && \
	  $(BIN)/medlake ingest --once && \
	  $(BIN)/medlake sql "SELECT _facility, count(*) AS records FROM bronze.lab_results GROUP BY 1 ORDER BY 1" && \
	  echo "Dagster UI: http://127.0.0.1:3000 (Ctrl-C to stop)" && \
	  exec $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

test: install
	$(BIN)/ruff check medlake_assets medlake_assets_tests
	$(BIN)/ruff format --check medlake_assets medlake_assets_tests
	$(BIN)/python -m pytest -m "not e2e and not tf" -n 2 -q

test-e2e: install
	$(BIN)/python -m pytest -m "e2e and not tf" -q

test-all: test test-e2e

lint: install
	$(BIN)/ruff check medlake_assets medlake_assets_tests

format: install
	$(BIN)/ruff check --fix medlake_assets medlake_assets_tests
	$(BIN)/ruff format medlake_assets medlake_assets_tests

bench: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && $(BIN)/medlake bench ingest

clean:
	rm -rf $(MEDLAKE_HOME)
