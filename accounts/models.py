import hashlib
import secrets

from django.conf import settings
from django.db import models


def hash_token(token: str) -> str:
    """Tokens are stored only as their sha256: a leaked database does not leak usable tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


class AuditEntry(models.Model):
    """One write by a person, an API client or the system itself: who, what, when, from where."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=150, help_text="username, 'api:<token name>' or 'system'")
    action = models.CharField(max_length=80, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target}"


class ApiToken(models.Model):
    """A token for scripts such as training pipelines; it acts with its owner's role."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, db_index=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    role = models.CharField(
        max_length=16,
        blank=True,
        default="",
        help_text="highest role the token acts with (viewer: read-only); empty: its owner's role",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user: object, name: str, role: str = "") -> tuple["ApiToken", str]:
        """Make a token; the plain value is returned once and never stored."""
        plain = "efa_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=plain[:12], token_hash=hash_token(plain), role=role)
        return token, plain
