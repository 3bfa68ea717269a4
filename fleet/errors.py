"""The protocol's one error shape, so every device-facing failure reads the same way."""

from typing import Any

from django.http import JsonResponse


class ProtocolError(Exception):
    """Raise anywhere under the device API; the NinjaAPI handler turns it into the error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JsonResponse:
    """``{"error": {"code", "message", "field"}}`` with ``status``."""
    resp = JsonResponse({"error": {"code": code, "message": message, "field": field}}, status=status)
    for k, v in (headers or {}).items():
        resp[k] = v
    return resp


def from_exception(exc: ProtocolError) -> JsonResponse:
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


def field_path(loc: Any) -> str | None:
    """Pydantic's ``loc`` tuple as a dotted json path, without ninja's ``body``/``payload`` prefix."""
    parts = [str(p) for p in (loc or ())]
    while parts and parts[0] in {"body", "payload", "query", "header", "path"}:
        parts.pop(0)
    return ".".join(parts) or None
