# The two quick-start commands: `make run` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
SERVE_STAMP := $(VENV)/.installed-serve
# pip's own progress on a terminal, one line per stage in a log
PIP_QUIET := $(shell test -t 1 || echo --quiet)

.PHONY: run test test-fast lint fmt bench figures demo image-test clean-venv real-bundle real-figures

## FracAtlas (Abedeen et al. 2023, CC BY 4.0): the real radiographs the shipped bundle learns from
FRACATLAS ?= ../shared/datasets/fracatlas

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(SERVE_STAMP)

# Serving alone: the service, ONNX Runtime and OpenVINO; no TensorFlow, no test tools.
$(SERVE_STAMP): pyproject.toml
	@echo "make run: [1/2] installing what serving needs into $(VENV) (.[service,cpu]: no TensorFlow, no test tools)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install $(PIP_QUIET) --disable-pip-version-check -e '.[service,cpu]'
	@touch $(SERVE_STAMP)

## run: serve on 127.0.0.1:8000 (BONEXR_PORT / --port to change it): the shipped bundle in
## models/, at once; with none there, the synthetic demo (then the training packages too)
run: $(SERVE_STAMP) $(if $(wildcard models/*/manifest.json),,$(STAMP))
	@echo "make run: [2/2] bonexr run (the server: $(VENV)/bin/bonexr)"
	@$(if $(wildcard $(FRACATLAS)/images),BONEXR_SAMPLES_DIR=$${BONEXR_SAMPLES_DIR:-$(FRACATLAS)/images} ,)$(VENV)/bin/bonexr run $(if $(PORT),--port $(PORT),)

## test: lint (ruff, format check, mypy) and the whole pytest suite -- what CI runs
## (the web-page test drives Debian's chromium, the PACS tests Debian's Orthanc and
## dciodvfy, the records tests PostgreSQL, the alert-rule test promtool: each installed
## here if missing)
test: lint
	@./scripts/ensure-debian-tool chromium "web-page test" chromium chromium-browser google-chrome
	@./scripts/ensure-debian-tool nginx "compose proxy test" nginx
	@./scripts/ensure-debian-tool orthanc "PACS tests" Orthanc
	@./scripts/ensure-debian-tool orthanc-dicomweb "PACS tests" /usr/share/orthanc/plugins/libOrthancDicomWeb.so
	@./scripts/ensure-debian-tool dicom3tools "DICOM validation (dciodvfy)" dciodvfy
	@./scripts/ensure-debian-tool postgresql "PostgreSQL records tests" /usr/lib/postgresql
	@./scripts/ensure-debian-tool prometheus "alert-rule test (promtool)" promtool
	@./scripts/ensure-checkov
	$(PY) -m pytest -n 2 --dist loadfile

## test-fast: lint and every test that does not train a model (the edit loop)
test-fast: lint
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow"

## lint: checks only, changes nothing
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

## fmt: fix what ruff can fix, then format
fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	$(VENV)/bin/bonexr demo

## bench: runtimes + service + overload + TensorFlow baseline in one run, bonexr against
## LitServe and the raw engine in one run, then the input pipeline, heat-map and upload
## benchmarks, and the server's memory through the DICOM intake cases (tables printed,
## JSON in bench/results/)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.service_bench
	$(PY) -m bench.peer_bench
	$(PY) -m bench.pipeline_bench
	$(PY) -m bench.heatmap_bench
	$(PY) -m bench.upload_bench
	$(PY) -m bench.intake_memory

## figures: every quality figure in the README and docs/figures.md, regenerated from this
## commit: the demo bundle (trained if missing), fresh data, five seeds, then the tables
figures: $(STAMP)
	@test -f models/demo/manifest.json || $(VENV)/bin/bonexr demo
	$(PY) -m bench.fresh_data --bundle models/demo --patients 80 --seed 2027
	$(PY) -m bench.seed_spread --run runs/demo --seeds 0,1,2,3,4
	$(PY) -m bench.figures --run runs/demo --bundle models/demo

## real-bundle: train the FracAtlas CPU recipe (about an hour on 2 cores; docs/training.md) into
## runs/fracatlas and publish its serving files as models/fracatlas (FRACATLAS=path for your copy)
real-bundle: $(STAMP)
	$(VENV)/bin/bonexr train $(FRACATLAS) --recipe fracatlas-cpu --name fracatlas \
		--run-dir runs/fracatlas --out runs/fracatlas-bundle --resume --force
	$(VENV)/bin/bonexr serving-copy runs/fracatlas-bundle models/fracatlas --force

## real-figures: the shipped bundle on its FracAtlas test split through `bonexr predict`, and
## what it must refuse; writes bench/results/real_data.json and the README's real-figures block
real-figures: $(STAMP)
	$(PY) -m bench.real_data --bundle models/fracatlas --data $(FRACATLAS) --readme

## image-test: build the CPU image with podman on a debootstrapped Debian base (no registry,
## no Docker engine) and check it for real: HEALTHCHECK, /predict/study against `bonexr
## predict`, docker compose through podman's Docker API. Root, podman, runc and debootstrap
## (exit 2 names what is missing); figures in bench/results/image_test.json. Not part of
## `make test`. IMAGE_TEST_ARGS=--no-cache measures a fresh build. The script needs only the
## standard library (it checks its prerequisites before anything else, .venv included).
image-test:
	$(PYTHON) scripts/image-test $(IMAGE_TEST_ARGS)

clean-venv:
	rm -rf $(VENV)
