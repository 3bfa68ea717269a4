"""POST /api/v1/telemetry: validation, idempotency, budget refusal, and never a 500."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from telemetry.models import PrivacyLedger, Report
from tests import factories
from tests.telemetry_support import grid_seconds, grid_window, report, window

pytestmark = pytest.mark.django_db

URL = "/api/v1/telemetry"


@pytest.fixture
def setup() -> tuple:
    version = factories.staged_version("fraud", "v1")
    factories.release(version)
    device, token = factories.device(labels={"region": "eu"})
    return version, device, token


def post(token: str | None, body: object, raw: bytes | None = None) -> object:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else json.dumps(body)
    return Client().post(URL, data=data, content_type="application/json", **headers)


def error_of(resp: object) -> dict:
    return resp.json()["error"]


def test_accepts_and_stores_durably(setup) -> None:
    version, device, token = setup
    body = {"reports": [report(version), report(version)]}
    resp = post(token, body)
    assert resp.status_code == 202, resp.content
    assert sorted(resp.json()["accepted"]) == sorted(r["id"] for r in body["reports"])
    assert Report.objects.filter(device=device, version=version).count() == 2
    stored = Report.objects.get(id=body["reports"][0]["id"])
    assert stored.features["input[0]"] == [1.0] * 16 and stored.epsilon == 1.0
    ledger = PrivacyLedger.objects.get(device=device)
    assert ledger.spent == 2.0 and ledger.reports == 2


def test_replay_is_acknowledged_once_and_spends_no_budget(setup) -> None:
    version, _, token = setup
    body = {"reports": [report(version)]}
    assert post(token, body).json()["accepted"] == [body["reports"][0]["id"]]
    again = post(token, body).json()
    assert again == {"accepted": [], "duplicates": [body["reports"][0]["id"]], "rejected": []}
    twice_in_batch = post(token, {"reports": [body["reports"][0], body["reports"][0]]}).json()
    assert twice_in_batch["duplicates"] == [body["reports"][0]["id"]] * 2
    assert Report.objects.count() == 1 and PrivacyLedger.objects.get().spent == 1.0


def test_noisy_negative_fractional_counts_are_accepted(setup) -> None:
    version, _, token = setup
    r = report(version, inference_count=-3.7, error_count=0.25)
    r["features"]["input[2]"]["counts"][3] = -12.5
    assert post(token, {"reports": [r]}).json()["accepted"] == [r["id"]]


def test_budget_exhausted_is_refused_per_report(setup, settings) -> None:
    version, device, token = setup
    settings.EDGEFLEET_DP_DAILY_BUDGET = 2.5
    rs = [report(version) for _ in range(4)]
    out = post(token, {"reports": rs}).json()
    assert out["accepted"] == [rs[0]["id"], rs[1]["id"]]
    assert [r["code"] for r in out["rejected"]] == ["budget_exhausted", "budget_exhausted"]
    assert "budget" in out["rejected"][0]["message"]
    # A window of another day is charged to the day the server received it: today, which is spent.
    s, e = grid_window(back=int(26 * 3600 / grid_seconds()))
    other = report(version, window_start=s.isoformat(), window_end=e.isoformat())
    assert [r["code"] for r in post(token, {"reports": [other]}).json()["rejected"]] == ["budget_exhausted"]
    ledger = PrivacyLedger.objects.get(device=device)
    assert (ledger.spent, ledger.reports, ledger.refused) == (2.0, 2, 3)


def test_unauthenticated_and_unknown_token(setup) -> None:
    version, _, _ = setup
    resp = post(None, {"reports": [report(version)]})
    assert resp.status_code == 401 and error_of(resp)["code"]
    resp = post("efd_nope", {"reports": [report(version)]})
    assert resp.status_code == 401
    assert not Report.objects.exists()


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda b: b["reports"][0].update(surprise=1), "unknown_field", "reports.0.surprise"),
        (lambda b: b["reports"][0].update(inference_count="many"), "invalid", "reports.0.inference_count"),
        (lambda b: b["reports"][0].update(id="not-a-uuid"), "invalid", "reports.0.id"),
        (lambda b: b["reports"][0]["latency_ms"].update(counts="x"), "invalid", "reports.0.latency_ms.counts"),
        (lambda b: b["reports"][0]["privacy"].update(epsilon=-1), "invalid", "reports.0.privacy.epsilon"),
        (lambda b: b["reports"][0].pop("features"), "invalid", "reports.0.features"),
        (lambda b: b.update(extra=True), "unknown_field", "extra"),
        (lambda b: b.update(reports=[]), "invalid", "reports"),
        (lambda b: b.update(reports="x"), "invalid", "reports"),
    ],
)
def test_malformed_reports_are_400_with_the_field(setup, mutate, code, field) -> None:
    version, _, token = setup
    body = {"reports": [report(version)]}
    mutate(body)
    resp = post(token, body)
    assert resp.status_code == 400, resp.content
    assert error_of(resp)["code"] == code and error_of(resp)["field"] == field
    assert not Report.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"reports"', b'{"reports": [{"inference_count": NaN}]}', b"\xff\xfe"],
)
def test_garbage_bodies_are_400(setup, raw) -> None:
    resp = post(setup[2], None, raw=raw)
    assert resp.status_code == 400
    assert error_of(resp)["code"] in {"malformed_json", "invalid", "invalid_number", "not_utf8"}


def test_non_finite_counts_are_refused(setup) -> None:
    version, _, token = setup
    raw = json.dumps({"reports": [report(version)]}).replace('"inference_count": 100.0', '"inference_count": Infinity')
    resp = post(token, None, raw=raw.encode())
    assert resp.status_code == 400 and error_of(resp)["field"] == "reports.0.inference_count"


def test_oversized_body_and_batch(setup, settings) -> None:
    version, _, token = setup
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    resp = post(token, {"reports": [report(version)] * 3})
    assert resp.status_code == 413 and error_of(resp)["code"] == "too_large"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
    resp = post(token, {"reports": [report(version) for _ in range(501)]})
    assert resp.status_code == 400 and error_of(resp)["field"] == "reports"


def codes(resp: object) -> list[str]:
    assert resp.status_code == 202, resp.content
    return [r["code"] for r in resp.json()["rejected"]]


def test_bins_that_do_not_match_the_manifest_are_rejected(setup) -> None:
    version, _, token = setup
    short = report(version)
    short["features"]["input[0]"]["counts"] = [1.0] * 5
    missing = report(version)
    missing["features"].pop("input[3]")
    unknown = report(version)
    unknown["features"]["input[9]"] = {"counts": [0.0] * 16}
    lat = report(version, latency_ms={"counts": [1.0] * 3})
    out = report(version, outputs={"counts": [1.0] * 7})
    resp = post(token, {"reports": [short, missing, unknown, lat, out, report(version)]})
    assert codes(resp) == ["bins_mismatch"] * 5 and len(resp.json()["accepted"]) == 1


def test_insane_windows_are_rejected(setup) -> None:
    version, _, token = setup
    s, e = window()
    now = datetime.now(UTC)
    bad = [
        report(version, window_start=e.isoformat(), window_end=s.isoformat()),
        report(version, window_start=s.isoformat(), window_end=s.isoformat()),
        report(version, window_start=(e - timedelta(days=2)).isoformat(), window_end=e.isoformat()),
        report(version, window_start=now.isoformat(), window_end=(now + timedelta(hours=1)).isoformat()),
        report(version, window_start="2001-01-01T00:00:00Z", window_end="2001-01-01T00:05:00Z"),
    ]
    assert codes(post(token, {"reports": bad})) == ["bad_window"] * 5
    # A date without its UTC offset is malformed, not a bad window: the whole batch is refused.
    naive = report(version, window_start="2030-01-01T00:00:00", window_end="2030-01-01T00:05:00")
    resp = post(token, {"reports": [naive]})
    assert resp.status_code == 400 and error_of(resp)["field"] == "reports.0.window_start"
    assert not Report.objects.exists()


def test_versions_the_device_was_not_told_to_run(setup) -> None:
    version, _, token = setup
    never = factories.staged_version("fraud", "v2", seed=1)  # staged but released to nobody
    rs = [
        report(never),
        report(version, version="v404"),
        report(version, model="nope"),
        report(version, privacy={"mechanism": "gaussian", "epsilon": 1.0}),
        report(version, privacy={"mechanism": "laplace", "epsilon": 5.0}),
    ]
    assert codes(post(token, {"reports": rs})) == [
        "version_not_assigned",
        "unknown_version",
        "unknown_version",
        "privacy_mismatch",
        "privacy_mismatch",
    ]


def test_another_devices_report_id_is_not_taken_over(setup) -> None:
    version, device, token = setup
    other, other_token = factories.device(labels={"region": "us"}, name="other")
    r = report(version)
    assert post(other_token, {"reports": [r]}).json()["accepted"] == [r["id"]]
    resp = post(token, {"reports": [r]})
    assert codes(resp) == ["id_conflict"]
    assert Report.objects.get(id=r["id"]).device_id == other.id
    assert not PrivacyLedger.objects.filter(device=device, spent__gt=0).exists()


def test_revoked_device_is_403(setup) -> None:
    from fleet.auth import forget_device
    from fleet.models import Device

    version, device, token = setup
    Device.objects.filter(pk=device.pk).update(token_revoked_at=datetime.now(UTC))
    forget_device(device.token_hash)
    resp = post(token, {"reports": [report(version, id=str(uuid.uuid4()))]})
    assert resp.status_code == 403 and error_of(resp)["code"] == "token_revoked"
