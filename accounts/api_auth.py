"""Role-checked authentication for the management API: viewer tokens read, operator tokens act.

``RoleAuth(role)`` accepts a bearer API token (its owner's role, capped by the token's own) or a
logged-in dashboard session (with the CSRF check on writes, as forms have). Unknown, revoked or
inactive-owner tokens get 401 ``unauthorized``; a valid token whose role is too low gets 403
``forbidden`` naming the role needed, so a pipeline's log says what to fix.
"""

from datetime import timedelta
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer
from ninja.utils import check_csrf

from accounts.models import ApiToken, hash_token
from accounts.roles import ORDER, role_of, token_role
from fleet.errors import ProtocolError

LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is for people: one write a minute is plenty


def _forbidden(need: str, held: str | None) -> ProtocolError:
    what = f"a {held} token" if held else "a token of a user with no role"
    return ProtocolError(403, "forbidden", f"This needs the {need} role; the request has {what}.")


class RoleAuth(HttpBearer):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def _enough(self, held: str | None) -> bool:
        return held is not None and ORDER.index(held) >= ORDER.index(self.role)

    def __call__(self, request: HttpRequest) -> Any:
        has_bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
        user = getattr(request, "user", None)
        if not has_bearer and user is not None and user.is_authenticated:
            held = role_of(user)
            if not self._enough(held):
                raise _forbidden(self.role, held)
            if request.method not in ("GET", "HEAD", "OPTIONS") and check_csrf(request) is not None:
                raise ProtocolError(403, "csrf_failed", "A browser session must send the CSRF token on writes.")
            request.audit_actor = user.get_username()
            request.api_role = held
            return user
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        row = (
            ApiToken.objects.select_related("user")
            .filter(token_hash=hash_token(token), revoked_at__isnull=True)
            .first()
        )
        if row is None or not row.user.is_active:
            return None
        held = token_role(row)
        if not self._enough(held):
            raise _forbidden(self.role, held)
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        request.user = row.user
        request.audit_actor = f"api:{row.name}"
        request.api_role = held
        return row.user


viewer_auth = RoleAuth("viewer")
operator_auth = RoleAuth("operator")
admin_auth = RoleAuth("admin")
