# gemmserve: `make run` serves the bundled model, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  ?= models/digits
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEVICE ?= auto

.PHONY: run test lint bench autotune loadtest soak gpu-check gpu-wheelhouse clean

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

# The GPU path end to end on a machine with an NVIDIA GPU, a dry run elsewhere (docs/GPU.md). It runs
# on the venv's Python when there is one, else on python3 (a lent GPU machine's own, no network).
GPU_PYTHON     ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_WHEELHOUSE ?= gpu-wheelhouse
GPU_PIP_TARGET := --only-binary=:all: --implementation cp --python-version 3.12 \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64
gpu-check:
	$(GPU_PYTHON) -m gpucheck --wheelhouse $(GPU_WHEELHOUSE)

# The service's packages (gpucheck/wheelhouse.txt) and their dependencies as CPython 3.12 manylinux
# x86-64 wheels, for a GPU machine without network; then an offline install is resolved from them
# alone (no pip configuration: its find-links would count), and the sizes that travel are printed
# (a lent machine takes 64 MiB with the tree).
gpu-wheelhouse: $(VENV)/.installed-run
	rm -rf $(GPU_WHEELHOUSE)
	$(PY) -m pip download --quiet $(GPU_PIP_TARGET) -d $(GPU_WHEELHOUSE) -r gpucheck/wheelhouse.txt
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PY) -m pip install --quiet --dry-run \
		--ignore-installed --no-index $(GPU_PIP_TARGET) \
		--find-links $(GPU_WHEELHOUSE) --target $(GPU_WHEELHOUSE)/.resolve -r gpucheck/wheelhouse.txt
	@echo "$(GPU_WHEELHOUSE): $$(ls $(GPU_WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -cb \
		$(GPU_WHEELHOUSE)/*.whl | tail -1 | cut -f1) bytes; tracked files: $$(git ls-files -z \
		| xargs -0 du -cb | tail -1 | cut -f1) bytes"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
