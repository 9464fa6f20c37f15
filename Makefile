# faceflow: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SAMPLES := data/samples/.complete
PYTEST_ARGS ?=

.PHONY: setup demo demo-scale test test-fast test-slow bench lint clean

setup: $(STAMP) $(SAMPLES)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "faceflow needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,scale,sface]'
	@touch $@

$(SAMPLES): data/fetch_samples.py | $(STAMP)
	$(PY) data/fetch_samples.py data/samples

demo: setup
	$(VENV)/bin/faceflow demo

demo-scale: setup
	$(VENV)/bin/faceflow demo-scale

# pytest exits 5 when it collects nothing: that is not a failure.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check pipeline jobs tests benchmarks data
	$(VENV)/bin/mypy pipeline jobs

clean:
	rm -rf $(VENV) data/samples runs .pytest_cache
