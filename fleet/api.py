"""Device protocol v1 (docs/protocol.md): enroll, signing key, manifest, artifacts, events.

Views only parse, call a service and answer; every error has the protocol's shape.
"""

import uuid
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import Field, Router, Schema
from pydantic import AwareDatetime, ConfigDict

from fleet import manifests, presence, round_hints, services
from fleet.auth import device_auth
from fleet.errors import ProtocolError, from_exception
from fleet.wire import Details, UtcDatetime
from ota import downloads, signing

router = Router(tags=["device protocol v1"])

Word = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


class Strict(Schema):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(Strict):
    code: str
    message: str
    field: str | None


class ErrorOut(Strict):
    error: ErrorBody


class Hardware(Strict):
    arch: str = Field("", max_length=40)
    cores: int | None = Field(None, ge=0, le=4096)
    ram_mb: int | None = Field(None, ge=0, le=10_000_000)
    accelerator: str = Field("none", max_length=40)
    ort_version: str = Field("", max_length=40)
    providers: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=16)
    storage_free_mb: int | None = Field(None, ge=0, le=10**12)


class EnrollIn(Strict):
    enrollment_key: str = Field(..., min_length=1, max_length=200)
    name: str = Field("", max_length=120)
    hardware: Hardware = Field(default_factory=Hardware)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    agent_version: str = Field("", max_length=40)
    identity_key: str = Field(
        "",
        max_length=43,
        pattern=r"^([A-Za-z0-9_-]{43})?$",
        description="the device's Ed25519 public key (32 bytes, base64url): it signs the device's round keys",
    )


class SigningKey(Strict):
    alg: Literal["Ed25519"]
    key_id: str
    public_key: str


class EnrollOut(Strict):
    device_id: uuid.UUID
    token: str
    poll_interval: int
    signing_key: SigningKey


class ArtifactOut(Strict):
    url: str
    sha256: str
    size: int
    variant: str


class FallbackOut(Strict):
    version: str
    version_id: int
    artifact: ArtifactOut


class InstallWindow(Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]]
    start: str = Field(..., description="HH:MM, wall-clock time in tz")
    end: str = Field(..., description="HH:MM (24:00 = end of day); not after start: the span crosses midnight")


class InstallConditions(Strict):
    power: Literal["external"] | None = None
    network: Literal["unmetered"] | None = None
    idle: Literal[True] | None = None


class InstallRules(Strict):
    """When the agent may install this entry's version (docs/protocol.md, "Install windows and conditions")."""

    windows: list[InstallWindow] | None = None
    tz: str | None = Field(None, description="the zone the windows are read in (the device's tz label, else UTC)")
    conditions: InstallConditions | None = None


class ModelEntry(Strict):
    model: str
    version: str
    version_id: int
    campaign_id: int | None
    artifact: ArtifactOut
    fallback: FallbackOut | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    telemetry: dict[str, Any]
    install: InstallRules | None = Field(None, description="only present for a campaign with windows or conditions")


class Privacy(Strict):
    mechanism: str
    epsilon: float
    unit: str
    daily_budget: float


class TelemetrySettings(Strict):
    window_seconds: int
    privacy: Privacy
    latency_edges_ms: list[float]


class Manifest(Strict):
    """The signed desired state; ``sequence``, ``issued_at`` and ``expires_at`` let the agent refuse a
    replayed, older or expired manifest (docs/protocol.md, "Freshness")."""

    protocol: Literal[2]
    device_id: uuid.UUID
    sequence: int = Field(..., ge=1, description="per device, higher for every newly signed manifest")
    issued_at: AwareDatetime = Field(..., description="YYYY-MM-DDTHH:MM:SSZ")
    expires_at: AwareDatetime = Field(..., description="YYYY-MM-DDTHH:MM:SSZ; the agent refuses it after this")
    poll_interval: int
    telemetry: TelemetrySettings
    models: list[ModelEntry]


class Signature(Strict):
    alg: Literal["Ed25519"]
    key_id: str
    value: str


class ManifestOut(Strict):
    manifest: Manifest
    signature: Signature


EventKind = Literal[
    "download_started",
    "download_finished",
    "download_failed",
    "verify_failed",
    "installed",
    "install_failed",
    "activated",
    "committed",
    "install_waiting",
    "fell_back",
    "spool_dropped",
]


