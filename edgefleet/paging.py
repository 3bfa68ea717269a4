"""Keyset pagination with opaque cursors for the management API's lists.

A cursor is the sort key of the last item of a page, signed (``django.core.signing``) with a salt per
list: clients cannot forge or edit one, and a cursor of one list is refused by another (a device's
UUID fed to a list keyed by integers would otherwise be a 500). Keyset pages cost the same at page
1 and page 10,000, and a row inserted while a client pages does not shift the pages after it.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.core import signing
from django.db.models import Model, Q, QuerySet

from fleet.errors import ProtocolError

T = TypeVar("T", bound=Model)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def _value(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else (v if isinstance(v, int | float | str) else str(v))


def encode(name: str, values: Sequence[Any]) -> str:
    return signing.dumps([_value(v) for v in values], salt=f"edgefleet.cursor.{name}", compress=True)


def decode(name: str, cursor: str, n: int) -> list[Any]:
    try:
        values = signing.loads(cursor, salt=f"edgefleet.cursor.{name}")
    except signing.BadSignature:
        raise ProtocolError(400, "invalid_cursor", "The cursor is not one this list gave out.", "cursor") from None
    if not isinstance(values, list) or len(values) != n:
        raise ProtocolError(400, "invalid_cursor", "The cursor is not one this list gave out.", "cursor")
    return values


def after(order: Sequence[str], values: Sequence[Any]) -> Q:
    """Rows strictly after ``values`` in ``order`` (fields prefixed with ``-`` sort descending)."""
    q = Q()
    equal: dict[str, Any] = {}
    for field, value in zip(order, values, strict=True):
        name = field.lstrip("-")
        op = "lt" if field.startswith("-") else "gt"
        q |= Q(**equal, **{f"{name}__{op}": value})
        equal[name] = value
    return q


def page(
    qs: QuerySet[T],
    *,
    name: str,
    order: Sequence[str],
    cursor: str | None,
    limit: int | None,
    key: Callable[[T], Sequence[Any]] | None = None,
) -> tuple[list[T], str | None]:
    """One page of ``qs`` sorted by ``order`` and the cursor of the next page (None on the last)."""
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise ProtocolError(400, "invalid", f"limit must be between 1 and {MAX_LIMIT}.", "limit")
    if cursor:
        qs = qs.filter(after(order, decode(name, cursor, len(order))))
    rows = list(qs.order_by(*order)[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    values = key(last) if key else [getattr(last, f.lstrip("-")) for f in order]
    return rows[:limit], encode(name, values)
