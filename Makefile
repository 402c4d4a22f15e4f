# The project's commands. GNU make; every target is phony (the venv stamp aside).
#
#   make run      start the whole stack here (incidents up); Ctrl-C stops it
#   make test     the whole test suite (unit, integration, e2e) in TEST_WORKERS processes;
#                 PYTEST_ARGS passes through
#   make lint     ruff (lint + format check) and mypy --strict on the services and tooling packages
#   make docs     build the docs site (docs/, mkdocs.yml) with --strict: a broken link fails
#
# Every target installs first: a venv in .venv from `python3` (3.11 or newer; set
# PYTHON=python3.12 to pick another), with the exact versions of constraints.txt.
# The install is skipped while .venv/.installed is newer than pyproject.toml and
# constraints.txt.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test files run in parallel processes (pytest-xdist), each file whole in one process, as
# a module's fixtures (a whole stack) are shared by its tests. The tests mostly wait on
# brokers, databases and deadlines, so 3 workers on 2 cores finish in about half the time
# of one. TEST_WORKERS=0 runs them in this process. Tests marked `serial` (a chaos run,
# a race against a deadline) make their own load and judge timing-sensitive outcomes:
# they run alone afterwards.
TEST_WORKERS ?= 3
SRC := services tooling tests
# Python >= 3.11, or a message saying what was found.
PY_CHECK := import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"error: Python >= 3.11 is required, {sys.executable} is {v.major}.{v.minor}")

.PHONY: help venv install run test test-unit lint docs format schemas messages bench constraints clean

help:
	@echo "make run          start the stack (broker, PostgreSQL if needed, four services)"
	@echo "make test         run every test (PYTEST_ARGS=... passes options to pytest)"
	@echo "make test-unit    the unit tests only: no broker, no database, about a minute"
	@echo "make lint         ruff check, ruff format --check, mypy --strict services tooling"
	@echo "make docs         build the docs site into .run/site (mkdocs --strict: broken links fail)"
	@echo "make format       ruff check --fix, then ruff format"
	@echo "make schemas      write the event JSON Schemas and asyncapi.yaml to schemas/"
	@echo "make messages     extract the console's strings and update its language catalogs"
	@echo "make bench        incidents bench"
	@echo "make constraints  regenerate constraints.txt from the venv"
	@echo "make venv         create .venv and install the project (what every target does first)"
	@echo "make clean        remove caches and .run (keeps the venv)"

venv install: $(STAMP)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Python >= 3.11 is required" >&2; exit 1; }
	@$(PYTHON) -c '$(PY_CHECK)'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@$(BIN)/python -c '$(PY_CHECK)' || { echo "$(VENV) is too old: rm -rf $(VENV) and run make again" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

run: $(STAMP)
	$(BIN)/incidents up

test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(BIN)/pytest -q -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: PYTEST_ARGS chose none

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/contract -m "not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy --strict services tooling

# The docs site (mkdocs.yml, docs/) into .run/site. --strict turns every warning into an
# error, a link to a page or anchor that does not exist included: this is the link check.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

# Fixes what ruff can fix and formats; `make lint` shows whatever is left.
format: $(STAMP)
	$(BIN)/ruff check --fix --exit-zero $(SRC)
	$(BIN)/ruff format $(SRC)

schemas: $(STAMP)
	$(BIN)/incidents schemas

# The console's languages (docs/console.md): the English strings of the templates and
# the console's Python (babel.cfg) into messages.pot, merged into every catalog under
# services/console/locale (a new string arrives with an empty msgstr, for a translator).
# No compile step: the console compiles the .po files when it starts.
LOCALES := services/console/locale
messages: $(STAMP)
	$(BIN)/pybabel -q extract -F babel.cfg -k N_ --no-location --sort-output \
	  --project=incidents -o $(LOCALES)/messages.pot .
	$(BIN)/pybabel -q update -i $(LOCALES)/messages.pot -d $(LOCALES) --ignore-pot-creation-date \
	  --no-fuzzy-matching --ignore-obsolete

bench: $(STAMP)
	$(BIN)/incidents bench

# After upgrading a package in the venv (.venv/bin/pip install -U NAME): record the
# versions now installed. Needs only the venv, so it never reinstalls the old ones first.
constraints: | $(BIN)/python
	@{ echo "# Exact versions the project is tested with. Installs use them:"; \
	   echo "#   pip install -c constraints.txt -e \".[dev]\"   (what make does)"; \
	   echo "# pyproject.toml keeps lower bounds only. Regenerate from the venv: make constraints"; \
	   $(BIN)/python -m pip freeze --exclude-editable \
	     | grep -viE '^(incidents|pip|setuptools|wheel)([=<>~! @]|$$)'; \
	 } > constraints.txt.tmp
	@mv constraints.txt.tmp constraints.txt
	@if [ -e $(STAMP) ]; then touch $(STAMP); fi
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) packages pinned"

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis .run triage-data escalation-data
	find $(SRC) -type d -name __pycache__ -prune -exec rm -rf {} +
