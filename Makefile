# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
# setuptools' editable build prints an information-only notice ("Editable installation ...",
# a box of !! lines) on every install; it says nothing about this project, so it is filtered
# (by its message only: every other warning still shows)
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip

.PHONY: demo test venv dev clean bench versions

$(BIN)/insitu-xrd: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

venv: $(BIN)/insitu-xrd

$(VENV)/.dev-installed: $(BIN)/insitu-xrd
	$(PIP) install -q -e '.[dev]'
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
	$(BIN)/python benchmarks/bench_fea.py
	$(BIN)/python benchmarks/bench_scale.py

versions: venv
	$(BIN)/insitu-xrd --version

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build *.egg-info
