"""Aliases on versions: one version per alias and model, audited moves, and ``@alias`` wherever a version is named.

Real PostgreSQL; API calls with real tokens (``tests.test_mgmt_api.Api``), pages through the Django
test client.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from accounts.models import ApiToken, AuditEntry
from ota import aliases, services
from ota.models import Alias
from rollout.models import Campaign, Release
from tests import factories
from tests.test_mgmt_api import WAVES, Api, error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roles")]


@pytest.fixture
def op(operator: Any) -> Api:
    return Api(ApiToken.issue(operator, "ci")[1])


@pytest.fixture
def view(viewer: Any) -> Api:
    return Api(ApiToken.issue(viewer, "grafana")[1])


@pytest.fixture
def versions(db: None) -> dict[str, Any]:
    v1 = factories.staged_version("fraud", "v1", seed=1)
    v2 = factories.staged_version("fraud", "v2", seed=2)
    other = factories.staged_version("spam", "s1", seed=3)
    factories.release(v1)
    for i in range(3):
        factories.device(labels={"region": "eu"}, name=f"cam-{i}")
    return {"v1": v1, "v2": v2, "other": other}


def put(api: Api, path: str, body: Any) -> tuple[int, Any]:
    return api.call("put", path, body)


# ------------------------------------------------------------------------------------------ the API


def test_set_move_and_remove_an_alias_over_the_api_is_audited(versions: dict, op: Api, view: Api) -> None:
    status, body = put(op, "/models/fraud/aliases/production", {"version": "v1"})
    assert status == 200 and body["alias"] == "production" and body["version"] == "v1"
    assert body["updated_by"] == "olivia"
    # moving it: still one row, pointing at v2; the audit says from where to where and who
    status, body = put(op, "/models/fraud/aliases/production", {"version": "v2"})
    assert status == 200 and body["version"] == "v2"
    assert Alias.objects.filter(model__name="fraud", name="production").count() == 1
    moves = list(AuditEntry.objects.filter(action="model_alias.set").order_by("id"))
    assert [(e.details["from"], e.details["to"]) for e in moves] == [(None, "v1"), ("v1", "v2")]
    assert moves[-1].actor_label == "api:ci" and moves[-1].target == "fraud@production"
    # setting it where it already points changes nothing and is not audited again
    assert put(op, "/models/fraud/aliases/production", {"version": "v2"})[0] == 200
    assert AuditEntry.objects.filter(action="model_alias.set").count() == 2
    # an alias may point at the version another alias names
    assert put(op, "/models/fraud/aliases/staging", {"version": "@production"})[1]["version"] == "v2"
    # viewers read the list; it is sorted by name
    status, items = view.get("/models/fraud/aliases")
    assert status == 200 and [(a["alias"], a["version"]) for a in items] == [("production", "v2"), ("staging", "v2")]
    # the version JSON lists its aliases
    assert view.get("/resolve", ref="fraud@staging")[1]["aliases"] == ["production", "staging"]
    # removing
    assert op.call("delete", "/models/fraud/aliases/staging")[0] == 204
    assert not Alias.objects.filter(name="staging").exists()
    gone = AuditEntry.objects.get(action="model_alias.remove")
    assert gone.details == {"model": "fraud", "alias": "staging", "from": "v2", "to": None}
    error(op.call("delete", "/models/fraud/aliases/staging"), 404, "not_found", "alias")


def test_viewer_tokens_cannot_change_aliases(versions: dict, view: Api, operator: Any) -> None:
    error(put(view, "/models/fraud/aliases/production", {"version": "v1"}), 403, "forbidden")
    aliases.set_alias(versions["v1"], "production", user=operator)
    error(view.call("delete", "/models/fraud/aliases/production"), 403, "forbidden")
    capped = Api(ApiToken.issue(operator, "dash", role="viewer")[1])
    error(put(capped, "/models/fraud/aliases/production", {"version": "v2"}), 403, "forbidden")
    error(Api(None).get("/models/fraud/aliases"), 401, "unauthorized")
    assert Alias.objects.get(name="production").version == versions["v1"]


def test_bad_alias_input_is_refused_with_the_field_named(versions: dict, op: Api) -> None:
    for bad in ("Production", "9lives", "a" * 33, "prod_1", "-x"):
        error(put(op, f"/models/fraud/aliases/{bad}", {"version": "v1"}), 400, "bad_alias", "alias")
    error(put(op, "/models/fraud/aliases/production", {"version": "nope"}), 404, "not_found", "version")
    error(put(op, "/models/fraud/aliases/production", {"version": "v1", "x": 1}), 400, "unknown_field")
    assert put(op, "/models/fraud/aliases/production", {"version": "<script>"})[0] == 400
    assert put(op, "/models/fraud/aliases/production", {})[0] == 400
    error(put(op, "/models/nosuch/aliases/production", {"version": "v1"}), 404, "not_found")
    # someone else's model: a version of 'spam' cannot carry an alias of 'fraud'
    error(put(op, "/models/fraud/aliases/production", {"version": "s1"}), 404, "not_found", "version")
    assert not Alias.objects.exists()


def test_only_staged_versions_carry_an_alias_and_archiving_takes_it_off(versions: dict, op: Api) -> None:
    rejected = factories.staged_version("fraud", "v3", seed=4)
    rejected.status = "rejected"
    rejected.save()
    error(put(op, "/models/fraud/aliases/candidate", {"version": "v3"}), 409, "version_not_staged", "version")
    put(op, "/models/fraud/aliases/candidate", {"version": "v2"})
    services.archive_version(versions["v2"])
    assert not Alias.objects.filter(name="candidate").exists()
    assert AuditEntry.objects.filter(action="model_alias.remove", details__from="v2").exists()


def test_one_version_per_alias_and_model_is_a_database_constraint(versions: dict) -> None:
    Alias.objects.create(model=versions["v1"].model, name="production", version=versions["v1"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Alias.objects.create(model=versions["v1"].model, name="production", version=versions["v2"])
    with pytest.raises(IntegrityError), transaction.atomic():
        Alias.objects.create(model=versions["v1"].model, name="Bad Name", version=versions["v2"])
    # the same alias name on another model is another alias
    Alias.objects.create(model=versions["other"].model, name="production", version=versions["other"])


def test_resolving_references(versions: dict, view: Api, operator: Any) -> None:
    aliases.set_alias(versions["v2"], "production", user=operator)
    assert aliases.resolve("fraud", "@production") == versions["v2"]
    assert aliases.resolve("fraud", "production") == versions["v2"]  # no label 'production': the alias
    assert aliases.resolve("fraud", "v1") == versions["v1"]
    assert aliases.resolve("spam", "@production") is None
    assert aliases.resolve("fraud", "@nope") is None and aliases.resolve("fraud", "") is None
    # a label wins over an alias of the same name; '@' asks for the alias
    factories.staged_version("fraud", "production", seed=9)
    assert aliases.resolve("fraud", "production").label == "production"
    assert aliases.resolve("fraud", "@production") == versions["v2"]
    # the API: MODEL@alias and MODEL:label, viewer tokens may resolve
    status, body = view.get("/resolve", ref="fraud@production")
    assert status == 200 and body["label"] == "v2" and body["model"] == "fraud"
    assert view.get("/resolve", ref="fraud:v1")[1]["label"] == "v1"
    error(view.get("/resolve", ref="fraud@staging"), 404, "not_found", "ref")
    error(view.get("/resolve", ref="spam@production"), 404, "not_found")
    assert view.get("/resolve", ref="fraud")[0] == 400
    assert view.get("/resolve", ref="fraud@<x>")[0] == 400


# ------------------------------------------------------------------------------- releases, campaigns


def test_releases_and_campaigns_take_an_alias_over_the_api(versions: dict, op: Api, operator: Any) -> None:
    aliases.set_alias(versions["v2"], "production", user=operator)
    status, rel = op.post("/releases", {"model": "fraud", "version": "@production"})
    assert status == 201 and rel["version"] == "v2"
    entry = AuditEntry.objects.filter(action="release.create").latest("id")
    assert entry.details["version"] == "v2" and entry.details["via"] == "@production"
    error(op.post("/releases", {"model": "fraud", "version": "@staging"}), 404, "not_found", "version")
    error(op.post("/releases", {"model": "spam", "version": "@production"}), 404, "not_found", "version")
    assert op.post("/releases", {"model": "fraud", "version": "@@x"})[0] == 400

    Release.objects.filter(version=versions["v2"]).delete()
    aliases.set_alias(versions["v1"], "stable", user=operator)
    status, dry = op.post("/campaigns/dry-run", {"model": "fraud", "version": "production", "waves": WAVES})
    assert status == 200 and dry["total"] == 3
    body = {"model": "fraud", "version": "@production", "previous_version": "@stable", "waves": WAVES, "name": "c"}
    status, c = op.post("/campaigns", body)
    assert status == 201 and c["version"] == "v2" and c["previous_version"] == "v1"
    # the campaign keeps the version the alias named when it was made: moving the alias later changes nothing
    aliases.set_alias(versions["v1"], "production", user=operator)
    assert Campaign.objects.get(pk=c["id"]).version == versions["v2"]


# ------------------------------------------------------------------------------------------- pages


def test_operator_sets_and_removes_aliases_on_the_version_page(versions: dict, operator_client: Client) -> None:
    url = "/models/fraud/versions/v1/"
    page = operator_client.get(url).content.decode()
    assert 'id="alias-form"' in page and "No alias points here." in page
    r = operator_client.post(url + "alias", {"alias": "production"})
    assert r.status_code == 302 and r["Location"] == url
    page = operator_client.get(url).content.decode()
    assert 'data-alias="production"' in page and "olivia" in page
    # bad name: a message, nothing stored
    operator_client.post(url + "alias", {"alias": "<b>x</b>"})
    assert Alias.objects.count() == 1
    # the model page lists it next to the version
    assert "@production" in operator_client.get("/models/fraud/").content.decode()
    r = operator_client.post("/models/fraud/aliases/production/remove", {"back": "v1"})
    assert r.status_code == 302 and r["Location"] == url and not Alias.objects.exists()
    assert AuditEntry.objects.filter(action__startswith="model_alias.").count() == 2
    assert operator_client.get("/models/fraud/aliases/production/remove").status_code == 405


def test_viewers_see_aliases_but_cannot_change_them(versions: dict, viewer_client: Client, operator: Any) -> None:
    aliases.set_alias(versions["v1"], "production", user=operator)
    page = viewer_client.get("/models/fraud/versions/v1/").content.decode()
    assert "@production" in page and 'id="alias-form"' not in page and "Remove @production" not in page
    assert viewer_client.post("/models/fraud/versions/v2/alias", {"alias": "production"}).status_code == 403
    assert viewer_client.post("/models/fraud/aliases/production/remove").status_code == 403
    assert Alias.objects.get().version == versions["v1"]


def test_release_and_campaign_forms_offer_and_accept_aliases(versions: dict, operator_client: Client) -> None:
    aliases.set_alias(versions["v2"], "production")
    page = operator_client.get("/releases/").content.decode()
    assert 'value="fraud@production"' in page and "fraud@production (now v2)" in page
    r = operator_client.post("/releases/", {"version": "fraud@production", "cohort": ""})
    assert r.status_code == 302
    assert Release.objects.latest("id").version == versions["v2"]
    assert AuditEntry.objects.filter(action="release.create").latest("id").details["via"] == "fraud@production"
    assert operator_client.post("/releases/", {"version": "fraud@nope"}).status_code == 400

    Release.objects.filter(version=versions["v2"]).delete()
    page = operator_client.get("/campaigns/new/").content.decode()
    assert 'value="fraud@production"' in page
    form = {"name": "via alias", "version": "fraud@production", "waves": "10, 0, 0\n100, 0, 0", "on_failure": "pause"}
    r = operator_client.post("/campaigns/new/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    assert Campaign.objects.get(name="via alias").version == versions["v2"]
    bad = operator_client.post("/campaigns/new/", {**form, "name": "x", "version": "spam@production"})
    assert bad.status_code == 400
