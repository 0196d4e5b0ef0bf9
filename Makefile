# The two set-up commands of the README:
#   make demo   runs the main job end to end on built-in data
#   make test   runs the test suite
# Both create (or reuse) .venv and install everything, torch pinned and first.
#
# Which torch build: torch==2.13.0 comes from pip's configured index unless
# TORCH_INDEX_URL names another. From PyPI on Linux that is the CUDA build
# (several GB); for the CPU-only build give PyTorch's CPU index:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# With CUDA, leave it empty (PyPI's build) or name the wheel index of your
# CUDA version (https://download.pytorch.org/whl/cu128 ...). A torch already
# in .venv at that version is kept either way.
PYTHON ?= python3
TORCH_INDEX_URL ?=
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint bench clean-venv

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m weightspace demo --workdir out/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check weightspace tests tools

bench: $(STAMP)
	$(PY) tools/bench_convert.py

clean-venv:
	rm -rf $(VENV)
