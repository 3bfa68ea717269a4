"""Every dashboard page with the demo's data scaled up to 100,000 devices (issue 7: under 300 ms each).

``--build`` makes a fresh PostgreSQL database (default ``edgefleet_bench_pages``) holding the demo
story at fleet scale: 100,000 devices with the demo's label mix (region eu/us/apac, hw
rpi4/jetson/x86, a few with old onnxruntime or a full disk), model ``vibration`` v1 and v2 built by
``demo/models_onnx.py`` (real ONNX files, reference profile from the reference set), the demo's
cohorts, v1 released to the fleet, a rolled-back campaign, a running one and a draft, 1,000 devices
x 200 five-minute windows of telemetry with rollups, drift results and alerts made by the telemetry
services, install events and audit entries.

Pages are then timed through Django's test client in this process (no HTTP server: the figures are
view + queries + template), warm: one request first, then ``--repeat`` timed ones; the table gives
median and p95 (nearest rank) in ms and the number of queries of the last request. The gate job's
``canary_vs_control`` is timed last (not a page, but the campaign's hot read).

    .venv/bin/python bench/pages_all.py --build          # build (a few minutes), then time
    .venv/bin/python bench/pages_all.py                  # time again against the built database
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REGIONS = ["eu", "us", "apac"]
HW = {
    "rpi4": {
        "arch": "aarch64",
        "cores": 4,
        "ram_mb": 4096,
        "accelerator": "none",
        "providers": ["CPUExecutionProvider"],
    },
    "jetson": {
        "arch": "aarch64",
        "cores": 6,
        "ram_mb": 8192,
        "accelerator": "cuda",
        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    },
    "x86": {
        "arch": "x86_64",
        "cores": 8,
        "ram_mb": 16384,
        "accelerator": "none",
        "providers": ["CPUExecutionProvider"],
    },
}
WAVES = [
    {"percent": 10, "min_soak_minutes": 1, "min_devices": 20},
    {"percent": 50, "min_soak_minutes": 1, "min_devices": 20},
    {"percent": 100, "min_soak_minutes": 1, "min_devices": 20},
]
GATES = {"install_failure_rate": 0.05, "error_rate": 0.02, "latency_p95": 1.5, "drift": 0.25}


def setup_django(db: str, fresh: bool) -> None:
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}",
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        DJANGO_SETTINGS_MODULE="edgefleet.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-not-for-production-0123456789",
        EDGEFLEET_DATA_DIR=str(Path(tempfile.gettempdir()) / f"edgefleet-{db}"),
    )
    if fresh:
        from bench._telemetry_setup import fresh_database

        fresh_database(db)  # also runs django.setup() and migrate
    else:
        import django

        django.setup()


# --------------------------------------------------------------------------------- building


def _hardware(rng: Any, hw: str) -> dict:
    h = dict(HW[hw])
    r = rng.random()
    h["ort_version"] = "1.10.0" if r < 0.03 else "1.17.1"  # 3% too old for opset 17
    h["storage_free_mb"] = 0 if rng.random() < 0.02 else int(rng.integers(200, 20000))
    return h


def build_devices(n: int, rng: Any) -> None:
    from django.db import connection

    from fleet import services as fleet_services
    from fleet.models import Device

    key, _ = fleet_services.create_enrollment_key("demo-fleet", default_labels={"fleet": "demo"})
    for i in range(3):
        fleet_services.create_enrollment_key(f"site-{i}", max_uses=1000)
    rows = []
    for i in range(n):
        region = REGIONS[int(rng.integers(0, 3))]
        hw = ["rpi4", "jetson", "x86"][int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
        r = rng.random()
        installed = {} if r < 0.04 else {"vibration": "v2" if r < 0.10 else "v1"}
        rows.append(
            Device(
                name=f"demo-{i:06d}",
                hardware=_hardware(rng, hw),
                labels={"fleet": "demo", "region": region, "hw": hw},
                agent_version="0.1.0",
                token_hash=hashlib.sha256(f"bench-pages-{i}".encode()).hexdigest(),
                token_prefix=f"eft_{i:06d}",
                enrollment_key=key,
                installed=installed,
            )
        )
        if len(rows) == 5000:
            Device.objects.bulk_create(rows)
            rows = []
    if rows:
        Device.objects.bulk_create(rows)
    with connection.cursor() as cur:
        # Enrolled over the last 30 days; last seen: 85% online, 5% stale, 6% offline, 4% never.
        cur.execute(
            """UPDATE fleet_device SET enrolled_at = now() - random() * interval '30 days',
                      last_seen_at = CASE
                        WHEN installed = '{}'::jsonb THEN NULL
                        WHEN random() < 0.885 THEN now() - random() * interval '4 minutes'
                        WHEN random() < 0.5 THEN now() - interval '10 minutes' - random() * interval '40 minutes'
                        ELSE now() - interval '2 hours' - random() * interval '5 days' END"""
        )
        cur.execute("VACUUM ANALYZE fleet_device")


def build_versions(user: Any) -> tuple[Any, Any, Any]:
    import numpy as np
    import onnxruntime as ort

    from demo import models_onnx
    from ota import profiles
    from ota.models import Model, ModelVersion
    from tests.factories import artifact

    out = Path(tempfile.mkdtemp(prefix="bench-pages-models-"))
    paths = models_onnx.build(out)
    ref = dict(np.load(paths["reference"]))
    inputs = [{"name": "input", "dtype": "float32", "shape": ["batch", len(models_onnx.FEATURES)]}]
    outputs = [{"name": "probs", "dtype": "float32", "shape": ["batch", len(models_onnx.CLASSES)]}]
    versions = {}
    for name in ("vibration", "anomaly"):
        model, _ = Model.objects.get_or_create(name=name, defaults={"description": "demo vibration classifier"})
        for label in ("v1", "v2"):
            data = paths[label].read_bytes()
            sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            profile = profiles.build_profile(ref, inputs, lambda feeds, s=sess: s.run(None, feeds)[0])
            versions[(name, label)] = ModelVersion.objects.create(
                model=model,
                label=label,
                status="staged",
                artifact=artifact(data),
                reference_artifact=artifact(paths["reference"].read_bytes()),
                report={"inputs": inputs, "outputs": outputs, "opset": 17, "file_size": len(data)},
                reference_profile=profile,
                created_by=user,
            )
    return versions[("vibration", "v1")], versions[("vibration", "v2")], versions[("anomaly", "v2")]


def build_campaigns(user: Any, v1: Any, v2: Any, other_v2: Any) -> tuple[Any, Any, Any]:
    from fleet.models import Cohort
    from rollout import lifecycle
    from rollout.models import Campaign
    from rollout.releases import create_release

    create_release(v1, note="demo: v1 for the whole fleet", user=user)
    first = lifecycle.create_campaign(
        name="v2 rollout #1", version=v2, cohort=None, previous_version=v1, waves=WAVES, gates=GATES, user=user
    )
    lifecycle.start(first.pk, user=user, reason="demo: roll v2 out in waves")
    lifecycle.advance(first.pk, reason="wave 1 passed every gate", numbers={"wave": 1}, expect_wave=0)
    lifecycle.rollback(first.pk, reason="gate failed: error_rate, drift", numbers={"wave": 2}, expect_wave=1)
    running = lifecycle.create_campaign(
        name="v2 rollout eu",
        version=v2,
        cohort=Cohort.objects.get(name="eu"),
        previous_version=v1,
        waves=WAVES,
        gates=GATES,
        user=user,
    )
    started = lifecycle.start(running.pk, user=user, reason="retry in eu only")
    six_hours_ago = started.started_at - timedelta(hours=6)  # its wave 1 has soaked for a while
    Campaign.objects.filter(pk=running.pk).update(started_at=six_hours_ago, wave_started_at=six_hours_ago)
    draft = lifecycle.create_campaign(
        name="anomaly v2 everywhere", version=other_v2, cohort=None, waves=WAVES, gates=GATES, user=user
    )
    return first, Campaign.objects.get(pk=running.pk), draft


def build_telemetry(v1: Any, v2: Any, rng: Any, devices: int = 1000, windows: int = 200) -> int:
    import numpy as np
    from django.utils import timezone

    from fleet.models import Device
    from telemetry.binning import LATENCY_EDGES_MS
    from telemetry.models import Report

    now = timezone.now()
    start = now - timedelta(seconds=300 * windows)
    start = start - timedelta(seconds=start.timestamp() % 300)
    ids = list(Device.objects.filter(labels__hw="rpi4").values_list("id", "labels")[:devices])
    profile = v1.reference_profile
    feats = [(f["name"], np.asarray(f["counts"], float) / sum(f["counts"])) for f in profile["features"]]
    out_p = np.asarray(profile["output"]["counts"], float) / sum(profile["output"]["counts"])
    lat_p = np.asarray([0, 2, 10, 40, 30, 12, 4, 1, 0.5, 0.3, 0.1, 0.1], float)
    lat_p = lat_p / lat_p.sum()
    assert len(lat_p) == len(LATENCY_EDGES_MS) - 1
    ramp = {len(p): np.linspace(0.3, 1.7, len(p)) for _, p in feats}

    def tilt(p: Any) -> Any:
        """Input drift in apac: mass moves towards the upper bins (quantile bins are equal-mass)."""
        q = p * ramp[len(p)]
        return q / q.sum()

    rows, total = [], 0
    for j, (dev, labels) in enumerate(ids):
        canary = j % 5 == 0 and labels.get("region") == "eu"  # a fifth of eu: the running campaign's wave
        version = v2 if canary else v1
        shift = labels.get("region") == "apac"
        for w in range(windows):
            ws = start + timedelta(seconds=300 * w)
            n = float(rng.poisson(100))
            noise = rng.laplace(0, 1.0, size=3)
            features = {}
            for name, p in feats:
                q = tilt(p) if shift and w > windows // 2 else p
                features[name] = np.round(n * q + rng.laplace(0, 1.0, size=len(q)), 2).tolist()
            rows.append(
                Report(
                    id=uuid.uuid4(),
                    device_id=dev,
                    version=version,
                    window_start=ws,
                    window_end=ws + timedelta(seconds=300),
                    inference_count=n + noise[0],
                    error_count=max(0.0, (4 if canary else 1) * n / 100 + noise[1]),
                    latency=np.round(n * lat_p + rng.laplace(0, 1.0, size=len(lat_p)), 2).tolist(),
                    outputs=np.round(n * out_p + rng.laplace(0, 1.0, size=len(out_p)), 2).tolist(),
                    features=features,
                    mechanism="laplace",
                    epsilon=1.0,
                    received_at=min(ws + timedelta(seconds=320), now - timedelta(seconds=60)),
                )
            )
        if len(rows) >= 10000:
            Report.objects.bulk_create(rows, batch_size=2000)
            total += len(rows)
            rows = []
    Report.objects.bulk_create(rows, batch_size=2000)
    return total + len(rows)


def build_events_and_audit(v1: Any, v2: Any, rng: Any) -> None:
    from django.utils import timezone

    from accounts.models import AuditEntry
    from fleet.models import Device, DeviceEvent

    now = timezone.now()
    events = []
    for dev, inst in Device.objects.exclude(installed={}).values_list("id", "installed")[:20000]:
        label = inst.get("vibration", "v1")
        at = now - timedelta(minutes=float(rng.uniform(5, 3000)))
        kinds = ["download_started", "download_finished", "installed", "activated"]
        if label == "v2" and rng.random() < 0.1:
            kinds = ["download_started", "download_finished", "install_failed"]
        for i, kind in enumerate(kinds):
            events.append(
                DeviceEvent(
                    id=uuid.uuid4(),
                    device_id=dev,
                    kind=kind,
                    at=at + timedelta(seconds=i),
                    model_name="vibration",
                    version_label=label,
                )
            )
    DeviceEvent.objects.bulk_create(events, batch_size=5000)
    actions = ["device.labels", "cohort.update", "enrollment_key.create", "release.create", "device.token_rotate"]
    AuditEntry.objects.bulk_create(
        [
            AuditEntry(actor_label="demo", action=actions[i % len(actions)], target=f"demo-{i:06d}", details={"i": i})
            for i in range(30000)
        ],
        batch_size=5000,
    )


def build(n_devices: int) -> None:
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from demo.story import COHORTS
    from fleet import services as fleet_services
    from telemetry import services as tel

    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    user = get_user_model().objects.create_superuser("bench-admin", "", "bench")
    build_devices(n_devices, rng)
    print(f"  {n_devices} devices: {time.perf_counter() - t0:.0f} s", flush=True)
    for name, selector in COHORTS.items():
        fleet_services.save_cohort(name, selector, f"demo cohort: {selector}", user=user)
    v1, v2, other_v2 = build_versions(user)
    build_campaigns(user, v1, v2, other_v2)
    print(f"  versions, cohorts, campaigns: {time.perf_counter() - t0:.0f} s", flush=True)
    n = build_telemetry(v1, v2, rng)
    print(f"  {n} reports: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"  rollups {tel.update_rollups(timezone.now())}: {time.perf_counter() - t0:.0f} s", flush=True)
    drift = tel.compute_drift(limit=100000)
    print(f"  drift {drift}: {time.perf_counter() - t0:.0f} s", flush=True)
    build_events_and_audit(v1, v2, rng)
    with connection.cursor() as cur:
        cur.execute("ANALYZE")
    print(f"  events, audit: {time.perf_counter() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------------- timing


def pages() -> list[str]:
    from fleet.models import Device
    from ota.models import ModelVersion
    from rollout.models import Campaign

    v2 = ModelVersion.objects.get(model__name="vibration", label="v2")
    v1 = ModelVersion.objects.get(model__name="vibration", label="v1")
    running = Campaign.objects.get(state="running")
    rolled = Campaign.objects.get(state="rolled_back")
    draft = Campaign.objects.get(state="draft")
    device = Device.objects.filter(events__isnull=False).first()
    preview = (
        f"/campaigns/preview/?version={v2.pk}&waves=5%2C30%2C20%0A25%2C30%2C50%0A100%2C60%2C100&reserved_id=999999"
    )
    return [
        "/",
        "/?live=1",
        "/devices/",
        "/devices/?labels=region%3Deu",
        "/devices/?labels=region%3Deu%2C+hw+in+(rpi4)",
        "/devices/?status=online",
        "/devices/?status=stale",
        "/devices/?status=never",
        "/devices/?model=vibration&version=v2",
        "/devices/?q=demo-01234",
        "/devices/?sort=name",
        "/devices/?sort=-last_seen",
        "/devices/?sort=last_seen&status=offline",
        f"/devices/{device.pk}/",
        "/cohorts/",
        "/cohorts/count?selector=region%3Deu%2C+hw+in+(rpi4%2C+jetson)",
        "/enrollment-keys/",
        "/models/",
        "/models/vibration/",
        "/models/vibration/versions/v2/",
        "/campaigns/",
        f"/campaigns/{running.pk}/",
        f"/campaigns/{running.pk}/live/",
        f"/campaigns/{running.pk}/series.json",
        f"/campaigns/{rolled.pk}/",
        f"/campaigns/{draft.pk}/",
        "/campaigns/new/",
        preview,
        "/releases/",
        f"/telemetry/versions/{v2.pk}/",
        f"/telemetry/versions/{v1.pk}/",
        "/telemetry/alerts/",
        "/accounts/audit/",
    ]


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def time_pages(repeat: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from fleet.models import Device

    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    print(f"{Device.objects.count()} devices; Django test client, warm, {repeat} timed requests per page")
    print(f"{'page':64} {'median ms':>9} {'p95 ms':>8} {'queries':>7} {'first ms':>8}")
    for url in pages():
        t0 = time.perf_counter()
        client.get(url)  # warm-up; its time is the "first" column (caches cold)
        first = (time.perf_counter() - t0) * 1000
        times = []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as q:
                t0 = time.perf_counter()
                resp = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, (url, resp.status_code)
        shown = url if len(url) <= 64 else url[:61] + "..."
        print(
            f"{shown:64} {statistics.median(times):9.1f} {p95(times):8.1f} {len(q.captured_queries):7d} {first:8.1f}",
            flush=True,
        )
    time_gate_read(repeat)


def time_gate_read(repeat: int) -> None:
    """``canary_vs_control`` as the gate job calls it for the running campaign (not a page)."""
    from rollout import evaluation
    from rollout.models import Campaign

    c = Campaign.objects.select_related("version", "previous_version", "cohort").get(state="running")
    evaluation.compare(c, c.wave_started_at, 20)
    times = []
    for _ in range(max(3, repeat // 3)):
        t0 = time.perf_counter()
        evaluation.compare(c, c.wave_started_at, 20)
        times.append((time.perf_counter() - t0) * 1000)
    print(f"{'(gate job) canary_vs_control, running campaign':64} {statistics.median(times):9.1f} {p95(times):8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="edgefleet_bench_pages")
    ap.add_argument("--build", action="store_true", help="drop and rebuild the database first")
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    setup_django(args.db, args.build)
    if args.build:
        print(f"building {args.db} ...", flush=True)
        build(args.devices)
    time_pages(args.repeat)


if __name__ == "__main__":
    main()
