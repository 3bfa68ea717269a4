"""Roles are Django groups, ordered: each role can do everything the roles below it can."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ORDER = [VIEWER, OPERATOR, ADMIN]


def role_of(user: Any) -> str | None:
    """The highest role a user holds, or None for a user with no role."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    names = {g.name for g in user.groups.all()}
    held = [r for r in ORDER if r in names]
    return held[-1] if held else None


def has_role(user: Any, role: str) -> bool:
    held = role_of(user)
    return held is not None and ORDER.index(held) >= ORDER.index(role)


def role_required(role: str) -> Callable:
    """Views: log in first, then 403 unless the user holds ``role`` or a higher one."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        @login_required
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied(f"This needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


viewer_required = role_required(VIEWER)
operator_required = role_required(OPERATOR)
admin_required = role_required(ADMIN)


def token_role(token: Any) -> str | None:
    """The role an API token acts with: its owner's, capped by the token's own ``role`` if set."""
    held = role_of(token.user)
    cap = getattr(token, "role", "") or ""
    if held is None or cap not in ORDER:
        return held
    return ORDER[min(ORDER.index(held), ORDER.index(cap))]
