"""Edges of the device API's strict parse (fleet/wire.py), pure: no database, no client.

Each limit is taken exactly at its value and refused one past it, with the code and the JSON path
a device reads in the 4xx (docs/protocol.md; tests/test_protocol_wire.py drives the same through the
API with a database). Pure: the request is Django's own test ``RequestFactory`` request.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from fleet import wire
from fleet.errors import ProtocolError


def refused(raw: bytes | str, path: tuple[str | int, ...] = ()) -> tuple[int, str, str, str | None]:
    with pytest.raises(ProtocolError) as e:
        wire.loads(raw, path)
    return e.value.status, e.value.code, e.value.message, e.value.field


def test_the_limits_are_pinned() -> None:
    """Each is a promise in docs/protocol.md: raising one admits what PostgreSQL or a job cannot take."""
    assert (wire.MAX_DEPTH, wire.MAX_KEY_CHARS, wire.MAX_NUMBER_CHARS) == (16, 256, 64)
    assert (wire.INT_MIN, wire.INT_MAX) == (-9223372036854775808, 9223372036854775807)
    assert wire.MAX_OFFSET.total_seconds() == 14 * 3600
    assert wire.EARLIEST.isoformat() == "1970-01-01T00:00:00+00:00"
    assert (wire.DETAILS_MAX_KEYS, wire.DETAILS_MAX_NODES, wire.DETAILS_MAX_DEPTH) == (32, 256, 4)
    assert (wire.DETAILS_MAX_STRING, wire.DETAILS_MAX_BYTES) == (2048, 8192)


def test_plain_json_parses_from_bytes_and_text() -> None:
    doc = {"a": [1, 2.5, True, None, "x", {"b": -3}], "é": "東京"}
    assert wire.loads(json.dumps(doc, ensure_ascii=False).encode()) == doc
    assert wire.loads(json.dumps(doc)) == doc
    assert wire.loads(bytearray(b"[]")) == []


# --- depth -----------------------------------------------------------------------------------------


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


@pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"k":', "}")])
def test_nesting_at_the_maximum_parses_and_one_deeper_is_refused(opener: str, closer: str) -> None:
    wire.loads(opener * 16 + "0" * (opener == '{"k":') + closer * 16)
    status, code, message, _ = refused(opener * 17 + "0" * (opener == '{"k":') + closer * 17)
    assert (status, code, message.split(": ", 1)[-1]) == (400, "too_deep", "nested deeper than 16 levels")


def test_depth_counts_from_the_top_even_below_scalars_in_lists() -> None:
    wire.loads("[" * 15 + '[1, 2.0, true, null, "s"]' + "]" * 15)
    assert refused("[" * 16 + '["s", [1]]' + "]" * 16)[1] == "too_deep"


def test_nesting_beyond_the_recursion_limit_is_too_deep_not_a_crash() -> None:
    assert refused("[" * 200_000 + "]" * 200_000, ("hdr",))[1:] == (
        "too_deep",
        "hdr: nested deeper than 16 levels",
        "hdr",
    )


# --- keys, strings, duplicates ---------------------------------------------------------------------


def test_a_key_of_the_maximum_length_parses_and_one_longer_is_refused() -> None:
    wire.loads(json.dumps({"k" * 256: 1}))
    assert refused(json.dumps({"a": {"k" * 257: 1}})) == (
        400,
        "key_too_long",
        "a: a key longer than 256 characters",
        "a",
    )


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800", "\\udfff", "x\\udc00y"])
def test_nul_and_lone_surrogates_are_refused_in_keys_and_strings(bad: str) -> None:
    assert refused('{"a":["ok","' + bad + '"]}') == (
        400,
        "invalid_string",
        "a.1: a string holds NUL or an unpaired surrogate",
        "a.1",
    )
    assert refused('{"a":{"' + bad + '":1}}')[1:] == (
        "invalid_string",
        "a: a key holds NUL or an unpaired surrogate",
        "a",
    )


def test_a_surrogate_pair_is_one_character_and_parses() -> None:
    assert wire.loads('{"\\ud83d\\ude00":"\\ud83d\\ude00"}') == {"\U0001f600": "\U0001f600"}


def test_a_duplicate_key_is_named_and_refused() -> None:
    assert refused('{"x":{"a":1,"b":2,"a":3}}') == (400, "duplicate_key", "x: the key 'a' appears twice", "x")
    long = "k" * 60
    assert refused('{"' + long + '":1,"' + long + '":2}')[2] == f"the key {long[:40]!r} appears twice"
    assert refused('{"a":1,"b":2,"b":3,"a":4}')[2] == "the key 'b' appears twice"


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused(text: str) -> None:
    assert refused('{"n":[' + text + "]}") == (400, "invalid_number", f"n.0: {text} is not a JSON number", "n.0")


def test_a_float_that_overflows_is_refused() -> None:
    assert refused('{"n":1e400}') == (400, "invalid_number", "n: 1e400 is out of range", "n")
    assert wire.loads('{"n":1.7976931348623157e308}') == {"n": 1.7976931348623157e308}


def test_number_literals_up_to_64_characters_parse() -> None:
    ok = "1." + "0" * 62  # 64 characters
    assert wire.loads("[" + ok + "]") == [1.0]
    status, code, message, _ = refused("[" + ok + "0]")
    assert (status, code, message) == (400, "invalid_number", "0: a number of at most 64 characters")


def test_integers_within_signed_64_bits_parse_and_one_beyond_is_refused() -> None:
    assert wire.loads(f"[{2**63 - 1},{-(2**63)}]") == [2**63 - 1, -(2**63)]
    for bad in (2**63, -(2**63) - 1, 10**19, 10**30):
        assert refused(f"[{bad}]")[1:3] == ("invalid_number", "0: an integer within signed 64 bits")
    assert wire.loads("[" + "0" * 0 + "-1" + "]") == [-1]


def test_an_integer_literal_is_checked_by_value_up_to_twenty_characters() -> None:
    assert wire.loads("[-9223372036854775808]") == [-(2**63)]  # 20 characters
    assert refused("[-09223372036854775808]")[1] == "malformed_json"  # JSON has no leading zeros


# --- bytes and syntax ------------------------------------------------------------------------------


def test_bytes_that_are_not_utf8_are_refused_at_their_offset() -> None:
    assert refused(b'{"a":"\xff"}', ("body",)) == (
        400,
        "not_utf8",
        "body: the bytes are not UTF-8 (at byte 6)",
        "body",
    )


@pytest.mark.parametrize("raw", ["", "{", "[1,]", "{'a':1}", "\ufeff{}", "1 2"])
def test_text_that_is_not_json_is_malformed(raw: str) -> None:
    status, code, message, field = refused(raw)
    assert (status, code, field) == (400, "malformed_json", None)
    assert message.startswith("not JSON: ")


def test_a_path_prefixes_the_field_and_no_path_gives_no_field() -> None:
    assert refused('{"a":NaN}', ("X-Agent-State",))[2:] == (
        "X-Agent-State.a: NaN is not a JSON number",
        "X-Agent-State.a",
    )
    assert refused("NaN")[2:] == ("NaN is not a JSON number", None)


def test_check_walks_values_built_in_python_too() -> None:
    wire.check({"a": [1, {"b": "c"}]})
    with pytest.raises(ProtocolError) as e:
        wire.check({"a": [1, {"b": "c\x00"}]}, ("root",))
    assert (e.value.code, e.value.field) == ("invalid_string", "root.a.1.b")


# --- headers ---------------------------------------------------------------------------------------


def test_a_json_header_is_parsed_from_its_latin1_string_and_names_the_header() -> None:
    raw = json.dumps({"s": "café"}, ensure_ascii=False).encode().decode("latin-1")
    assert wire.header_json(raw, "X-Agent-State") == {"s": "café"}
    with pytest.raises(ProtocolError) as e:
        wire.header_json('{"a":NaN}', "X-Agent-State")
    assert (e.value.status, e.value.code, e.value.field) == (400, "invalid_number", "X-Agent-State")
    assert e.value.message == "X-Agent-State: a: NaN is not a JSON number"
    with pytest.raises(ProtocolError) as e:
        wire.header_json('{"a":"\ud800"}', "H")  # not latin-1: its UTF-8 with the surrogate kept
    assert (e.value.code, e.value.field) == ("not_utf8", "H")


# --- dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25t10:00:00z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25T10:00:00+14:00", datetime(2026, 11, 24, 20, tzinfo=UTC)),
        ("2026-11-25T10:00:00-14:00", datetime(2026, 11, 26, 0, tzinfo=UTC)),
        ("2026-11-25T10:00:00.123456789+00:00", datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("1970-01-01T01:00:00+01:00", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_dates_with_an_offset_within_14_hours_are_normalised_to_utc(text: str, utc: datetime) -> None:
    got = wire._utc(text)
    assert got == utc and got.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1764064800, "a date is an ISO 8601 string with a UTC offset"),
        ("2026-11-25T10:00:00", "a date is an ISO 8601 string with a UTC offset"),
        ("2026-11-25 10:00:00Z", "a date is an ISO 8601 string with a UTC offset"),
        ("2026-11-25T10:00:00.1234567890Z", "a date is an ISO 8601 string with a UTC offset"),
        ("２０２６-11-25T10:00:00Z", "a date is an ISO 8601 string with a UTC offset"),
        ("2026-02-30T10:00:00Z", "not a valid date"),
        ("2026-11-25T10:00:00+14:01", "the UTC offset must lie within -14:00 and +14:00"),
        ("2026-11-25T10:00:00-15:00", "the UTC offset must lie within -14:00 and +14:00"),
        ("9999-12-31T23:00:00-02:00", "the date is out of range"),
        ("1969-12-31T23:59:59Z", "the date is before 1970"),
        ("1970-01-01T00:59:59+01:00", "the date is before 1970"),
    ],
)
def test_dates_refused_with_a_reason(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        wire._utc(value)
    assert str(e.value).startswith(message)


# --- details ---------------------------------------------------------------------------------------


def test_details_at_every_limit_are_taken() -> None:
    assert wire._bounded({f"k{i}": i for i in range(32)})
    wire._bounded({"a": {"b": {"c": [1]}}})  # four levels
    wire._bounded({"a": {"b": {"c": {"d": 1}}}})
    wire._bounded({"s": "x" * 2048, "k" * 64: None, "b": True, "f": 1.5, "i": 2**63 - 1, "j": -(2**63)})
    wire._bounded({"l": list(range(254))})  # 1 + 1 + 254 = 256 values
    wire._bounded({"s": "x" * 2040})


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({f"k{i}": i for i in range(33)}, "at most 32 keys"),
        ({"l": list(range(255))}, "at most 256 values in all"),
        ({"a": {"b": {"c": {"d": {}}}}}, "nested at most 4 levels"),
        ({"a": {"b": {"c": [[]]}}}, "nested at most 4 levels"),
        ({"k" * 65: 1}, "keys of at most 64 characters"),
        ({"a": [{"k" * 65: 1}]}, "keys of at most 64 characters"),
        ({"s": "x" * 2049}, "strings of at most 2048 characters"),
        ({"f": float("nan")}, "numbers must be finite"),
        ({"f": float("-inf")}, "numbers must be finite"),
        ({"i": 2**63}, "integers within signed 64 bits"),
        ({"i": -(2**63) - 1}, "integers within signed 64 bits"),
        ({"o": object()}, "values are JSON strings, numbers, booleans, null, lists and objects"),
        ({"t": (1, 2)}, "values are JSON strings, numbers, booleans, null, lists and objects"),
        ({f"s{i}": "x" * 2000 for i in range(5)}, "at most 8192 bytes as JSON"),
    ],
)
def test_details_past_a_limit_are_refused(details: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        wire._bounded(details)
    assert str(e.value) == message


def test_details_refuse_nul_even_without_the_wire_parse() -> None:
    with pytest.raises(ProtocolError) as e:
        wire._bounded({"s": "a\x00b"})
    assert (e.value.code, e.value.field) == ("invalid_string", "s")


def test_details_of_exactly_8192_bytes_are_taken() -> None:
    details = {"s": "x" * 2048, "t": "y" * 2048, "u": "z" * 2048, "v": ""}
    details["v"] = "w" * (8192 - len(json.dumps(details, separators=(",", ":"))))
    assert len(json.dumps(details, separators=(",", ":"))) == 8192
    assert wire._bounded(details) is details
    details["v"] += "w"
    with pytest.raises(ValueError, match="at most 8192 bytes as JSON"):
        wire._bounded(details)


def test_openapi_body_inlines_the_models_definitions() -> None:
    from pydantic import BaseModel

    class Inner(BaseModel):
        at: wire.UtcDatetime

    class Outer(BaseModel):
        items: list[Inner]
        other: Inner | None = None

    body = wire.openapi_body(Outer)
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    at = schema["properties"]["items"]["items"]["properties"]["at"]
    assert (at["type"], at["format"]) == ("string", "date-time")
    assert schema["properties"]["other"]["anyOf"][0]["properties"]["at"]["format"] == "date-time"


# --- requests --------------------------------------------------------------------------------------


@pytest.fixture
def rf(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Django's RequestFactory; under mutation testing (no pytest-django) the test settings are loaded."""
    from django.conf import settings

    if not settings.configured:
        monkeypatch.setenv(
            "DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "edgefleet.settings_test")
        )
    from django.test import RequestFactory

    return RequestFactory()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        " application/json ; charset=UTF-8",
        'application/json; charset="utf8"',
        "application/json; charset=utf-8; profile=agent",  # each parameter on its own
    ],
)
def test_json_content_types_are_taken(rf: Any, content_type: str) -> None:
    assert wire.read_json(rf.post("/", b'{"a":1}', content_type=content_type)) == {"a": 1}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/json; charset=latin-1",
        "application/jsonx",
        "",
        "application/json-seq",
        "application/json; profile=agent; charset=latin-1",  # the charset is found after another parameter
        'application/json; charset="utf-8=1"',  # the value is all after the first "="
    ],
)
def test_other_content_types_are_415(rf: Any, content_type: str) -> None:
    with pytest.raises(ProtocolError) as e:
        wire.read_json(rf.post("/", b"{}", content_type=content_type))
    assert (e.value.status, e.value.code, e.value.field) == (415, "unsupported_media_type", "Content-Type")
    assert e.value.message == "Send the body as Content-Type: application/json (UTF-8)."


