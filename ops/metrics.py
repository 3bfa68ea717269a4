"""Prometheus metrics: what each process counts, and what is read from the database and Redis.

Two kinds, named in docs/operations.md:

- **Per process** (``prometheus_client`` counters and histograms, updated by ``ops.middleware``):
  device requests by route and status, manifest polls by status, device API latency, telemetry
  reports and device events ingested. Under gunicorn with several workers set
  ``PROMETHEUS_MULTIPROC_DIR`` (``make run`` and the Docker image do): every worker writes its
  values to files there and a scrape sums them. Without it a scrape sees the one process it hit.
- **Fleet-wide, read at scrape time** (``FleetCollector``): devices by status and by installed
  version, open alerts, campaigns by state, gate decisions, versions by status, notification
  deliveries (PostgreSQL); Celery queue lengths (the broker's Redis lists); Celery job durations
  and outcomes (recorded by every worker into a Redis hash, ``ops.celery_hooks``). These are the
  same whichever process answers. They are cached ``EDGEFLEET_METRICS_CACHE_SECONDS`` so several
  scrapers cost one set of queries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

PROCESS = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
DEVICE_ROUTES = ("enroll", "manifest", "artifacts", "events", "telemetry", "signing-key")

DEVICE_REQUESTS = Counter(
    "edgefleet_device_requests", "Device API requests by route and status", ["route", "status"], registry=PROCESS
)
DEVICE_LATENCY = Histogram(
    "edgefleet_device_request_duration_seconds",
    "Device API time in the server, by route",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=PROCESS,
)
POLLS = Counter("edgefleet_manifest_polls", "Manifest polls by status (200, 304, 429, 503, 4xx)", ["status"],
                registry=PROCESS)  # fmt: skip
TELEMETRY_REPORTS = Counter(
    "edgefleet_telemetry_reports", "Telemetry reports by result (accepted, duplicate, rejected)", ["result"],
    registry=PROCESS,
)  # fmt: skip
DEVICE_EVENTS = Counter("edgefleet_device_events", "Device events by result", ["result"], registry=PROCESS)
API_REQUESTS = Counter(
    "edgefleet_api_requests", "Management API requests by method and status", ["method", "status"], registry=PROCESS
)

TASK_KEY = "ef:metrics:tasks"


def status_label(code: int) -> str:
    return str(code) if code in (200, 202, 304, 429, 503) else f"{code // 100}xx"


def device_route(path: str) -> str | None:
    if not path.startswith("/api/v1/"):
        return None
    first = path[len("/api/v1/") :].split("/", 1)[0]
    return first if first in DEVICE_ROUTES else None


# ------------------------------------------------------------------------------ read at scrape time


def _redis() -> Any:
    from fleet.presence import redis_client

    return redis_client()


def _queues() -> list[str]:
    from django.conf import settings

    names = getattr(settings, "EDGEFLEET_METRICS_QUEUES", None)
    if names:
        return list(names)
    return [getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")]


def queue_lengths() -> dict[str, int]:
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return {q: int(client.llen(q)) for q in _queues()}
    finally:
        client.close()


def fleet_figures() -> dict[str, Any]:
    """Every fleet-wide figure, from PostgreSQL (a handful of aggregate queries)."""
    from django.db.models import Count

    from fleet import overview
    from fleet.models import Device
    from notify.models import Delivery
    from ota.models import ModelVersion
    from rollout.models import Campaign, CampaignDecision
    from telemetry.models import Alert

    by_version = [
        (model, label, n) for model, counts in overview.versions_in_use().items() for label, n in counts
    ]  # fmt: skip
    return {
        "devices": overview.device_status_counts(),
        "revoked": Device.objects.filter(token_revoked_at__isnull=False).count(),
        "by_version": by_version,
        "alerts": dict(Alert.objects.filter(state="open").values_list("kind").annotate(n=Count("id"))),
        "campaigns": dict(Campaign.objects.values_list("state").annotate(n=Count("id"))),
        "decisions": dict(
            CampaignDecision.objects.filter(actor_label="system").values_list("kind").annotate(n=Count("id"))
        ),
        "versions": dict(ModelVersion.objects.values_list("status").annotate(n=Count("id"))),
        "deliveries": dict(Delivery.objects.values_list("status").annotate(n=Count("id"))),
    }


def task_figures() -> dict[str, dict[str, float]]:
    """Per task name: count, sum, bucket counts and outcomes, as the workers recorded them."""
    client = _redis()
    if client is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for field, value in client.hgetall(TASK_KEY).items():
        task, _, what = field.decode().rpartition("|")
        out.setdefault(task, {})[what] = float(value)
    return out


def _cached(name: str, fn: Any) -> Any:
    from django.conf import settings
    from django.core.cache import cache

    seconds = int(getattr(settings, "EDGEFLEET_METRICS_CACHE_SECONDS", 10))
    if seconds <= 0:
        return fn()
    key = f"ef:metrics:{name}"
    value = cache.get(key)
    if value is None:
        value = fn()
        cache.set(key, value, seconds)
    return value


class FleetCollector:
    """Figures that are the same in every process, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        try:
            f = _cached("fleet", fleet_figures)
        except Exception:
            log.exception("fleet metrics failed")
            f = None
        if f is not None:
            yield from self._fleet(f)
        try:
            queues = queue_lengths()
        except Exception:
            log.warning("queue lengths unavailable", exc_info=True)
            queues = {}
        g = GaugeMetricFamily("edgefleet_celery_queue_length", "Tasks waiting in the broker queue", labels=["queue"])
        for q, n in queues.items():
            g.add_metric([q], n)
        yield g
        try:
            tasks = task_figures()
        except Exception:
            log.warning("task metrics unavailable", exc_info=True)
            tasks = {}
        yield from self._tasks(tasks)

    def _fleet(self, f: dict[str, Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily("edgefleet_devices", "Devices by status (from their last poll)", labels=["status"])
        for status, n in f["devices"].items():
            g.add_metric([status], n)
        yield g
        yield GaugeMetricFamily("edgefleet_devices_revoked", "Devices whose token is revoked", value=f["revoked"])
        g = GaugeMetricFamily(
            "edgefleet_devices_by_version", "Devices by installed model version", labels=["model", "version"]
        )
        for model, label, n in f["by_version"]:
            g.add_metric([model, label], n)
        yield g
        g = GaugeMetricFamily("edgefleet_alerts_open", "Open alerts by kind", labels=["kind"])
        for kind in ("drift", "regression"):
            g.add_metric([kind], f["alerts"].get(kind, 0))
        yield g
        g = GaugeMetricFamily("edgefleet_campaigns", "Campaigns by state", labels=["state"])
        for state, n in sorted(f["campaigns"].items()):
            g.add_metric([state], n)
        yield g
        c = CounterMetricFamily(
            "edgefleet_gate_decisions", "Decisions of the gate job (advance, hold, pause, rollback, complete)",
            labels=["decision"],
        )  # fmt: skip
        for kind in ("advance", "complete", "hold", "pause", "rollback"):
            c.add_metric([kind], f["decisions"].get(kind, 0))
        yield c
        g = GaugeMetricFamily("edgefleet_model_versions", "Model versions by status", labels=["status"])
        for status, n in sorted(f["versions"].items()):
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily("edgefleet_notify_deliveries", "Notification deliveries by status", labels=["status"])
        for status in ("pending", "delivered", "failed"):
            g.add_metric([status], f["deliveries"].get(status, 0))
        yield g

    def _tasks(self, tasks: dict[str, dict[str, float]]) -> Iterator[Metric]:
        h = HistogramMetricFamily(
            "edgefleet_celery_task_duration_seconds", "Celery job run time, by task (all workers)", labels=["task"]
        )
        c = CounterMetricFamily("edgefleet_celery_tasks", "Celery jobs run, by task and outcome", labels=["task",
                                "outcome"])  # fmt: skip
        for task, v in sorted(tasks.items()):
            cumulative, buckets = 0.0, []
            for i, bound in enumerate(TASK_BUCKETS):
                cumulative += v.get(f"b{i}", 0.0)
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", v.get("count", 0.0)))
            h.add_metric([task], buckets, v.get("sum", 0.0))
            for outcome in ("success", "failure", "retry"):
                if outcome in v:
                    c.add_metric([task, outcome], v[outcome])
        yield h
        yield c


class _Process:
    def collect(self) -> Iterator[Metric]:
        return PROCESS.collect()


def exposition() -> bytes:
    """The text a scrape gets: this process's (or, in multiprocess mode, all workers') and the fleet's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    registry.register(FleetCollector())
    return generate_latest(registry)


def record_task(task: str, seconds: float, outcome: str) -> None:
    """Called by every worker after a job (``ops.celery_hooks``); one Redis round trip."""
    import bisect

    client = _redis()
    if client is None:
        return
    i = bisect.bisect_left(TASK_BUCKETS, seconds)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(TASK_KEY, f"{task}|count", 1)
    pipe.hincrbyfloat(TASK_KEY, f"{task}|sum", seconds)
    if i < len(TASK_BUCKETS):
        pipe.hincrby(TASK_KEY, f"{task}|b{i}", 1)
    pipe.hincrby(TASK_KEY, f"{task}|{outcome}", 1)
    pipe.execute()
