# The two set-up commands of the README, and the one gate before a commit.
#   make run    emulated AWS in-process, demo transactions, live alerts (stops after RUN_SECONDS)
#   make test   the whole test suite (installs everything it needs first)
#   make check  format, lint, types, tests: run before every commit

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# kinesis-mock (npm kinesis-local, pinned in its package-lock.json) for resharding tests.
KINESIS_MOCK := tools/kinesis-mock/node_modules/.installed
# The KCL MultiLangDaemon's jars (amazon-kclpy 3.1.3's pinned list), resolved with Maven.
KCL_JARS := .cache/kcl-jars/3.1.3/.complete
RUN_SECONDS ?= 45
PYTEST_ARGS ?=

.PHONY: kcl-jars run test check lint format typecheck bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.3.1"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

$(KINESIS_MOCK): tools/kinesis-mock/package.json tools/kinesis-mock/package-lock.json
	npm ci --prefix tools/kinesis-mock --no-audit --no-fund --loglevel=error
	touch $(KINESIS_MOCK)

$(KCL_JARS): tools/kcl/kcl-3.1.3/pom.xml tools/kcl/fetch-jars
	tools/kcl/fetch-jars
	touch $(KCL_JARS)

kcl-jars: $(KCL_JARS)

run: $(STAMP)
	$(BIN)/streamproc run --local --duration $(RUN_SECONDS)

test: $(STAMP) $(KINESIS_MOCK) $(KCL_JARS)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict --explicit-package-bases benchmarks

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/pytest benchmarks/ --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
