"""``/api/v1/docs`` works with no network but the server's own: Swagger UI and its assets come from the
project (django-ninja's bundled copy, served as our static files), never from a CDN."""

import os
from urllib.parse import urlparse

import pytest
from django.contrib.auth.models import Group

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def test_api_docs_render_with_every_other_host_unreachable(live_server, page, login, django_user_model) -> None:
    user = django_user_model.objects.create_user("vera", password="pw-vera-123456")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    own = urlparse(live_server.url).hostname
    refused: list[str] = []

    def only_ours(route: object) -> None:
        host = urlparse(route.request.url).hostname
        if host in (own, "127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            route.continue_()
        else:  # as if offline: nothing outside this machine answers
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    page.context.route("**/*", only_ours)
    login(page, "vera", "pw-vera-123456")
    response = page.goto(f"{live_server.url}/api/v1/docs")
    assert response is not None and response.status == 200
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # the schema loaded and its routes are listed
    assert "EdgeFleet" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".swagger-ui .opblock").count() > 10
    assert refused == [], "every asset of the docs page is served by the project"
    assert page.console_errors == []
