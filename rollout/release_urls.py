from django.urls import path

from rollout import release_views

urlpatterns = [
    path("releases/", release_views.releases, name="releases"),
]
