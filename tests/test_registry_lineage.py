"""Lineage set at upload: bounded and hostile-safe, shown on the version page, searchable (page and API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import ApiToken
from ota import lineage
from ota.models import ModelVersion
from tests import factories
from tests.test_mgmt_api import Api, error
from tests.test_registry_upload import api_upload, assert_error, nothing_stored, onnx_bytes, upload_file

GOOD = {
    "meta": {"git_commit": "3f2a9c1", "dataset_hash": "sha256:ab12", "metrics": {"auc": 0.93, "f1": [0.8, 0.7]}},
    "links": {"run": "https://mlflow.example.com/runs/17?tab=metrics#top"},
}


# ------------------------------------------------------------------------------------------- rules


def test_clean_keeps_good_lineage_and_flattens_it_for_search() -> None:
    assert lineage.clean(json.dumps(GOOD)) == GOOD
    assert lineage.clean("") == {} and lineage.clean(None) == {} and lineage.clean({"meta": {}}) == {}
    text = lineage.search_text(GOOD)
    assert "git_commit=3f2a9c1" in text and "metrics.auc=0.93" in text and "metrics.f1=0.7" in text
    assert "run=https://mlflow.example.com/runs/17?tab=metrics#top" in text


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ('{"meta": {"x": NaN}}', "lineage"),
        ('{"meta": {"x": Infinity}}', "lineage"),
        ("[1, 2]", "lineage"),
        ("{not json", "lineage"),
        ('{"owner": "me"}', "lineage"),
        ('{"meta": []}', "meta"),
        ('{"links": "https://x.example"}', "links"),
        ('{"meta": {"1bad": 1}}', "meta.1bad"),
        ('{"meta": {"bad key": 1}}', "meta.bad key"),
        ('{"meta": {"a": {"b": {"c": {"d": 1}}}}}', "meta.a.b.c"),
        ('{"meta": {"x": "a\\u0000b"}}', "meta.x"),
        ('{"meta": {"x": "\\u202eevil"}}', "meta.x"),
        ('{"meta": {"x": 18014398509481985}}', "meta.x"),
        ('{"links": {"run": "javascript:alert(1)"}}', "links.run"),
        ('{"links": {"run": "data:text/html,<script>1</script>"}}', "links.run"),
        ('{"links": {"run": "//evil.example/x"}}', "links.run"),
        ('{"links": {"run": "https://user:pw@evil.example/"}}', "links.run"),
        ('{"links": {"run": "https://a.example/ x"}}', "links.run"),
        ('{"links": {"run": "https:///nohost"}}', "links.run"),
        ('{"links": {"run": "https://a.example:99999/"}}', "links.run"),
        ('{"links": {"run": 5}}', "links.run"),
    ],
)
def test_bad_lineage_is_refused_naming_where(raw: str, path: str) -> None:
    with pytest.raises(lineage.LineageError) as exc:
        lineage.clean(raw)
    assert exc.value.path == path and str(exc.value)


def test_lineage_bounds_at_their_edges() -> None:
    at = {"meta": {f"k{i}": i for i in range(lineage.MAX_KEYS)}}
    assert lineage.clean(at) == at
    with pytest.raises(lineage.LineageError, match="at most 50 keys"):
        lineage.clean({"meta": {f"k{i}": i for i in range(lineage.MAX_KEYS + 1)}})
    links = {f"l{i}": f"https://x.example/{i}" for i in range(lineage.MAX_LINKS + 1)}
    with pytest.raises(lineage.LineageError, match="at most 20 links"):
        lineage.clean({"links": links})
    assert lineage.clean({"meta": {"s": "x" * lineage.MAX_STRING}})
    with pytest.raises(lineage.LineageError):
        lineage.clean({"meta": {"s": "x" * (lineage.MAX_STRING + 1)}})
    assert lineage.clean({"meta": {"a": {"b": [1]}}})  # depth 3 is the limit
    with pytest.raises(lineage.LineageError, match="KiB"):
        lineage.clean("{" + " " * lineage.MAX_BYTES + "}")
    with pytest.raises(lineage.LineageError, match="KiB"):  # small keys, many long values: the whole document
        lineage.clean({"meta": {f"k{i}": {f"j{j}": "x" * 900 for j in range(10)} for i in range(5)}})
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(lineage.LineageError):
        lineage.clean('{"meta": {"a": ' + deep[: lineage.MAX_BYTES - 40] + "}}")


def test_safe_links_drops_what_was_stored_around_the_rules() -> None:
    stored = {"links": {"ok": "http://a.example/", "bad": "javascript:alert(1)", "worse": "vbscript:x"}}
    assert lineage.safe_links(stored) == [("ok", "http://a.example/")]


# ------------------------------------------------------------------------------------------- upload


@pytest.mark.django_db
def test_upload_with_lineage_over_the_api(client: Client, operator: Any, store: Path) -> None:
    token = ApiToken.issue(operator, "pipeline")[1]
    r = api_upload(client, token, lineage=json.dumps(GOOD))
    assert r.status_code == 201, r.content
    assert r.json()["lineage"] == GOOD and r.json()["aliases"] == []
    v = ModelVersion.objects.get()
    assert v.lineage == GOOD and "dataset_hash=sha256:ab12" in v.lineage_text


@pytest.mark.django_db
def test_bad_lineage_at_upload_stores_nothing(client: Client, operator: Any, store: Path) -> None:
    token = ApiToken.issue(operator, "pipeline")[1]
    bad = json.dumps({"links": {"run": "javascript:alert(document.cookie)"}})
    assert_error(api_upload(client, token, lineage=bad), 400, "bad_lineage", "links.run")
    assert_error(api_upload(client, token, lineage="{"), 400, "bad_lineage", "lineage")
    nothing_stored(store)


@pytest.mark.django_db
def test_the_upload_form_takes_lineage_too(operator_client: Client, store: Path) -> None:
    data = {"name": "fraud", "label": "v1", "file": upload_file(onnx_bytes()), "lineage": json.dumps(GOOD)}
    assert operator_client.post("/models/upload/", data).status_code == 302
    assert ModelVersion.objects.get().lineage == GOOD


# ------------------------------------------------------------------------------------- page, search


def _with_lineage(label: str, seed: int, data: dict) -> ModelVersion:
    v = factories.staged_version("fraud", label, seed=seed)
    v.lineage = lineage.clean(data)
    v.lineage_text = lineage.search_text(v.lineage)
    v.save()
    return v


@pytest.mark.django_db
def test_the_version_page_shows_lineage_as_plain_text_and_safe_links(viewer_client: Client) -> None:
    hostile = {
        "meta": {"git_commit": "<script>alert(1)</script>", "note": '"><img src=x onerror=alert(1)>'},
        "links": {"run": 'https://runs.example/?q="><script>alert(2)</script>'},
    }
    _with_lineage("v1", 1, hostile)
    v = ModelVersion.objects.get()
    v.lineage["links"]["sneaky"] = "javascript:alert(3)"  # as if stored around the rules
    v.save()
    page = viewer_client.get("/models/fraud/versions/v1/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert 'href="https://runs.example/?q=&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"' in page
    assert 'rel="noopener noreferrer nofollow"' in page
    assert "javascript:alert(3)" not in page and "sneaky" not in page


@pytest.mark.django_db
def test_versions_are_searchable_on_the_model_page(viewer_client: Client) -> None:
    _with_lineage("v1", 1, {"meta": {"git_commit": "aaa111", "dataset_hash": "d-one"}})
    _with_lineage("v2", 2, {"meta": {"git_commit": "bbb222"}, "links": {"run": "https://runs.example/42"}})
    page = viewer_client.get("/models/fraud/", {"q": "bbb2"}).content.decode()
    assert "/models/fraud/versions/v2/" in page and "/models/fraud/versions/v1/" not in page
    page = viewer_client.get("/models/fraud/", {"q": "runs.example/42"}).content.decode()
    assert "/models/fraud/versions/v2/" in page and "/models/fraud/versions/v1/" not in page
    page = viewer_client.get("/models/fraud/", {"q": "<nothing>"}).content.decode()
    assert "No version matches “&lt;nothing&gt;”." in page
    assert viewer_client.get("/models/fraud/", {"q": "x" * 5000}).status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("roles")
def test_versions_are_searchable_over_the_api(viewer: Any) -> None:
    from ota import aliases

    _with_lineage("v1", 1, {"meta": {"git_commit": "aaa111", "metrics": {"auc": 0.9}}})
    v2 = _with_lineage("v2", 2, {"meta": {"git_commit": "bbb222", "team": "risk"}})
    aliases.set_alias(v2, "production")
    view = Api(ApiToken.issue(viewer, "ro")[1])

    def labels(**params: Any) -> list[str]:
        status, body = view.get("/models/fraud/versions", **params)
        assert status == 200, body
        return [v["label"] for v in body["items"]]

    assert labels(q="aaa1") == ["v1"]
    assert labels(meta="git_commit=bbb222") == ["v2"]
    assert labels(meta="git_commit=bbb") == []  # meta is exact
    assert labels(meta="team=risk", q="v2") == ["v2"]
    assert labels(alias="production") == ["v2"]
    assert labels(q="metrics.auc=0.9") == ["v1"]
    error(view.get("/models/fraud/versions", meta="no-equals-sign"), 400, "invalid", "meta")
    error(view.get("/models/fraud/versions", meta="a__b c=1"), 400, "invalid", "meta")
    assert view.get("/models/fraud/versions", q="x" * 201)[0] == 400
    error(view.get("/models/spam/versions", q="a"), 404, "not_found")
