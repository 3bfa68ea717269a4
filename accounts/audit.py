"""Writing the audit log. Every permission-checked write calls ``record``."""

from typing import Any

from django.http import HttpRequest

from accounts.models import AuditEntry


def client_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str,
    target: object = "",
    *,
    request: HttpRequest | None = None,
    user: Any = None,
    actor_label: str | None = None,
    details: dict | None = None,
) -> AuditEntry:
    """Record one write. Without a user or request it is the system acting (a job's decision)."""
    if user is None and request is not None and getattr(request, "user", None) is not None:
        user = request.user if request.user.is_authenticated else None
    if actor_label is None:
        actor_label = getattr(request, "audit_actor", None) or (user.get_username() if user else "system")
    return AuditEntry.objects.create(
        actor=user,
        actor_label=actor_label,
        action=action,
        target=str(target)[:200],
        ip=client_ip(request),
        details=details or {},
    )
