"""Device protocol v1 against the app with real PostgreSQL and Redis."""

import hashlib
import json
import threading
import uuid

import pytest
from django.test import Client
from django.utils import timezone

from fleet.models import Cohort, Device, DeviceEvent, EnrollmentKey
from ota import signing
from rollout.manifest import bump_generation, was_told
from tests import factories

pytestmark = pytest.mark.django_db

HW = {
    "arch": "aarch64",
    "cores": 4,
    "ram_mb": 4096,
    "accelerator": "none",
    "ort_version": "1.20.0",
    "providers": ["CPUExecutionProvider"],
    "storage_free_mb": 2048,
}


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    """The DB is rolled back between tests; Redis is not: start every test on a new generation."""
    bump_generation()


def post(client: Client, path: str, body: object, token: str | None = None, **extra: str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data, content_type="application/json", **headers, **extra)


def get(client: Client, path: str, token: str | None = None, **extra: str):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get(path, **headers, **extra)


def enroll(client: Client, key: str, **over: object):
    body = {
        "enrollment_key": key,
        "name": "cam-17",
        "hardware": HW,
        "labels": {"region": "eu"},
        "agent_version": "0.1.0",
        **over,
    }
    return post(client, "/api/v1/enroll", body)


def assert_error(resp, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.content
    err = resp.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"]
    if code:
        assert err["code"] == code
    if field:
        assert err["field"] == field
    return err


# ---------------------------------------------------------------- enroll


def test_enroll_gives_token_once_and_key_defaults_lose_to_device_labels(client: Client) -> None:
    key, plain = factories.enrollment_key(default_labels={"region": "us", "fleet": "pilot"}, max_uses=5)
    resp = enroll(client, plain)
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["token"].startswith("efd_") and body["poll_interval"] == 60
    assert body["signing_key"] == signing.public_info()
    device = Device.objects.get(pk=body["device_id"])
    assert device.labels == {"region": "eu", "fleet": "pilot"}
    assert device.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in json.dumps([device.name, device.hardware, device.token_prefix + "x" * 40])
    key.refresh_from_db()
    assert key.uses == 1
    assert plain not in key.key_hash


@pytest.mark.parametrize("state", ["unknown", "expired", "revoked", "exhausted"])
def test_enroll_refuses_bad_keys_and_changes_nothing(client: Client, state: str) -> None:
    key, plain = factories.enrollment_key(max_uses=1)
    if state == "unknown":
        plain = "efk_forged"
    elif state == "expired":
        EnrollmentKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timezone.timedelta(seconds=1))
    elif state == "revoked":
        EnrollmentKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    else:
        assert enroll(client, plain).status_code == 201  # the one allowed use; a replay is refused
    before = Device.objects.count()
    assert_error(enroll(client, plain), 401 if state == "unknown" else 403, field="enrollment_key")
    assert Device.objects.count() == before


def test_enroll_bad_input_names_the_field(client: Client) -> None:
    _, plain = factories.enrollment_key()
    assert_error(enroll(client, plain, colour="red"), 400, "unknown_field", "colour")
    assert_error(enroll(client, plain, hardware={**HW, "gpu": "x"}), 400, "unknown_field", "hardware.gpu")
    assert_error(enroll(client, plain, labels={"region": "eu west"}), 400, field="labels")
    assert_error(enroll(client, plain, hardware={**HW, "cores": "many"}), 400, field="hardware.cores")
    assert_error(post(client, "/api/v1/enroll", "{not json"), 400)
    assert_error(post(client, "/api/v1/enroll", {"name": "x"}), 400, field="enrollment_key")
    assert Device.objects.count() == 0


