"""Dashboard pages for the fleet: devices, one device, enrollment keys, cohorts (thin over services)."""

import uuid

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import operator_required, viewer_required
from fleet import device_list, selectors, services
from fleet import overview as overview_data
from fleet.event_text import detail_pairs
from fleet.models import Cohort, Device, EnrollmentKey

PAGE = 50


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    """The fleet at a glance; the ``live`` fragment refreshes in place every few seconds."""
    template = "fleet/overview_live.html" if request.GET.get("live") else "fleet/overview.html"
    return render(request, template, overview_data.context())


# ---------------------------------------------------------------- devices


STATUS_TABS = (
    ("", "any status"),
    ("online", "online"),
    ("stale", "stale"),
    ("offline", "offline"),
    ("never", "never seen"),
)
# column -> (its first sort, the sort a second click gives)
SORT_COLUMNS = (
    ("name", "name", "-name"),
    ("last_seen", "-last_seen", "last_seen"),
    ("enrolled", "-enrolled", "enrolled"),
)


@viewer_required
def devices(request: HttpRequest) -> HttpResponse:
    """Search, filters with counts per status, sortable keyset pages (``fleet.device_list``)."""
    filters = device_list.Filters.from_query(request.GET)
    rows, nxt, followed = device_list.page(filters, request.GET.get("after", ""))
    counts = device_list.counts(filters)
    now = timezone.now()
    params = request.GET.copy()
    params.pop("after", None)

    def url(**change: str) -> str:
        q = params.copy()
        for k, v in change.items():
            if v:
                q[k] = v
            else:
                q.pop(k, None)
        return "?" + q.urlencode()

    sort = device_list.SORTS[filters.sort]
    columns = {}
    for name, first, second in SORT_COLUMNS:
        current = filters.sort in (first, second)
        columns[name] = {
            "url": url(sort=second if filters.sort == first else first),
            "aria": ("descending" if sort.desc else "ascending") if current else "none",
            "arrow": ("▼" if sort.desc else "▲") if current else "",
        }
    context = {
        "items": [{"d": d, "status": services.status_of(d.last_seen_at, now)} for d in rows],
        "next_url": url(after=nxt) if nxt else None,
        "first_url": url() if followed else None,
        "labels": filters.labels,
        "status": filters.status,
        "model": filters.model,
        "version": filters.version,
        "q": filters.q,
        "error": filters.error,
        "total": counts[filters.status or "all"],
        "status_tabs": [
            {"key": k, "text": text, "n": counts[k or "all"], "url": url(status=k), "active": filters.status == k}
            for k, text in STATUS_TABS
        ],
        "sort_text": sort.text,
        "columns": columns,
        "any_devices": Device.objects.exists(),
        "filtered": bool(filters.active),
    }
    return render(request, "fleet/devices.html", context)


