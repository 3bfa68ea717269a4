"""Notification pages: the subscriptions list with its form, and one subscription's delivery log.

Thin over ``notify.services``; a webhook's secret is shown once, right after it was made (carried
to the next page in the session and dropped there, like a new device token).
"""

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.roles import OPERATOR, has_role, operator_required, viewer_required
from notify import services
from notify.kinds import KINDS


def _sub(request: HttpRequest, pk: int) -> Any:
    from django.http import Http404

    try:
        return services.get_visible(request.user, pk)
    except services.SubscriptionError as exc:
        raise Http404(exc.message) from None


@viewer_required
def subscriptions(request: HttpRequest) -> HttpResponse:
    errors: list[str] = []
    form: Any = {"events": [], "channel": "webhook", "offline_threshold": "0.2"}
    if request.method == "POST":
        if not has_role(request.user, OPERATOR):
            raise PermissionDenied("This needs the operator role.")
        form = request.POST
        try:
            threshold = float(request.POST.get("offline_threshold") or 0.2)
        except ValueError:
            threshold = -1.0
        try:
            sub, secret = services.create(
                request.user,
                name=request.POST.get("name", ""),
                channel=request.POST.get("channel", ""),
                events=request.POST.getlist("events"),
                url=request.POST.get("url", ""),
                emails=[e for e in request.POST.get("emails", "").replace(";", ",").split(",")],
                model=request.POST.get("model", "").strip(),
                offline_threshold=threshold,
                team=request.POST.get("team") or None,
            )
        except services.SubscriptionError as exc:
            errors.append(exc.message)
        else:
            record("notify.subscription.create", sub, request=request, details={"channel": sub.channel})
            if secret:
                request.session[f"notify-secret-{sub.pk}"] = secret
            messages.success(request, f"Subscription “{sub.name}” saved.")
            return redirect("notify-subscription", pk=sub.pk)
    context = {
        "subs": services.visible(request.user)[:200],
        "kinds": KINDS.items(),
        "teams": request.user.groups.order_by("name"),
        "errors": errors,
        "form": form,
        "chosen": form.getlist("events") if hasattr(form, "getlist") else form.get("events", []),
    }
    return render(request, "notify/subscriptions.html", context, status=400 if errors else 200)


@viewer_required
def subscription_detail(request: HttpRequest, pk: int) -> HttpResponse:
    sub = _sub(request, pk)
    deliveries = sub.deliveries.select_related("event").prefetch_related("attempt_log")
    status = request.GET.get("status", "")
    if status in ("pending", "delivered", "failed"):
        deliveries = deliveries.filter(status=status)
    page = Paginator(deliveries, 50).get_page(request.GET.get("page"))
    context = {
        "sub": sub,
        "page": page,
        "status": status,
        "secret": request.session.pop(f"notify-secret-{sub.pk}", None),
        "kinds": KINDS,
    }
    return render(request, "notify/subscription.html", context)


@operator_required
@require_POST
def subscription_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    sub = _sub(request, pk)
    if action == "test":
        services.send_test(sub)
        record("notify.subscription.test", sub, request=request)
        messages.success(request, "Test event queued: its delivery appears below within seconds.")
    elif action == "rotate":
        try:
            request.session[f"notify-secret-{sub.pk}"] = services.rotate_secret(sub)
        except services.SubscriptionError as exc:
            messages.error(request, exc.message)
        else:
            record("notify.subscription.rotate_secret", sub, request=request)
    elif action in ("enable", "disable"):
        services.update(request.user, sub, {"active": action == "enable"})
        record("notify.subscription.update", sub, request=request, details={"active": sub.active})
    elif action == "delete":
        record("notify.subscription.delete", sub, request=request)
        sub.delete()
        messages.success(request, f"Subscription “{sub.name}” deleted.")
        return redirect("notify-subscriptions")
    else:
        from django.http import Http404

        raise Http404("No such action.")
    return redirect("notify-subscription", pk=pk)
