"""The page a person sees when django-axes refuses a login (too many wrong passwords)."""

import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def cooloff_minutes() -> int:
    return max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60))


def locked_out(request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None):
    """429 with the reason and how long; ``Retry-After`` for scripts. The same for both login forms."""
    minutes = cooloff_minutes()
    response = render(
        request,
        "registration/locked_out.html",
        {"minutes": minutes, "failure_limit": settings.AXES_FAILURE_LIMIT},
        status=429,
    )
    response["Retry-After"] = str(minutes * 60)
    return response
