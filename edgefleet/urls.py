from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from edgefleet.api import api
from fleet.api import manifest_fast
from ops.views import metrics_view


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("api/v1/manifest", manifest_fast),  # the hottest route first (fleet/api.py)
    path("healthz", healthz, name="healthz"),  # early too: load balancers and the poll bench's baseline
    path("metrics", metrics_view, name="metrics"),
    path("notifications/", include("notify.urls")),
    path("", include("fleet.urls")),
    path("", include("ota.urls")),
    path("telemetry/", include("telemetry.urls")),
    path("", include("rollout.urls")),
    path("", include("rollout.release_urls")),
    path("accounts/", include("accounts.urls")),
    path("", include("demo.urls")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
]
