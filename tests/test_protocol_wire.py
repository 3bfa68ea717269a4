"""The device API's strict parse (fleet/wire.py): every class of hostile input is a 4xx naming the
field, never a 500, and nothing is stored. Real PostgreSQL and Redis, the app in-process."""

import json
import uuid
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.models import Device, DeviceEvent
from rollout.manifest import bump_generation
from telemetry.models import Report
from tests import factories, telemetry_support

pytestmark = pytest.mark.django_db

GOOD_EVENT = {"id": "", "kind": "installed", "at": "2026-11-25T10:00:00Z", "model": "fraud", "version": "v1"}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    bump_generation()


@pytest.fixture
def device() -> tuple[Any, str]:
    return factories.device(labels={"region": "eu"})


@pytest.fixture
def version() -> Any:
    v = factories.staged_version("fraud", "v1", seed=1)
    factories.release(v)
    return v


def send(client: Client, path: str, raw: bytes | str, token: str | None = None, ctype: str = "application/json"):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.generic("POST", path, raw.encode() if isinstance(raw, str) else raw, content_type=ctype, **headers)


def event(**over: Any) -> dict:
    return {**GOOD_EVENT, "id": str(uuid.uuid4()), **over}


def events_raw(event_text: str) -> str:
    return '{"events": [' + event_text + "]}"


