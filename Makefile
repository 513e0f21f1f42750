# Two commands on a fresh machine: `make demo` shows the product, `make test` proves it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv system-deps generate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Debian's prometheus, promtool, alertmanager, amtool, redis-server and nginx: installed when missing and we are root.
system-deps:
	@./.ci/system-deps

demo: $(STAMP)
	@./.ci/system-deps --optional
	$(VENV)/bin/ollama-sidecar demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider

generate: $(STAMP)
	$(VENV)/bin/ollama-sidecar generate

bench: $(STAMP)
	$(PY) bench/bench_proxy.py
	$(PY) bench/bench_exporter.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
