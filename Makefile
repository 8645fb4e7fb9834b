# The few verbs a newcomer needs. Everything runs from the project's .venv;
# `make venv` (a prerequisite of the others) creates it and reinstalls only
# when pyproject.toml changes.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; older than pyproject.toml means reinstall.
VENV_STAMP := $(VENV)/.txwatch-installed
BENCH_STAMP := $(VENV)/.txwatch-bench-installed

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint bench bench-quick broker prometheus stack stack-sim stack-down clean distclean

help:
	@echo "make venv        create $(VENV) and install txwatch with its dev tools"
	@echo "make demo        run the end-to-end demo (starts its own Kafka broker)"
	@echo "make test        run every test (installs Debian's prometheus first if root)"
	@echo "make lint        ruff check and mypy"
	@echo "make bench       throughput benchmark (writes docs/performance/)"
	@echo "make bench-quick the same ratios on 50,000 events, one round (writes var/bench-quick/)"
	@echo "make broker      run a local Kafka broker in the foreground"
	@echo "make stack       docker compose stack (Kafka, 2 workers, Prometheus, Alertmanager, Grafana)"
	@echo "make clean       remove caches and local data (var/); keeps $(VENV)"
	@echo "make distclean   clean, and remove $(VENV) too"

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@echo "make: installing txwatch and its dev tools into $(VENV) (a minute or so on a fresh clone) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@
	@echo "make: $(VENV) ready; the command is $(BIN)/txwatch (or '. $(BIN)/activate', then txwatch)"

# development mode: the public PII key and the demo configuration (README, "Configuration")
demo: venv
	@echo "make: $(BIN)/txwatch demo (a fresh broker, worker and simulator; Ctrl-C stops all)"
	TXWATCH_DEV_MODE=1 $(BIN)/txwatch demo

# The prometheus-marked tests need promtool; `prometheus` provides it when it can.
test: venv prometheus
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# the benchmark's own extra (matplotlib for the chart, py-spy for --profile)
$(BENCH_STAMP): pyproject.toml $(VENV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python bench/throughput.py

# a check of a change before the full run: one round per design, a short latency run,
# a restore over 100,000 accounts; results beside the committed ones, not over them
bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/throughput.py --events 50000 --repeat 1 --latency-seconds 20 \
		--accounts-for-state 100000 --out-dir var/bench-quick

broker: venv
	$(BIN)/txwatch broker

# Debian's prometheus and prometheus-alertmanager (promtool, amtool) check the
# rules and alerting config in deploy/. Installed only as root, and only when
# promtool is missing; otherwise this says what to run.
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 \
			&& command -v prometheus-alertmanager >/dev/null 2>&1; then \
		echo "promtool: $$(command -v promtool), alertmanager: $$(command -v prometheus-alertmanager)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update && apt-get install -y --no-install-recommends prometheus prometheus-alertmanager; \
	else \
		echo "promtool is missing: run 'sudo apt-get install prometheus prometheus-alertmanager'" >&2; \
	fi

# The production-like stack, for machines with a Docker engine (docs/operations.md).
stack:
	docker compose up -d --build

stack-sim:
	docker compose --profile sim up -d simulator

stack-down:
	docker compose --profile sim down

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info var
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