class EventIn(Strict):
    id: uuid.UUID
    kind: EventKind
    at: UtcDatetime
    # Names as the manifest gave them (they become the device's "installed" map), or empty.
    model: str = Field("", max_length=100, pattern=r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
    version: str = Field("", max_length=64, pattern=r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
    details: Details = Field(default_factory=dict)


class EventsIn(Strict):
    events: list[EventIn] = Field(..., max_length=500)


class EventsOut(Strict):
    accepted: int
    duplicates: int


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 413: ErrorOut, 415: ErrorOut, 429: ErrorOut}


MANIFEST_HEADERS = [
    {
        "in": "header",
        "name": "X-Agent-State",
        "required": False,
        "schema": {"type": "string"},
        "description": 'what runs now and the install conditions: {"models": {"<model>": "<version label>"}, '
        '"conditions": {"power": "external"|"battery", "network": "unmetered"|"metered"|"none", "idle": true|false}}',
    },
    {"in": "header", "name": "If-None-Match", "required": False, "schema": {"type": "string"}},
]

ROUNDS_HEADER = {
    "X-Rounds": {
        "description": "unsigned hint, beside the signed manifest: the device's open aggregation rounds in "
        "which it is still expected to answer, as <round>:<phase>:<phase deadline, epoch seconds>, comma-"
        'separated ("" when none). Absent: no hint (ask GET /api/v1/rounds at every poll). '
        'docs/protocol.md, "Rounds".',
        "schema": {"type": "string", "pattern": r"^([0-9a-f]{1,64}:(advertise|share|masked|unmask):[0-9]+(,|$))*$"},
    }
}


@router.post("/enroll", response={201: EnrollOut, **ERRORS}, auth=None, summary="Join the fleet with an enrollment key")
def enroll(request: HttpRequest, payload: EnrollIn) -> tuple[int, dict[str, Any]]:
    try:
        done = services.enroll(
            payload.enrollment_key,
            name=payload.name,
            hardware=payload.hardware.model_dump(),
            labels=payload.labels,
            agent_version=payload.agent_version,
            identity_key=payload.identity_key,
        )
    except services.EnrollError as e:
        raise ProtocolError(e.status, e.code, e.message, e.field) from e
    return 201, {
        "device_id": done.device.id,
        "token": done.token,
        "poll_interval": settings.EDGEFLEET_POLL_INTERVAL,
        "signing_key": signing.public_info(),
    }


@router.get("/signing-key", response=SigningKey, auth=None, summary="The public key devices pin")
def signing_key(request: HttpRequest) -> dict[str, str]:
    return signing.public_info()


@router.get(
    "/manifest",
    response={200: ManifestOut, 304: None, **ERRORS},
    auth=None,  # checked in the view (fleet.manifests.poll), so a ready manifest needs no snapshot lookup
    openapi_extra={
        "parameters": MANIFEST_HEADERS,
        "security": [{"DeviceBearer": []}],
        "responses": {200: {"headers": ROUNDS_HEADER}, 304: {"headers": ROUNDS_HEADER}},
    },
    summary="The signed desired state for this device",
)
def manifest(request: HttpRequest) -> HttpResponse:
    return _manifest(request, _bearer(request))


def _bearer(request: HttpRequest) -> str:
    """The token from ``Authorization: Bearer <token>``; 401 when missing or malformed."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise ProtocolError(401, "token_missing", "Send Authorization: Bearer <device token>.")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        raise ProtocolError(401, "token_invalid", "The device token is not valid.")
    return token


def _manifest(request: HttpRequest, token: str) -> HttpResponse:
    try:
        state, conditions = presence.parse_agent_state(request.headers.get("X-Agent-State"))
    except ValueError as e:
        raise ProtocolError(400, "invalid", str(e), "X-Agent-State") from e
    ready = manifests.poll(token, charge=getattr(request, "edge_charge", None))
    presence.touch(ready.device_id, state, conditions=conditions)
    if request.headers.get("If-None-Match") == ready.etag:
        resp = HttpResponse(status=304)
    else:
        resp = HttpResponse(ready.body, content_type="application/json")
    resp["ETag"] = ready.etag
    hint = round_hints.hint_for(ready.device_id)
    if hint is not None:  # unsigned, beside the signed manifest: a round's phase changes too often to sign
        resp[round_hints.HEADER] = hint
    return resp


@csrf_exempt
def manifest_fast(request: HttpRequest) -> HttpResponse:
    """The same call as the ninja route, routed first in edgefleet/urls.py: polls are the hottest path,
    and skipping the router's dispatch keeps a poll close to a trivial view (bench/poll_throughput.py).
    The ninja route stays for the OpenAPI schema and behaves identically."""
    try:
        if request.method != "GET":
            raise ProtocolError(405, "method_not_allowed", "Use GET.")
        return _manifest(request, _bearer(request))
    except ProtocolError as e:
        return from_exception(e)


@router.get(
    "/artifacts/{sha256}",
    response={200: None, 206: None, 302: None, 404: ErrorOut, 416: ErrorOut, **ERRORS},
    auth=device_auth,
    summary="Artifact bytes (Range for resume)",
    openapi_extra={"parameters": [{"in": "header", "name": "Range", "required": False, "schema": {"type": "string"}}]},
)
def artifact(request: HttpRequest, sha256: str) -> HttpResponse:
    return downloads.serve(request.auth, sha256, request.headers.get("Range"))


@router.post("/events", response={200: EventsOut, **ERRORS}, auth=device_auth, summary="A batch of device events")
def events(request: HttpRequest, payload: EventsIn) -> dict[str, int]:
    try:
        accepted, duplicates = services.record_events(request.auth.id, [e.model_dump() for e in payload.events])
    except services.DeviceGone as e:
        raise ProtocolError(401, "token_invalid", "The device token is not known; enroll again.") from e
    return {"accepted": accepted, "duplicates": duplicates}
