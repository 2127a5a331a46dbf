# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
# setuptools' editable build prints an information-only notice ("Editable installation ...",
# a box of !! lines) on every install; it says nothing about this project, so it is filtered
# (by its message only: every other warning still shows)
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip

.PHONY: demo test test-opencl venv dev clean bench versions fuzz soak

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

# the OpenCL integration engine against the CPU engine, on a GPU when pyopencl sees one, else on
# the Oclgrind OpenCL simulator (its own venv: .venv-opencl; slow, hence small frames)
OCL_VENV := .venv-opencl
test-opencl:
	test -x $(OCL_VENV)/bin/python || $(PYTHON) -m venv $(OCL_VENV)
	PYTHONWARNINGS="ignore:Editable installation" $(OCL_VENV)/bin/python -m pip install -q -e '.[dev,opencl-test]'
	$(OCL_VENV)/bin/python -c "from insitu_xrd.reduction.integrate import opencl_status as s; print(s())"
	ok=$$($(OCL_VENV)/bin/python -c "from insitu_xrd.reduction.integrate import opencl_status as s; print(int(s()[0]))"); \
	icd=$$($(OCL_VENV)/bin/python -c "import pathlib, pyopencl; print(next((pathlib.Path(pyopencl.__file__).parent / '.libs').glob('liboclgrind-rt-icd-*.so')))"); \
	if [ "$$ok" = 1 ]; then INSITU_XRD_REQUIRE_OPENCL=1 $(OCL_VENV)/bin/python -m pytest -q tests/test_opencl.py; \
	else echo "no usable OpenCL device: Oclgrind simulator ($$icd)"; \
	INSITU_XRD_REQUIRE_OPENCL=1 OCL_ICD_VENDORS=$$icd $(OCL_VENV)/bin/python -m pytest -q tests/test_opencl.py; fi

bench: venv
	$(BIN)/python benchmarks/bench_integrate.py
	$(BIN)/python benchmarks/bench_refine.py
	$(BIN)/python benchmarks/bench_sequential.py
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_fea.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_watch.py

# the reader fuzz suite with many random inputs per reader (make test runs a seeded 20 per reader);
# prints inputs tried, read, refused, crashes, silent misreads. FUZZ_EXAMPLES=N per reader.
FUZZ_EXAMPLES ?= 500
fuzz: dev
	INSITU_XRD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_fuzz_readers.py

# watch mode under a few hundred frames landing at random, a share truncated or slow, two kills and
# restarts (minutes); prints frames, kills, bad frames, lost, duplicated, mismatches vs the batch run
soak: dev
	$(BIN)/python benchmarks/soak_watch.py

versions: venv
	$(BIN)/insitu-xrd --version

clean:
	rm -rf $(VENV) $(OCL_VENV) $(DEMO_OUT) .pytest_cache build *.egg-info
