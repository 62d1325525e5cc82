# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint coverage bench install clean

# The stamp is rebuilt whenever pyproject.toml changes, so a pulled dependency
# change is installed by the next make, and an unchanged tree installs nothing.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("uploader-daemon needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cognito,test]'
	@touch $@

# Linters are not needed to run or test the daemon: they install on first `make lint`.
$(VENV)/.lint-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[cognito,test,lint]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/uploader-daemon demo

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: $(VENV)/.lint-installed
	$(BIN)/mypy
	$(BIN)/ruff check uploader_daemon tests bench
	$(BIN)/ruff format --check uploader_daemon tests bench
	$(BIN)/lint-imports --no-cache

# How much of the package the unit tests alone exercise (the lifecycle, the CLI and the
# emulator are proven by the integration tests).
coverage: $(VENV)/.lint-installed
	$(BIN)/coverage run --source=uploader_daemon -m pytest -q -p no:cacheprovider tests/unit
	$(BIN)/coverage report --skip-covered --sort=cover \
		--omit='uploader_daemon/emulator/*,uploader_daemon/cli.py,uploader_daemon/demo.py,uploader_daemon/__main__.py,uploader_daemon/daemon.py'

# The benchmarks of issue 10 at full size (a few minutes); bench/run.py --help for a quick run.
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
