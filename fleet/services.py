"""What operators and devices do to the fleet: plain values in, one transaction each."""

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from fleet import selectors
from fleet.auth import forget_device, hash_token, new_token
from fleet.models import Cohort, Device, DeviceEvent, EnrollmentKey

KEY_PREFIX = "efk_"
MAX_LABELS = 32
INSTALL_KINDS = ("installed", "activated", "fell_back")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", re.ASCII)  # a version label, as the device API takes it


class DeviceGone(Exception):
    """The device was deleted while its request was under way (the API answers 401)."""


class EnrollError(Exception):
    """Why an enrollment was refused; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# ---------------------------------------------------------------- enrollment keys


def create_enrollment_key(
    name: str,
    *,
    user: Any = None,
    expires_at: datetime | None = None,
    max_uses: int | None = None,
    default_labels: dict[str, str] | None = None,
) -> tuple[EnrollmentKey, str]:
    """Make a key; the plain key is returned once and only its sha256 is kept."""
    plain = KEY_PREFIX + secrets.token_urlsafe(24)
    key = EnrollmentKey.objects.create(
        name=name,
        prefix=plain[:10],
        key_hash=hashlib.sha256(plain.encode()).hexdigest(),
        default_labels=default_labels or {},
        expires_at=expires_at,
        max_uses=max_uses,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    return key, plain


def revoke_enrollment_key(key: EnrollmentKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])


def key_state(key: EnrollmentKey, now: datetime | None = None) -> str:
    now = now or timezone.now()
    if key.revoked_at:
        return "revoked"
    if key.expires_at and key.expires_at <= now:
        return "expired"
    if key.max_uses is not None and key.uses >= key.max_uses:
        return "used up"
    return "active"


def parse_labels(text: str) -> dict[str, str]:
    """``region=eu, hw=rpi4`` → dict; raises ValueError with a readable reason."""
    labels: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        k, sep, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or not selectors._WORD.fullmatch(k) or not selectors._WORD.fullmatch(v):
            raise ValueError(f"{part!r} is not key=value (letters, digits, _ . - /)")
        labels[k] = v
    return labels


def validate_labels(labels: dict[str, Any]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    out = {}
    for k, v in labels.items():
        if not isinstance(v, str) or not selectors._WORD.fullmatch(k) or len(k) > 63:
            raise ValueError(f"label {k!r}: keys and values are short words (letters, digits, _ . - /)")
        if not selectors._WORD.fullmatch(v) or len(v) > 63:
            raise ValueError(f"label {k!r}: value {v!r} is not a short word (letters, digits, _ . - /)")
        out[k] = v
    return out


# ---------------------------------------------------------------- devices


@dataclass
class Enrolled:
    device: Device
    token: str


def enroll(
    plain_key: str,
    *,
    name: str,
    hardware: dict[str, Any],
    labels: dict[str, str],
    agent_version: str,
    identity_key: str = "",
) -> Enrolled:
    """Join the fleet with an enrollment key. The key's use is counted in the same transaction."""
    key_hash = hashlib.sha256(plain_key.encode()).hexdigest()
    try:
        labels = validate_labels(labels)
    except ValueError as e:
        raise EnrollError(400, "invalid", str(e), "labels") from e
    if identity_key and not _ed25519_point(identity_key):
        raise EnrollError(400, "invalid", "identity_key is not an Ed25519 public key", "identity_key")
    with transaction.atomic():
        key = EnrollmentKey.objects.select_for_update().filter(key_hash=key_hash).first()
        if key is None:
            raise EnrollError(401, "enrollment_key_invalid", "The enrollment key is not known.", "enrollment_key")
        state = key_state(key)
        if state != "active":
            raise EnrollError(
                403, f"enrollment_key_{state.replace(' ', '_')}", f"The enrollment key is {state}.", "enrollment_key"
            )
        token = new_token()
        device = Device.objects.create(
            name=name,
            hardware=hardware,
            labels={**key.default_labels, **labels},
            agent_version=agent_version,
            token_hash=hash_token(token),
            token_prefix=token[:10],
            enrollment_key=key,
            identity_key=identity_key,
        )
        EnrollmentKey.objects.filter(pk=key.pk).update(uses=F("uses") + 1)
    return Enrolled(device, token)


