# The README's two commands: `make demo` (the main job) and `make test` (every check).
.PHONY: setup demo test lint unit integration e2e down lock

VENV := .venv/bin

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/thermoflow demo

test: setup lint
	$(VENV)/pytest -q

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

unit: setup
	$(VENV)/pytest -q tests/unit

integration: setup
	$(VENV)/pytest -q -m integration

e2e: setup
	$(VENV)/pytest -q -m e2e

down:
	$(VENV)/thermoflow stack down

# Pin every dependency (and the dev tools) for Python 3.11 on Linux; setup and CI install from it.
lock:
	$(VENV)/pip install -q uv
	$(VENV)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--no-header --annotation-style line -o requirements.lock
