"""The docs page as a browser shows it: the real service (`potok-state serve`),
/api-docs in headless Chromium (tests/support/browser.py). Swagger UI must show
every operation of the OpenAPI document, the Authorize button, and the
hand-written response examples of an opened operation. A screenshot of the whole
page goes to build/docs-check/api-docs.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import headless_chromium
from tests.support.hub import http_service, service_env
from tests.support.ports import free_port

SCREENSHOT = Path(__file__).parents[1] / "build" / "docs-check" / "api-docs.png"
# Opened by the test: its documented answers must show the models' own examples.
EXAMPLE_OPERATION = ["POST", "/api/v1/states/{entity}"]

RENDERED = """(() => {
  const operations = [...document.querySelectorAll('.opblock')].map(op => [
    op.querySelector('.opblock-summary-method')?.textContent ?? '',
    op.querySelector('.opblock-summary-path')?.dataset.path ?? '',
  ]);
  return {
    operations,
    tags: [...document.querySelectorAll('.opblock-tag')].map(t => t.dataset.tag),
    authorize: document.querySelector('.btn.authorize') !== null,
    errors: document.querySelector('.errors-wrapper')?.textContent ?? null,
  };
})()"""

OPEN_OPERATION = """(async ([method, path]) => {
  const operation = [...document.querySelectorAll('.opblock')].find(op =>
    op.querySelector('.opblock-summary-method')?.textContent === method &&
    op.querySelector('.opblock-summary-path')?.dataset.path === path);
  if (!operation) return null;
  // Swagger UI 5 opens an operation from the button in its summary line.
  const summary = operation.querySelector('.opblock-summary-control');
  (summary ?? operation.querySelector('.opblock-summary')).click();
  for (let i = 0; i < 100; i++) {
    const responses = operation.querySelector('.responses-wrapper');
    if (responses?.querySelector('.microlight, .highlight-code')) return responses.innerText;
    await new Promise(done => setTimeout(done, 100));
  }
  return '';
})(%s)"""


def operations_of(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete", "head", "options"}
    }


async def test_swagger_ui_shows_every_operation_and_the_examples(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    SCREENSHOT.unlink(missing_ok=True)  # what a failure leaves is from this run
    env = service_env(f"sqlite+aiosqlite:///{tmp_path}/db")
    async with http_service(port, env, tmp_path), headless_chromium(tmp_path) as page:
        async with httpx.AsyncClient(base_url=base) as client:
            spec = (await client.get("/api-docs/openapi.json")).json()
        expected = operations_of(spec)
        await page.open(base + "/api-docs")
        try:
            seen = await page.wait_for(
                f"(() => {{ const s = {RENDERED}; "
                f"return s.authorize && s.operations.length >= {len(expected)} ? s : null; }})()",
                timeout=30,
                what="Swagger UI to render every operation",
            )
            answers = await page.evaluate(OPEN_OPERATION % EXAMPLE_OPERATION)
        finally:
            await page.screenshot(SCREENSHOT)

    assert expected - {(method, path) for method, path in seen["operations"]} == set()
    assert "states" in seen["tags"]
    assert seen["errors"] is None
    assert page.errors() == []
    schemas = spec["components"]["schemas"]
    state, error = schemas["StateView"]["examples"][0], schemas["ErrorBody"]["examples"][0]
    assert answers is not None, f"operation {EXAMPLE_OPERATION} not on the page"
    assert f'"createdAt": "{state["createdAt"]}"' in answers
    assert f'"code": "{error["code"]}"' in answers
