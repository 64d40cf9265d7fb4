# Everything a fresh machine needs: `make demo` and `make test` create the venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export OMP_NUM_THREADS ?= 2
# Two pytest workers: much of the suite waits on servers and subprocesses (load ~1.0 with one
# worker), so two cut it from 961 s to 610 s on the 2-core machine; `TEST_WORKERS=0` runs in line.
TEST_WORKERS ?= 2

.PHONY: venv browser test demo lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's Chromium + chromedriver for the `m2cd view` browser tests (idempotent; skipped, with
# one line, where it cannot install: not root or no apt-get; the tests then skip with that reason).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "make browser: no chromium and not root with apt-get: browser tests will skip"; fi

test: venv browser
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m flows.demo $(DEMO_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
