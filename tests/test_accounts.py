"""Login, roles and the audit log."""

import pytest
from django.contrib.auth.models import Group

from accounts.audit import record
from accounts.models import ApiToken, AuditEntry
from accounts.roles import has_role, role_of

pytestmark = pytest.mark.django_db


def test_roles_exist_and_are_ordered(operator, viewer) -> None:
    assert role_of(operator) is not None
    assert role_of(operator) == "operator" and has_role(operator, "viewer") and not has_role(operator, "admin")
    assert role_of(viewer) == "viewer" and not has_role(viewer, "operator")


def test_pages_need_login(client) -> None:
    response = client.get("/accounts/tokens/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_login_form_logs_in(client, operator) -> None:
    response = client.post("/login/", {"username": "olivia", "password": "pw-olivia-123"})
    assert response.status_code == 302
    assert client.get("/accounts/tokens/").status_code == 200


def test_viewer_cannot_make_api_tokens(viewer_client) -> None:
    assert viewer_client.post("/accounts/tokens/", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_api_token_is_shown_once_stored_hashed_and_audited(operator_client) -> None:
    response = operator_client.post("/accounts/tokens/", {"name": "nightly"}, REMOTE_ADDR="10.1.2.3")
    token = ApiToken.objects.get()
    plain = response.context["plain"]
    assert plain.startswith("efa_") and plain not in token.token_hash
    entry = AuditEntry.objects.get(action="api_token.create")
    assert entry.actor_label == "olivia" and entry.ip == "10.1.2.3"
    assert plain not in operator_client.get("/accounts/tokens/").content.decode()


def test_audit_log_is_admin_only(operator_client, client, django_user_model) -> None:
    record("something.happened", "target-1")
    assert operator_client.get("/accounts/audit/").status_code == 403
    admin = django_user_model.objects.create_user("ada", password="pw")
    admin.groups.add(Group.objects.get_or_create(name="admin")[0])
    client.force_login(admin)
    page = client.get("/accounts/audit/").content.decode()
    assert "something.happened" in page and "system" in page


def test_roles_are_created_by_migration() -> None:
    """A fresh database has the three roles; later fixtures only re-create them after a flush."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    assert ("accounts", "0002_roles") in executor.loader.applied_migrations


def test_operator_session_on_the_json_api_needs_csrf(django_user_model) -> None:
    """A logged-in browser session may use the operator API only with a CSRF token, like a form."""
    from django.test import Client

    from tests.onnx_models import mlp_classifier

    user = django_user_model.objects.create_user("opal", password="pw")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    import io

    body = io.BytesIO(mlp_classifier().SerializeToString())
    body.name = "m.onnx"
    response = browser.post("/api/v1/models/csrf-model/versions", {"label": "v1", "file": body})
    assert response.status_code == 401
    from ota.models import ModelVersion

    assert not ModelVersion.objects.exists()
