"""Version search for the model page and the API: label, notes, lineage text, a meta key's value, an alias."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTextTransform, KeyTransform

from ota import lineage

MAX_QUERY = 200


class SearchError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def filter_versions(
    qs: QuerySet, *, q: str | None = None, meta: str | None = None, alias: str | None = None
) -> QuerySet:
    """Narrow a model's versions; every term must match (AND). Matching is case-insensitive substring for ``q``."""
    q = (q or "").strip()[:MAX_QUERY]
    if q:
        qs = qs.filter(Q(label__icontains=q) | Q(notes__icontains=q) | Q(lineage_text__icontains=q))
    if meta:
        key, sep, value = meta.partition("=")
        key = key.strip()
        if not sep or not lineage.KEY_RE.match(key):
            raise SearchError(f"meta is key=value with a key of {lineage.KEY_HELP}.", "meta")
        # KeyTextTransform takes the key as one name (a key with '__' in it is not a path).
        qs = qs.annotate(_meta_value=KeyTextTransform(key, KeyTransform("meta", "lineage"))).filter(
            _meta_value=value.strip()
        )
    if alias:
        qs = qs.filter(aliases__name=alias)
    return qs
