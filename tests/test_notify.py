"""Notifications delivered for real: a local HTTP receiver that checks signatures, fails and recovers;
Django's locmem mail; a Celery worker sending; the pages in the test client.

The receiver is ``http.server`` in a thread on 127.0.0.1 (the test allows private addresses, which
production refuses by default). Retries wait ``EDGEFLEET_NOTIFY_BACKOFF_BASE`` seconds (0.2 here
instead of 10) and the test plays beat by calling ``send_due``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from notify import backoff, crypto, delivery, outbound, services, signing, sweep
from notify.models import Delivery, Event, Subscription
from notify.secrets import conceal, reveal
from telemetry.models import Alert
from tests import factories

SECRET_KEY = "k" * 50


# ------------------------------------------------------------------------------------------ pure


def test_signature_is_stripe_shaped_and_checks_body_time_and_secret() -> None:
    body = b'{"type":"campaign.rollback"}'
    header = signing.header("whsec_abc", body, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert signing.verify(header, "whsec_abc", body, now=1_700_000_100)
    assert not signing.verify(header, "whsec_abc", body + b" ", now=1_700_000_100)  # body changed
    assert not signing.verify(header, "whsec_xyz", body, now=1_700_000_100)  # other secret
    assert signing.verify(header, "whsec_abc", body, now=1_700_000_300)  # at the tolerance: still fine
    assert not signing.verify(header, "whsec_abc", body, now=1_700_000_301)  # a replay after it is not
    assert not signing.verify("v1=" + v1[3:], "whsec_abc", body, now=1_700_000_000)  # no timestamp
    rotated = header + ",v1=" + "0" * 64
    assert signing.verify(rotated, "whsec_abc", body, now=1_700_000_000)


def test_secrets_are_encrypted_and_unreadable_under_another_key() -> None:
    token = crypto.encrypt(SECRET_KEY, "whsec_abc")
    assert "whsec_abc" not in token and crypto.decrypt(SECRET_KEY, token) == "whsec_abc"
    assert crypto.decrypt("another" * 10, token) == ""
    assert crypto.encrypt(SECRET_KEY, "") == "" and crypto.decrypt(SECRET_KEY, "") == ""


def test_backoff_doubles_up_to_the_cap_and_retries_for_a_day() -> None:
    import random

    rng = random.Random(1)
    for n in (1, 2, 3):
        assert 0.9 <= backoff.delay(n, 10, 3600, rng) / (10 * 2 ** (n - 1)) <= 1.1
    assert backoff.delay(30, 10, 3600, rng) <= 3600 * 1.1
    plan = backoff.schedule(10, 3600, 24 * 3600)
    assert plan[:4] == [10, 30, 70, 150] and plan[-1] <= 24 * 3600 and len(plan) == 31


def test_outbound_refuses_what_it_must() -> None:
    def why(url: str, allow_private: bool = False) -> str:
        return outbound.post(url, b"{}", {}, timeout=2, allow_private=allow_private).error

    assert "only http and https" in why("file:///etc/passwd")
    assert "only http and https" in why("gopher://127.0.0.1/")
    assert "no user or password" in why("http://user:pw@127.0.0.1/")
    assert "link-local" in why("http://169.254.169.254/latest/meta-data/", allow_private=True)
    assert "private or loopback" in why("http://127.0.0.1:9/")
    assert "private or loopback" in why("http://10.0.0.8/")
    assert "private or loopback" in why("http://[::ffff:127.0.0.1]/")
    assert "0.0.0.0" in why("http://0.0.0.0/", allow_private=True)


# ------------------------------------------------------------------------------------- receiver


class Receiver:
    """A real HTTP server on 127.0.0.1: records requests, answers from a script of status codes."""

    def __init__(self, script: list[int] | None = None, redirect: bool = False, big: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script = list(script or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"headers": dict(self.headers), "body": body})
                status = outer.script.pop(0) if outer.script else 200
                if redirect:
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/")
                    self.end_headers()
                    return
                payload = b"x" * 1_000_000 if big else b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/edgefleet?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*a: Any, **kw: Any) -> Receiver:
        made.append(Receiver(*a, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def fast(settings: Any) -> Any:
    settings.EDGEFLEET_NOTIFY_ALLOW_PRIVATE = True
    settings.EDGEFLEET_NOTIFY_BACKOFF_BASE = 0.2
    settings.EDGEFLEET_NOTIFY_BACKOFF_CAP = 1.0
    settings.EDGEFLEET_NOTIFY_TIMEOUT = 3
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return settings


def play_beat(until: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        delivery.send_due()
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_outbound_does_not_follow_redirects_and_reads_a_bounded_body(receiver: Any) -> None:
    moved = receiver(redirect=True)
    resp = outbound.post(moved.url, b"{}", {}, timeout=3, allow_private=True)
    assert resp.status == 302 and len(moved.requests) == 1  # the Location was not visited
    big = receiver(big=True)
    resp = outbound.post(big.url, b"{}", {}, timeout=3, allow_private=True)
    assert resp.status == 200 and len(resp.body) == outbound.MAX_BODY
    assert big.requests[0]["headers"]["Host"] == big.url.split("/")[2]


# ------------------------------------------------------------------------- end to end, real worker


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.usefixtures("roles")
def test_a_rollback_reaches_a_webhook_that_fails_then_recovers_signed_once_per_delivery(
    celery_worker: Any, operator: Any, fast: Any, receiver: Any
) -> None:
    hook = receiver(script=[500, 503])  # down twice, then up
    api = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(operator, 'ci')[1]}"}
    r = api.post(
        "/api/v1/subscriptions",
        {"name": "pager", "channel": "webhook", "url": hook.url, "events": ["campaign.rollback", "campaign.pause"]},
        content_type="application/json",
        **auth,
    )
    assert r.status_code == 201, r.content
    sub = r.json()
    secret = sub["secret"]
    assert secret.startswith("whsec_") and sub["target"] == f"http://{hook.url.split('/')[2]}/…"
    stored = Subscription.objects.get()
    assert secret not in stored.secret_encrypted and hook.url not in stored.target_encrypted
    assert "secret" not in api.get(f"/api/v1/subscriptions/{sub['id']}", **auth).json()

    factories.release(factories.staged_version("fraud", "v1", seed=1))
    factories.staged_version("fraud", "v2", seed=2)
    waves = [{"percent": 50}, {"percent": 100}]
    body = {"name": "bad", "model": "fraud", "version": "v2", "waves": waves, "start": True}
    cid = api.post("/api/v1/campaigns", body, content_type="application/json", **auth).json()["id"]
    r = api.post(f"/api/v1/campaigns/{cid}/rollback", {"reason": "error rate"}, content_type="application/json", **auth)
    assert r.status_code == 200

    d = Delivery.objects.get
    play_beat(lambda: Delivery.objects.filter(status="delivered").exists())
    row = d()
    assert row.attempts == 3 and row.event.kind == "campaign.rollback"
    assert list(row.attempt_log.order_by("at", "id").values_list("status_code", flat=True)) == [500, 503, 200]
    assert len(hook.requests) == 3
    bodies = {req["body"] for req in hook.requests}
    ids = {req["headers"]["X-EdgeFleet-Delivery"] for req in hook.requests}
    assert len(bodies) == 1 and ids == {str(row.pk)}  # the same bytes and delivery id on every try
    for n, req in enumerate(hook.requests, start=1):
        assert signing.verify(req["headers"]["X-EdgeFleet-Signature"], secret, req["body"])
        assert req["headers"]["X-EdgeFleet-Event"] == "campaign.rollback"
        assert req["headers"]["X-EdgeFleet-Attempt"] == str(n)
    envelope = json.loads(hook.requests[0]["body"])
    assert envelope["type"] == "campaign.rollback" and envelope["delivery"] == str(row.pk)
    data = envelope["data"]
    assert data["campaign"] == cid and data["reason"] == "error rate" and data["actor"] == "olivia"
    assert data["model"] == "fraud" and data["version"] == "v2" and data["previous_version"] == "v1"

    # the log over the API, with each attempt's status code
    log = api.get(f"/api/v1/subscriptions/{sub['id']}/deliveries", **auth).json()["items"]
    assert [a["status_code"] for a in log[0]["log"]] == [200, 503, 500] and log[0]["status"] == "delivered"
    # a re-sent task for a delivered row sends nothing
    assert delivery.deliver(row.pk) == "skip" and len(hook.requests) == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.usefixtures("roles")
def test_a_receiver_that_is_down_loses_nothing_and_alerts_reach_mail_and_slack(
    celery_worker: Any, operator: Any, fast: Any, receiver: Any
) -> None:
    import socket

    # a port nobody listens on yet: connection refused until the receiver starts there
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    hook, _ = services.create(operator, name="down", channel="webhook", url=f"http://127.0.0.1:{port}/",
                              events=["alert.opened"])  # fmt: skip
    slack = receiver()
    # Slack URLs must be https when saved; the local receiver speaks http, so the row is made directly
    slack_sub = Subscription.objects.create(owner=operator, name="slack", channel="slack", events=["alert.opened"],
                                            target_encrypted=conceal(slack.url), target_hint="x")  # fmt: skip
    services.create(operator, name="mail", channel="email", emails=["oncall@example.com"], events=["alert.opened"])
    version = factories.staged_version("fraud", "v1")
    now = timezone.now()
    Alert.objects.create(kind="drift", version=version, feature="f0", opened_at=now, updated_at=now,
                         message="PSI 0.41 above the noise-aware level 0.2")  # fmt: skip

    play_beat(lambda: Delivery.objects.filter(subscription=slack_sub, status="delivered").exists())
    assert json.loads(slack.requests[0]["body"])["text"].startswith("Alert opened: drift on fraud:v1")
    play_beat(lambda: Delivery.objects.filter(subscription__channel="email", status="delivered").exists())
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["oncall@example.com"]
    assert "Alert opened" in mail.outbox[0].subject and "PSI 0.41" in mail.outbox[0].body

    # the webhook receiver is down: attempts fail with a connection error and the row waits
    play_beat(lambda: Delivery.objects.get(subscription=hook).attempts >= 2)
    waiting = Delivery.objects.get(subscription=hook)
    assert waiting.status == "pending" and waiting.last_status_code is None and "Connection" in waiting.last_error
    # ... until it comes back on that port
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver().server.RequestHandlerClass)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        play_beat(lambda: Delivery.objects.get(subscription=hook).status == "delivered")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
def test_a_delivery_gives_up_after_the_retry_window(operator: Any, fast: Any) -> None:
    fast.EDGEFLEET_NOTIFY_RETRY_HOURS = 0.0
    sub, _ = services.create(operator, name="x", channel="webhook", url="http://127.0.0.1:9/", events=["fleet.offline"])
    event = Event.objects.create(kind="fleet.offline", key="k1", payload={})
    row = Delivery.objects.create(subscription=sub, event=event, next_attempt_at=timezone.now())
    assert delivery.deliver(row.pk) == "failed"
    row.refresh_from_db()
    assert row.status == "failed" and row.next_attempt_at is None and row.attempts == 1


# ------------------------------------------------------------------------------------ the sweep


@pytest.mark.django_db
def test_the_sweep_catches_an_alert_resolved_with_update_and_sends_nothing_twice(
    operator: Any, fast: Any, django_capture_on_commit_callbacks: Any
) -> None:
    services.create(operator, name="m", channel="email", emails=["a@example.com"], events=["alert.resolved"])
    assert sweep.missed_events() == 0  # the first sweep only sets its mark
    version = factories.staged_version("fraud", "v1")
    now = timezone.now()
    alert = Alert.objects.create(kind="drift", version=version, opened_at=now, updated_at=now)
    # the drift job resolves with QuerySet.update(): no signal
    Alert.objects.filter(pk=alert.pk).update(state="resolved", resolved_at=now, resolved_by="system")
    assert not Event.objects.filter(kind="alert.resolved").exists()
    with django_capture_on_commit_callbacks(execute=False):
        assert sweep.missed_events() == 2  # opened (no subscriber, still recorded) and resolved
        assert sweep.missed_events() == 0
    assert Delivery.objects.filter(event__key=f"alert.resolved:{alert.pk}").count() == 1


@pytest.mark.django_db
def test_offline_share_fires_above_the_threshold_once_per_crossing(operator: Any, fast: Any) -> None:
    from datetime import timedelta

    from fleet.models import Device

    sub, _ = services.create(operator, name="o", channel="email", emails=["a@example.com"],
                             events=["fleet.offline"], offline_threshold=0.5)  # fmt: skip
    devices = [factories.device(name=f"d{i}")[0] for i in range(4)]
    long_ago = timezone.now() - timedelta(days=1)
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(last_seen_at=timezone.now())
    Device.objects.filter(pk__in=[d.pk for d in devices[:2]]).update(last_seen_at=long_ago)
    assert sweep.offline_share()[0] == 0.5
    assert sweep.check_offline() == 0  # equal to the threshold is not above it
    Device.objects.filter(pk=devices[2].pk).update(last_seen_at=long_ago)
    assert sweep.check_offline() == 1
    assert sweep.check_offline() == 0  # still above: told once
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(last_seen_at=timezone.now())
    assert sweep.check_offline() == 0
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(last_seen_at=long_ago)
    assert sweep.check_offline() == 1  # a new crossing
    events = Event.objects.filter(kind="fleet.offline").order_by("created_at")
    assert [e.payload["share"] for e in events] == [0.75, 1.0]
    assert Delivery.objects.filter(subscription=sub).count() == 2


# ------------------------------------------------------------------------------- API and pages


@pytest.mark.django_db
@pytest.mark.usefixtures("roles")
def test_subscription_api_roles_validation_and_someone_elses(operator: Any, viewer: Any, django_user_model: Any,
                                                             fast: Any) -> None:  # fmt: skip
    from django.contrib.auth.models import Group

    op = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(operator, 'ci')[1]}"}
    ro = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(viewer, 'ro')[1]}"}
    c = Client()

    def post(path: str, body: dict, auth: dict) -> Any:
        return c.post("/api/v1" + path, body, content_type="application/json", **auth)

    good = {"name": "n", "channel": "webhook", "url": "https://hooks.example.com/x", "events": ["alert.opened"]}
    assert post("/subscriptions", good, ro).status_code == 403
    for bad, field in [
        ({**good, "url": "ftp://x/"}, "url"),
        ({**good, "url": "http://u:p@example.com/"}, "url"),
        ({**good, "events": ["alert.exploded"]}, "events.0"),
        ({**good, "events": []}, "events"),
        ({**good, "channel": "pigeon"}, "channel"),
        ({**good, "channel": "slack", "url": "http://hooks.slack.com/x"}, "url"),
        ({**good, "channel": "email", "emails": ["not-an-address"]}, "emails"),
        ({**good, "offline_threshold": 2}, "offline_threshold"),
        ({**good, "team": "operator-nope"}, "team"),
    ]:
        r = post("/subscriptions", bad, op)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (bad, r.json())
    mine = post("/subscriptions", good, op).json()
    team = post("/subscriptions", {**good, "name": "team", "team": "operator"}, op).json()
    assert team["team"] == "operator" and team["owner"] is None
    # someone else's subscription: not found (not even its existence is told); a team's is shared
    other = django_user_model.objects.create_user("oscar")
    other.groups.add(Group.objects.get(name="operator"))
    theirs = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(other, 'o')[1]}"}
    assert c.get(f"/api/v1/subscriptions/{mine['id']}", **theirs).json()["error"]["code"] == "not_found"
    assert c.get(f"/api/v1/subscriptions/{team['id']}", **theirs).status_code == 200
    assert [s["id"] for s in c.get("/api/v1/subscriptions", **theirs).json()["items"]] == [team["id"]]
    assert c.delete(f"/api/v1/subscriptions/{mine['id']}", **theirs).status_code == 404
    # change, rotate (new secret once), test, delete
    r = c.patch(f"/api/v1/subscriptions/{mine['id']}", {"active": False, "events": ["alert.resolved"]},
                content_type="application/json", **op)  # fmt: skip
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["events"] == ["alert.resolved"]
    new = post(f"/subscriptions/{mine['id']}/rotate-secret", {}, op).json()["secret"]
    assert new.startswith("whsec_") and new != mine["secret"]
    r = post(f"/subscriptions/{mine['id']}/test", {}, op)
    assert r.status_code == 202 and r.json()["kind"] == "test" and r.json()["status"] == "pending"
    kinds = c.get("/api/v1/notify/kinds", **ro).json()
    assert {k["kind"] for k in kinds} >= {"alert.opened", "campaign.rollback", "validation.finished", "fleet.offline"}
    assert c.delete(f"/api/v1/subscriptions/{mine['id']}", **op).status_code == 204
    assert c.get(f"/api/v1/subscriptions/{mine['id']}", **op).status_code == 404


@pytest.mark.django_db
@pytest.mark.usefixtures("roles")
def test_subscription_pages_show_the_secret_once_and_send_a_test(
    operator_client: Client, viewer: Any, fast: Any, receiver: Any, django_capture_on_commit_callbacks: Any
) -> None:
    hook = receiver()
    page = operator_client.get("/notifications/")
    assert page.status_code == 200 and "New subscription" in page.content.decode()
    r = operator_client.post(
        "/notifications/",
        {"name": "ci hook", "channel": "webhook", "url": hook.url, "events": ["validation.finished"]},
    )
    sub = Subscription.objects.get()
    assert r.status_code == 302 and r["Location"] == f"/notifications/{sub.pk}/"
    first = operator_client.get(r["Location"]).content.decode()
    secret = reveal(sub.secret_encrypted)
    assert secret in first and 'id="new-secret"' in first
    again = operator_client.get(r["Location"]).content.decode()
    assert secret not in again and hook.url not in again  # never shown again, nor the URL's path
    with django_capture_on_commit_callbacks(execute=False):
        r = operator_client.post(f"/notifications/{sub.pk}/test")
    assert r.status_code == 302
    row = Delivery.objects.get(subscription=sub)
    assert delivery.deliver(row.pk) == "delivered"
    log = operator_client.get(f"/notifications/{sub.pk}/").content.decode()
    assert '<b class="status-code">200</b>' in log and str(row.pk) in log
    assert signing.verify(hook.requests[0]["headers"]["X-EdgeFleet-Signature"], secret, hook.requests[0]["body"])
    bad = operator_client.post("/notifications/", {"name": "x", "channel": "webhook", "url": "file:///etc/passwd",
                                                   "events": ["alert.opened"]})  # fmt: skip
    assert bad.status_code == 400 and "only http and https" in bad.content.decode()
    viewer_client = Client()
    viewer_client.force_login(viewer)
    assert viewer_client.get("/notifications/").status_code == 200
    assert viewer_client.post(f"/notifications/{sub.pk}/test").status_code == 403
    assert viewer_client.get(f"/notifications/{sub.pk}/").status_code == 404  # not theirs


@pytest.mark.django_db
def test_validation_finished_and_decisions_become_events_after_commit(
    operator: Any, fast: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from ota.models import ModelVersion
    from rollout import lifecycle

    services.create(operator, name="all", channel="email", emails=["a@example.com"],
                    events=["validation.finished", "campaign.pause"])  # fmt: skip
    v1 = factories.staged_version("fraud", "v1", seed=1)
    v2 = factories.staged_version("fraud", "v2", seed=2)
    assert not Event.objects.exists()  # made staged directly, not validated: nothing to tell
    with django_capture_on_commit_callbacks(execute=True):
        v2.status, v2.validated_at, v2.error = ModelVersion.Status.REJECTED, timezone.now(), "not ONNX"
        v2.save(update_fields=["status", "validated_at", "error"])
    e = Event.objects.get(kind="validation.finished")
    assert e.payload["status"] == "rejected" and e.payload["error"] == "not ONNX" and e.deliveries.count() == 1
    factories.release(v1)
    v3 = factories.staged_version("fraud", "v3", seed=3)
    c = lifecycle.create_campaign(name="c", version=v3, cohort=None, waves=[{"percent": 100}], gates={})
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.start(c.pk)
        lifecycle.pause(c.pk, reason="gate failed: error_rate")
    kinds = sorted(Event.objects.values_list("kind", flat=True))
    assert kinds == ["campaign.pause", "validation.finished"]  # start is not a kind one subscribes to
