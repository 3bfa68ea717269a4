from django.urls import path

from demo import views

urlpatterns = [path("demo/restart", views.restart, name="demo-restart")]
