"""The canonical JSON that is signed is pinned between the server (ota/signing.py) and the agent
(agent/verify.py): the same known bytes for the same values, and a signature the server makes over
a real device's manifest verifies in the agent and fails on any one changed byte.

The form is Python's ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8 (docs/protocol.md, "Canonical encoding"); an agent in another
language must reproduce exactly these vectors.
"""

from __future__ import annotations

import json
import math

import pytest

from agent import verify
from ota import signing

VECTORS: list[tuple[object, bytes]] = [
    ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
    ({}, b"{}"),
    ([], b"[]"),
    (
        {"z": {"y": [3, {"b": None, "a": True}], "x": False}, "a": []},
        b'{"a":[],"z":{"x":false,"y":[3,{"a":true,"b":null}]}}',
    ),
    # keys sort by code point: upper case before lower case before non-ASCII
    ({"\u00e9": 1, "z": 2, "a": 3, "Z": 4, "_": 5}, b'{"Z":4,"_":5,"a":3,"z":2,"\xc3\xa9":1}'),
    # ... including characters beyond the BMP (UTF-16 order, as in RFC 8785, would differ here)
    ({"\U0001f600": 1, "\ufb01": 2}, b'{"\xef\xac\x81":2,"\xf0\x9f\x98\x80":1}'),
    # non-ASCII stays raw UTF-8; quotes, backslashes and control characters are escaped
    ({"s": "caf\u00e9 \u6771\u4eac \U0001f600"}, '{"s":"café 東京 😀"}'.encode()),
    ({"s": 'q" b\\ n\n t\t c\x01 d\x7f'}, b'{"s":"q\\" b\\\\ n\\n t\\t c\\u0001 d\x7f"}'),
    ({"s": "\u2028\u2029/"}, '{"s":"\u2028\u2029/"}'.encode()),
    # numbers: integers exact at any size, floats in Python's shortest round-trip form
    ({"i": [0, -1, 2**53 + 1, 2**63]}, b'{"i":[0,-1,9007199254740993,9223372036854775808]}'),
    (
        {"f": [1.0, 0.1, 1e-07, 1e16, 1.5e300, -0.0, 2.5, 123456789.123, 5e-324]},
        b'{"f":[1.0,0.1,1e-07,1e+16,1.5e+300,-0.0,2.5,123456789.123,5e-324]}',
    ),
    (
        {"telemetry": {"privacy": {"epsilon": 1.0, "mechanism": "laplace"}, "latency_edges_ms": [0, 0.5, 1e3]}},
        b'{"telemetry":{"latency_edges_ms":[0,0.5,1000.0],"privacy":{"epsilon":1.0,"mechanism":"laplace"}}}',
    ),
]


@pytest.mark.parametrize(("value", "expected"), VECTORS)
def test_server_and_agent_produce_the_same_known_bytes(value: object, expected: bytes) -> None:
    assert signing.canonical(value) == expected
    assert verify.canonical(value) == expected
    # the agent canonicalizes what it parsed from the wire: the bytes must survive the round trip
    assert verify.canonical(json.loads(expected)) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "\ud800", {"k": [1, {"x": math.nan}]}])
def test_values_that_are_not_json_are_refused_on_both_sides(value: object) -> None:
    with pytest.raises(ValueError):
        signing.canonical(value)
    with pytest.raises(ValueError):
        verify.canonical(value)


@pytest.mark.django_db
def test_a_signature_from_the_server_verifies_in_the_agent_and_fails_on_any_changed_byte() -> None:
    from fleet import manifests
    from tests import factories

    factories.release(factories.staged_version("d\u00e9tection-\u6771", "v1", seed=1))  # non-ASCII in the bytes
    dev, token = factories.device(labels={"region": "eu"})
    body = manifests.poll(token).body
    pinned = signing.public_info()
    doc = json.loads(body)
    got = verify.verify_manifest(doc, pinned)
    assert got["device_id"] == str(dev.id) and verify.canonical(got) == manifests.poll(token).canonical
    assert got["models"][0]["model"] == "d\u00e9tection-\u6771"

    start = body.index(b'{"device_id"')
    end = body.index(b',"signature":')
    refused = 0
    for i in range(start, end):
        changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        try:
            altered = json.loads(changed)
            same = verify.canonical(altered["manifest"]) == verify.canonical(doc["manifest"])
        except (ValueError, KeyError, TypeError):
            continue  # no longer JSON (or no longer a signed document): nothing to verify
        if same:  # a change JSON does not see (none is expected in canonical bytes)
            verify.verify_manifest(altered, pinned)
            continue
        with pytest.raises(verify.ManifestRefused):
            verify.verify_manifest(altered, pinned)
        refused += 1
    assert refused > (end - start) // 2
