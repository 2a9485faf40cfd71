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
PYTEST_ARGS ?=

.PHONY: demo test test-native-isa bench venv clean

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

# the native kernels' tests once per narrower SIMD build than this CPU's (x86-64): SSE2 (16-byte
# vectors) and AVX2 (32-byte; on an AVX2 host the same as the default build)
NATIVE_TESTS := tests/test_ops_piecewise.py tests/test_repact.py tests/test_ops_batchnorm.py
test-native-isa: $(STAMP)
	@for isa in sse2 avx2; do \
		echo "== native kernels built with .ci/cc-$$isa"; \
		REPACT_REQUIRE_NATIVE=1 REPACT_CACHE_DIR=.cache/native-$$isa CC=$(CURDIR)/.ci/cc-$$isa \
			$(PY) -m pytest -q $(PYTEST_ARGS) $(NATIVE_TESTS) || exit 1; \
	done

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
