"""Request ids in log records (no Django imports: the logging config loads this before the apps).

``REQUEST_ID`` holds the id of the request (or Celery task) being handled in this thread or task;
``RequestIdFilter`` puts it on every record, so a JSON log line says which request it belongs to.
``EDGEFLEET_LOG_FORMAT=json`` switches the console handler to one JSON object per line.
"""

import logging
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # Django logs 4xx/5xx responses after the middleware chain returned, with the request.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or REQUEST_ID.get() or None
        return True


def logging_config(fmt: str, level: str) -> dict:
    """Django's LOGGING for ``fmt`` ("text": plain messages as before; "json": one object a line)."""
    formatters = {
        "text": {"format": "%(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "ops.logs.RequestIdFilter"}},
        "formatters": formatters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "filters": ["request_id"],
                "formatter": "json" if fmt == "json" else "text",
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }
