"""/metrics scraped and parsed by prometheus_client's own parser after real polls; request ids and
JSON logs.

The test client goes through the whole middleware chain and URL conf (the manifest's fast route
included), so the counters move exactly as under gunicorn; one process here, so no multiprocess dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from ops import metrics
from rollout.models import Campaign, CampaignDecision
from telemetry.models import Alert
from tests import factories

pytestmark = pytest.mark.django_db

TOKEN = "metrics-" + "s" * 32


@pytest.fixture
def scrape(settings: Any) -> Any:
    settings.EDGEFLEET_METRICS_TOKEN = TOKEN
    settings.EDGEFLEET_METRICS_CACHE_SECONDS = 0

    def do() -> dict[tuple[str, tuple], float]:
        r = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert r.status_code == 200 and r["Content-Type"].startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(r.content.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    return do


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_refused_unless_configured(settings: Any) -> None:
    c = Client()
    settings.EDGEFLEET_METRICS_TOKEN, settings.EDGEFLEET_METRICS_ALLOW = "", []
    r = c.get("/metrics")
    assert r.status_code == 403 and "EDGEFLEET_METRICS_TOKEN" in r.content.decode()  # not embedded, not DEBUG
    settings.DEBUG = True
    assert c.get("/metrics").status_code == 200  # DEBUG: loopback only
    assert c.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    settings.DEBUG = False
    settings.EDGEFLEET_METRICS_TOKEN = TOKEN
    r = c.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong")
    assert r.status_code == 401 and r["WWW-Authenticate"].startswith("Bearer")
    assert c.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    settings.EDGEFLEET_METRICS_TOKEN, settings.EDGEFLEET_METRICS_ALLOW = "", ["10.0.0.0/8"]
    assert c.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200
    assert c.get("/metrics", REMOTE_ADDR="11.2.3.4").status_code == 403


def test_polls_latency_and_ingest_counters_move_with_real_requests(scrape: Any) -> None:
    factories.release(factories.staged_version("fraud", "v1"))
    _, token = factories.device(labels={"region": "eu"})
    c = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    before = scrape()
    first = c.get("/api/v1/manifest", **auth)
    assert first.status_code == 200
    assert c.get("/api/v1/manifest", HTTP_IF_NONE_MATCH=first["ETag"], **auth).status_code == 304
    assert c.get("/api/v1/manifest", HTTP_AUTHORIZATION="Bearer efd_nope").status_code == 401
    batch = {"events": [{"id": str(uuid.uuid4()), "kind": "installed", "at": "2026-11-25T10:00:00Z",
                         "model": "fraud", "version": "v1"}]}  # fmt: skip
    for _ in range(2):  # the second is a duplicate
        assert c.post("/api/v1/events", batch, content_type="application/json", **auth).status_code == 200
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("edgefleet_manifest_polls_total", status="200") == 1
    assert delta("edgefleet_manifest_polls_total", status="304") == 1
    assert delta("edgefleet_manifest_polls_total", status="4xx") == 1
    assert delta("edgefleet_device_requests_total", route="manifest", status="304") == 1
    assert delta("edgefleet_device_request_duration_seconds_count", route="manifest") == 3
    assert delta("edgefleet_device_request_duration_seconds_sum", route="manifest") > 0
    assert delta("edgefleet_device_request_duration_seconds_bucket", route="manifest", le="+Inf") == 3
    assert delta("edgefleet_device_events_total", result="accepted") == 1
    assert delta("edgefleet_device_events_total", result="duplicate") == 1
    assert delta("edgefleet_api_requests_total", method="GET", status="200") == 0  # the device API is apart


def test_fleet_figures_come_from_the_database_and_redis(scrape: Any) -> None:
    v1 = factories.staged_version("fraud", "v1")
    devices = [factories.device(name=f"d{i}")[0] for i in range(3)]
    from fleet.models import Device

    Device.objects.filter(pk=devices[0].pk).update(last_seen_at=timezone.now(), installed={"fraud": "v1"})
    Device.objects.filter(pk=devices[1].pk).update(token_revoked_at=timezone.now())
    now = timezone.now()
    Alert.objects.create(kind="drift", version=v1, feature="f", opened_at=now, updated_at=now)
    c = Campaign.objects.create(name="c", model=v1.model, version=v1, waves=[{"percent": 100}], state="rolled_back")
    CampaignDecision.objects.create(campaign=c, kind="rollback", actor_label="system")
    CampaignDecision.objects.create(campaign=c, kind="pause", actor_label="olivia")  # a person: not the gate
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    broker.delete("control", "validation")  # another test in this process may have left messages queued
    broker.rpush("control", b"x", b"y")
    broker.rpush("validation", b"v")
    metrics.record_task("rollout.evaluate_campaigns", 0.3, "success")
    metrics.record_task("rollout.evaluate_campaigns", 42.0, "failure")
    try:
        s = scrape()
    finally:
        broker.delete("control", "validation")
    assert value(s, "edgefleet_devices", status="online") == 1 and value(s, "edgefleet_devices", status="never") == 2
    assert value(s, "edgefleet_devices_revoked") == 1
    assert value(s, "edgefleet_devices_by_version", model="fraud", version="v1") == 1
    assert (
        value(s, "edgefleet_alerts_open", kind="drift") == 1
        and value(s, "edgefleet_alerts_open", kind="regression") == 0
    )
    assert value(s, "edgefleet_campaigns", state="rolled_back") == 1
    assert value(s, "edgefleet_gate_decisions_total", decision="rollback") == 1
    assert value(s, "edgefleet_gate_decisions_total", decision="pause") == 0
    assert value(s, "edgefleet_celery_queue_length", queue="control") == 2
    assert value(s, "edgefleet_celery_queue_length", queue="validation") == 1
    task = {"task": "rollout.evaluate_campaigns"}
    assert value(s, "edgefleet_celery_task_duration_seconds_count", **task) >= 2
    assert value(s, "edgefleet_celery_task_duration_seconds_bucket", **task, le="0.5") >= 1
    assert value(s, "edgefleet_celery_task_duration_seconds_bucket", **task, le="30.0") < value(
        s, "edgefleet_celery_task_duration_seconds_bucket", **task, le="60.0"
    )
    assert value(s, "edgefleet_celery_tasks_total", outcome="failure", **task) >= 1
    assert value(s, "edgefleet_model_versions", status="staged") == 1


def test_request_id_is_honoured_or_made_and_echoed() -> None:
    c = Client()
    assert c.get("/healthz", HTTP_X_REQUEST_ID="ci-run-42.7")["X-Request-ID"] == "ci-run-42.7"
    made = c.get("/healthz")["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    odd = c.get("/healthz", HTTP_X_REQUEST_ID="x" * 200)["X-Request-ID"]  # too long: replaced, not echoed
    assert odd != "x" * 200 and len(odd) == 32
    assert c.get("/healthz", HTTP_X_REQUEST_ID="a b\nc")["X-Request-ID"] != "a b\nc"


def test_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    """A separate process with EDGEFLEET_LOG_FORMAT=json: a request's log line is one JSON object."""
    code = (
        "import django, os; django.setup()\n"
        "from django.test import Client\n"
        "r = Client().get('/no-such-page', HTTP_X_REQUEST_ID='req-77')\n"
        "import logging; logging.getLogger('edgefleet.test').info('outside a request')\n"
    )
    env = {**os.environ, "EDGEFLEET_LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "edgefleet.settings_test"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    not_found = next(x for x in lines if x.get("logger") == "django.request")
    assert not_found["level"] == "WARNING" and not_found["request_id"] == "req-77"
    assert "Not Found" in not_found["message"] and "timestamp" in not_found
    outside = next(x for x in lines if x.get("logger") == "edgefleet.test")
    assert outside["request_id"] is None
