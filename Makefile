PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_STAMP := .bench-venv/openwebui/.installed
BENCH_ARGS ?=

.PHONY: install test check serve bench bench-quick bench-setup example clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The baseline (open-webui 0.12.4's task code) gets a venv of its own.
$(BENCH_STAMP): bench/setup_openwebui.sh
	bash bench/setup_openwebui.sh
	touch $@

bench-setup: $(BENCH_STAMP)

# BENCH_ARGS=--start-server runs the Redis benchmarks on a private server.
bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/floor.py
	$(BIN)/python bench/redis_lifecycle.py $(BENCH_ARGS)
	$(BIN)/python bench/stop_latency.py $(BENCH_ARGS)
	$(BIN)/python bench/liveness.py $(BENCH_ARGS)
	$(BIN)/python bench/listing.py --redis
	$(BIN)/python bench/tool_calls.py
	$(BIN)/python bench/redirect.py

bench-quick: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/lifecycle.py --sizes 10000 --repeat 2
	$(BIN)/python bench/floor.py --sizes 10000 --repeat 2
	$(BIN)/python bench/redis_lifecycle.py --quick $(BENCH_ARGS)
	$(BIN)/python bench/stop_latency.py --quick $(BENCH_ARGS)
	$(BIN)/python bench/liveness.py --quick $(BENCH_ARGS)
	$(BIN)/python bench/listing.py --quick
	$(BIN)/python bench/tool_calls.py --repeat 2
	$(BIN)/python bench/redirect.py --repeat 1

example: $(STAMP)
	$(BIN)/python examples/quickstart.py

serve: example

clean:
	rm -rf $(VENV) .bench-venv build dist *.egg-info src/*.egg-info .coverage .mypy_cache .ruff_cache
