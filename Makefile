# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run setup test lint format install-test clean mutation mutation-changed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml $(PY)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .  # the `edgefleet` command (python -m edgefleet_cli works without)
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
	$(PY) manage.py migrate --noinput

## make run: set up and start web, worker, beat and the demo fleet on embedded defaults.
run: setup
	$(PY) manage.py run_edgefleet

install-test: $(VENV)/.installed-dev
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  (echo "installing Debian's chromium for the browser tests"; \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## make test: install what the tests need, lint, and run the suite against PostgreSQL and Redis.
## Two xdist workers, one test file each at a time (a file's live server, worker and browser stay
## together), the files that judge a live fleet in time one after another (conftest.LIVE_FILES);
## each worker has its own test database, Redis db and data directory (settings_test).
## PYTEST_ARGS="-n 0 tests/test_x.py" for one file, serially.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15
test: install-test lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## make mutation: mutation-test the modules that decide and print the table (docs/mutation.md);
## MODULES="telemetry/drift.py rollout/placement.py" for some of them. No database needed.
mutation: $(VENV)/.installed-dev
	$(PY) -m mutation.run --check $(MODULES)

## make mutation-changed: the same for the modules that decide which changed since the merge base
## with main (the first parent on main): what CI runs after the suite.
mutation-changed: $(VENV)/.installed-dev
	$(PY) -m mutation.run --check --changed $(MUTATION_BASE)

clean:
	rm -rf var test-output mutants
