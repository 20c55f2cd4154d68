# The entry to everything: `make demo` and `make test` work on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-timeout's per-test limit, on top of each test's own bounded waits.
PYTEST_ARGS ?=
# pytest-xdist's workers: the end-to-end tests mostly wait on sockets, timers and other
# processes, so two workers on two cores take well under one process's wall time. Each
# module runs on one worker, in order (--dist loadscope): tests sharing a module-scoped
# fixture may build on what an earlier one left in it (tests/test_e2e_rollouts.py's do),
# and it is made once. PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST = -n $(PYTEST_WORKERS) --dist loadscope

.PHONY: help install dev packages demo demo-city demo-stop demo-reset test test-fast lint proto bench clean

help:
	@echo "make demo       start a controller and simulated devices, print what to try"
	@echo "make demo-city  three controller replicas on PostgreSQL behind HAProxy, simulated"
	@echo "                devices in three schools; prints what to try (needs Debian's"
	@echo "                postgresql and haproxy)"
	@echo "make demo-stop  stop whichever demo runs"
	@echo "make demo-reset stop the demos and forget their data (.demo/)"
	@echo "make test       install with dev extras (and, as root, the Debian packages the"
	@echo "                suite needs) and run the whole suite"
	@echo "make test-fast  the suite without the end-to-end cases"
	@echo "make lint       ruff and mypy"
	@echo "make proto      regenerate protos/ Python code from the .proto files"
	@echo "make bench      run the benchmarks in bench/ (minutes)"

$(PY):
	@echo "creating the virtual environment $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	@echo "installing SchoolFleet and its dependencies into $(VENV) (about 30 s the first time)"
	@$(PY) -m pip install --quiet -e .
	@touch $@
	@echo "installed"

$(VENV)/.installed-dev: $(PY) pyproject.toml
	@echo "installing SchoolFleet with the test and lint tools into $(VENV) (about a minute the first time)"
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed
	@echo "installed"

# The Debian packages the suite needs: installed as root, else named with the command
# that installs them (one list, in .ci/packages.sh; .ci/run comes here too).
packages:
	@.ci/packages.sh

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

demo: install
	@$(PY) demo/demo.py start

# Debian's postgresql and haproxy: named with the command that installs them when
# missing, not installed (a demo does not run apt-get).
demo-city: install
	@$(PY) demo/city.py start

demo-stop:
	@$(PY) demo/stop.py

demo-reset:
	@$(PY) demo/demo.py reset

test: packages dev lint
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: dev
	$(PY) -m pytest $(PYTEST_XDIST) -m 'not e2e' $(PYTEST_ARGS)

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: dev
	$(PY) -m protos.codegen

# bench/rollout.py and bench/probes.py need root: their hosts are network namespaces;
# bench/proxy_front.py needs Debian's haproxy.
bench: dev
	$(PY) bench/ingest.py
	$(PY) bench/lesson_fanout.py
	$(PY) bench/rollout.py
	$(PY) bench/probes.py
	$(PY) bench/store_ingest.py
	$(PY) bench/scaleout.py
	$(PY) bench/rollout_replicas.py
	$(PY) bench/proxy_front.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache build schoolfleet.egg-info
