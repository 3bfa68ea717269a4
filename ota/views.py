"""Dashboard pages of the registry: models, a model's versions, one version, upload, archive."""

from django.conf import settings
from django.contrib import messages
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from accounts.roles import operator_required, viewer_required
from ota import aliases, charts, lineage, search, services, side_by_side
from ota.models import Model, ModelVersion
from ota.names import class_names, feature_names
from ota.uploads import read_upload, truthy
from telemetry import fleet_latency
from telemetry import policy as privacy_policy


@viewer_required
def model_list(request: HttpRequest) -> HttpResponse:
    rejected = Q(versions__status=ModelVersion.Status.REJECTED)
    models = list(
        Model.objects.annotate(
            n_versions=Count("versions"),
            n_rejected=Count("versions", filter=rejected),
            n_staged=Count("versions", filter=Q(versions__status=ModelVersion.Status.STAGED)),
            last_upload=Max("versions__created_at"),
        )
    )
    usable = [m for m in models if m.n_versions > m.n_rejected]
    context = {"models": models, "usable": len(usable), "rejected_only": len(models) - len(usable)}
    return render(request, "ota/model_list.html", context)


@viewer_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = get_object_or_404(Model, name=name)
    versions = model.versions.select_related("artifact", "created_by").prefetch_related("variants", "aliases")
    q = request.GET.get("q", "").strip()[: search.MAX_QUERY]
    if q:
        versions = search.filter_versions(versions, q=q)
    context = {"model": model, "versions": versions, "q": q, "aliases": model.aliases.select_related("version")}
    return render(request, "ota/model_detail.html", context)


def _version(name: str, label: str) -> ModelVersion:
    return get_object_or_404(
        ModelVersion.objects.select_related("model", "artifact", "reference_artifact", "created_by"),
        model__name=name,
        label=label,
    )


@viewer_required
def version_detail(request: HttpRequest, name: str, label: str) -> HttpResponse:
    version = _version(name, label)
    rows = services.variant_rows(version)
    variant_fig = charts.variant_figure(rows)
    context = {
        "version": version,
        "report": version.report or {},
        "variants": version.variants.select_related("artifact"),
        "variant_rows": rows,
        "variant_figures": [variant_fig] if variant_fig else [],
        "figures": charts.profile_figures(
            version.reference_profile, feature_names(version.report), class_names(version.report)
        ),
        "aliases": version.aliases.select_related("updated_by"),
        "alias_suggestions": aliases.SUGGESTED,
        "meta": (version.lineage or {}).get("meta") or {},
        "links": lineage.safe_links(version.lineage),
        "others": version.model.versions.exclude(pk=version.pk).exclude(status=ModelVersion.Status.REJECTED),
        "fleet_latency": fleet_latency.latency_by_hardware(version.pk),
        "privacy_guarantee": privacy_policy.guarantee(privacy_policy.policy_for(version.model)).sentence,
    }
    return render(request, "ota/version_detail.html", context)


@operator_required
@require_POST
def variant_release(request: HttpRequest, name: str, label: str, kind: str) -> HttpResponse:
    """Offer a variant to devices (``released=1``) or keep it out (``released=0``)."""
    version = _version(name, label)
    try:
        services.set_variant_released(version, kind, truthy(request.POST.get("released")), request)
    except services.RegistryError as exc:
        messages.error(request, exc.message)
        return redirect("model-version", name, label)
    return redirect("model-version", name, label)


@operator_required
@require_POST
def alias_set(request: HttpRequest, name: str, label: str) -> HttpResponse:
    version = _version(name, label)
    alias = request.POST.get("alias", "").strip()
    try:
        aliases.set_alias(version, alias, request=request)
        messages.success(request, f"{version.model.name}@{alias} now points at {version.label}.")
    except aliases.AliasError as exc:
        messages.error(request, exc.message)
    return redirect("model-version", name, label)


@operator_required
@require_POST
def alias_remove(request: HttpRequest, name: str, alias: str) -> HttpResponse:
    model = get_object_or_404(Model, name=name)
    back = request.POST.get("back", "")
    try:
        aliases.remove_alias(model, alias, request=request)
        messages.success(request, f"Removed the alias {model.name}@{alias}.")
    except aliases.AliasError as exc:
        messages.error(request, exc.message)
    version = model.versions.filter(label=back).first()
    return redirect("model-version", name, version.label) if version else redirect("model-detail", name)


@viewer_required
def compare(request: HttpRequest, name: str) -> HttpResponse:
    """Two versions of one model side by side (``?a=v1&b=v2``; either may be ``@alias``)."""
    model = get_object_or_404(Model, name=name)
    refs = {k: request.GET.get(k, "").strip() for k in ("a", "b")}
    found = {k: aliases.resolve(model, ref) if ref else None for k, ref in refs.items()}
    choices = model.versions.exclude(status=ModelVersion.Status.REJECTED)
    missing = [refs[k] for k in ("a", "b") if refs[k] and found[k] is None]
    context: dict = {"model": model, "choices": choices, "refs": refs, "missing": missing}
    a, b = found["a"], found["b"]
    if a is None or b is None or missing:
        return render(request, "ota/compare.html", context, status=404 if missing else 200)
    context.update(side_by_side.context(a, b))
    return render(request, "ota/compare.html", context)


@viewer_required
def version_status(request: HttpRequest, name: str, label: str) -> HttpResponse:
    """The live status fragment the version page polls."""
    return render(request, "ota/_version_status.html", {"version": _version(name, label)})


@csrf_exempt  # the CSRF token is checked after the streaming handler has parsed the body
@operator_required
def upload(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _upload_form(request)
    try:
        read_upload(request)
    except services.RegistryError as exc:
        return _upload_refused(request, exc)
    return csrf_protect(_store_upload)(request)


def _store_upload(request: HttpRequest) -> HttpResponse:
    post, files = request.POST, request.FILES
    try:
        version = services.create_version(
            name=post.get("name", ""),
            label=post.get("label", ""),
            notes=post.get("notes", ""),
            upload=files.get("file"),
            reference=files.get("reference"),
            want_int8=truthy(post.get("int8")),
            lineage=post.get("lineage", ""),
            request=request,
        )
    except services.RegistryError as exc:
        return _upload_refused(request, exc)
    url = reverse("model-version", args=[version.model.name, version.label])
    if _wants_json(request):
        return JsonResponse({"url": url, "status": version.status}, status=201)
    messages.success(request, f"Uploaded {version}; validation is running.")
    return redirect(url)


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def _upload_refused(request: HttpRequest, exc: services.RegistryError) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(exc.as_json(), status=exc.status)
    messages.error(request, exc.message)
    return _upload_form(request, status=exc.status)


def _upload_form(request: HttpRequest, status: int = 200) -> HttpResponse:
    context = {
        "model_names": Model.objects.values_list("name", flat=True),
        "max_bytes": settings.EDGEFLEET_MAX_UPLOAD_BYTES,
        "max_human": services.human_size(settings.EDGEFLEET_MAX_UPLOAD_BYTES),
        "initial_name": request.GET.get("model", ""),
    }
    return render(request, "ota/upload.html", context, status=status)


@operator_required
@require_POST
def archive(request: HttpRequest, name: str, label: str) -> HttpResponse:
    version = _version(name, label)
    try:
        services.archive_version(version, request=request)
        messages.success(request, f"Archived {version}.")
    except services.RegistryError as exc:
        messages.error(request, exc.message)
    return redirect("model-version", name, label)
