"""The JSON API (device protocol v1 and the operator API), with its OpenAPI schema at /api/v1/docs."""

import re
from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.parser import Parser

import ota.alias_api  # registers the alias routes on ota's router
import ota.registry_api  # noqa: F401  (registers the registry's read routes on ota's router)
from accounts.api import router as accounts_router
from fleet.api import router as fleet_router
from fleet.manage_api import router as fleet_manage_router
from notify.api import router as notify_router
from ota.api import router as ota_router
from rollout.api import router as rollout_router
from telemetry.alerts_api import router as alerts_router
from telemetry.api import router as telemetry_router
from telemetry.rounds_api import router as rounds_router

ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


DEVICE_PATH = re.compile(r"^/api/v1/(enroll|signing-key|manifest|artifacts/|events|telemetry|rounds)")


class WireParser(Parser):
    """Every JSON body goes through the device API's strict parse (fleet/wire.py). Ninja wraps what
    ``parse_body`` raises in a plain 400; the HttpError handler below unwraps our ProtocolError so the
    status (413/415) and the field survive."""

    def parse_body(self, request: HttpRequest) -> Any:
        from fleet import wire

        return wire.read_json(request)


class EdgeFleetAPI(NinjaAPI):
    """Documents the protocol's errors on every device call: any device call may answer 429 (rate
    limit or load shedding), any token-checked call 401 or 403, any call with a body 400, 413 or 415,
    whatever its route declares."""

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(*args, **kwargs)
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                codes = []
                if any("DeviceBearer" in sec for sec in op.get("security", [])):
                    codes += ["401", "403", "429"]
                if any("RoleAuth" in sec for sec in op.get("security", [])):
                    # Management routes: bad query/path values, unknown objects, refused transitions.
                    codes += ["400", "401", "403", "404", "409"]
                if DEVICE_PATH.match(path):
                    codes += ["429"]
                if method in ("post", "put", "patch"):
                    codes += ["400", "413"]
                    if "application/json" in op.get("requestBody", {}).get("content", {}):
                        codes += ["415"]  # JSON bodies go through the strict parse (WireParser)
                # ninja keys responses by int; the same code as a string would be a duplicate key in the JSON.
                declared = {str(c) for c in op["responses"]}
                for code in codes:
                    if code not in declared:
                        declared.add(code)
                        op["responses"][code] = {"description": "Protocol error", "content": ERROR_REF}
        return schema


api = EdgeFleetAPI(
    title="EdgeFleet API",
    version="1",
    urls_namespace="api",
    parser=WireParser(),
    description="Device protocol v1 (enroll, manifest, artifacts, events, telemetry) and the operator API.",
)
api.add_router("", fleet_router)
api.add_router("", ota_router)
api.add_router("", telemetry_router)
api.add_router("", rounds_router)
api.add_router("", rollout_router)
api.add_router("", fleet_manage_router)
api.add_router("", alerts_router)
api.add_router("", accounts_router)
api.add_router("", notify_router)


# Every API error has the protocol's shape {"error": {"code", "message", "field"}} (docs/protocol.md).
from django.http import Http404, HttpResponse  # noqa: E402
from ninja.errors import AuthenticationError, HttpError, ValidationError  # noqa: E402

from fleet.errors import ProtocolError, error_response, field_path, from_exception  # noqa: E402


@api.exception_handler(ProtocolError)
def _protocol_error(request: HttpRequest, exc: ProtocolError) -> HttpResponse:
    return from_exception(exc)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    field = field_path(first.get("loc"))
    kind = first.get("type", "")
    code = "unknown_field" if kind == "extra_forbidden" else "invalid"
    if kind == "json_invalid" or (field is None and "json" in str(first.get("msg", "")).lower()):
        code = "malformed_json"
    message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid request"))
    return error_response(400, code, message, field)


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(401, "unauthorized", "Send Authorization: Bearer <token>.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, ProtocolError):  # the strict parse, wrapped by ninja's body reader
        return from_exception(exc.__cause__)
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    return error_response(exc.status_code, f"http_{exc.status_code}", str(exc))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "not_found", "Not found.")


from django.core.exceptions import RequestDataTooBig  # noqa: E402


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(413, "too_large", "The request body is larger than the server accepts.")