def test_oversized_body_is_413(client: Client, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _, plain = factories.enrollment_key()
    assert_error(enroll(client, plain, name="x" * 2000), 413, "too_large")
    assert Device.objects.count() == 0


# ---------------------------------------------------------------- tokens


def test_token_missing_wrong_revoked_rotated(client: Client) -> None:
    from fleet import services

    device, token = factories.device()
    assert get(client, "/api/v1/manifest", token).status_code == 200
    assert_error(get(client, "/api/v1/manifest"), 401, "token_missing")
    assert_error(get(client, "/api/v1/manifest", "efd_wrong"), 401, "token_invalid")
    assert_error(client.get("/api/v1/manifest", HTTP_AUTHORIZATION="Basic abc"), 401)
    new = services.rotate_token(device)
    assert_error(get(client, "/api/v1/manifest", token), 401, "token_invalid")
    assert get(client, "/api/v1/manifest", new).status_code == 200
    services.revoke_token(device)
    assert_error(get(client, "/api/v1/manifest", new), 403, "token_revoked")


# ---------------------------------------------------------------- manifest


def verify(body: dict, key: dict) -> bool:
    return signing.verify(key["public_key"], signing.canonical(body["manifest"]), body["signature"]["value"])


def test_manifest_signed_etag_304_and_changes_after_release(client: Client) -> None:
    device, token = factories.device(labels={"region": "eu"})
    key = get(client, "/api/v1/signing-key").json()
    assert key["key_id"] == hashlib.sha256(signing.public_raw()).hexdigest()[:16]

    first = get(client, "/api/v1/manifest", token)
    assert first.status_code == 200
    body = first.json()
    assert verify(body, key) and body["manifest"]["models"] == []
    assert body["manifest"]["device_id"] == str(device.id)
    canon = signing.canonical(body["manifest"])
    assert first["ETag"] == '"' + hashlib.sha256(canon).hexdigest()[:32] + '"'

    again = get(client, "/api/v1/manifest", token, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b""

    v1 = factories.staged_version("fraud", "v1", seed=1)
    factories.release(v1)
    changed = get(client, "/api/v1/manifest", token, HTTP_IF_NONE_MATCH=first["ETag"])
    assert changed.status_code == 200 and changed["ETag"] != first["ETag"]
    m = changed.json()
    assert verify(m, key)
    (entry,) = m["manifest"]["models"]
    assert entry["model"] == "fraud" and entry["version"] == "v1" and entry["fallback"] is None
    assert entry["artifact"]["sha256"] == v1.artifact.sha256 and entry["artifact"]["size"] == v1.artifact.size
    assert entry["telemetry"]["output"] == {"kind": "classes", "n": 3}
    assert [f["name"] for f in entry["telemetry"]["features"]] == [f"input[{i}]" for i in range(4)]

    # A newer release to a cohort the device is in wins; the older one becomes the fallback.
    eu = Cohort.objects.create(name="eu", selector="region=eu")
    v2 = factories.staged_version("fraud", "v2", seed=2)
    factories.release(v2, cohort=eu)
    (entry,) = get(client, "/api/v1/manifest", token).json()["manifest"]["models"]
    assert (entry["version"], entry["fallback"]["version"]) == ("v2", "v1")
    assert was_told(device.id, v2.id) and was_told(device.id, v1.id)

    # A device outside the cohort keeps v1; tampering breaks the signature.
    other, other_token = factories.device(labels={"region": "us"})
    om = get(client, "/api/v1/manifest", other_token).json()
    assert [e["version"] for e in om["manifest"]["models"]] == ["v1"]
    assert not was_told(other.id, v2.id)
    om["manifest"]["models"][0]["version"] = "v2"
    assert not verify(om, key)


def test_manifest_variant_follows_hardware(client: Client) -> None:
    v = factories.staged_version("cam", "v1", seed=3, int8=True)
    factories.release(v)
    _, small = factories.device(hardware={"arch": "armv7", "ram_mb": 512, "accelerator": "none"})
    _, big = factories.device(hardware={"arch": "x86_64", "ram_mb": 16384, "accelerator": "cuda"})
    small_entry = get(client, "/api/v1/manifest", small).json()["manifest"]["models"][0]
    big_entry = get(client, "/api/v1/manifest", big).json()["manifest"]["models"][0]
    assert small_entry["artifact"]["variant"] == "int8" and big_entry["artifact"]["variant"] == "fp32"


def test_agent_state_header_bad_is_400(client: Client) -> None:
    _, token = factories.device()
    assert_error(get(client, "/api/v1/manifest", token, HTTP_X_AGENT_STATE="{nope"), 400, field="X-Agent-State")
    ok = get(client, "/api/v1/manifest", token, HTTP_X_AGENT_STATE=json.dumps({"models": {"fraud": "v1"}}))
    assert ok.status_code == 200


def test_load_shedding_answers_429_with_retry_after(client: Client, settings) -> None:
    from fleet.limits import semaphore

    settings.EDGEFLEET_DEVICE_API_CONCURRENCY = 1
    _, token = factories.device()
    sem = semaphore()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with sem:
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        resp = get(client, "/api/v1/manifest", token)
        assert_error(resp, 429, "overloaded")
        assert int(resp["Retry-After"]) > 0
    finally:
        release.set()
        t.join()
    assert get(client, "/api/v1/manifest", token).status_code == 200


# ---------------------------------------------------------------- artifacts


def test_artifact_download_range_resume_416_and_permissions(client: Client) -> None:
    v = factories.staged_version("fraud", "v1", seed=4)
    factories.release(v)
    _, token = factories.device()
    sha = get(client, "/api/v1/manifest", token).json()["manifest"]["models"][0]["artifact"]["sha256"]
    url = f"/api/v1/artifacts/{sha}"
    full = get(client, url, token)
    data = b"".join(full.streaming_content)
    assert full.status_code == 200 and full["X-Content-SHA256"] == sha and hashlib.sha256(data).hexdigest() == sha
    half = len(data) // 2
    part = get(client, url, token, HTTP_RANGE=f"bytes={half}-")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert data[:half] + b"".join(part.streaming_content) == data
    mid = get(client, url, token, HTTP_RANGE="bytes=10-19")
    assert mid.status_code == 206 and b"".join(mid.streaming_content) == data[10:20]
    bad = get(client, url, token, HTTP_RANGE=f"bytes={len(data)}-")
    assert_error(bad, 416)
    assert bad["Content-Range"] == f"bytes */{len(data)}"

    # Another model's artifact that no manifest of this device named: 404 like an unknown one.
    unreleased = factories.staged_version("other", "v1", seed=5)
    assert_error(get(client, f"/api/v1/artifacts/{unreleased.artifact.sha256}", token), 404)
    assert_error(get(client, "/api/v1/artifacts/" + "0" * 64, token), 404)
    assert_error(get(client, "/api/v1/artifacts/ABC", token), 400, field="sha256")
    assert get(client, "/api/v1/artifacts/..%2F..%2Fsecret_key", token).status_code in (400, 404)
    assert_error(get(client, url), 401)


def test_artifact_x_accel_redirect(client: Client, settings) -> None:
    settings.EDGEFLEET_X_ACCEL_REDIRECT = "/protected/"
    v = factories.staged_version("fraud", "v1", seed=6)
    factories.release(v)
    _, token = factories.device()
    get(client, "/api/v1/manifest", token)
    resp = get(client, f"/api/v1/artifacts/{v.artifact.sha256}", token)
    assert resp.status_code == 200 and resp.content == b""
    assert resp["X-Accel-Redirect"] == "/protected/" + v.artifact.storage_key


# ---------------------------------------------------------------- events


def test_events_idempotent_update_installed_and_stay_per_device(client: Client) -> None:
    device, token = factories.device()
    eid = str(uuid.uuid4())
    batch = {
        "events": [
            {"id": eid, "kind": "installed", "at": "2026-11-25T10:00:00Z", "model": "fraud", "version": "v2"},
            {
                "id": str(uuid.uuid4()),
                "kind": "download_started",
                "at": "2026-11-25T09:59:00Z",
                "details": {"bytes": 1},
            },
        ]
    }
    first = post(client, "/api/v1/events", batch, token)
    assert first.status_code == 200 and first.json() == {"accepted": 2, "duplicates": 0}
    assert post(client, "/api/v1/events", batch, token).json() == {"accepted": 0, "duplicates": 2}
    device.refresh_from_db()
    assert device.installed == {"fraud": "v2"} and DeviceEvent.objects.filter(device=device).count() == 2

    # Another device replaying the same id cannot touch the first device's event.
    other, other_token = factories.device()
    assert post(client, "/api/v1/events", {"events": batch["events"][:1]}, other_token).json() == {
        "accepted": 0,
        "duplicates": 1,
    }
    assert DeviceEvent.objects.get(pk=eid).device_id == device.id
    other.refresh_from_db()
    assert other.installed == {}


def test_events_bad_input(client: Client) -> None:
    _, token = factories.device()
    good = {"id": str(uuid.uuid4()), "kind": "installed", "at": "2026-11-25T10:00:00Z"}
    assert_error(
        post(client, "/api/v1/events", {"events": [{**good, "kind": "exploded"}]}, token), 400, field="events.0.kind"
    )
    assert_error(
        post(client, "/api/v1/events", {"events": [{**good, "extra": 1}]}, token),
        400,
        "unknown_field",
        "events.0.extra",
    )
    assert_error(post(client, "/api/v1/events", {"events": [{**good, "id": "nope"}]}, token), 400, field="events.0.id")
    assert_error(
        post(client, "/api/v1/events", {"events": [{**good, "at": "2026-11-25T10:00:00"}]}, token),
        400,
        field="events.0.at",
    )
    many = [{**good, "id": str(uuid.uuid4())} for _ in range(501)]
    assert_error(post(client, "/api/v1/events", {"events": many}, token), 400, field="events")
    assert_error(post(client, "/api/v1/events", "[1,", token), 400)
    assert_error(post(client, "/api/v1/events", {"events": [good]}), 401)
    assert DeviceEvent.objects.count() == 0


def test_signing_key_is_made_once_when_many_threads_ask_at_once(tmp_path, settings) -> None:
    """The first requests of a fresh install race to make the key: all must get the same one."""
    import threading

    from ota import signing

    settings.EDGEFLEET_SIGNING_KEY = ""
    path = tmp_path / "signing_key"
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            keys.append(signing._load_or_create(path).public_key().public_bytes_raw())
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(keys)) == 1 and len(keys) == 16
    assert [p.name for p in tmp_path.iterdir()] == ["signing_key"], "no temp files are left behind"


def test_manifest_bins_are_the_ones_ingest_checks(client: Client) -> None:
    """Devices are told exactly the bins the server will accept, with and without a reference profile."""
    from telemetry.profiles import expected_bins

    _, token = factories.device(labels={"region": "eu"})
    plain = factories.staged_version("plain", "v1", seed=2)
    profiled = factories.staged_version("profiled", "v1", seed=3)
    profiled.reference_profile = {
        "source": "reference_set",
        "n": 10,
        "features": [
            {"name": f"input[{j}]", "edges": [-1.0, 0.0, 1.0], "counts": [5, 5], "mean": 0, "std": 1} for j in range(4)
        ],
        "output": {"kind": "classes", "n": 3, "counts": [3, 3, 4]},
    }
    profiled.save(update_fields=["reference_profile"])
    factories.release(plain)
    factories.release(profiled)
    m = get(client, "/api/v1/manifest", token).json()["manifest"]
    by_model = {e["model"]: e["telemetry"] for e in m["models"]}
    assert by_model["plain"] == expected_bins(plain)
    assert by_model["profiled"] == expected_bins(profiled)
    assert by_model["profiled"]["features"][0]["edges"] == [-1.0, 0.0, 1.0]
    assert m["telemetry"]["privacy"]["unit"] == "inference"
