# make study [PRESET=tiny|default|paper] [OVERRIDES="key=value ..."]   run the whole study
# make test                                                             unit tests + notebooks on `tiny`
# make lab                                                              JupyterLab with the study's kernel
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= default
OVERRIDES ?=
TEST_OUT := $(CURDIR)/build/test-outputs

.PHONY: setup study test lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "minima needs Python 3.11 or newer; found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	# independent reference implementations for tests and benchmarks; --no-deps because
	# torchattacks pins requests~=2.25, which JupyterLab's server cannot run with
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1 loss-landscapes==3.0.6
	$(BIN)/python -m ipykernel install --sys-prefix --name minima --display-name "Python (minima)"
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/python -m minima run --preset $(PRESET) $(OVERRIDES)

test: $(STAMP)
	rm -rf $(TEST_OUT) build/nbval
	MINIMA_OUTPUTS=$(TEST_OUT) $(BIN)/python -m minima prepare --preset tiny --into build/nbval
	# one thread: the tests' tiny models are dominated by threading overhead, not arithmetic
	OMP_NUM_THREADS=1 MINIMA_OUTPUTS=$(TEST_OUT) $(BIN)/python -m pytest tests build/nbval --nbval-lax -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf build outputs/*/ data/cache
