# Two set-up commands (README): `make demo` and `make test`. Each creates .venv if needed and installs into it.
# torch/torchvision are pinned in pyproject.toml (CUDA builds, which also run on CPU-only machines).
# sam2 is installed separately: its sdist would otherwise build against a second torch in an isolated env.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
SAM2_VERSION := 1.1.0

.PHONY: demo test install install-test sam2 lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[all]'
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation sam2==$(SAM2_VERSION)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-all
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed-all
install-test: $(VENV)/.installed-test
sam2: $(VENV)/.installed-all

demo: install
	$(BIN)/relight-stream demo --out demo-out

test: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 tests

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
