# Two commands on a fresh machine with Python 3.11:
#   make demo   - the whole product on this machine: simulator, SQLite, Dagster, a settled batch
#   make test   - the whole test suite (PostgreSQL tests run when GRSAI_TEST_POSTGRES_URL is set)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint dev bench constraints clean

$(BIN)/grsai-pipeline: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/grsai-pipeline
	$(BIN)/grsai-pipeline demo

test: $(BIN)/grsai-pipeline
	$(BIN)/pytest

lint: $(BIN)/grsai-pipeline
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# SPEC 7 figures (minutes, not part of the test suite): throughput against a minimal asyncio
# loop, and sensor/schedule ticks with 1,000 batches.
bench: $(BIN)/grsai-pipeline
	$(BIN)/python benchmarks/sensor_tick.py
	$(BIN)/python benchmarks/throughput.py

# The Dagster UI on a local SQLite instance kept in ./dagster_home (or $DAGSTER_HOME); with
# no GRSAI_API_KEY it starts the simulator and points the settings at it (scripts/dev.sh).
dev: $(BIN)/grsai-pipeline
	BIN=$(BIN) bash scripts/dev.sh

constraints: $(BIN)/grsai-pipeline
	{ echo "# Versions the test suite was last run green with (pip install -c constraints.txt ...)."; \
	  echo "# Refresh: make constraints"; \
	  $(BIN)/pip freeze --exclude-editable | grep -vi '^grsai'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
