# `make demo` and `make test` bootstrap .venv (idempotently) and then run the main job / the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
EXTRAS ?= all,test
STAMP := $(VENV)/.repact-installed
# the suite runs in one pytest worker per core (pytest-xdist, in the test extra), one test sent at a time
# (the slow ones first: tests/conftest.py); PYTEST_ARGS= runs it serially
PYTEST_ARGS ?= -n auto --maxschedchunk 1

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m repact demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