def _ed25519_point(key_b64: str) -> bool:
    """Whether a base64url string is a 32-byte Ed25519 public key (the devices' identity keys)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key_b64 + "="))
    except ValueError:
        return False
    return True


def revoke_token(device: Device) -> None:
    """The device's token stops working at once (its cached snapshot is dropped)."""
    if device.token_revoked_at is None:
        device.token_revoked_at = timezone.now()
        device.save(update_fields=["token_revoked_at"])
    forget_device(device.token_hash)


def rotate_token(device: Device) -> str:
    """A fresh token for the device (shown once); the old one stops working."""
    old = device.token_hash
    token = new_token()
    device.token_hash, device.token_prefix, device.token_revoked_at = hash_token(token), token[:10], None
    device.save(update_fields=["token_hash", "token_prefix", "token_revoked_at"])
    forget_device(old)
    return token


def set_labels(device: Device, labels: dict[str, str]) -> None:
    from rollout.manifest import bump_generation

    device.labels = validate_labels(labels)
    device.save(update_fields=["labels"])
    forget_device(device.token_hash)
    bump_generation()  # durable artifact permission depends on cohort membership


def status_of(last_seen: datetime | None, now: datetime | None = None) -> str:
    if last_seen is None:
        return "never"
    age = ((now or timezone.now()) - last_seen).total_seconds()
    if age <= settings.EDGEFLEET_STALE_AFTER:
        return "online"
    return "stale" if age <= settings.EDGEFLEET_OFFLINE_AFTER else "offline"


def status_q(status: str, now: datetime | None = None) -> Q:
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.EDGEFLEET_STALE_AFTER)
    offline = now - timedelta(seconds=settings.EDGEFLEET_OFFLINE_AFTER)
    return {
        "online": Q(last_seen_at__gte=stale),
        "stale": Q(last_seen_at__lt=stale, last_seen_at__gte=offline),
        "offline": Q(last_seen_at__lt=offline),
        "never": Q(last_seen_at__isnull=True),
    }.get(status, Q())


# ---------------------------------------------------------------- selectors and cohorts


def _json_eq(field: str, key: str, value: str) -> Q:
    if connection.vendor == "postgresql":
        return Q(**{f"{field}__contains": {key: value}})
    return Q(**{f"{field}__{key}": value})


def selector_q(sel: selectors.Selector, field: str = "labels") -> Q:
    """The database side of a selector: a Q over ``Device.labels`` equal to ``selectors.predicate``."""
    q = Q()
    for r in sel.requirements:
        if r.op == selectors.EXISTS:
            q &= Q(**{f"{field}__has_key": r.key})
        elif r.op == selectors.NOT_EXISTS:
            q &= ~Q(**{f"{field}__has_key": r.key})
        else:
            any_of = Q()
            for v in r.values:
                any_of |= _json_eq(field, r.key, v)
            q &= any_of if r.op in (selectors.EQ, selectors.IN) else ~any_of
    return q


def devices_matching(selector_text: str) -> QuerySet[Device]:
    return Device.objects.filter(selector_q(selectors.parse(selector_text)))


def count_matching(selector_text: str) -> int:
    """Devices matching the selector: from the kept counts on PostgreSQL (per profile, no device read)."""
    from fleet import kept

    if kept.available():
        return kept.count_matching(selectors.predicate(selectors.parse(selector_text)))
    return devices_matching(selector_text).count()


