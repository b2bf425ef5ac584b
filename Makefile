# medlake: `make run` (demo on the embedded default) and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MEDLAKE_HOME ?= $(CURDIR)/.medlake
export DAGSTER_HOME ?= $(MEDLAKE_HOME)/dagster
DEMO_ENV := $(MEDLAKE_HOME)/demo.env

.PHONY: install superset-venv run demo-data ingest ui test test-e2e test-faults test-superset test-tf test-all lint format bench bench-query workers bench-scale bench-soak bench-memory clean

install: $(VENV)/.installed

# Bytecode is compiled at install, as in the image (UV_COMPILE_BYTECODE=1): every run is a new process, and
# where Python may not write bytecode (PYTHONDONTWRITEBYTECODE) each run compiled its imports again.
$(VENV)/.installed: pyproject.toml uv.lock
	@scripts/ensure_system_deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install --quiet uv==0.13.9
	$(BIN)/uv sync --frozen --extra dev --compile-bytecode
	@touch $@

# The demo secret: random per checkout, kept out of git, the same for the generator and ingestion.
$(DEMO_ENV):
	@mkdir -p $(MEDLAKE_HOME)
	@umask 077 && echo "MEDLAKE_ARCHIVE_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(18))')" > $@

# Yesterday (UTC): a whole day of feeds lies in the past, so no report shows times after now, and the
# landing sensor still lists it (open days).
YESTERDAY = $(BIN)/python -c 'import datetime as d; print(d.datetime.now(d.UTC).date() - d.timedelta(days=1))'

# The first look: generate yesterday's sample feeds (once), then `dagster dev` with its daemon ingesting them
# through the landing sensor, as a deployment does (runs under their jobs, landing days as partitions),
# and every gold report launched through the webserver. Dagster logs to $(MEDLAKE_HOME)/dagster-dev.log.
run: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  mkdir -p $(DAGSTER_HOME) && cp deploy/dagster.embedded.yaml $(DAGSTER_HOME)/dagster.yaml && \
	  { test -f $(MEDLAKE_HOME)/manifest.json || $(BIN)/medlake generate --out $(MEDLAKE_HOME) \
	      --facilities 6 --archives 80 --bad-rate 0.08 --size-scale 0.15 --seed 42 --day "$$($(YESTERDAY))"; } && \
	  exec $(BIN)/medlake demo --port 3000

# The real services the tests use, started here unless given: PostgreSQL (as the `postgres` user) and
# moto's S3 server on 127.0.0.1. A failed start fails the target.
TEST_SERVICES = pg="$${MEDLAKE_TEST_POSTGRES_URL:-$$(scripts/start_postgres.sh)}" && \
	s3="$${MEDLAKE_TEST_S3_ENDPOINT:-$$(scripts/start_s3.sh)}" && \
	export MEDLAKE_TEST_POSTGRES_URL="$$pg" MEDLAKE_TEST_S3_ENDPOINT="$$s3"

test: install
	$(BIN)/ruff check medlake_assets medlake_dev medlake_assets_tests docs/examples
	$(BIN)/ruff format --check medlake_assets medlake_dev medlake_assets_tests docs/examples
	@$(TEST_SERVICES) && $(BIN)/python -m pytest -m "not e2e and not tf" -n 2 -q

# Apache Superset pins other versions of Flask, SQLAlchemy and friends: it gets its own environment.
SUPERSET_VENV := .venv-superset
SUPERSET_PACKAGES := apache-superset==6.1.0 psycopg2-binary==2.9.13 flask-caching==2.3.1 cachetools==8.0.2 rich==15.0.0
superset-venv: $(SUPERSET_VENV)/.installed

$(SUPERSET_VENV)/.installed: $(VENV)/.installed
	@test -x $(SUPERSET_VENV)/bin/python || $(BIN)/uv venv -q -p $(PYTHON) $(SUPERSET_VENV)
	VIRTUAL_ENV=$(CURDIR)/$(SUPERSET_VENV) $(BIN)/uv pip install -q $(SUPERSET_PACKAGES)
	@touch $@

test-e2e: install
	@scripts/ensure_test_clients.sh
	@$(TEST_SERVICES) && $(BIN)/python -m pytest -m "e2e and not tf and not superset and not faults" -n 2 -q --durations=15

# The fault-injection suite (each test runs ingestion two or three times beside a fault and compares the
# lake with a clean run): 5 min 44 s on 2 cores (measured), so outside `make test-e2e` and CI (15-minute budget).
test-faults: install
	@$(TEST_SERVICES) && $(BIN)/python -m pytest -m faults -n 2 -q --durations=15

