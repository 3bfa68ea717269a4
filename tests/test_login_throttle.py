"""Login throttling: after a few wrong passwords for one username from one address, even the right
password is refused for a cool-off period, on our login form and on the admin's; API tokens are not
affected (they are not passwords and cannot be guessed)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from tests import factories

pytestmark = pytest.mark.django_db

FORMS = ["/login/", "/admin/login/"]
PASSWORD = "pw-ada-123456"


@pytest.fixture
def ada(django_user_model: type) -> object:
    """An admin who may use both forms (the admin site wants is_staff)."""
    user = django_user_model.objects.create_user("ada", password=PASSWORD, is_staff=True, is_superuser=True)
    user.groups.add(Group.objects.get_or_create(name="admin")[0])
    return user


def attempt(client: Client, form: str, password: str, *, username: str = "ada", ip: str = "10.0.0.1") -> object:
    return client.post(form, {"username": username, "password": password}, REMOTE_ADDR=ip)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def limit() -> int:
    return settings.AXES_FAILURE_LIMIT


def test_the_limit_and_cool_off_come_from_settings() -> None:
    assert settings.AXES_FAILURE_LIMIT == settings.EDGEFLEET_LOGIN_FAILURE_LIMIT == 5
    assert (
        settings.AXES_COOLOFF_TIME
        == timedelta(minutes=settings.EDGEFLEET_LOGIN_COOLOFF_MINUTES)
        == timedelta(minutes=15)
    )
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]


@pytest.mark.parametrize("form", FORMS)
def test_thirty_wrong_passwords_then_the_right_one_is_refused(client: Client, ada: object, form: str) -> None:
    for _ in range(30):
        assert not logged_in(client)
        attempt(client, form, "wrong")
    response = attempt(client, form, PASSWORD)
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed logins" in page and "15 minutes" in page
    assert not logged_in(client)
    assert client.get("/accounts/tokens/").status_code == 302  # still sent to the login page


@pytest.mark.parametrize("form", FORMS)
def test_one_failure_short_of_the_limit_the_right_password_still_works(client: Client, ada: object, form: str) -> None:
    for _ in range(limit() - 1):
        assert attempt(client, form, "wrong").status_code == 200  # the form again, with its error
    response = attempt(client, form, PASSWORD)
    assert response.status_code == 302 and logged_in(client)


@pytest.mark.parametrize("form", FORMS)
def test_at_the_limit_the_right_password_is_refused(client: Client, ada: object, form: str) -> None:
    for _ in range(limit() - 1):
        attempt(client, form, "wrong")
    assert attempt(client, form, "wrong").status_code == 429  # the failure that reaches the limit says so
    assert attempt(client, form, PASSWORD).status_code == 429 and not logged_in(client)


def test_a_success_clears_the_count(client: Client, ada: object) -> None:
    for _ in range(limit() - 1):
        attempt(client, "/login/", "wrong")
    assert attempt(client, "/login/", PASSWORD).status_code == 302
    client.logout()
    for _ in range(limit() - 1):
        attempt(client, "/login/", "wrong")
    assert attempt(client, "/login/", PASSWORD).status_code == 302


def test_the_lockout_is_per_username_and_address(client: Client, ada: object, operator: object) -> None:
    """Locking ``ada`` out from one address locks out neither her elsewhere nor others from there."""
    for _ in range(limit()):
        attempt(client, "/login/", "wrong")
    assert attempt(client, "/login/", PASSWORD).status_code == 429
    elsewhere = Client()
    assert attempt(elsewhere, "/login/", PASSWORD, ip="10.0.0.2").status_code == 302
    colleague = Client()
    assert attempt(colleague, "/login/", "pw-olivia-123", username="olivia").status_code == 302


def test_both_forms_share_one_count(client: Client, ada: object) -> None:
    for i in range(limit()):
        attempt(client, FORMS[i % 2], "wrong")
    assert attempt(client, "/admin/login/", PASSWORD).status_code == 429
    assert attempt(client, "/login/", PASSWORD).status_code == 429


def test_the_lockout_ends_after_the_cool_off(client: Client, ada: object) -> None:
    from axes.models import AccessAttempt

    for _ in range(limit()):
        attempt(client, "/login/", "wrong")
    assert attempt(client, "/login/", PASSWORD).status_code == 429
    # The cool-off has passed (moved the attempts back instead of waiting 15 minutes).
    past = timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    AccessAttempt.objects.update(attempt_time=past)
    assert attempt(client, "/login/", PASSWORD).status_code == 302 and logged_in(client)


def test_api_tokens_keep_working_while_the_login_is_locked(client: Client, operator: object) -> None:
    _, token = ApiToken.issue(operator, "pipeline")
    factories.staged_version("fraud", "v1")
    for _ in range(limit() + 3):
        attempt(client, "/login/", "wrong", username="olivia", ip="127.0.0.1")
    assert attempt(client, "/login/", "pw-olivia-123", username="olivia", ip="127.0.0.1").status_code == 429
    api = Client()
    response = api.get("/api/v1/models/fraud/versions/v1", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and response.json()["label"] == "v1"


def test_force_login_still_works_for_a_locked_out_user(client: Client, operator: object) -> None:
    """Tests (and sessions already open) are not affected: only password checks are throttled."""
    for _ in range(limit()):
        attempt(client, "/login/", "wrong", username="olivia")
    client.force_login(operator)
    assert client.get("/accounts/tokens/").status_code == 200