TOO_LARGE = "The body is larger than 64 bytes."


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(rf: Any) -> None:
    from django.test import override_settings

    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=64):
        assert wire.body_limit() == 64
        exact = b'{"s":"' + b"x" * (64 - 8) + b'"}'
        assert len(exact) == 64 and wire.read_json(rf.post("/", exact, content_type="application/json"))
        with pytest.raises(ProtocolError) as e:
            wire.read_json(rf.post("/", exact + b" ", content_type="application/json"))
        assert (e.value.status, e.value.code, e.value.message) == (
            413,
            "too_large",
            "The body is larger than 64 bytes.",
        )
        # a body already read (by a middleware) is measured, not its declared length trusted
        req = rf.post("/", exact, content_type="application/json")
        req._body = exact + b" "
        req.META["CONTENT_LENGTH"] = "3"
        with pytest.raises(ProtocolError) as e:
            wire.read_json(req)
        assert (e.value.status, e.value.code, e.value.message) == (
            413,
            "too_large",
            "The body is larger than 64 bytes.",
        )
        req = rf.post("/", exact, content_type="application/json")
        req._body = exact
        req.META["CONTENT_LENGTH"] = "not a number"
        assert wire.read_json(req) == {"s": "x" * 56}
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=None):
        assert wire.body_limit() == 1024 * 1024


def test_only_quotes_are_stripped_from_the_charset(rf: Any) -> None:
    req = rf.post("/", b"{}", content_type="application/json")
    req.META["CONTENT_TYPE"] = "application/json; charset=UTF-8X"  # the factory cannot encode with it
    with pytest.raises(ProtocolError) as e:
        wire.check_content_type(req)
    assert (e.value.status, e.value.code) == (415, "unsupported_media_type")
