# The two commands a new user needs:
#   make run    install the locked dependencies and start the service on :3002 (SQLite)
#   make test   install the locked dependencies (with dev tools) and run every check
UV_VERSION := 0.13.8
UV := .tools/bin/uv
export UV_PROJECT_ENVIRONMENT := .venv

.PHONY: run test install install-dev lint typecheck pytest bench docs-check sync-client

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# --inexact: what `make test` added (the dev tools) stays installed.
install: $(UV)
	$(UV) sync --frozen --no-dev --inexact

run: install
	.venv/bin/potok-state serve

install-dev: $(UV)
	$(UV) sync --frozen

# The console's browser tests need Chromium: installed from Debian when missing.
test: install-dev
	scripts/install-chromium
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff format --check src tests bench scripts docs/examples
	.venv/bin/ruff check src tests bench scripts docs/examples

typecheck:
	.venv/bin/mypy

pytest:
	.venv/bin/pytest

# The blocking client, generated from the async one; every install does this too
# (hatch_build.py), and tests/client/test_models.py fails while it is stale.
sync-client:
	.venv/bin/python scripts/generate_sync_client.py

# Swagger UI as a browser shows it (one test of the suite, alone): the real service,
# /api-docs in headless Chromium, a screenshot in build/docs-check/.
docs-check: install-dev
	scripts/install-chromium
	.venv/bin/pytest tests/test_docs_page.py

bench: $(UV)
	$(UV) sync --frozen
	.venv/bin/python -m bench.run
