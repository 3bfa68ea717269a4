from django.urls import path

from ota import views

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/upload/", views.upload, name="model-upload"),
    path("models/<slug:name>/", views.model_detail, name="model-detail"),
    path("models/<slug:name>/compare/", views.compare, name="model-compare"),
    path("models/<slug:name>/aliases/<str:alias>/remove", views.alias_remove, name="model-alias-remove"),
    path("models/<slug:name>/versions/<str:label>/", views.version_detail, name="model-version"),
    path("models/<slug:name>/versions/<str:label>/status", views.version_status, name="model-version-status"),
    path("models/<slug:name>/versions/<str:label>/archive", views.archive, name="model-version-archive"),
    path(
        "models/<slug:name>/versions/<str:label>/variants/<slug:kind>/release",
        views.variant_release,
        name="model-variant-release",
    ),
    path("models/<slug:name>/versions/<str:label>/alias", views.alias_set, name="model-version-alias"),
]
