# The two commands: `make run` (the product, embedded mode, demo data) and `make test` (the suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.base: requirements/base.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements/base.txt
	touch $@

$(VENV)/.dev: requirements/base.txt requirements/dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements/dev.txt
	touch $@ $(VENV)/.base

run: $(VENV)/.base
	$(BIN)/python manage.py migrate --noinput -v0
	PUBLIC_URL=http://$(HOST):$(PORT) $(BIN)/python manage.py seed_demo
	PUBLIC_URL=http://$(HOST):$(PORT) $(BIN)/uvicorn tradeflow.asgi:application --host $(HOST) --port $(PORT) --no-access-log --ws-per-message-deflate false

test: $(VENV)/.dev
	./scripts/test.sh $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .

bench: $(VENV)/.dev
	$(BIN)/python bench/webhook_bench.py

clean:
	rm -rf $(VENV) var .pytest_cache
