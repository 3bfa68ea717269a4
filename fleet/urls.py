from django.urls import path

from fleet import views

urlpatterns = [
    path("", views.overview, name="overview"),
]
