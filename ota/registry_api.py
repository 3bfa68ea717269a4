"""Reading the registry with a viewer token: model and version lists for the CLI and dashboards.

The routes hang on ``ota.api.router`` (GET next to the upload's POST on ``/models/{name}/versions``:
one path must live in one router) but are kept here so the upload module stays as it is.
"""

import re
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Query, Schema

from accounts.api_auth import viewer_auth
from edgefleet import paging
from edgefleet.api_fields import Cursor, Limit, Slug, Text
from fleet.errors import ProtocolError
from ota import search, services
from ota.api import router
from ota.models import Model

SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")


class ModelOut(Schema):
    name: str
    description: str
    versions: int
    latest: str | None
    latest_status: str | None


class ModelPage(Schema):
    items: list[ModelOut]
    next_cursor: str | None


class ListFilter(Schema):
    cursor: Cursor | None = None
    limit: Limit | None = None


class VersionFilter(ListFilter):
    status: Literal["validating", "staged", "rejected", "archived"] | None = None
    q: Text | None = Field(None, description="part of the label, the notes or the lineage (e.g. a git commit)")
    meta: Text | None = Field(None, description="key=value: lineage meta whose key has exactly this value")
    alias: Slug | None = Field(None, description="only the version this alias points at")


class VersionPage(Schema):
    items: list[dict[str, Any]]
    next_cursor: str | None


@router.get("/models", auth=viewer_auth, response=ModelPage, summary="Model families, by name")
def list_models(request: HttpRequest, filters: Query[ListFilter]) -> dict[str, Any]:
    rows, nxt = paging.page(
        Model.objects.all(), name="models", order=("name",), cursor=filters.cursor, limit=filters.limit
    )
    items = []
    for m in rows:
        latest = m.versions.order_by("-created_at", "-id").first()
        items.append(
            {
                "name": m.name,
                "description": m.description,
                "versions": m.versions.count(),
                "latest": latest.label if latest else None,
                "latest_status": latest.status if latest else None,
            }
        )
    return {"items": items, "next_cursor": nxt}


@router.get(
    "/models/{name}/versions", auth=viewer_auth, response=VersionPage, summary="A model's versions, newest first"
)
def list_versions(request: HttpRequest, name: str, filters: Query[VersionFilter]) -> dict[str, Any]:
    model = Model.objects.filter(name=name).first() if SLUG.fullmatch(name) else None
    if model is None:
        raise ProtocolError(404, "not_found", f"There is no model {name[:100]!r}.")
    qs = model.versions.select_related("model", "artifact")
    if filters.status:
        qs = qs.filter(status=filters.status)
    try:
        qs = search.filter_versions(qs, q=filters.q, meta=filters.meta, alias=filters.alias)
    except search.SearchError as exc:
        raise ProtocolError(400, "invalid", str(exc), exc.field) from None
    rows, nxt = paging.page(
        qs, name="versions", order=("-created_at", "-id"), cursor=filters.cursor, limit=filters.limit
    )
    return {"items": [services.version_json(v) for v in rows], "next_cursor": nxt}
