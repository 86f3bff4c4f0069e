# Set-up is idempotent: `make install` is called by `run`, `test` and `bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/node.yaml
DEBS   := orthanc orthanc-dicomweb orthanc-wsi dcmtk dicom3tools pixelmed-apps postgresql \
          chromium chromium-driver

.PHONY: install install-peers ohif run test lint bench bench-gpu clean constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, at the tested version (constraints.txt): on a GPU host PyPI's CUDA build,
	# else the CPU build (served from local disk here).
	$(BIN)/pip install -q -c constraints.txt torch

# constraints.txt: every package at the version the suite last passed with, so a fresh
# machine installs what was tested. `make constraints` refreshes it (see the README).
$(BIN)/medgemma-node: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/medgemma-node

# Debian peers the test suite starts on loopback ports (Orthanc, DCMTK, dicom3tools, PixelMed,
# PostgreSQL) and the browser the worklist page is tested in (Chromium + chromedriver).
install-peers:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The OHIF viewer the tests read the node with: npm @ohif/app's built app (about 50 MB),
# unpacked under .cache/ohif (tests/ohif.py serves it).
OHIF_VERSION := 3.13.2
OHIF_APP     := .cache/ohif/package/dist/index.html

$(OHIF_APP):
	@command -v npm >/dev/null || { echo "npm is needed to fetch the OHIF viewer the tests use (Debian: apt-get install npm)"; exit 1; }
	rm -rf .cache/ohif && mkdir -p .cache/ohif
	cd .cache/ohif && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	touch $@

ohif: $(OHIF_APP)

run: install
	$(BIN)/medgemma-node serve --config $(CONFIG)

lint: install
	$(BIN)/ruff check node tests fixtures bench
	$(BIN)/mypy

test: install install-peers ohif lint
	$(BIN)/python -m pytest -x -q $(PYTEST_ARGS)

# Every bench runs; a missed target fails the command at the end, naming the benches.
BENCHES := ingest ingest_busy imaging pipeline gpu_feed encoding longitudinal soak
bench: install install-peers
	@missed=""; for name in $(BENCHES); do \
	  $(BIN)/python -m bench.$$name || missed="$$missed $$name"; \
	done; \
	if [ -n "$$missed" ]; then echo "bench: targets not met:$$missed"; exit 1; fi

# On a CUDA host: MedGemma 1.5 4B's architecture, random weights (bench/results/gpu.json).
bench-gpu: install
	$(BIN)/python -m bench.gpu

# The newest releases pyproject.toml's bounds allow, in a throwaway environment, written to
# constraints.txt; then run `make clean test` and commit constraints.txt if it passes.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --upgrade pip
	.venv-constraints/bin/pip install -q torch -e '.[test]'
	( echo "# Tested versions of every package (make constraints; see the README)."; \
	  .venv-constraints/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' ) \
	  > constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .cache
