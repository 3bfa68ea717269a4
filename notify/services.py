"""What a person does with subscriptions (the page and the API call these): plain values in.

Who sees what: a subscription belongs to a user (``owner``) or to a team (a Django group, e.g. the
``operator`` role or a group an admin made); its owner, the team's members and admins see it.
Only operators make or change subscriptions: they make the server send requests out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Q, QuerySet

from accounts.roles import ADMIN, has_role
from notify import events, outbound
from notify.kinds import KINDS, TEST
from notify.models import Delivery, Subscription
from notify.secrets import conceal, new_signing_secret

MAX_EMAILS = 20
MAX_URL = 2000


class SubscriptionError(ValueError):
    def __init__(self, message: str, field: str | None = None, status: int = 400, code: str = "invalid") -> None:
        super().__init__(message)
        self.message, self.field, self.status, self.code = message, field, status, code


def visible(user: Any) -> QuerySet[Subscription]:
    qs = Subscription.objects.select_related("owner", "team")
    if has_role(user, ADMIN):
        return qs
    return qs.filter(Q(owner=user) | Q(team__in=user.groups.all())).distinct()


def get_visible(user: Any, pk: int) -> Subscription:
    sub = visible(user).filter(pk=pk).first()
    if sub is None:
        raise SubscriptionError(f"There is no subscription {pk}.", None, 404, "not_found")
    return sub


def hint(url: str) -> str:
    """Scheme and host only: paths of Slack and many webhook URLs are credentials."""
    scheme, host, port, _ = outbound.check_url(url)
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}{'' if port == default else f':{port}'}/…"


def _clean_url(url: str, channel: str) -> str:
    url = (url or "").strip()
    if not url:
        raise SubscriptionError(f"A {channel} subscription needs a URL.", "url")
    if len(url) > MAX_URL:
        raise SubscriptionError(f"The URL is longer than {MAX_URL} characters.", "url")
    try:
        scheme, _, _, _ = outbound.check_url(url)
    except outbound.Refused as exc:
        raise SubscriptionError(f"url: {exc}", "url") from None
    if channel == "slack" and scheme != "https":
        raise SubscriptionError("Slack incoming-webhook URLs are https.", "url")
    return url


def _clean_emails(emails: Iterable[str]) -> list[str]:
    out = []
    for e in emails:
        e = (e or "").strip()
        if not e:
            continue
        try:
            validate_email(e)
        except ValidationError:
            raise SubscriptionError(f"{e[:100]!r} is not an e-mail address.", "emails") from None
        out.append(e)
    if len(out) > MAX_EMAILS:
        raise SubscriptionError(f"At most {MAX_EMAILS} addresses.", "emails")
    return list(dict.fromkeys(out))


def _clean_events(kinds: Iterable[str]) -> list[str]:
    kinds = list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SubscriptionError(f"Unknown event kind {unknown[0][:60]!r}; known: {', '.join(KINDS)}.", "events")
    if not kinds:
        raise SubscriptionError("Subscribe to at least one kind of event.", "events")
    return kinds


def _team(user: Any, name: str | None) -> Group | None:
    if not name:
        return None
    group = Group.objects.filter(name=name).first()
    if group is None or not (has_role(user, ADMIN) or user.groups.filter(pk=group.pk).exists()):
        raise SubscriptionError(f"You are not a member of a team {name[:100]!r}.", "team")
    return group


def create(
    user: Any,
    *,
    name: str,
    channel: str,
    events: Iterable[str],
    url: str = "",
    emails: Iterable[str] = (),
    model: str = "",
    offline_threshold: float = 0.2,
    team: str | None = None,
    active: bool = True,
) -> tuple[Subscription, str | None]:
    """A new subscription and, for a webhook, its signing secret (returned once, stored encrypted)."""
    if channel not in Subscription.Channel.values:
        raise SubscriptionError("The channel is webhook, email or slack.", "channel")
    if not (name or "").strip():
        raise SubscriptionError("Give the subscription a name.", "name")
    if not 0 <= offline_threshold <= 1:
        raise SubscriptionError("The offline threshold is a share between 0 and 1.", "offline_threshold")
    sub = Subscription(
        name=name.strip()[:120],
        channel=channel,
        events=_clean_events(events),
        model_filter=(model or "")[:100],
        offline_threshold=float(offline_threshold),
        active=active,
        created_by=user,
    )
    group = _team(user, team)
    sub.team, sub.owner = group, (None if group else user)
    secret = None
    if channel in ("webhook", "slack"):
        clean = _clean_url(url, channel)
        sub.target_encrypted, sub.target_hint = conceal(clean), hint(clean)
    else:
        sub.emails = _clean_emails(emails)
        if not sub.emails and not (group or getattr(user, "email", "")):
            raise SubscriptionError("Give e-mail addresses (your account has none).", "emails")
    if channel == "webhook":
        secret = new_signing_secret()
        sub.secret_encrypted = conceal(secret)
    sub.save()
    return sub, secret


def update(user: Any, sub: Subscription, changes: dict[str, Any]) -> Subscription:
    if "name" in changes:
        if not (changes["name"] or "").strip():
            raise SubscriptionError("Give the subscription a name.", "name")
        sub.name = changes["name"].strip()[:120]
    if "events" in changes:
        sub.events = _clean_events(changes["events"])
    if "model" in changes:
        sub.model_filter = (changes["model"] or "")[:100]
    if "offline_threshold" in changes:
        value = float(changes["offline_threshold"])
        if not 0 <= value <= 1:
            raise SubscriptionError("The offline threshold is a share between 0 and 1.", "offline_threshold")
        sub.offline_threshold, sub.offline_firing = value, False
    if "active" in changes:
        sub.active = bool(changes["active"])
    if "url" in changes:
        if sub.channel == "email":
            raise SubscriptionError("An e-mail subscription has addresses, not a URL.", "url")
        clean = _clean_url(changes["url"], sub.channel)
        sub.target_encrypted, sub.target_hint = conceal(clean), hint(clean)
    if "emails" in changes:
        if sub.channel != "email":
            raise SubscriptionError("Only e-mail subscriptions have addresses.", "emails")
        sub.emails = _clean_emails(changes["emails"])
    sub.save()
    return sub


def rotate_secret(sub: Subscription) -> str:
    if sub.channel != "webhook":
        raise SubscriptionError("Only webhooks have a signing secret.", None, 409, "invalid_state")
    secret = new_signing_secret()
    sub.secret_encrypted = conceal(secret)
    sub.save(update_fields=["secret_encrypted", "updated_at"])
    return secret


def send_test(sub: Subscription) -> Delivery:
    """A test event for this subscription only, delivered like any other (the log shows the answer)."""
    payload = {"subscription": sub.pk, "name": sub.name, "message": "If you can read this, the channel works."}
    event = events.emit(TEST, f"test:{uuid.uuid4()}", payload, only=[sub])
    assert event is not None
    return event.deliveries.get(subscription=sub)
