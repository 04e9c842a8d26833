# The two front-door commands:
#   make run    install what the platform needs, then run it locally (broker, PostgreSQL,
#               services, simulated city) on 127.0.0.1; Ctrl-C stops it. ARGS="--fresh" etc.
#   make test   install what the tests need, then lint, type-check and run every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/city-vitals local $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/city-vitals schemas --check

test: lint
	$(BIN)/pytest $(ARGS)

schemas: $(STAMP)
	$(BIN)/city-vitals schemas

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
