from django.urls import path

from rollout import views

urlpatterns: list = [
    # campaigns
    path("campaigns/", views.campaign_list, name="campaign-list"),
    path("campaigns/new/", views.campaign_new, name="campaign-new"),
    path("campaigns/preview/", views.campaign_preview, name="campaign-preview"),
    path("campaigns/<int:pk>/", views.campaign_detail, name="campaign-detail"),
    path("campaigns/<int:pk>/live/", views.campaign_live, name="campaign-live"),
    path("campaigns/<int:pk>/series.json", views.campaign_series, name="campaign-series"),
    path("campaigns/<int:pk>/<slug:action>/", views.campaign_action, name="campaign-action"),
]
