# The two front-door commands:
#   make run    install what the platform needs, then run it locally (broker, PostgreSQL,
#               services, simulated city) on 127.0.0.1; Ctrl-C stops it. ARGS="--fresh" etc.
#   make test   install what the tests need, then lint, type-check and run every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint schemas clean system-deps

# Debian packages the local stack and the tests run: installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		{ echo "installing Debian's mosquitto (MQTT broker)"; \
		  $(SUDO) apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP) system-deps
	$(BIN)/city-vitals local $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/city-vitals schemas --check

test: lint system-deps
	$(BIN)/pytest $(ARGS)

schemas: $(STAMP)
	$(BIN)/city-vitals schemas

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
