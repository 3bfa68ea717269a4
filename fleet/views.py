from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.roles import viewer_required
from fleet.models import Device
from ota.models import Model, ModelVersion


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    """The fleet at a glance; grows as the other pages land."""
    context = {
        "devices": Device.objects.count(),
        "models": Model.objects.count(),
        "staged": ModelVersion.objects.filter(status=ModelVersion.Status.STAGED).count(),
    }
    return render(request, "fleet/overview.html", context)