def cohort_counts(cohorts: list[Cohort]) -> list[tuple[Cohort, int | None]]:
    """Devices matching each cohort, all counted in ONE scan of the fleet (filtered counts).

    A count per cohort was a full scan each: ten cohorts over 100,000 devices took a second.
    A cohort whose selector no longer parses counts as ``None``. On PostgreSQL the kept counts
    answer (``fleet.kept``): one read of the per-profile totals, whatever the fleet's size.
    """
    from django.db.models import Count

    from fleet import kept

    if kept.available():
        totals = kept.totals_by_profile()
        out: list[tuple[Cohort, int | None]] = []
        for c in cohorts:
            try:
                match = selectors.predicate(selectors.parse(c.selector))
            except selectors.SelectorError:
                out.append((c, None))
                continue
            out.append((c, sum(n for p, n in totals if match(p.labels))))
        return out

    filters: dict[str, Q] = {}
    for i, c in enumerate(cohorts):
        try:
            filters[f"c{i}"] = selector_q(selectors.parse(c.selector))
        except selectors.SelectorError:
            continue
    aggregates = {k: Count("pk", filter=q) if q else Count("pk") for k, q in filters.items()}
    counts = Device.objects.aggregate(**aggregates) if aggregates else {}
    return [(c, counts.get(f"c{i}")) for i, c in enumerate(cohorts)]


def save_cohort(name: str, selector_text: str, description: str = "", user: Any = None) -> Cohort:
    from rollout.manifest import bump_generation

    normalized = str(selectors.parse(selector_text))
    cohort, _ = Cohort.objects.update_or_create(
        name=name,
        defaults={"selector": normalized, "description": description},
        create_defaults={
            "selector": normalized,
            "description": description,
            "created_by": user if getattr(user, "is_authenticated", False) else None,
        },
    )
    bump_generation()
    return cohort


# ---------------------------------------------------------------- events


def record_events(device_id: uuid.UUID, events: list[dict[str, Any]]) -> tuple[int, int]:
    """Store a batch idempotently; ``(accepted, duplicates)``. Installs also update ``installed``.

    ``events`` come parsed and bounded by the device API (fleet/wire.py, fleet/api.py ``EventIn``);
    an id twice in one batch counts once, the second as a duplicate."""
    firsts: dict[Any, dict[str, Any]] = {}
    for e in events:
        firsts.setdefault(e["id"], e)
    rows = [
        DeviceEvent(
            id=e["id"],
            device_id=device_id,
            kind=e["kind"],
            at=e["at"],
            model_name=e.get("model") or "",
            version_label=e.get("version") or "",
            details=e.get("details") or {},
        )
        for e in firsts.values()
    ]
    try:
        return _store_events(device_id, rows, len(events))
    except IntegrityError as e:  # the only constraint left is the device's row: it was deleted meanwhile
        raise DeviceGone(str(device_id)) from e


def _store_events(device_id: uuid.UUID, rows: list[DeviceEvent], sent: int) -> tuple[int, int]:
    ids = [r.id for r in rows]
    with transaction.atomic():
        existing = set(DeviceEvent.objects.filter(id__in=ids).values_list("id", flat=True))
        fresh = [r for r in rows if r.id not in existing]
        # An id already used by another device must not be overwritten nor leak: it is a duplicate.
        DeviceEvent.objects.bulk_create(fresh, ignore_conflicts=True)
        stored = set(
            DeviceEvent.objects.filter(id__in=[r.id for r in fresh], device_id=device_id).values_list("id", flat=True)
        )
        newly = [r for r in fresh if r.id in stored]
        activations = sorted(
            (
                r
                for r in newly
                if r.kind in ("installed", "activated", "fell_back") and r.model_name and r.version_label
            ),
            key=lambda r: r.at,
        )
        if activations:
            device = Device.objects.select_for_update().only("installed").get(pk=device_id)
            installed = dict(device.installed or {})
            for r in activations:
                if r.kind == "fell_back":
                    # the event names the version that failed; the device now runs the one it fell back *to*
                    # (details "to"; None or absent: nothing runs any more)
                    to = (r.details or {}).get("to")
                    if isinstance(to, str) and LABEL.fullmatch(to):
                        installed[r.model_name] = to
                    else:
                        installed.pop(r.model_name, None)
                else:
                    installed[r.model_name] = r.version_label
            Device.objects.filter(pk=device_id).update(installed=installed)
    return len(newly), sent - len(newly)
