# One set-up entry point. `make run` trains on the embedded synthetic default; `make test` runs the suite.
# Both create .venv when it is missing and reuse it when present (nothing is reinstalled on a second run:
# the stamp file .venv/.oddsparse-installed is newer than pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
# torch is not pinned by pyproject; these are the builds this machine kind has on local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# spconv extra: "cpu" without an NVIDIA GPU, otherwise a CUDA wheel (override: make SPCONV_EXTRA=cu124 ...).
SPCONV_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cu126 || echo cpu)
STAMP := $(VENV)/.oddsparse-installed
PY := $(VENV)/bin/python

.PHONY: run test setup clean-venv

run: $(STAMP)
	$(PY) recipes/train_partsad.py

test: $(STAMP)
	$(PY) -m pytest tests/ -q

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(SPCONV_EXTRA),dev]"
	@# Optional and source-only (~6 min build); the library falls back to native torch without it.
	$(PY) -m pip install -q --no-build-isolation torch-scatter || echo "warning: torch-scatter did not build; using the native torch fallback"
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
