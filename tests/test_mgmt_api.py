"""The management API under /api/v1: every route, with roles, pagination and bad input.

Real PostgreSQL; the Django test client speaks HTTP semantics (headers, status codes, JSON bodies)
to the same URL conf a live server uses. Tokens are real ``ApiToken`` rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, AuditEntry
from fleet.models import Cohort, Device
from rollout.models import Campaign, Release
from telemetry.models import Alert
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roles")]

WAVES = [{"percent": 10, "min_soak_minutes": 5, "min_devices": 2}, {"percent": 100}]


class Api:
    """A client with a bearer token: ``api.get("/campaigns")`` -> (status, json)."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        url = "/api/v1" + path
        fn = getattr(self.client, method)
        if method in ("get", "delete"):
            r = fn(url, params, **self.headers)
        else:
            r = fn(url, body if body is not None else {}, content_type="application/json", **self.headers)
        return r.status_code, (r.json() if r.content and r["Content-Type"].startswith("application/json") else None)

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return self.call("get", path, **params)

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return self.call("post", path, body)


def user_with(role: str | None, name: str, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123", email=f"{name}@example.com")
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def op(operator: Any) -> Api:
    return Api(ApiToken.issue(operator, "ci")[1])


@pytest.fixture
def view(viewer: Any) -> Api:
    return Api(ApiToken.issue(viewer, "grafana")[1])


@pytest.fixture
def admin_api(django_user_model: Any) -> Api:
    return Api(ApiToken.issue(user_with("admin", "ada", django_user_model), "admin")[1])


def error(resp: tuple[int, Any], status: int, code: str, field: str | None = "any") -> dict:
    got, body = resp
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] == code, body
    if field != "any":
        assert body["error"]["field"] == field, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def fleet(db: None) -> dict[str, Any]:
    v1 = factories.staged_version("fraud", "v1", seed=1)
    v2 = factories.staged_version("fraud", "v2", seed=2)
    factories.release(v1)
    devices = [
        factories.device(labels={"region": "eu" if i % 2 else "us", "hw": "rpi4"}, name=f"cam-{i:02d}")[0]
        for i in range(6)
    ]
    return {"v1": v1, "v2": v2, "devices": devices}


# ------------------------------------------------------------------------------------------- auth


def test_tokens_roles_and_revocation(fleet: dict, operator: Any, viewer: Any, django_user_model: Any) -> None:
    row, plain = ApiToken.issue(operator, "ci")
    assert Api(plain).get("/whoami") == (200, {"username": "olivia", "role": "operator", "via": "api:ci"})
    error(Api(None).get("/campaigns"), 401, "unauthorized")
    error(Api("efa_not-a-token").get("/campaigns"), 401, "unauthorized")
    row.revoked_at = timezone.now()
    row.save()
    error(Api(plain).get("/campaigns"), 401, "unauthorized")  # a revoked token is no token

    # a viewer's token reads but does not act; the 403 names the role needed
    view = Api(ApiToken.issue(viewer, "ro")[1])
    assert view.get("/campaigns")[0] == 200
    err = error(view.post(f"/devices/{fleet['devices'][0].pk}/revoke"), 403, "forbidden")
    assert "operator" in err["message"]
    # an operator's token capped at viewer is read-only too (and cannot upload)
    capped = Api(ApiToken.issue(operator, "dash", role="viewer")[1])
    assert capped.get("/whoami")[1]["role"] == "viewer"
    error(capped.post("/cohorts", {"name": "x", "selector": "a=b"}), 403, "forbidden")
    assert capped.client.post("/api/v1/models/fraud/versions", {}, **capped.headers).status_code == 401
    # a user without any role, and a deactivated user's token
    nobody = user_with(None, "nobody", django_user_model)
    error(Api(ApiToken.issue(nobody, "t")[1]).get("/campaigns"), 403, "forbidden")
    gone = user_with("operator", "gone", django_user_model)
    gone_token = ApiToken.issue(gone, "t")[1]
    gone.is_active = False
    gone.save()
    error(Api(gone_token).get("/campaigns"), 401, "unauthorized")


