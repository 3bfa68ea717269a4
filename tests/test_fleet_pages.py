"""Fleet and release pages: permissions, audit, bad input, empty states, keyset paging."""

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEntry
from fleet.models import Cohort, Device, EnrollmentKey
from rollout.manifest import bump_generation
from rollout.models import Release
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    bump_generation()


@pytest.mark.parametrize("url", ["/devices/", "/enrollment-keys/", "/cohorts/", "/releases/"])
def test_pages_need_login_and_show_empty_states(viewer_client: Client, url: str) -> None:
    assert Client().get(url).status_code == 302
    resp = viewer_client.get(url)
    assert resp.status_code == 200
    assert b"yet" in resp.content  # "No devices yet", "No cohorts yet", ...


def test_viewer_cannot_write(viewer_client: Client) -> None:
    device, _ = factories.device()
    assert viewer_client.post("/enrollment-keys/", {"name": "k"}).status_code == 403
    assert viewer_client.post("/cohorts/", {"name": "eu", "selector": "region=eu"}).status_code == 403
    assert viewer_client.post(f"/devices/{device.pk}/token/revoke").status_code == 403
    assert viewer_client.post("/releases/", {"version": "1"}).status_code == 403
    assert not Cohort.objects.exists() and EnrollmentKey.objects.count() == 1


def test_enrollment_key_create_shown_once_then_revoke(operator_client: Client) -> None:
    resp = operator_client.post(
        "/enrollment-keys/", {"name": "berlin", "default_labels": "region=eu", "max_uses": "3", "expires_at": ""}
    )
    assert resp.status_code == 200
    plain = resp.context["plain"]
    assert plain.startswith("efk_") and plain.encode() in resp.content
    key = EnrollmentKey.objects.get(name="berlin")
    assert key.default_labels == {"region": "eu"} and key.max_uses == 3
    assert plain.encode() not in operator_client.get("/enrollment-keys/").content
    assert AuditEntry.objects.filter(action="enrollment_key.create").exists()
    operator_client.post(f"/enrollment-keys/{key.pk}/revoke")
    key.refresh_from_db()
    assert key.revoked_at and AuditEntry.objects.filter(action="enrollment_key.revoke").exists()


@pytest.mark.parametrize(
    "form",
    [
        {"name": ""},
        {"name": "k", "max_uses": "0"},
        {"name": "k", "max_uses": "lots"},
        {"name": "k", "expires_at": "yesterday"},
        {"name": "k", "expires_at": "2001-01-01"},
        {"name": "k", "default_labels": "region"},
    ],
)
def test_enrollment_key_bad_input(operator_client: Client, form: dict) -> None:
    resp = operator_client.post("/enrollment-keys/", form)
    assert resp.status_code == 400 and b"flash error" in resp.content
    assert not EnrollmentKey.objects.exists()


def test_cohort_save_count_and_live_count(operator_client: Client) -> None:
    factories.device(labels={"region": "eu", "hw": "rpi4"})
    factories.device(labels={"region": "eu", "hw": "jetson", "beta": "1"})
    factories.device(labels={"region": "us", "hw": "rpi4"})
    live = operator_client.get("/cohorts/count", {"selector": "region=eu, !beta"}).json()
    assert live["count"] == 1
    bad = operator_client.get("/cohorts/count", {"selector": "region=eu, hw in (rpi4"}).json()
    assert bad["error"]["position"] == 22
    resp = operator_client.post("/cohorts/", {"name": "EU devices", "selector": "region=eu"})
    assert resp.status_code == 302
    cohort = Cohort.objects.get(name="eu-devices")
    assert cohort.selector == "region=eu"
    assert AuditEntry.objects.filter(action="cohort.create").exists()
    page = operator_client.get("/cohorts/")
    assert page.context["rows"][0]["count"] == 2
    bad_save = operator_client.post("/cohorts/", {"name": "x", "selector": "region="})
    assert bad_save.status_code == 400 and b"character 8" in bad_save.content
    assert Cohort.objects.count() == 1


def test_device_list_filters_and_keyset_pages(viewer_client: Client) -> None:
    now = timezone.now()
    rows = [
        Device(
            name=f"d{i:03d}",
            labels={"region": "eu" if i % 2 else "us"},
            token_hash=f"{i:064x}",
            last_seen_at=now - timedelta(seconds=10 if i < 100 else 4000),
            installed={"fraud": "v2"} if i % 3 == 0 else {},
        )
        for i in range(120)
    ]
    Device.objects.bulk_create(rows)
    seen, url = [], "/devices/"
    while url:
        resp = viewer_client.get(url if url.startswith("/") else "/devices/" + url)
        seen += [it["d"].name for it in resp.context["items"]]
        url = resp.context["next_url"]
    assert sorted(seen) == sorted(d.name for d in rows) and len(seen) == len(set(seen))
    eu = viewer_client.get("/devices/", {"labels": "region=eu", "status": "offline"})
    assert {it["d"].name for it in eu.context["items"]} == {f"d{i:03d}" for i in range(100, 120) if i % 2}
    v2 = viewer_client.get("/devices/", {"model": "fraud", "version": "v2", "status": "online"})
    assert {it["d"].name for it in v2.context["items"]} == {f"d{i:03d}" for i in range(0, 100, 3)}
    bad = viewer_client.get("/devices/", {"labels": "region=", "after": "garbage"})
    assert bad.status_code == 200 and b"character 8" in bad.content


def test_device_page_token_rotate_revoke_labels(operator_client: Client) -> None:
    device, token = factories.device(labels={"region": "eu"})
    client = Client()
    assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    resp = operator_client.post(f"/devices/{device.pk}/token/rotate", follow=True)
    new = resp.context["token"]
    assert new and new.encode() in resp.content
    assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {new}").status_code == 200
    operator_client.post(f"/devices/{device.pk}/labels", {"labels": "region=us, hw=rpi4"})
    device.refresh_from_db()
    assert device.labels == {"region": "us", "hw": "rpi4"}
    operator_client.post(f"/devices/{device.pk}/labels", {"labels": "region=u s"})
    device.refresh_from_db()
    assert device.labels == {"region": "us", "hw": "rpi4"}
    operator_client.post(f"/devices/{device.pk}/token/revoke")
    assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {new}").status_code == 403
    assert operator_client.post(f"/devices/{device.pk}/token/explode").status_code == 404
    assert set(AuditEntry.objects.values_list("action", flat=True)) >= {
        "device.token_rotate",
        "device.token_revoke",
        "device.labels",
    }
    page = operator_client.get(f"/devices/{device.pk}/")
    assert b"No events yet" in page.content


def test_release_page_only_staged_and_changes_manifest(operator_client: Client) -> None:
    _, token = factories.device(labels={"region": "eu"})
    v = factories.staged_version("fraud", "v1", seed=8)
    cohort = Cohort.objects.create(name="eu", selector="region=eu")
    resp = operator_client.post("/releases/", {"version": str(v.pk), "cohort": str(cohort.pk), "note": "first"})
    assert resp.status_code == 302 and Release.objects.filter(version=v, cohort=cohort).exists()
    assert AuditEntry.objects.filter(action="release.create").exists()
    body = Client().get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [m["version"] for m in body["manifest"]["models"]] == ["v1"]

    v.status = "validating"
    v.save()
    for form in (
        {"version": str(v.pk)},
        {"version": "x"},
        {"version": str(v.pk + 99)},
        {"version": str(v.pk), "cohort": "nope"},
    ):
        assert operator_client.post("/releases/", form).status_code == 400
    assert Release.objects.count() == 1
    assert json.loads(json.dumps(body))["manifest"]["device_id"]
