from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.audit import record
from accounts.models import ApiToken, AuditEntry
from accounts.roles import admin_required, operator_required


@admin_required
def audit_log(request: HttpRequest) -> HttpResponse:
    entries = AuditEntry.objects.all()
    if action := request.GET.get("action"):
        entries = entries.filter(action=action)
    page = Paginator(entries, 50).get_page(request.GET.get("page"))
    return render(request, "accounts/audit.html", {"page": page, "action": action or ""})


@operator_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    plain = None
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip()[:100]
        if not name:
            messages.error(request, "Give the token a name, e.g. the pipeline that will use it.")
        else:
            cap = request.POST.get("role", "")
            token, plain = ApiToken.issue(request.user, name, role=cap if cap in ("viewer", "operator") else "")
            record("api_token.create", token, request=request, details={"role": token.role or "owner's"})
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "accounts/tokens.html", {"tokens": tokens, "plain": plain})


@operator_required
@require_POST
def revoke_api_token(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user, revoked_at__isnull=True)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    record("api_token.revoke", token, request=request)
    messages.success(request, f"Token {token} revoked.")
    return redirect("api-tokens")
