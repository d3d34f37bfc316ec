# Two commands for a new user: `make quickstart` and `make test` (see README.md).
# .venv is made with the first Python 3.10-3.12 that scripts/find-python finds (python3, python3.12,
# python3.11, python3.10, pyenv's, uv's), or with `make PYTHON=/path/to/python3.x`, checked the same way.
PYTHON ?=
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU build of torch unless an NVIDIA GPU is present: a plain `torch` requirement would pull a
# multi-GB CUDA build onto machines that cannot use it.
TORCH_CPU := torch==2.13.0

.PHONY: install quickstart lint test clean

$(VENV)/.installed: pyproject.toml Makefile
	@$(SHELL) scripts/find-python $(PY) >/dev/null 2>&1 || { \
		python=$$($(SHELL) scripts/find-python "$(PYTHON)") || exit 1; \
		if [ -e $(VENV) ]; then \
			echo "$(VENV) has $$($(PY) -V 2>/dev/null || echo 'no working Python'), which swinray cannot use: recreating it"; \
			rm -rf $(VENV); \
		fi; \
		echo "$$python -m venv $(VENV)"; \
		"$$python" -m venv $(VENV); \
	}
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

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) outputs .pytest_cache
