"""Aliases over the API: list (viewer), set or move and remove (operator), and resolve ``MODEL@alias``.

Routes hang on ``ota.api.router`` (registered by importing this module in ``edgefleet.api``).
"""

from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Schema
from pydantic import ConfigDict

from accounts.api_auth import operator_auth, viewer_auth
from fleet.errors import ProtocolError
from ota import aliases, services
from ota.api import router
from ota.models import Alias, Model
from ota.registry_api import SLUG


class AliasOut(Schema):
    model: str
    alias: str
    version: str
    updated_at: datetime
    updated_by: str | None


class AliasIn(Schema):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(
        ..., min_length=1, max_length=65, pattern=aliases.REF_RE.pattern, description="label or @alias"
    )


class ResolveFilter(Schema):
    ref: str = Field(
        ...,
        min_length=3,
        max_length=170,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,99}[@:]@?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="MODEL@alias or MODEL:label",
    )


def alias_json(a: Alias) -> dict[str, Any]:
    return {
        "model": a.model.name,
        "alias": a.name,
        "version": a.version.label,
        "updated_at": a.updated_at,
        "updated_by": a.updated_by.get_username() if a.updated_by else None,
    }


def _model(name: str) -> Model:
    model = Model.objects.filter(name=name).first() if SLUG.fullmatch(name) else None
    if model is None:
        raise ProtocolError(404, "not_found", f"There is no model {name[:100]!r}.")
    return model


def _refused(exc: aliases.AliasError) -> ProtocolError:
    return ProtocolError(exc.status, exc.code, exc.message, exc.field)


@router.get("/models/{name}/aliases", auth=viewer_auth, response=list[AliasOut], summary="A model's aliases")
def list_aliases(request: HttpRequest, name: str) -> list[dict[str, Any]]:
    model = _model(name)
    return [alias_json(a) for a in model.aliases.select_related("model", "version", "updated_by")]


@router.put(
    "/models/{name}/aliases/{alias}",
    auth=operator_auth,
    response=AliasOut,
    summary="Point an alias at a staged version (create or move it; audited)",
)
def put_alias(request: HttpRequest, name: str, alias: str, payload: AliasIn) -> dict[str, Any]:
    model = _model(name)
    try:
        aliases.check_name(alias)
        version = aliases.resolve(model, payload.version)
        if version is None:
            raise aliases.AliasError(
                "not_found", f"Model '{model.name}' has no version {payload.version!r}.", "version", 404
            )
        row = aliases.set_alias(version, alias, request=request)
    except aliases.AliasError as exc:
        raise _refused(exc) from None
    return alias_json(Alias.objects.select_related("model", "version", "updated_by").get(pk=row.pk))


@router.delete(
    "/models/{name}/aliases/{alias}", auth=operator_auth, response={204: None}, summary="Remove an alias (audited)"
)
def delete_alias(request: HttpRequest, name: str, alias: str) -> HttpResponse:
    model = _model(name)
    try:
        aliases.remove_alias(model, aliases.check_name(alias), request=request)
    except aliases.AliasError as exc:
        raise _refused(exc) from None
    return HttpResponse(status=204)


@router.get(
    "/resolve",
    auth=viewer_auth,
    summary="The version MODEL@alias (or MODEL:label) names now",
    openapi_extra={"responses": {200: {"description": "the version, as GET /models/{name}/versions/{label}"}}},
)
def resolve_ref(request: HttpRequest, filters: Query[ResolveFilter]) -> dict[str, Any]:
    version = aliases.resolve_spec(filters.ref)
    if version is None:
        raise ProtocolError(404, "not_found", f"{filters.ref} names no version.", "ref")
    return services.version_json(version)
