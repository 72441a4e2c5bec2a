"""The HTTP API fuzzed from its own OpenAPI document (schemathesis), as served: requests
that fit the document and requests that do not, to every route, over real HTTP to a
fake controller. No answer may be a 5xx, every error has a ``message``, and every
answer matches the document (status, content type, schema, Allow on 405, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.support.fake_daemon import FakeDaemon, stream
from tests.support.http_api import TOKEN, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_ROUTE = 30  # x 11 routes, then x 7 with invalid input: ~540 requests, 10-20 s


@pytest.fixture(scope="module")
def api_schema() -> Iterator[OpenApiSchema]:
    fake = FakeDaemon(
        mode="active",
        backups=(
            stream("20261120T030000Z-aaaaaaaa", closed=True),
            stream("20261121T030000Z-bbbbbbbb"),
        ),
    )
    try:
        # A generous decision deadline: on a loaded machine the fake controller's thread
        # may be slow to decide, and the API's 503 for that is not what is fuzzed here.
        with serving(fake, token=TOKEN, decision_timeout=30) as (server, _):
            url = f"http://127.0.0.1:{server.port}"
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
            schema.config.update(base_url=url)
            yield schema
    finally:
        fake.stop()


def check(case: Case[Any]) -> None:
    response = case.call(headers=AUTH, timeout=30)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, response.status_code, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json().get("message"), str), (where, response.text)
    # Every check but "schema-valid requests are accepted": the API also refuses, 400
    # with a message, what a JSON schema cannot say (a time that must be in the future,
    # fields that only go with others, GTIDs out of range).
    case.validate_response(response, headers=AUTH, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_5xx_or_an_error_without_message(
    api_schema: OpenApiSchema, mode: GenerationMode
) -> None:
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) == 12
    for operation in operations:
        inputs = [*operation.body, *operation.query, *operation.path_parameters]
        if mode == GenerationMode.NEGATIVE and not inputs:
            continue  # GET /status and the like: nothing to send wrong

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Case[Any]) -> None:
            check(case)

        fuzz()
