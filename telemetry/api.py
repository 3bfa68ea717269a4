"""``POST /api/v1/telemetry``: a device's batch of window reports (docs/protocol.md).

Structure is checked here (a malformed or oversized body, a wrong type or an unknown field is a
``400``/``413`` naming the field: the agent has a bug); anything that depends on server state
(unknown version, bins, window, budget) is a per-report rejection in the ``202`` answer, so one
stale report cannot block a device's spool. No Redis on this path: 202 means committed.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from ninja import Router
from pydantic import UUID4, BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet import wire
from fleet.auth import device_auth
from fleet.errors import ProtocolError, field_path
from fleet.wire import UtcDatetime
from telemetry import services

router = Router(tags=["device"])

MAX_REPORTS = 500
MAX_BINS = 1000
MAX_FEATURES = 2048

Number = float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Hist(_Strict):
    counts: list[Number] = Field(max_length=MAX_BINS)


class PrivacyIn(_Strict):
    mechanism: str = Field(max_length=16)
    epsilon: float = Field(gt=0)


class ReportIn(_Strict):
    id: UUID4
    model: str = Field(max_length=100)
    version: str = Field(max_length=64)
    window_start: UtcDatetime
    window_end: UtcDatetime
    inference_count: Number
    error_count: Number
    latency_ms: Hist
    outputs: Hist
    features: dict[str, Hist]
    privacy: PrivacyIn

    @field_validator("features")
    @classmethod
    def _few_features(cls, v: dict) -> dict:
        if len(v) > MAX_FEATURES:
            raise ValueError(f"at most {MAX_FEATURES} features")
        return v


class BatchIn(_Strict):
    reports: list[ReportIn] = Field(min_length=1, max_length=MAX_REPORTS)


class BatchOut(BaseModel):
    accepted: list[str]
    duplicates: list[str]
    rejected: list[dict]


def parse_batch(request: HttpRequest) -> BatchIn:
    """The body as a ``BatchIn``, or a ProtocolError naming what is wrong (never a 500).

    The device API's strict parse first (fleet/wire.py: content type, size, UTF-8, no NaN, NUL,
    duplicate keys or deep nesting), then the schema."""
    data = wire.read_json(request)
    if not isinstance(data, dict):
        raise ProtocolError(400, "invalid", "the body must be a JSON object", None)
    try:
        return BatchIn.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = field_path(first.get("loc"))
        code = "unknown_field" if first.get("type") == "extra_forbidden" else "invalid"
        raise ProtocolError(400, code, f"{field}: {first.get('msg')}" if field else first.get("msg"), field) from None


@router.post(
    "/telemetry",
    auth=device_auth,
    response={202: BatchOut},
    openapi_extra={"requestBody": wire.openapi_body(BatchIn)},
    description='Body: {"reports": [...]} as in docs/protocol.md (parsed by hand so size and shape errors '
    "get the protocol's error body).",
)
def post_telemetry(request: HttpRequest) -> JsonResponse:
    """Store a batch of window reports; ``202`` lists accepted, duplicate and rejected ids."""
    batch = parse_batch(request)
    result = services.ingest_reports(request.auth.id, batch.reports)
    return JsonResponse(result, status=202)