def assert_refused(resp, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.content[:300]
    err = resp.json()["error"]
    assert set(err) == {"code", "message", "field"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err["field"] == field, err
    return err


def enroll_body(key: str, **over: Any) -> dict:
    return {"enrollment_key": key, "name": "cam", "hardware": {"arch": "x86_64"}, "labels": {}, **over}


def nothing_stored() -> None:
    assert DeviceEvent.objects.count() == 0
    assert Report.objects.count() == 0


# ---------------------------------------------------------------- the JSON itself


def test_deep_nesting_is_400_on_every_body(client: Client, device) -> None:
    _, token = device
    deep = "[" * 100_000 + "]" * 100_000
    for path, body in [
        ("/api/v1/events", '{"events": ' + deep + "}"),
        ("/api/v1/telemetry", '{"reports": ' + deep + "}"),
        ("/api/v1/enroll", '{"enrollment_key": ' + deep + "}"),
        ("/api/v1/events", deep),
    ]:
        assert_refused(send(client, path, body, token), 400, "too_deep")
    # 17 levels is already too deep, though far from Python's recursion limit.
    nested: list = []
    for _ in range(13):
        nested = [nested]
    text = events_raw(json.dumps(event(details={"a": nested})))
    assert_refused(send(client, "/api/v1/events", text, token), 400, "too_deep", "events.0.details.a" + ".0" * 12)
    nothing_stored()


@pytest.mark.parametrize("token_text", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_numbers_are_400_naming_the_field(client: Client, device, version, token_text: str) -> None:
    _, token = device
    text = json.dumps(event(details={"x": 1})).replace('"x": 1', f'"x": {token_text}')
    assert_refused(send(client, "/api/v1/events", events_raw(text)), 401)  # no token: nothing parsed
    assert_refused(send(client, "/api/v1/events", events_raw(text), token), 400, "invalid_number", "events.0.details.x")
    report = json.dumps(telemetry_support.report(version, inference_count=7.25)).replace("7.25", token_text)
    err = assert_refused(send(client, "/api/v1/telemetry", '{"reports": [' + report + "]}", token), 400)
    assert err["field"] == "reports.0.inference_count"
    nothing_stored()


def test_numbers_too_big_for_the_database_are_400(client: Client, device) -> None:
    _, token = device
    _, plain = factories.enrollment_key()
    for big in ["99999999999999999999", "-9223372036854775809", "1" + "0" * 5000, "1." + "0" * 100]:
        text = json.dumps(enroll_body(plain, hardware={"storage_free_mb": 1})).replace(
            '"storage_free_mb": 1', f'"storage_free_mb": {big}'
        )
        assert_refused(send(client, "/api/v1/enroll", text), 400, field="hardware.storage_free_mb")
    assert_refused(send(client, "/api/v1/events", events_raw(json.dumps(event(details={"n": 2**63})))), 401)
    assert_refused(
        send(client, "/api/v1/events", events_raw(json.dumps(event(details={"n": 2**63}))), token),
        400,
        "invalid_number",
        "events.0.details.n",
    )
    ok = send(client, "/api/v1/events", events_raw(json.dumps(event(details={"n": 2**63 - 1}))), token)
    assert ok.status_code == 200, ok.content
    assert Device.objects.count() == 1


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800", "\\udfff", "a\\ud83d"])
def test_nul_and_lone_surrogates_are_400_in_any_string_or_key(client: Client, device, version, bad: str) -> None:
    _, token = device
    _, plain = factories.enrollment_key()
    cases = [
        ("/api/v1/events", events_raw(json.dumps(event(model="MARK"))), "events.0.model"),
        ("/api/v1/events", events_raw(json.dumps(event(details={"why": "MARK"}))), "events.0.details.why"),
        ("/api/v1/events", events_raw(json.dumps(event(details={"MARK": 1}))), "events.0.details"),
        ("/api/v1/enroll", json.dumps(enroll_body(plain, name="MARK")), "name"),
        ("/api/v1/enroll", json.dumps(enroll_body(plain, labels={"MARK": "x"})), "labels"),
        (
            "/api/v1/telemetry",
            json.dumps({"reports": [telemetry_support.report(version, version="MARK")]}),
            "reports.0.version",
        ),
    ]
    for path, text, field in cases:
        assert_refused(send(client, path, text.replace("MARK", bad), token), 400, "invalid_string", field)
    # A proper surrogate pair is one character, and fine.
    ok = send(client, "/api/v1/events", events_raw(json.dumps(event(details={"why": "\\ud83d\\ude00"}))), token)
    assert ok.status_code == 200
    assert DeviceEvent.objects.get().details == {"why": "\\ud83d\\ude00"}
    assert Device.objects.count() == 1 and Report.objects.count() == 0


def test_bytes_that_are_not_utf8_are_400(client: Client, device) -> None:
    _, token = device
    for raw in [b'{"events": [{"id": "\xff"}]}', b"\xef\xbb\xbf{}", b'{"events": ["\xed\xa0\x80"]}']:
        assert_refused(send(client, "/api/v1/events", raw, token), 400)
    assert_refused(send(client, "/api/v1/events", b'{"events": [{"id": "\xff"}]}', token), 400, "not_utf8")
    nothing_stored()


def test_duplicate_keys_are_400(client: Client, device, version) -> None:
    _, token = device
    _, plain = factories.enrollment_key()
    text = '{"enrollment_key": "x", "enrollment_key": ' + json.dumps(plain) + ', "name": "a"}'
    assert_refused(send(client, "/api/v1/enroll", text), 400, "duplicate_key")
    e = json.dumps(event())
    dup = e[:-1] + ', "kind": "activated"}'
    assert_refused(send(client, "/api/v1/events", events_raw(dup), token), 400, "duplicate_key", "events.0")
    r = json.dumps(telemetry_support.report(version))
    assert_refused(
        send(client, "/api/v1/telemetry", '{"reports": [' + r + '], "reports": []}', token), 400, "duplicate_key"
    )
    assert Device.objects.count() == 1
    nothing_stored()


def test_huge_keys_and_too_many_detail_keys_are_400(client: Client, device) -> None:
    _, token = device
    long_key = {"k" * 300: 1}
    assert_refused(
        send(client, "/api/v1/events", events_raw(json.dumps(event(details=long_key))), token),
        400,
        "key_too_long",
        "events.0.details",
    )
    many = {f"k{i}": i for i in range(33)}
    assert_refused(
        send(client, "/api/v1/events", events_raw(json.dumps(event(details=many))), token),
        400,
        field="events.0.details",
    )
    fine = {f"k{i}": i for i in range(32)}
    assert send(client, "/api/v1/events", events_raw(json.dumps(event(details=fine))), token).status_code == 200
    for details in [
        {"s": "x" * 2049},  # one long string
        {"a": {"b": {"c": {"d": {"e": 1}}}}},  # five levels of objects, details itself included
        {"l": list(range(300))},  # too many values in all
    ]:
        assert_refused(
            send(client, "/api/v1/events", events_raw(json.dumps(event(details=details))), token),
            400,
            field="events.0.details",
        )
    assert DeviceEvent.objects.count() == 1


def test_wrong_content_type_is_415_and_oversized_is_413(client: Client, device, version, settings) -> None:
    _, token = device
    body = json.dumps({"events": [event()]})
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", ""]:
        assert_refused(send(client, "/api/v1/events", body, token, ctype=ctype), 415, "unsupported_media_type")
        assert_refused(
            send(
                client,
                "/api/v1/telemetry",
                json.dumps({"reports": [telemetry_support.report(version)]}),
                token,
                ctype=ctype,
            ),
            415,
        )
        assert_refused(send(client, "/api/v1/enroll", json.dumps(enroll_body("efk_x")), ctype=ctype), 415)
    assert send(client, "/api/v1/events", body, token, ctype="application/json; charset=UTF-8").status_code == 200
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    big = json.dumps({"events": [event(details={"s": "x" * 1900})]})
    assert_refused(send(client, "/api/v1/events", big, token), 413, "too_large")
    assert_refused(send(client, "/api/v1/telemetry", '{"reports": []' + " " * 3000 + "}", token), 413, "too_large")
    assert_refused(send(client, "/api/v1/enroll", json.dumps(enroll_body("k" * 3000))), 413, "too_large")
    assert DeviceEvent.objects.count() == 1 and Report.objects.count() == 0


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(
    "at",
    [
        0,
        "0",
        1732528800,
        "2026-11-25T10:00:00",
        "2026-11-25T10:00:00+23:59",
        "2026-11-25T10:00:00-14:01",
        "2026-11-25 10:00:00Z",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "2026-02-30T10:00:00Z",
        "2026-11-25T10:00:00Z junk",
        None,
        True,
        [2026],
    ],
)
def test_dates_are_iso_strings_with_a_sane_offset(client: Client, device, at: Any) -> None:
    _, token = device
    assert_refused(
        send(client, "/api/v1/events", json.dumps({"events": [event(at=at)]}), token), 400, field="events.0.at"
    )
    nothing_stored()


def test_offsets_within_14_hours_are_normalised_to_utc(client: Client, device, version) -> None:
    _, token = device
    for at, utc in [
        ("2026-11-25T10:00:00+14:00", "2026-11-24T20:00:00+00:00"),
        ("2026-11-25T10:00:00-12:00", "2026-11-25T22:00:00+00:00"),
        ("2026-11-25t10:00:00.123456789z", "2026-11-25T10:00:00.123456+00:00"),
    ]:
        e = event(at=at)
        assert send(client, "/api/v1/events", json.dumps({"events": [e]}), token).status_code == 200
        assert DeviceEvent.objects.get(pk=e["id"]).at.isoformat() == utc
    r = telemetry_support.report(version)
    bad = {**r, "window_start": r["window_start"].replace("+00:00", "+23:59")}
    assert_refused(
        send(client, "/api/v1/telemetry", json.dumps({"reports": [bad]}), token), 400, field="reports.0.window_start"
    )
    assert_refused(
        send(client, "/api/v1/telemetry", json.dumps({"reports": [{**r, "window_end": 0}]}), token),
        400,
        field="reports.0.window_end",
    )
    assert Report.objects.count() == 0


# ---------------------------------------------------------------- headers


def test_agent_state_header_is_parsed_as_strictly_as_a_body(client: Client, device) -> None:
    _, token = device
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    for header in [
        "[" * 3000 + "]" * 3000,
        '{"models": {"fraud": "v\\u0000"}}',
        '{"models": {"fraud\\ud800": "v1"}}',
        '{"models": {"fraud": NaN}}',
        '{"models": {"fraud": "v1", "fraud": "v2"}}',
        '{"models": {"fraud": "\xff"}}',
        json.dumps({"models": {f"m{i}": "v1" for i in range(65)}}),
        json.dumps({"models": {"fraud": "v1"}, "extra": 1}),
        json.dumps({"models": {"fraud": 1}}),
        json.dumps({"models": {"fr aud": "v1"}}),
        json.dumps({"models": {"fraud": "v" * 65}}),
    ]:
        assert_refused(client.get("/api/v1/manifest", HTTP_X_AGENT_STATE=header, **auth), 400, field="X-Agent-State")
    ok = client.get("/api/v1/manifest", HTTP_X_AGENT_STATE=json.dumps({"models": {"fraud": "v1.2-rc_3"}}), **auth)
    assert ok.status_code == 200


def test_range_header_with_absurd_numbers_is_never_a_500(client: Client, device, version) -> None:
    _, token = device
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/v1/manifest", **auth).status_code == 200  # the device was told v1
    url = f"/api/v1/artifacts/{version.artifact.sha256}"
    size = version.artifact.size
    far = "9" * 5000
    assert_refused(client.get(url, HTTP_RANGE=f"bytes={far}-", **auth), 416, "range_not_satisfiable", "Range")
    tail = client.get(url, HTTP_RANGE=f"bytes=10-{far}", **auth)
    assert tail.status_code == 206 and tail["Content-Range"] == f"bytes 10-{size - 1}/{size}"
    whole = client.get(url, HTTP_RANGE=f"bytes=-{far}", **auth)
    assert whole.status_code == 206 and whole["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    for ignored in ["bytes=\u0663-", "bytes=1-2,3-4", "items=0-1", "bytes=--1"]:
        assert client.get(url, HTTP_RANGE=ignored, **auth).status_code == 200


# ---------------------------------------------------------------- random input, every endpoint

_chars = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
NASTY = [
    float("nan"),
    float("inf"),
    -float("inf"),
    2**70,
    -(2**64),
    "a\x00b",
    "\ud800",
    "x" * 5000,
    "2026-11-25T10:00:00+23:59",
    "0",
    0,
    {"\x00": 1},
    {"k" * 300: 1},
    {f"k{i}": i for i in range(40)},
]
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(_chars, max_size=30)
    | st.sampled_from(NASTY)
)
json_ish = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_chars, max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _mutate(body: Any, path: list[int], value: Any, add_key: bool) -> Any:
    """Replace the node that ``path`` (indices into sorted keys / list positions) leads to, or add
    ``value`` under a new key where the path ends in an object."""
    if not isinstance(body, dict | list) or not body:
        return value
    if not path:
        if add_key and isinstance(body, dict):
            return {**body, "\x00k" if len(body) % 2 else "extra": value}
        return value
    keys = sorted(body) if isinstance(body, dict) else list(range(len(body)))
    k = keys[path[0] % len(keys)]
    out = dict(body) if isinstance(body, dict) else list(body)
    out[k] = _mutate(body[k], path[1:], value, add_key)
    return out


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    which=st.sampled_from(["enroll", "events", "telemetry", "state", "range"]),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6),
    value=st.sampled_from(NASTY) | json_ish,
    add_key=st.booleans(),
    raw=st.binary(max_size=40),
)
def test_random_json_ish_input_never_gets_a_5xx(
    which: str, path: list[int], value: Any, add_key: bool, raw: bytes
) -> None:
    client = Client()
    dev = Device.objects.order_by("enrolled_at").first()
    if dev is None:
        factories.release(factories.staged_version("fraud", "v1", seed=1))
        dev, token = factories.device(labels={"region": "eu"})
        Device.objects.filter(pk=dev.pk).update(name=token)  # keep the token for later examples
        dev.refresh_from_db()
        assert client.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    token = dev.name
    from ota.models import ModelVersion

    mv = ModelVersion.objects.get(label="v1")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if which == "enroll":
        body = enroll_body("efk_nope", labels={"site": "a"}, hardware={"arch": "x", "providers": ["CPU"]})
        resp = send(client, "/api/v1/enroll", _dump(_mutate(body, path, value, add_key)))
    elif which == "events":
        body = {"events": [event(details={"note": "ok", "n": 1, "more": {"k": [1, 2.5]}})]}
        resp = send(client, "/api/v1/events", _dump(_mutate(body, path, value, add_key)), token)
    elif which == "telemetry":
        body = _mutate({"reports": [telemetry_support.report(mv)]}, path, value, add_key)
        resp = send(client, "/api/v1/telemetry", _dump(body), token)
    elif which == "state":
        header = _dump(_mutate({"models": {"fraud": "v1"}}, path, value, add_key)).decode("latin-1")
        resp = client.get("/api/v1/manifest", HTTP_X_AGENT_STATE=header, **auth)
    else:
        header = "bytes=" + raw.decode("latin-1")
        resp = client.get(f"/api/v1/artifacts/{mv.artifact.sha256}", HTTP_RANGE=header, **auth)
    assert resp.status_code < 500, (which, resp.status_code, getattr(resp, "content", b"")[:300])
    if resp.status_code >= 400:
        assert set(resp.json()["error"]) == {"code", "message", "field"}
    for e in DeviceEvent.objects.all():
        json.dumps(e.details, allow_nan=False)  # nothing stored that a later job cannot read back


def test_an_event_id_twice_in_one_batch_is_stored_once(client: Client, device) -> None:
    _, token = device
    e = event()
    got = send(client, "/api/v1/events", json.dumps({"events": [e, {**e, "kind": "activated"}]}), token)
    assert got.status_code == 200 and got.json() == {"accepted": 1, "duplicates": 1}
    assert DeviceEvent.objects.get().kind == "installed"


@pytest.mark.parametrize("field", ["model", "version"])
def test_event_model_and_version_are_names_not_free_text(client: Client, device, field: str) -> None:
    dev, token = device
    for bad in ["<script>", "a b", "../x", "-x"]:
        resp = send(client, "/api/v1/events", json.dumps({"events": [event(**{field: bad})]}), token)
        assert_refused(resp, 400, field=f"events.0.{field}")
    dev.refresh_from_db()
    assert dev.installed == {} and DeviceEvent.objects.count() == 0


def test_a_deleted_device_is_forgotten_and_its_uploads_are_401_not_500(client: Client, device, version) -> None:
    """Deleting a device (the admin can) must end its token at once: its cached snapshot and ready
    manifest are dropped, so an upload cannot reach the database for a row that is gone."""
    dev, token = device
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/v1/manifest", **auth).status_code == 200  # cached everywhere now
    dev.delete()
    assert_refused(client.get("/api/v1/manifest", **auth), 401, "token_invalid")
    assert_refused(send(client, "/api/v1/events", json.dumps({"events": [event()]}), token), 401)
    body = json.dumps({"reports": [telemetry_support.report(version)]})
    assert_refused(send(client, "/api/v1/telemetry", body, token), 401)
    nothing_stored()


@pytest.mark.django_db(transaction=True)  # the device's foreign key is checked at commit
def test_events_of_a_device_deleted_mid_request_are_401(device) -> None:
    """The race the cache cannot close: the row goes between the token check and the insert."""
    from fleet import services

    dev, _ = device
    Device.objects.filter(pk=dev.pk).delete()  # a queryset delete sends no per-row forget
    with pytest.raises(services.DeviceGone):
        services.record_events(dev.id, [{**event(), "details": {}}])
    nothing_stored()
