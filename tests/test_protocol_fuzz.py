"""Fuzz the device endpoints from the app's own OpenAPI schema (schemathesis) against a live server.

Every generated request, valid or not, must get an answer the schema allows and never a 500: bad
input is the protocol's 4xx with the error shape. Bounded (``MAX_EXAMPLES`` per operation) so the
suite stays fast; a failure prints the exact request to replay.
"""

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import factories

MAX_EXAMPLES = 30
DEVICE_PATHS = r"^/api/v1/(enroll|manifest|events|telemetry|artifacts/\{sha256\}|signing-key)$"


def _schema() -> Any:
    """The schema the app serves at /api/v1/openapi.json (read in-process at collection; the cases
    then go over HTTP to a live server)."""
    from django.test import Client

    return schemathesis.openapi.from_dict(Client().get("/api/v1/openapi.json").json())


@pytest.fixture
def device_token(live_server: Any, transactional_db: None) -> str:
    factories.release(factories.staged_version("fraud", "v1", seed=1))
    _, token = factories.device(labels={"region": "eu"})
    return token


schema = _schema().include(path_regex=DEVICE_PATHS)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_device_api_never_500_and_answers_as_documented(case: Any, live_server: Any, device_token: str) -> None:
    headers = {"Authorization": f"Bearer {device_token}"}
    if case.headers and "Authorization" in case.headers:
        headers = {}  # a generated (fuzzed) token wins
    response = case.call_and_validate(
        base_url=live_server.url,
        headers=headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    assert response.status_code < 500
