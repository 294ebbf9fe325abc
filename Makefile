# gemmserve: `make run` serves the bundled model, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  ?= models/digits
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEVICE ?= auto

.PHONY: run test lint bench autotune loadtest soak clean

$(VENV)/.installed-run: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m service --model $(MODEL) --host $(HOST) --port $(PORT) --device $(DEVICE) --autotune-cache $(AUTOTUNE_CACHE)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

bench: $(VENV)/.installed-dev
	$(PY) -m engine.bench

AUTOTUNE_CACHE ?= $(MODEL).autotune.json
BATCH_SIZES    ?= 1,2,4,8,16,32
autotune: $(VENV)/.installed-run
	$(PY) -m engine.autotune $(MODEL) --device $(DEVICE) --batch-sizes $(BATCH_SIZES) --cache $(AUTOTUNE_CACHE)

# Load tests against a service subprocess (docs/LOADTEST.md); both exit 1 on any unexpected failure.
loadtest: $(VENV)/.installed-dev
	$(PY) -m loadtests run --model $(MODEL) --device $(DEVICE)

soak: $(VENV)/.installed-dev
	$(PY) -m loadtests soak --model $(MODEL) --device $(DEVICE) --minutes 10

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
