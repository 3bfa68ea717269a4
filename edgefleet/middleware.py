"""Turn a backing service that is away (Redis, the database) into 503 + Retry-After, not a 500.

Devices back off on ``Retry-After`` and keep what they have not had acknowledged, so answering
"come back later" loses nothing; a 500 would read as a server bug. Pages get the same status with
a sentence a person can act on.
"""

from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRY_AFTER_SECONDS = 30
AWAY = (RedisConnectionError, RedisTimeoutError, OperationalError, InterfaceError)


class ServiceAwayMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, AWAY):
            return None
        what = "cache" if isinstance(exception, RedisConnectionError | RedisTimeoutError) else "database"
        message = f"The server's {what} is unavailable; try again in {RETRY_AFTER_SECONDS} s."
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse(
                {"error": {"code": "unavailable", "message": message, "field": None}}, status=503
            )
        else:
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
