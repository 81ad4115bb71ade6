# The two commands a new user needs:
#   make run    install the locked dependencies and start the service on :3002 (SQLite)
#   make test   install the locked dependencies (with dev tools) and run every check
UV_VERSION := 0.13.8
UV := .tools/bin/uv
export UV_PROJECT_ENVIRONMENT := .venv

.PHONY: run test install lint typecheck pytest bench

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

install: $(UV)
	$(UV) sync --frozen --no-dev

run: install
	.venv/bin/potok-state serve

test: $(UV)
	$(UV) sync --frozen
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff format --check src tests bench
	.venv/bin/ruff check src tests bench

typecheck:
	.venv/bin/mypy

pytest:
	.venv/bin/pytest

bench: $(UV)
	$(UV) sync --frozen
	.venv/bin/python -m bench.run
