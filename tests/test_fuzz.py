"""Schemathesis against the service's own OpenAPI document: no input it
describes (or breaks on purpose) may produce a 5xx or an undocumented answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from potok_state.app import create_app
from potok_state.kit.docs import OPENAPI_PATH
from tests.conftest import API_KEY, make_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 20

# Times at the edges of what UTC can hold, besides ordinary ones: each used to be
# a 500 somewhere (an OverflowError converting to UTC).
EXTREME_TIMES = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
    ]
)
schemathesis.openapi.format(
    "date-time",
    EXTREME_TIMES
    | st.datetimes(timezones=st.timezones() | st.just(UTC)).map(lambda t: t.isoformat()),
)


@pytest.fixture
def api_schema(database_url: str) -> Iterator[schemathesis.BaseSchema]:
    # The app's lifespan runs on schemathesis' own event loop thread, where its
    # requests are served; the delivery worker is off so generated subscription
    # URLs are never called.
    app = create_app(
        make_settings(database_url, webhooks={"embedded_worker": False}, throttle={"limit": 0})
    )
    schema = schemathesis.openapi.from_asgi(OPENAPI_PATH, app)
    yield schema
    asgi.shutdown_lifespans()


def test_api_conforms_to_its_openapi_document(api_schema: schemathesis.BaseSchema) -> None:
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"the document describes an unusable operation: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case[Any]) -> None:
                if case.path.endswith("/watch"):
                    # A watch stream is endless by design; this one ends after its replay.
                    case.query = {**(case.query or {}), "timeout": 0}
                case.call_and_validate(headers={"x-api-key": API_KEY}, checks=CHECKS)

            try:
                exercise()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # every operation's failures, not the first
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
