# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when missing
# and install the package with pinned versions (constraints.txt), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.clipline-installed

.PHONY: demo test lint

$(INSTALLED): pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/clipline demo --out ./clipline-demo

test: $(INSTALLED)
	$(BIN)/ruff check clipline tests benchmarks
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check clipline tests benchmarks
	$(BIN)/ruff format --check clipline tests
