# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: demo test venv dev clean bench

$(BIN)/insitu-xrd: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

venv: $(BIN)/insitu-xrd

$(VENV)/.dev-installed: $(BIN)/insitu-xrd
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

dev: $(VENV)/.dev-installed

demo: venv
	$(BIN)/insitu-xrd demo --out $(DEMO_OUT)

test: dev
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: venv
	$(BIN)/python benchmarks/bench_integrate.py
	$(BIN)/python benchmarks/bench_refine.py
	$(BIN)/python benchmarks/bench_sequential.py
	$(BIN)/python benchmarks/bench_simulate.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build *.egg-info
