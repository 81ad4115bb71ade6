"""Swagger UI at /api-docs, served from the locally installed swagger-ui
assets so it renders on a machine with no internet access.

The page carries its own Content-Security-Policy: scripts only from this origin
plus the one inline bootstrap script, pinned by its hash (no 'unsafe-inline'
for scripts); Swagger UI styles elements inline, so styles allow that."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from potok_state.kit.body_limit import document_body_limits

DOCS_PATH = "/api-docs"
OPENAPI_PATH = "/api-docs/openapi.json"
ASSETS_PATH = "/api-docs/assets"


def _swagger_assets() -> Path:
    spec = find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("the swagger-ui-py-x package (Swagger UI assets) is not installed")
    return Path(spec.origin).parent / "static"


def install_api_docs(app: FastAPI) -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=_swagger_assets()), name="swagger-assets")
    page = get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title=f"{app.title} - API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    ).body
    headers = {"Content-Security-Policy": docs_content_security_policy(bytes(page))}
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate_openapi()  # which FastAPI keeps, as openapi_schema
            restore_examples(spec)
            document_body_limits(spec)
        return generate_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)


def restore_examples(spec: dict[str, Any]) -> None:
    """FastAPI drops every null from the document it generates, examples included
    (fastapi/fastapi#5559), and pydantic sorts the keys of examples: put back each
    null a schema requires (a creation's `"previousStatus": null`) and the fields in
    the order of the schema, which is the order the service writes them in."""
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})

    def fill(value: object, schema: dict[str, Any]) -> None:
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        for option in schema.get("anyOf", []):
            fill(value, option)
        if isinstance(value, list):
            for item in value:
                fill(item, schema.get("items", {}))
        elif isinstance(value, dict) and schema.get("type") == "object":
            properties: dict[str, Any] = schema.get("properties", {})
            for name, prop in properties.items():
                if name in value:
                    fill(value[name], prop)
                elif name in schema.get("required", []) and _nullable(prop):
                    value[name] = None
            in_order = {name: value[name] for name in properties if name in value} | value
            value.clear()
            value.update(in_order)
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for name, item in value.items():
                    if name not in properties:
                        fill(item, extra)

    for schema in schemas.values():
        for example in schema.get("examples", []):
            fill(example, schema)


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        option.get("type") == "null" for option in schema.get("anyOf", [])
    )


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_content_security_policy(page: bytes) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )
