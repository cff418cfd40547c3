# make study [PRESET=tiny|default|synthetic|sweep|paper] [OVERRIDES="key=value ..."]   run the whole study
# make test                                                             unit tests + notebooks on `tiny`
# make lab                                                              JupyterLab with the study's kernel
# make lock                                                             re-resolve requirements.lock from pyproject.toml
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs the lock (the 5 GB of PyTorch in about a minute); it lives beside the venv, not
# in it, because `uv pip sync` removes every package the lock does not name
UV_VERSION := 0.13.9
UV := $(VENV)-tools/bin/uv
PRESET ?= default
OVERRIDES ?=
TEST_OUT := $(CURDIR)/build/test-outputs
# the tests run in parallel, one thread each, on up to 4 of the cores this process may use
TEST_JOBS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

.PHONY: setup study test lab lock clean

setup: $(STAMP)

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "minima needs Python 3.11 or newer; found " + sys.version.split()[0])'
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(VENV)-tools uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(UV)
	test -x $(BIN)/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name minima --display-name "Python (minima)"
	touch $(STAMP)

lock: | $(UV)
	$(UV) pip compile --quiet pyproject.toml --extra reference --override lock-overrides.txt \
		--universal --fork-strategy fewest --python-version 3.11 -o requirements.lock

study: $(STAMP)
	$(BIN)/python -m minima run --preset $(PRESET) $(OVERRIDES)

test: $(STAMP)
	rm -rf $(TEST_OUT) build/nbval
	$(BIN)/lint-imports --no-cache  # the layers contract in pyproject.toml
	$(BIN)/python -m minima data --preset default  # the real images the real-data test trains on
	MINIMA_OUTPUTS=$(TEST_OUT) $(BIN)/python -m minima prepare --preset tiny --into build/nbval
	# one thread per process: the tests' tiny models are dominated by threading overhead, not arithmetic.
	# The notebooks first, in one process: each runs cell after cell in one kernel
	OMP_NUM_THREADS=1 MINIMA_OUTPUTS=$(TEST_OUT) $(BIN)/python -m pytest build/nbval --nbval-lax -p no:cacheprovider
	# then the tests on up to TEST_JOBS workers: loadgroup keeps a module's tests that share what they train on
	# one worker, and tests/conftest.py starts the heavy ones first, in its order rather than xdist's
	OMP_NUM_THREADS=1 MINIMA_OUTPUTS=$(TEST_OUT) $(BIN)/python -m pytest tests -p no:cacheprovider -n $(TEST_JOBS) --dist loadgroup \
		--no-loadscope-reorder

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf build outputs/*/ data/cache
