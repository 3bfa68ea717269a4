"""Fleet admin: pages answer, secrets stay hidden, token hash is read-only, searches never 500."""

from typing import Any

import pytest
from django.test import Client

from fleet.models import DeviceEvent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("root", "root@example.org", "pw-admin-123")
    client.force_login(user)
    return client


def test_device_admin_lists_searches_and_keeps_the_token_hash_read_only(admin_client_: Client) -> None:
    device, _ = factories.device(labels={"region": "eu"}, name="cam-17")
    for q in ("cam-1", str(device.id), "not-a-uuid'%", ""):
        page = admin_client_.get("/admin/fleet/device/", {"q": q})
        assert page.status_code == 200
        assert (b"cam-17" in page.content) == (q != "not-a-uuid'%")
    change = admin_client_.get(f"/admin/fleet/device/{device.id}/change/")
    assert change.status_code == 200
    assert device.token_hash.encode() in change.content  # shown …
    assert b'name="token_hash"' not in change.content  # … but not editable


def test_enrollment_key_admin_never_shows_the_key_hash(admin_client_: Client) -> None:
    key, plain = factories.enrollment_key("line-3")
    page = admin_client_.get(f"/admin/fleet/enrollmentkey/{key.pk}/change/")
    assert page.status_code == 200
    assert key.key_hash.encode() not in page.content and plain.encode() not in page.content
    assert admin_client_.get("/admin/fleet/enrollmentkey/add/").status_code == 403


def test_cohort_and_event_admin_are_read_only(admin_client_: Client) -> None:
    from fleet import services

    cohort = services.save_cohort("eu", "region=eu")
    device, _ = factories.device()
    services.record_events(
        device.id, [{"id": "0b0f8e2c-3c4e-4a55-9d5e-1f0f6c1a2b3c", "kind": "installed", "at": "2026-11-25T10:00:00Z"}]
    )
    assert admin_client_.get("/admin/fleet/cohort/").status_code == 200
    assert admin_client_.post(f"/admin/fleet/cohort/{cohort.pk}/change/", {"selector": "x"}).status_code == 403
    event = DeviceEvent.objects.get()
    for q in (str(device.id), "fraud", "%%"):
        assert admin_client_.get("/admin/fleet/deviceevent/", {"q": q, "kind": "installed"}).status_code == 200
    assert admin_client_.post(f"/admin/fleet/deviceevent/{event.pk}/change/", {"kind": "x"}).status_code == 403
