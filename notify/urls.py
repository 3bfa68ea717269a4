from django.urls import path

from notify import views

urlpatterns = [
    path("", views.subscriptions, name="notify-subscriptions"),
    path("<int:pk>/", views.subscription_detail, name="notify-subscription"),
    path("<int:pk>/<slug:action>", views.subscription_action, name="notify-subscription-action"),
]
