"""API-token authentication for the operator JSON API (training pipelines push versions with it)."""

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer
from ninja.utils import check_csrf

from accounts.models import ApiToken, hash_token
from accounts.roles import OPERATOR, ORDER, has_role, token_role


class OperatorToken(HttpBearer):
    """Bearer API token of a user who holds the operator role (or a logged-in operator session)."""

    def __call__(self, request: HttpRequest):  # type: ignore[override]
        user = getattr(request, "user", None)
        has_bearer = request.headers.get("Authorization", "").lower().startswith("bearer ")
        if not has_bearer and user is not None and user.is_authenticated and has_role(user, OPERATOR):
            # A browser session must prove the request came from our own page (CSRF), as forms do.
            if request.method not in ("GET", "HEAD", "OPTIONS") and check_csrf(request) is not None:
                return None
            request.audit_actor = user.get_username()
            return user
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str):  # type: ignore[override]
        row = (
            ApiToken.objects.select_related("user")
            .filter(token_hash=hash_token(token), revoked_at__isnull=True)
            .first()
        )
        if row is None or token_role(row) not in ORDER[ORDER.index(OPERATOR) :]:
            return None
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
        request.user = row.user
        request.audit_actor = f"api:{row.name}"
        return row.user
