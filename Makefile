# Two commands for a new user: `make serve` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := build/model
INDEX := build/index
DEMO_CORPUS := data/demo-games.jsonl
DEMO_FIELDS := section,version,homepage
HOST ?= 127.0.0.1
PORT ?= 8000
# deploy outputs (see the deploy section below)
TASK := build/task
TASK_PY311 := build/task-py311
ZIP_PARTS := build/lambda-zip
SAM_VENV := .venv-sam

.PHONY: serve test test-fast image-engine image-test lint bench deps model index native clean help browser task-root layers package-zip sam lint-template

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

$(VENV)/.installed: requirements.txt requirements-export.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .  # the `search` console script
	touch $@

deps: $(VENV)/.installed  ## create .venv with the pinned dependencies

$(MODEL)/manifest.json: export_onnx.py $(wildcard export/*.py) verification/sentences.txt verification/short-texts.txt | $(VENV)/.installed
	$(PY) export_onnx.py --out $(MODEL) --force

model: $(MODEL)/manifest.json  ## export all-MiniLM-L6-v2 to an int8 ONNX bundle (with its quality gate)

$(INDEX)/manifest.json: $(MODEL)/manifest.json $(DEMO_CORPUS)
	$(PY) -m search build --corpus $(DEMO_CORPUS) --model $(MODEL) --out $(INDEX) --fields $(DEMO_FIELDS)

index: $(INDEX)/manifest.json  ## build the demo index (1,108 Debian games)

# The int8 scoring kernel (search/scoring/native/int8dot.c).  Optional: without a C compiler int8 indexes
# use onnxruntime's kernel (same results, slower for single queries), so a failure only warns.
NATIVE_LIB := search/scoring/native/_int8dot.so
$(NATIVE_LIB): search/scoring/native/int8dot.c search/scoring/native/build.py | $(VENV)/.installed
	$(PY) search/scoring/native/build.py --optional

native: $(NATIVE_LIB)  ## compile the int8 scoring kernel (needs cc; optional)

serve: $(INDEX)/manifest.json $(NATIVE_LIB)  ## serve the demo index on http://127.0.0.1:8000
	$(PY) -m search serve --model $(MODEL) --index $(INDEX) --host $(HOST) --port $(PORT)

# The browser test (tests/test_web_browser.py) drives Debian's chromium; it skips, saying why, without it.
CHROMIUM := /usr/bin/chromium
browser:  ## install Debian's chromium for the browser test (needs root and apt-get)
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: apt-get could not install chromium; the browser test will be skipped"; \
	else echo "note: $(CHROMIUM) missing and not root with apt-get; the browser test will be skipped"; fi

# The container image test (tests/deploy/test_image.py) starts Debian's Docker engine and makes its
# base images with debootstrap; it skips, saying why, without them (not root, no apt-get).
image-engine:  ## install Debian's docker.io and debootstrap for the image test (needs root and apt-get)
	@if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's docker.io and debootstrap for the image test"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null 2>&1 \
	    || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        docker.io debootstrap >/dev/null)) \
	    || echo "warning: apt-get could not install docker.io and debootstrap; the image test will be skipped"; \
	else echo "note: dockerd or debootstrap missing and not root with apt-get; the image test will be skipped"; fi

image-test: $(INDEX)/manifest.json image-engine $(SAM_VENV)/.installed  ## build the Dockerfile in Debian's engine (stand-in bases, offline) and run it: tests/deploy/test_image.py
	$(PY) -m pytest -q tests/deploy/test_image.py

# ruff (lint and format) on everything, mypy on the code that ships and the tools around it.
MYPY_PATHS := search handler.py export_onnx.py $(wildcard export) bench
lint: | $(VENV)/.installed  ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(MYPY_PATHS)

test: lint $(INDEX)/manifest.json $(NATIVE_LIB) browser image-engine $(SAM_VENV)/.installed  ## lint, then the whole test suite
	$(PY) -m pytest -q

# The unit tier: no exported model, no S3 server, nothing marked slow (tests/conftest.py marks them).
test-fast: $(NATIVE_LIB) | $(VENV)/.installed  ## run the fast unit tier (no exported model, no S3 server, nothing slow; under a minute)
	$(PY) -m pytest -q -m "not slow and not model and not s3"

# The load figure drives the local server with Debian's wrk; without it that figure is skipped.
bench: $(INDEX)/manifest.json $(NATIVE_LIB)  ## run the benchmarks, results in bench/results/ (BENCH_ARGS="--only scale --quick")
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)); } \
	  || echo "note: wrk missing and not installable here; the load figure will be skipped"
	$(PY) -m bench $(BENCH_ARGS)

# ---- deploy: the Lambda task root without Docker, the zip variant's layers, the SAM CLI.
# deploy/taskroot.py is the one recipe (the Dockerfile and the layer Makefiles run it too).

task-root: $(INDEX)/manifest.json  ## assemble /var/task without Docker: build/task (py3.12 Linux x86_64) + build/task-py311 (tests)
	$(PY) deploy/taskroot.py all --target $(TASK) --python-version 3.12 --wheel-dir build/.wheels/cp312 --model $(MODEL) --index $(INDEX)
	$(PY) deploy/taskroot.py all --target $(TASK_PY311) --python-version 3.11 --with-ric --wheel-dir build/.wheels/cp311 --model $(MODEL) --index $(INDEX)

layers: $(INDEX)/manifest.json  ## build the zip variant's parts the way `sam build` does (runtime layer, model layer, code)
	$(MAKE) -f layers/runtime/Makefile build-RuntimeLayer ARTIFACTS_DIR=$(CURDIR)/$(ZIP_PARTS)/runtime-layer PYTHON=$(CURDIR)/$(PY)
	$(MAKE) -f layers/model/Makefile build-ModelLayer ARTIFACTS_DIR=$(CURDIR)/$(ZIP_PARTS)/model-layer PYTHON=$(CURDIR)/$(PY) MODEL=$(CURDIR)/$(MODEL)
	$(MAKE) -f deploy/zip/Makefile build-SearchZipFunction ARTIFACTS_DIR=$(CURDIR)/$(ZIP_PARTS)/function PYTHON=$(CURDIR)/$(PY) INDEX=$(CURDIR)/$(INDEX)

package-zip: layers  ## zip the layers and the function, print each size against Lambda's 250 MB unzipped limit
	$(PY) deploy/taskroot.py zip $(foreach part,runtime-layer model-layer function,$(ZIP_PARTS)/$(part)=$(ZIP_PARTS)/$(part).zip)

$(SAM_VENV)/.installed: requirements-sam.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements-sam.txt
	touch $@

sam: $(SAM_VENV)/.installed  ## install the SAM CLI into .venv-sam (its pins clash with .venv's)

lint-template: $(SAM_VENV)/.installed | $(VENV)/.installed  ## cfn-lint and `sam validate --lint` on template.yaml
	$(VENV)/bin/cfn-lint template.yaml
	$(SAM_VENV)/bin/sam validate --lint --template template.yaml

clean:  ## remove build outputs (keeps .venv)
	rm -rf build .pytest_cache .hypothesis
