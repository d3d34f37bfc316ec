# Two commands for a new user: `make quickstart` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch unless an NVIDIA GPU is present: a plain `torch` requirement would pull a
# multi-GB CUDA build onto machines that cannot use it.
TORCH_CPU := torch==2.13.0

.PHONY: install quickstart test clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of torch"; \
	else \
		echo "No NVIDIA GPU: installing the CPU build $(TORCH_CPU)"; \
		$(PY) -m pip install -q $(TORCH_CPU); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) -m platform.quickstart

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) outputs .pytest_cache
