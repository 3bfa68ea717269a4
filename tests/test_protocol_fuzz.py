"""Fuzz the whole served device API from the app's own OpenAPI schema (schemathesis) against a live server.

Every generated request, valid or not, must get an answer the schema allows and never a 5xx: bad
input is the protocol's 4xx with the error shape. Each operation (enroll, signing-key, manifest,
artifacts, events, telemetry) runs twice: with a valid device token, and with none (so generated or
absent credentials reach the token checks). Bounded (``MAX_EXAMPLES`` per operation and mode) so the
suite stays within a minute or two; a failure prints the exact request to replay.
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

MAX_EXAMPLES = 25
DEVICE_PATHS = r"^/api/v1/(enroll|manifest|events|telemetry|artifacts/\{sha256\}|signing-key)$"
OPERATIONS = {"enroll", "signing-key", "manifest", "artifacts/{sha256}", "events", "telemetry"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _schema() -> Any:
    """The schema the app serves at /api/v1/openapi.json (read in-process at collection; the cases
    then go over HTTP to a live server)."""
    from django.test import Client

    return schemathesis.openapi.from_dict(Client().get("/api/v1/openapi.json").json())


def test_the_fuzzed_schema_covers_every_device_operation() -> None:
    served = {result.ok().path.removeprefix("/api/v1/") for result in schema.get_all_operations()}
    assert served == OPERATIONS


@pytest.fixture
def device_token(live_server: Any, transactional_db: None, settings: Any) -> str:
    # Fuzzing is one client sending hundreds of requests: the rate limits (tested on their own in
    # test_protocol_limits.py) would soon answer everything with 429 and hide the parse behind it.
    settings.EDGEFLEET_RATE_LIMITS = {name: "100000/100000" for name in settings.EDGEFLEET_RATE_LIMITS}
    factories.release(factories.staged_version("fraud", "v1", seed=1))
    _, token = factories.device(labels={"region": "eu"})
    return token


schema = _schema().include(path_regex=DEVICE_PATHS)


@pytest.mark.parametrize("with_token", [True, False], ids=["device-token", "no-token"])
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_device_api_never_5xx_and_answers_as_documented(
    case: Any, live_server: Any, device_token: str, with_token: bool
) -> None:
    # Without: no token, or whatever schemathesis generated. (The case is not changed: schemathesis
    # may hand the same one to both modes.)
    headers = {"Authorization": f"Bearer {device_token}"} if with_token else {}
    response = case.call_and_validate(base_url=live_server.url, headers=headers, checks=CHECKS)
    assert response.status_code < 500
