# The README's two commands are `make dev` and `make test`; everything else is here for contributors.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROJECT ?= examples/quickstart

.PHONY: help install dev test lint typecheck bench bench-quick schema clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install Flux with its dev tools and the bench's peers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

dev: install ## Serve the quickstart project on :4000 with an embedded Postgres (Ctrl-C stops both)
	$(BIN)/flux dev $(PROJECT)

test: install ## Run the whole test suite against a real Postgres
	$(BIN)/pytest

lint: install ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy --strict on flux/ and cli/
	$(BIN)/mypy

bench: install ## Benchmarks: one table of ratios against floors and peers, side by side (docs/performance.md)
	$(BIN)/python -m bench

bench-quick: install ## The same table, smaller and shorter (under 3 minutes)
	$(BIN)/python -m bench --quick

schema: install ## Rewrite sql/schema.sql from a fresh migrate
	FLUX_WRITE_SCHEMA=1 $(BIN)/pytest -q tests/test_schema.py

clean: ## Remove the venv, caches and embedded Postgres data (also a cluster that .flux/pg links to)
	@for link in $(PROJECT)/.flux/pg .flux/pg; do \
	    home="$$(dirname "$$(readlink -f "$$link")")"; \
	    if [ -L "$$link" ] && [ -f "$$home/project" ]; then echo "rm -rf $$home"; rm -rf "$$home"; fi; \
	done
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(PROJECT)/.flux .flux