@viewer_required
def device_detail(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    device = get_object_or_404(Device.objects.select_related("enrollment_key"), pk=pk)
    events = list(device.events.all()[:100])
    for e in events:
        e.pairs = detail_pairs(e.kind, e.details)
    context = {
        "device": device,
        "status": services.status_of(device.last_seen_at),
        "events": events,
        "labels_text": ", ".join(f"{k}={v}" for k, v in device.labels.items()),
        "token": request.session.pop(f"device-token-{device.pk}", None),
    }
    return render(request, "fleet/device.html", context)


@operator_required
@require_POST
def device_token(request: HttpRequest, pk: uuid.UUID, action: str) -> HttpResponse:
    if action not in ("revoke", "rotate"):
        raise Http404("No such token action.")
    device = get_object_or_404(Device, pk=pk)
    if action == "revoke":
        services.revoke_token(device)
        record("device.token_revoke", device, request=request)
        messages.success(request, "Token revoked: the device can no longer poll until its token is rotated.")
    else:
        token = services.rotate_token(device)
        record("device.token_rotate", device, request=request)
        request.session[f"device-token-{device.pk}"] = token
    return redirect("device", pk=device.pk)


@operator_required
@require_POST
def device_labels(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    device = get_object_or_404(Device, pk=pk)
    try:
        labels = services.parse_labels(request.POST.get("labels", ""))
        before = dict(device.labels)
        services.set_labels(device, labels)
    except ValueError as e:
        messages.error(request, f"Labels not changed: {e}")
    else:
        record("device.labels", device, request=request, details={"before": before, "after": labels})
        messages.success(request, "Labels saved.")
    return redirect("device", pk=device.pk)


# ---------------------------------------------------------------- enrollment keys


@viewer_required
def enrollment_keys(request: HttpRequest) -> HttpResponse:
    plain, errors, form = None, [], request.POST if request.method == "POST" else {}
    if request.method == "POST":
        from accounts.roles import OPERATOR, has_role

        if not has_role(request.user, OPERATOR):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied("This needs the operator role.")
        name = (request.POST.get("name") or "").strip()[:100]
        expires_at, max_uses, labels = None, None, {}
        if not name:
            errors.append("Give the key a name, e.g. the site or batch of devices it is for.")
        if raw := request.POST.get("expires_at", "").strip():
            expires_at = parse_datetime(raw) if "T" in raw or " " in raw else parse_datetime(raw + "T00:00:00")
            if expires_at is None:
                errors.append("Expiry must be a date (YYYY-MM-DD) or date and time.")
            elif timezone.is_naive(expires_at):
                expires_at = timezone.make_aware(expires_at)
            if expires_at is not None and expires_at <= timezone.now():
                errors.append("Expiry must be in the future.")
        if raw := request.POST.get("max_uses", "").strip():
            if not raw.isdigit() or int(raw) < 1:
                errors.append("Use limit must be a whole number of at least 1.")
            else:
                max_uses = int(raw)
        try:
            labels = services.parse_labels(request.POST.get("default_labels", ""))
        except ValueError as e:
            errors.append(f"Default labels: {e}")
        if not errors:
            key, plain = services.create_enrollment_key(
                name, user=request.user, expires_at=expires_at, max_uses=max_uses, default_labels=labels
            )
            record("enrollment_key.create", key, request=request, details={"max_uses": max_uses, "labels": labels})
            form = {}
    now = timezone.now()
    keys = [{"k": k, "state": services.key_state(k, now)} for k in EnrollmentKey.objects.all()[:200]]
    status = 400 if errors else 200
    return render(
        request,
        "fleet/enrollment_keys.html",
        {"keys": keys, "plain": plain, "errors": errors, "form": form, "server": request.build_absolute_uri("/")},
        status=status,
    )


@operator_required
@require_POST
def revoke_enrollment_key(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(EnrollmentKey, pk=pk)
    services.revoke_enrollment_key(key)
    record("enrollment_key.revoke", key, request=request)
    messages.success(request, f"Key {key} revoked: no new device can enroll with it.")
    return redirect("enrollment-keys")


# ---------------------------------------------------------------- cohorts


@viewer_required
def cohorts(request: HttpRequest) -> HttpResponse:
    errors, form = [], request.POST if request.method == "POST" else {}
    if request.method == "POST":
        from django.core.exceptions import PermissionDenied

        from accounts.roles import OPERATOR, has_role

        if not has_role(request.user, OPERATOR):
            raise PermissionDenied("This needs the operator role.")
        from django.utils.text import slugify

        name = slugify(request.POST.get("name", ""))[:100]
        text = request.POST.get("selector", "")
        if not name:
            errors.append("Give the cohort a name (letters, digits, dashes).")
        try:
            selectors.parse(text)
        except selectors.SelectorError as e:
            errors.append(f"Selector: {e}")
        if not errors:
            existed = Cohort.objects.filter(name=name).exists()
            cohort = services.save_cohort(name, text, request.POST.get("description", "")[:2000], request.user)
            record(
                "cohort.update" if existed else "cohort.create",
                cohort,
                request=request,
                details={"selector": cohort.selector},
            )
            messages.success(request, f"Cohort {cohort.name} saved.")
            return redirect("cohorts")
    rows = [{"c": c, "count": n} for c, n in services.cohort_counts(list(Cohort.objects.all()))]
    return render(
        request, "fleet/cohorts.html", {"rows": rows, "errors": errors, "form": form}, status=400 if errors else 200
    )


@viewer_required
def cohort_count(request: HttpRequest) -> JsonResponse:
    """Live count while typing a selector: ``{"count": n}`` or ``{"error": {message, position}}``."""
    text = request.GET.get("selector", "")
    try:
        sel = selectors.parse(text)
    except selectors.SelectorError as e:
        return JsonResponse({"error": {"message": e.message, "position": e.position}})
    count = services.count_matching(str(sel))  # kept counts on PostgreSQL: no scan per keystroke
    return JsonResponse({"count": count, "normalized": str(sel)})
