from django.urls import path

from accounts import views

urlpatterns = [
    path("audit/", views.audit_log, name="audit-log"),
    path("tokens/", views.api_tokens, name="api-tokens"),
    path("tokens/<int:pk>/revoke", views.revoke_api_token, name="api-token-revoke"),
]
