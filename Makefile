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

.PHONY: serve test bench deps model index clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

$(VENV)/.installed: requirements.txt requirements-export.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

deps: $(VENV)/.installed  ## create .venv with the pinned dependencies

$(MODEL)/manifest.json: $(VENV)/.installed export_onnx.py verification/sentences.txt
	$(PY) export_onnx.py --out $(MODEL) --force

model: $(MODEL)/manifest.json  ## export all-MiniLM-L6-v2 to an int8 ONNX bundle (with its quality gate)

$(INDEX)/manifest.json: $(MODEL)/manifest.json $(DEMO_CORPUS)
	$(PY) -m search build --corpus $(DEMO_CORPUS) --model $(MODEL) --out $(INDEX) --fields $(DEMO_FIELDS)

index: $(INDEX)/manifest.json  ## build the demo index (1,108 Debian games)

serve: $(INDEX)/manifest.json  ## serve the demo index on http://127.0.0.1:8000
	$(PY) -m search serve --model $(MODEL) --index $(INDEX) --host $(HOST) --port $(PORT)

test: $(INDEX)/manifest.json  ## run the whole test suite
	$(PY) -m pytest -q

bench: $(INDEX)/manifest.json  ## run the benchmarks, results in bench/results/
	$(PY) -m bench

clean:  ## remove build outputs (keeps .venv)
	rm -rf build .pytest_cache .hypothesis