# Apache Superset against serve-sql: its environment is a large install and each Superset start takes
# ~20 s, so it has its own target, outside `make test-e2e` and CI (which must stay under 15 minutes).
test-superset: install superset-venv
	@$(TEST_SERVICES) && $(BIN)/python -m pytest -m superset -q

# TensorFlow is large and optional: its tests run in their own environment so .venv stays lean.
test-tf: install
	UV_PROJECT_ENVIRONMENT=.venv-tf $(BIN)/uv sync --frozen --extra dev --extra tf
	@$(TEST_SERVICES) && .venv-tf/bin/python -m pytest -m tf -q

test-all: test test-e2e test-faults test-superset

lint: install
	$(BIN)/ruff check medlake_assets medlake_dev medlake_assets_tests docs/examples

format: install
	$(BIN)/ruff check --fix medlake_assets medlake_dev medlake_assets_tests docs/examples
	$(BIN)/ruff format medlake_assets medlake_dev medlake_assets_tests docs/examples

bench: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && $(BIN)/medlake bench ingest

# Reports and ad-hoc queries over a year of history, against the same data in PostgreSQL (started here).
# The lake stays in $(MEDLAKE_HOME)/bench-query and is reused by the next run of the same scale.
bench-query: install
	@export MEDLAKE_TEST_POSTGRES_URL="$$(scripts/start_postgres.sh)" && \
	  $(BIN)/medlake bench query --work-dir $(MEDLAKE_HOME)/bench-query

# N run workers (WORKERS, default 2) on this machine, the stand-in for N pods: the Dagster daemon with
# PostgreSQL and a loopback S3 endpoint (both started here; a new database and bucket per call), fed
# today's generated day slice at the production arrival rate. Ctrl-C stops the daemon and its runs.
WORKERS ?= 2
workers: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  stamp="$$(date -u +%Y%m%d%H%M%S)" && pg="$$(scripts/start_postgres.sh)" && \
	  export MEDLAKE_S3_ENDPOINT_URL="$$(scripts/start_s3.sh)" AWS_ACCESS_KEY_ID=testing \
	    AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
	    MEDLAKE_CATALOG_URL="$${pg%/*}/medlake_workers_$$stamp" MEDLAKE_STORE_URL="s3://medlake-workers-$$stamp/lake" \
	    DAGSTER_HOME="$(MEDLAKE_HOME)/dagster-workers-$$stamp" && \
	  slice="$(MEDLAKE_HOME)/workers-slice/$$(date -u +%F)" && \
	  { test -f "$$slice/manifest.json" || $(BIN)/medlake generate --out "$$slice" \
	      --facilities 10 --archives 120 --size-scale 0.2 --seed 5; } && \
	  $(BIN)/medlake workers --workers $(WORKERS) --feed "$$slice" --sensor-interval 5 --create-storage

# `medlake bench scale`: 1, 2 and 4 workers on one day slice at the production arrival rate (a few
# minutes each); PostgreSQL started here, moto's S3 server started by the benchmark.
bench-scale: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  export MEDLAKE_BENCH_POSTGRES_URL="$$(scripts/start_postgres.sh)" && \
	  $(BIN)/medlake bench scale --work-dir $(MEDLAKE_HOME)/bench-scale

# `medlake bench soak`: one worker in the deployed mode at the production rate, a 10x surge, back to normal
# (defaults: 60 + 10 + 20 minutes; SOAK="--normal-minutes 6 --surge-minutes 2 --after-minutes 8" for a
# short check). The generated archives are kept in $(MEDLAKE_HOME)/bench-soak and reused.
SOAK ?=
bench-soak: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  export MEDLAKE_BENCH_POSTGRES_URL="$$(scripts/start_postgres.sh)" && \
	  $(BIN)/medlake bench soak --work-dir $(MEDLAKE_HOME)/bench-soak $(SOAK)

# `medlake bench memory`: peak RSS of each bronze, silver and maintenance run of a day holding 40 MB archives;
# exits 1 when a run is above the bound (1.5 GB). The lake stays in $(MEDLAKE_HOME)/bench-memory.
bench-memory: install $(DEMO_ENV)
	@set -a && source $(DEMO_ENV) && set +a && \
	  $(BIN)/medlake bench memory --work-dir $(MEDLAKE_HOME)/bench-memory

clean:
	rm -rf $(MEDLAKE_HOME)