def test_a_browser_session_needs_csrf_on_writes(fleet: dict, operator: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.get("/api/v1/status").status_code == 200
    r = client.post("/api/v1/cohorts", {"name": "eu", "selector": "region=eu"}, content_type="application/json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"


def test_audit_log_is_for_admins_and_pages_with_a_cursor(fleet: dict, op: Api, view: Api, admin_api: Api) -> None:
    for i in range(5):
        AuditEntry.objects.create(actor_label="system", action="test.thing", target=f"t{i}")
    error(op.get("/audit"), 403, "forbidden")
    status, first = admin_api.get("/audit", action="test.thing", limit=2)
    assert status == 200 and [e["target"] for e in first["items"]] == ["t4", "t3"]
    _, second = admin_api.get("/audit", action="test.thing", limit=2, cursor=first["next_cursor"])
    _, third = admin_api.get("/audit", action="test.thing", limit=2, cursor=second["next_cursor"])
    assert [e["target"] for e in second["items"] + third["items"]] == ["t2", "t1", "t0"]
    assert third["next_cursor"] is None
    error(admin_api.get("/audit", cursor=first["next_cursor"][:-3] + "abc"), 400, "invalid_cursor", "cursor")
    error(admin_api.get("/audit", limit=0), 400, "invalid", "limit")
    error(admin_api.get("/audit", limit=201), 400, "invalid", "limit")
    # a cursor of one list is refused by another (its key would not fit)
    _, devs = view.get("/devices", limit=1)
    error(admin_api.get("/audit", cursor=devs["next_cursor"]), 400, "invalid_cursor")


# -------------------------------------------------------------------------------------- campaigns


def test_campaign_lifecycle_over_the_api(fleet: dict, op: Api, view: Api) -> None:
    body = {"name": "v2 to eu", "model": "fraud", "version": "v2", "selector": "region=eu", "waves": WAVES}
    error(view.post("/campaigns", body), 403, "forbidden")
    status, c = op.post("/campaigns", body)
    assert status == 201, c
    assert c["state"] == "draft" and c["previous_version"] == "v1" and c["wave"] is None
    assert c["selector"] == "region=eu" and Cohort.objects.get(name=c["cohort"]).selector == "region=eu"
    assert set(c["gates"]) == {"install_failure_rate", "error_rate", "latency_p50", "latency_p95", "drift"}
    assert c["allowed_actions"] == ["start", "abort"]
    cid = c["id"]

    status, dry = op.get(f"/campaigns/{cid}/dry-run")
    assert status == 200 and dry["total"] == 3 and dry["waves"][-1]["devices"] == dry["compatible"]

    error(op.post(f"/campaigns/{cid}/pause", {}), 409, "invalid_state")  # a draft cannot be paused
    assert op.post(f"/campaigns/{cid}/start", {})[1]["state"] == "running"
    error(op.post(f"/campaigns/{cid}/start", {}), 409, "invalid_state")
    assert op.post(f"/campaigns/{cid}/pause", {"reason": "night"})[1]["state"] == "paused"
    assert op.post(f"/campaigns/{cid}/resume", {})[1]["state"] == "running"
    error(op.post(f"/campaigns/{cid}/advance", {}), 400, "reason_required", "reason")
    status, after = op.post(f"/campaigns/{cid}/advance", {"reason": "looks fine"})
    assert status == 200 and after["wave"] == 2 and after["last_decision"]["kind"] == "advance"
    assert after["last_decision"]["actor"] == "olivia"
    error(op.post(f"/campaigns/{cid}/rollback", {"reason": ""}), 400, "reason_required", "reason")
    status, rolled = op.post(f"/campaigns/{cid}/rollback", {"reason": "bad numbers"})
    assert status == 200 and rolled["state"] == "rolled_back" and rolled["allowed_actions"] == []
    error(op.post(f"/campaigns/{cid}/abort", {}), 409, "invalid_state")

    status, detail = view.get(f"/campaigns/{cid}")
    progress = detail["progress"]
    assert status == 200 and progress["targeted"] + sum(progress["excluded"].values()) == 3
    assert detail["last_decision"]["kind"] == "rollback"
    _, timeline = view.get(f"/campaigns/{cid}/decisions")
    kinds = [d["kind"] for d in timeline["items"]]
    assert kinds == ["create", "start", "pause", "resume", "advance", "rollback"]
    _, tail = view.get(f"/campaigns/{cid}/decisions", after=timeline["items"][3]["id"])
    assert [d["kind"] for d in tail["items"]] == ["advance", "rollback"]
    assert AuditEntry.objects.filter(action="campaign.rollback", actor_label="olivia").exists()

    # started in one call, then aborted
    v3 = factories.staged_version("fraud", "v3", seed=3)
    status, c2 = op.post("/campaigns", {**body, "name": "v3", "version": v3.label, "start": True})
    assert status == 201 and c2["state"] == "running" and c2["wave"] == 1
    assert op.post(f"/campaigns/{c2['id']}/abort", {"reason": "changed my mind"})[1]["state"] == "aborted"


def test_campaign_status_shows_gate_verdicts(fleet: dict, op: Api, view: Api) -> None:
    status, c = op.post(
        "/campaigns", {"name": "g", "model": "fraud", "version": "v2", "waves": WAVES, "start": True,
                       "gates": {"error_rate": 0.02}}
    )  # fmt: skip
    assert status == 201
    report = {
        "wave": 1,
        "verdict": "fail",
        "reporting_devices": 25,
        "gates": [{"name": "error_rate", "threshold": 0.02, "observed": 0.3, "verdict": "fail", "canary": 0.31,
                   "control": 0.01, "n_canary": 25, "n_control": 30, "p_value": 1e-9, "detail": "z=8"}],
    }  # fmt: skip
    Campaign.objects.filter(pk=c["id"]).update(gate_report=report, last_evaluated_at=timezone.now())
    _, detail = view.get(f"/campaigns/{c['id']}")
    assert detail["verdict"] == "fail" and detail["gate_numbers"]["reporting_devices"] == 25
    assert detail["gates_report"] == [report["gates"][0]]
    assert detail["progress"]["targeted"] >= 0 and detail["last_evaluated_at"]
    # From fewer than k (20) devices on a side only the verdict and the counts are shown (docs/rollout.md).
    report["gates"][0]["n_canary"] = 7
    Campaign.objects.filter(pk=c["id"]).update(gate_report=report)
    _, detail = view.get(f"/campaigns/{c['id']}")
    row = detail["gates_report"][0]
    assert (row["verdict"], row["n_canary"], row["n_control"]) == ("fail", 7, 30)
    assert [row[k] for k in ("observed", "canary", "control", "p_value")] == [None] * 4


def test_campaign_bad_input(fleet: dict, op: Api, view: Api) -> None:
    base = {"name": "x", "model": "fraud", "version": "v2", "waves": WAVES}
    error(view.get("/campaigns/999999"), 404, "not_found")
    error(op.post("/campaigns/999999/pause", {}), 404, "not_found")
    error(view.get("/campaigns/0"), 400, "invalid")
    error(op.post("/campaigns", {**base, "waves": []}), 400, "invalid", "waves")
    error(op.post("/campaigns", {**base, "waves": [{"percent": 50}]}), 400, "invalid", "waves")  # must end at 100
    error(op.post("/campaigns", {**base, "waves": [{"percent": 50}, {"percent": 20}, {"percent": 100}]}), 400,
          "invalid", "waves")  # fmt: skip
    error(op.post("/campaigns", {**base, "waves": [{"percent": 150}]}), 400, "invalid", "waves.0.percent")
    error(op.post("/campaigns", {**base, "waves": [{"percent": "lots"}]}), 400, "invalid", "waves.0.percent")
    error(op.post("/campaigns", {**base, "waves": [{"percent": 100, "speed": 2}]}), 400, "unknown_field")
    error(op.post("/campaigns", {**base, "waves": "5,25,100"}), 400, "invalid", "waves")
    error(op.post("/campaigns", {**base, "gates": {"vibes": 1}}), 400, "invalid", "gates")
    error(op.post("/campaigns", {**base, "selector": "region=="}), 400, "invalid_selector", "selector")
    error(op.post("/campaigns", {**base, "cohort": "nope"}), 404, "not_found", "cohort")
    error(op.post("/campaigns", {**base, "version": "v9"}), 404, "not_found", "version")
    error(op.post("/campaigns", {**base, "previous_version": "v2"}), 400, "invalid", "previous_version")
    rejected = factories.staged_version("fraud", "bad", seed=9)
    rejected.status = "rejected"
    rejected.save()
    error(op.post("/campaigns", {**base, "version": "bad"}), 409, "version_not_staged", "version")
    r = op.client.post("/api/v1/campaigns", "{not json", content_type="application/json", **op.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    # overlap: one active campaign per model and device
    assert op.post("/campaigns", {**base, "start": True})[0] == 201
    error(op.post("/campaigns", {**base, "name": "again"}), 409, "conflict")
    assert Campaign.objects.count() == 1


def test_dry_run_of_a_plan(fleet: dict, op: Api, view: Api) -> None:
    plan = {"model": "fraud", "version": "v2", "selector": "region=us", "waves": WAVES}
    error(view.post("/campaigns/dry-run", plan), 403, "forbidden")
    status, dry = op.post("/campaigns/dry-run", plan)
    assert status == 200 and dry["total"] == 3 and dry["campaign_id"] is None
    error(op.post("/campaigns/dry-run", {**plan, "waves": [{"percent": 0}]}), 400, "invalid", "waves.0.percent")


def test_campaign_list_filters_and_pages(fleet: dict, op: Api, view: Api) -> None:
    for i in range(3):
        v = factories.staged_version("other", f"o{i}", seed=10 + i)
        Campaign.objects.create(name=f"c{i}", model=v.model, version=v, waves=WAVES, state="aborted")
    assert op.post("/campaigns", {"name": "live", "model": "fraud", "version": "v2", "waves": WAVES})[0] == 201
    _, page1 = view.get("/campaigns", limit=2)
    _, page2 = view.get("/campaigns", limit=2, cursor=page1["next_cursor"])
    names = [x["name"] for x in page1["items"] + page2["items"]]
    assert names == ["live", "c2", "c1", "c0"] and page2["next_cursor"] is None
    assert [x["name"] for x in view.get("/campaigns", state="draft")[1]["items"]] == ["live"]
    assert [x["name"] for x in view.get("/campaigns", model="other", state="aborted")[1]["items"]] == ["c2", "c1", "c0"]
    error(view.get("/campaigns", state="exploded"), 400, "invalid", "state")


# ---------------------------------------------------------------------------------------- releases


def test_releases(fleet: dict, op: Api, view: Api) -> None:
    Cohort.objects.create(name="eu", selector="region=eu")
    error(view.post("/releases", {"model": "fraud", "version": "v2"}), 403, "forbidden")
    status, rel = op.post("/releases", {"model": "fraud", "version": "v2", "cohort": "eu", "note": "hotfix"})
    assert status == 201 and rel["cohort"] == "eu" and rel["created_by"] == "olivia"
    assert Release.objects.filter(version=fleet["v2"], cohort__name="eu").exists()
    _, page = view.get("/releases", model="fraud", limit=1)
    assert page["items"][0]["version"] == "v2" and page["next_cursor"]
    _, rest = view.get("/releases", model="fraud", limit=1, cursor=page["next_cursor"])
    assert rest["items"][0]["version"] == "v1" and rest["next_cursor"] is None
    assert [r["version"] for r in view.get("/releases", cohort="eu")[1]["items"]] == ["v2"]
    error(op.post("/releases", {"model": "fraud", "version": "nope"}), 404, "not_found", "version")
    error(op.post("/releases", {"model": "fraud", "version": "v2", "cohort": "mars"}), 404, "not_found", "cohort")
    error(op.post("/releases", {"model": "fraud", "version": "v2", "extra": 1}), 400, "unknown_field")
    assert AuditEntry.objects.filter(action="release.create").count() == 1


# ----------------------------------------------------------------------------------------- devices


def test_device_search_by_name_id_prefix_selector_status(fleet: dict, view: Api) -> None:
    devices = fleet["devices"]
    _, byname = view.get("/devices", q="cam-03")
    assert [d["name"] for d in byname["items"]] == ["cam-03"]
    target = devices[4]
    _, byid = view.get("/devices", q=str(target.pk)[:8])
    assert target.pk in {uuid.UUID(d["id"]) for d in byid["items"]}
    _, eu = view.get("/devices", labels="region=eu")
    assert {d["name"] for d in eu["items"]} == {"cam-01", "cam-03", "cam-05"}
    Device.objects.filter(pk=devices[0].pk).update(last_seen_at=timezone.now())
    _, online = view.get("/devices", status="online")
    assert [d["name"] for d in online["items"]] == ["cam-00"] and online["items"][0]["status"] == "online"
    assert view.get("/devices", status="never")[1]["items"][0]["status"] == "never"
    Device.objects.filter(pk=devices[1].pk).update(installed={"fraud": "v1"})
    assert [d["name"] for d in view.get("/devices", model="fraud", version="v1")[1]["items"]] == ["cam-01"]
    error(view.get("/devices", version="v1"), 400, "invalid", "version")
    error(view.get("/devices", labels="region in (eu"), 400, "invalid_selector", "labels")
    error(view.get("/devices", q="a\x00b"), 400, "invalid", "q")
    # pages: 6 devices, 4 + 2, newest enrolled first, no overlap
    _, p1 = view.get("/devices", limit=4)
    _, p2 = view.get("/devices", limit=4, cursor=p1["next_cursor"])
    names = [d["name"] for d in p1["items"] + p2["items"]]
    assert names == [f"cam-{i:02d}" for i in range(5, -1, -1)] and p2["next_cursor"] is None
    assert view.get(f"/devices/{target.pk}")[1]["name"] == "cam-04"
    error(view.get("/devices/not-a-uuid"), 404, "not_found")
    error(view.get(f"/devices/{uuid.uuid4()}"), 404, "not_found")
    assert view.get("/devices/count", labels="hw=rpi4") == (200, {"count": 6, "selector": "hw=rpi4"})


def test_bulk_relabel_and_revoke(fleet: dict, op: Api, view: Api, django_capture_on_commit_callbacks: Any) -> None:
    from rollout.manifest import current_generation

    body = {"selector": "region=eu", "set": {"ring": "canary"}, "remove": ["hw"]}
    error(view.post("/devices/relabel", body), 403, "forbidden")
    status, dry = op.post("/devices/relabel", {**body, "dry_run": True})
    assert status == 200 and dry == {**dry, "matched": 3, "changed": 3, "dry_run": True}
    assert not Device.objects.filter(labels__ring="canary").exists()
    gen = current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        status, done = op.post("/devices/relabel", body)
    assert status == 200 and done["changed"] == 3 and current_generation() != gen
    eu = Device.objects.filter(labels__region="eu")
    assert all(d.labels == {"region": "eu", "ring": "canary"} for d in eu)
    assert op.post("/devices/relabel", body)[1]["changed"] == 0  # already so: nothing changes
    ids = [str(d.pk) for d in fleet["devices"][:2]]
    assert op.post("/devices/relabel", {"ids": ids, "set": {"site": "lab"}})[1]["changed"] == 2
    error(op.post("/devices/relabel", {"set": {"a": "b"}}), 400, "invalid", "selector")
    error(op.post("/devices/relabel", {"selector": "", "ids": ids, "set": {"a": "b"}}), 400, "invalid", "selector")
    error(op.post("/devices/relabel", {"selector": ""}), 400, "invalid", "set")
    error(op.post("/devices/relabel", {"selector": "", "set": {"bad key": "x"}}), 400, "invalid")
    error(op.post("/devices/relabel", {"selector": "", "set": {"a": "b"}, "max_devices": 5}), 400,
          "too_many_devices", "max_devices")  # fmt: skip
    assert AuditEntry.objects.filter(action="device.labels_bulk").count() == 3

    target = fleet["devices"][0]
    status, revoked = op.post(f"/devices/{target.pk}/revoke")
    assert status == 200 and revoked["revoked"] is True
    error(op.post(f"/devices/{target.pk}/revoke"), 409, "already_revoked")
    assert [d["name"] for d in view.get("/devices", revoked=True)[1]["items"]] == ["cam-00"]


# ----------------------------------------------------------------------------------------- cohorts


def test_cohorts(fleet: dict, op: Api, view: Api) -> None:
    error(view.post("/cohorts", {"name": "eu", "selector": "region=eu"}), 403, "forbidden")
    status, eu = op.post("/cohorts", {"name": "eu", "selector": "region = eu"})
    assert status == 201 and eu == {**eu, "selector": "region=eu", "devices": 3}
    status, again = op.post("/cohorts", {"name": "eu", "selector": "region=eu, hw=rpi4", "description": "d"})
    assert status == 200 and again["description"] == "d"
    op.post("/cohorts", {"name": "us", "selector": "region=us"})
    _, page = view.get("/cohorts", limit=1, counts=True)
    assert page["items"][0]["name"] == "eu" and page["items"][0]["devices"] == 3
    _, page2 = view.get("/cohorts", limit=1, cursor=page["next_cursor"])
    assert page2["items"][0]["name"] == "us" and page2["items"][0]["devices"] is None
    assert view.get("/cohorts/us")[1]["devices"] == 3
    error(view.get("/cohorts/mars"), 404, "not_found")
    error(op.post("/cohorts", {"name": "bad name", "selector": "a=b"}), 400, "invalid", "name")
    error(op.post("/cohorts", {"name": "x", "selector": "a in"}), 400, "invalid_selector", "selector")


# ------------------------------------------------------------------------------------------ alerts


def test_alerts_list_filter_and_resolve(fleet: dict, op: Api, view: Api) -> None:
    now = timezone.now()
    drift = Alert.objects.create(kind="drift", version=fleet["v2"], feature="f0", opened_at=now, updated_at=now,
                                 message="PSI 0.4")  # fmt: skip
    reg = Alert.objects.create(kind="regression", version=fleet["v1"], opened_at=now, updated_at=now)
    _, all_open = view.get("/alerts", state="open")
    assert [a["id"] for a in all_open["items"]] == [reg.pk, drift.pk]
    assert [a["id"] for a in view.get("/alerts", kind="drift", model="fraud", version="v2")[1]["items"]] == [drift.pk]
    _, p1 = view.get("/alerts", limit=1)
    assert view.get("/alerts", limit=1, cursor=p1["next_cursor"])[1]["items"][0]["id"] == drift.pk
    error(view.post(f"/alerts/{drift.pk}/resolve"), 403, "forbidden")
    status, done = op.post(f"/alerts/{drift.pk}/resolve")
    assert status == 200 and done["state"] == "resolved" and done["resolved_by"] == "api:ci"
    error(op.post(f"/alerts/{drift.pk}/resolve"), 409, "invalid_state")
    error(op.post("/alerts/424242/resolve"), 404, "not_found")
    assert view.get(f"/alerts/{drift.pk}")[1]["state"] == "resolved"
    assert [a["id"] for a in view.get("/alerts", state="resolved")[1]["items"]] == [drift.pk]
    error(view.get("/alerts", state="maybe"), 400, "invalid", "state")


# ---------------------------------------------------------------------------------- status, models


def test_status_models_and_versions(fleet: dict, view: Api) -> None:
    Device.objects.filter(pk=fleet["devices"][0].pk).update(last_seen_at=timezone.now(), installed={"fraud": "v1"})
    status, s = view.get("/status")
    assert status == 200 and s["devices"]["total"] == 6 and s["devices"]["online"] == 1
    assert s["versions_in_use"] == {"fraud": [["v1", 1]]} and s["open_alerts"] == 0
    _, models = view.get("/models")
    assert models["items"] == [{"name": "fraud", "description": "", "versions": 2, "latest": "v2",
                                "latest_status": "staged"}]  # fmt: skip
    _, versions = view.get("/models/fraud/versions", limit=1)
    assert versions["items"][0]["label"] == "v2" and versions["next_cursor"]
    assert view.get("/models/fraud/versions", status="rejected")[1]["items"] == []
    error(view.get("/models/nope/versions"), 404, "not_found")


def test_the_tokens_page_makes_read_only_tokens(operator_client: Client) -> None:
    r = operator_client.post("/accounts/tokens/", {"name": "grafana", "role": "viewer"})
    token = ApiToken.objects.get()
    assert r.status_code == 200 and token.role == "viewer"
    plain = r.content.decode().split('id="new-token">')[1].split("<")[0]
    api = Api(plain)
    assert api.get("/whoami")[1]["role"] == "viewer"
    error(api.post("/cohorts", {"name": "eu", "selector": "region=eu"}), 403, "forbidden")
