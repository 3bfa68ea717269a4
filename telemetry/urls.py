from django.urls import path

from telemetry import views

urlpatterns = [
    path("versions/<int:version_id>/", views.version_telemetry, name="version-telemetry"),
    path("models/<slug:name>/privacy/", views.model_privacy, name="model-privacy"),
    path("models/<slug:name>/privacy/preview", views.model_privacy_preview, name="model-privacy-preview"),
    path("alerts/", views.alert_list, name="telemetry-alerts"),
    path("alerts/<int:alert_id>/resolve", views.alert_resolve, name="telemetry-alert-resolve"),
]
