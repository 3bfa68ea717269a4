"""The served OpenAPI document is valid JSON for strict parsers: Swagger UI refuses duplicate keys."""

import json

import pytest


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise AssertionError(f"duplicate keys {dupes}")
    return dict(pairs)


@pytest.mark.django_db
def test_the_served_schema_has_no_duplicate_keys_and_documents_protocol_errors(client: object) -> None:
    body = client.get("/api/v1/openapi.json").content
    schema = json.loads(body, object_pairs_hook=_no_duplicates)
    manifest = schema["paths"]["/api/v1/manifest"]["get"]["responses"]
    assert {"401", "403", "429"} <= set(manifest)
    events = schema["paths"]["/api/v1/events"]["post"]["responses"]
    assert {"400", "401", "413"} <= set(events)
