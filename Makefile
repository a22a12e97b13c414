# The two quick-start commands: `make run` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: run test lint format bench demo clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: serve on 127.0.0.1:8000, training the synthetic demo bundle first if models/ has none
run: $(STAMP)
	$(VENV)/bin/bonexr run

## test: lint, format check and the whole pytest suite
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	$(VENV)/bin/bonexr demo

bench: $(STAMP)
	$(PY) -m bench.service_bench
	$(PY) -m bench.pipeline_bench

clean-venv:
	rm -rf $(VENV)
