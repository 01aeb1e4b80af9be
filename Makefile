# The commands a developer runs are the commands CI runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test check bench clean

$(BIN)/playledger: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/playledger

setup: $(BIN)/playledger

demo: setup
	$(BIN)/python examples/demo.py

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

check: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/bench_core.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
