"""Fuzz the management API from the served OpenAPI schema (schemathesis) with an operator token.

Every generated request to the new routes (campaigns, releases, devices, cohorts, alerts, audit,
status, models, subscriptions) must get an answer the schema allows and never a 5xx. Bounded by
``MAX_EXAMPLES`` per operation; a failure prints the request to replay.
"""

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests import factories

MAX_EXAMPLES = 5
MANAGEMENT = r"^/api/v1/(campaigns|releases|devices|cohorts|alerts|audit|status|whoami|models|notify|subscriptions)"


def _schema() -> Any:
    from django.test import Client

    return schemathesis.openapi.from_dict(Client().get("/api/v1/openapi.json").json())


@pytest.fixture
def operator_token(live_server: Any, transactional_db: None, django_user_model: Any) -> str:
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from accounts.models import ApiToken
    from notify import services as notify
    from rollout import lifecycle
    from telemetry.models import Alert

    user = django_user_model.objects.create_user("fuzz", password="pw-fuzz-12345")
    for name in ("viewer", "operator", "admin"):
        Group.objects.get_or_create(name=name)
    user.groups.add(Group.objects.get(name="admin"))
    v1, v2 = factories.staged_version("fraud", "v1", seed=1), factories.staged_version("fraud", "v2", seed=2)
    factories.release(v1)
    factories.device(labels={"region": "eu"})
    c = lifecycle.create_campaign(name="c", version=v2, cohort=None, waves=[{"percent": 100}], gates={})
    lifecycle.start(c.pk)
    now = timezone.now()
    Alert.objects.create(kind="drift", version=v1, opened_at=now, updated_at=now)
    notify.create(user, name="m", channel="email", emails=["a@example.com"], events=["alert.opened"])
    return ApiToken.issue(user, "fuzz")[1]


# The registry's upload and version status are older routes (tests/test_registry_upload.py covers them).
schema = (
    _schema()
    .include(path_regex=MANAGEMENT)
    .exclude(method="POST", path_regex=r"^/api/v1/models/")
    .exclude(path_regex=r"^/api/v1/models/\{name\}/versions/\{label\}$")
)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_management_api_never_5xx(case: Any, live_server: Any, operator_token: str) -> None:
    headers = {"Authorization": f"Bearer {operator_token}"}
    if case.headers and "Authorization" in case.headers:
        headers = {}
    response = case.call_and_validate(
        base_url=live_server.url,
        headers=headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance],
    )
    assert response.status_code < 500
