from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from edgefleet.api import api
from edgefleet.health import healthz, readyz
from fleet.api import manifest_fast
from ops.views import metrics_view

urlpatterns = [
    path("api/v1/manifest", manifest_fast),  # the hottest route first (fleet/api.py)
    # Probes: ProbeMiddleware answers these before host checks and redirects; the routes name them.
    path("healthz", healthz, name="healthz"),  # liveness, no I/O (also the poll bench's baseline)
    path("readyz", readyz, name="readyz"),  # readiness: database, Redis, broker, storage
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
