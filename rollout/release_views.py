"""Release pages: "version V of model M is desired for cohort C" (kept apart from campaign views)."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.audit import record
from accounts.roles import OPERATOR, has_role, viewer_required
from fleet.models import Cohort
from ota import aliases
from ota.models import ModelVersion
from rollout.models import Release
from rollout.releases import ReleaseError, create_release


@viewer_required
def releases(request: HttpRequest) -> HttpResponse:
    errors: list[str] = []
    if request.method == "POST":
        if not has_role(request.user, OPERATOR):
            raise PermissionDenied("This needs the operator role.")
        version = cohort = None
        raw_v, raw_c = request.POST.get("version", ""), request.POST.get("cohort", "")
        version = aliases.from_form(raw_v)  # a version id, or "model@alias"
        if version is None:
            errors.append("Choose a staged version to release.")
        if raw_c:
            cohort = Cohort.objects.filter(pk=int(raw_c)).first() if raw_c.isdigit() else None
            if cohort is None:
                errors.append("That cohort does not exist.")
        if not errors:
            try:
                rel = create_release(version, cohort=cohort, note=request.POST.get("note", ""), user=request.user)
            except ReleaseError as e:
                errors.append(str(e))
            else:
                record(
                    "release.create",
                    rel,
                    request=request,
                    details={
                        "model": version.model.name,
                        "version": version.label,
                        "cohort": cohort and cohort.name,
                        **({"via": raw_v.strip()} if "@" in raw_v else {}),
                    },
                )
                messages.success(request, f"{version} is now desired for {cohort or 'all devices'}.")
                return redirect("releases")
    context = {
        "releases": Release.objects.select_related("model", "version", "cohort", "created_by")[:200],
        "versions": ModelVersion.objects.filter(status=ModelVersion.Status.STAGED).select_related("model"),
        "alias_choices": aliases.choices(),
        "cohorts": Cohort.objects.all(),
        "errors": errors,
    }
    return render(request, "rollout/releases.html", context, status=400 if errors else 200)
