from django.urls import path

from fleet import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("devices/", views.devices, name="devices"),
    path("devices/<uuid:pk>/", views.device_detail, name="device"),
    path("devices/<uuid:pk>/labels", views.device_labels, name="device-labels"),
    path("devices/<uuid:pk>/token/<str:action>", views.device_token, name="device-token"),
    path("enrollment-keys/", views.enrollment_keys, name="enrollment-keys"),
    path("enrollment-keys/<int:pk>/revoke", views.revoke_enrollment_key, name="enrollment-key-revoke"),
    path("cohorts/", views.cohorts, name="cohorts"),
    path("cohorts/count", views.cohort_count, name="cohort-count"),
]
