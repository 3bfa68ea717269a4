"""Fleet latency per hardware class on the version page: the query's time, SQL-summed vs Python-summed.

    .venv/bin/python bench/fleet_latency.py [--devices 1000] [--reports 288000]

COPYs ``--reports`` latency reports (5-minute windows, spread over the devices, three hardware
classes) into a fresh PostgreSQL database (bench_fleet_latency) and times
``telemetry.fleet_latency.latency_by_hardware`` (PostgreSQL sums each device's windows) against
reading every report into Python (what a naive page would do). Prints both and the classes found.
"""

import argparse
import io
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from _telemetry_setup import fresh_database, released_version

PROFILES = [
    {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none"},
    {"arch": "aarch64", "cores": 6, "ram_mb": 8192, "accelerator": "jetson"},
    {"arch": "x86_64", "cores": 8, "ram_mb": 16384, "accelerator": "none"},
]


def copy_reports(version_id: int, devices: list, total: int) -> float:
    from django.db import connection

    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=23)
    received = datetime.now(UTC) - timedelta(minutes=1)
    cols = "id, device_id, version_id, window_start, window_end, inference_count, error_count, latency, outputs, features, mechanism, epsilon, received_at"  # noqa: E501
    t0, done = time.perf_counter(), 0
    with connection.cursor() as cur:
        while done < total:
            buf = io.StringIO()
            for _ in range(min(50_000, total - done)):
                ws = start + timedelta(minutes=5 * (done // len(devices)))
                lat = json.dumps([0, 10, 60, 150, 70, 10, 0, 0, 0, 0, 0, 0])
                row = (uuid.uuid4(), devices[done % len(devices)], version_id, ws.isoformat(),
                       (ws + timedelta(minutes=5)).isoformat(), 300.0, 3.0, lat, "[]", "{}", "laplace", 1.0,
                       received.isoformat())  # fmt: skip
                buf.write("\t".join(str(x) for x in row) + "\n")
                done += 1
            buf.seek(0)
            cur.copy_expert(f"COPY telemetry_report ({cols}) FROM STDIN", buf)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=288_000)
    args = ap.parse_args()
    fresh_database("bench_fleet_latency")
    from fleet.models import Device
    from telemetry import fleet_latency
    from telemetry.models import Report

    version = released_version()
    Device.objects.bulk_create(
        [Device(name=f"b{i}", token_hash=uuid.uuid4().hex + uuid.uuid4().hex, hardware=PROFILES[i % 3])
         for i in range(args.devices)]
    )  # fmt: skip
    devices = list(Device.objects.values_list("id", flat=True))
    secs = copy_reports(version.id, devices, args.reports)
    print(f"COPY {args.reports:,} reports from {args.devices:,} devices: {secs:.1f} s")
    t0 = time.perf_counter()
    out = fleet_latency.latency_by_hardware(version.id)
    sql = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = Report.objects.filter(version=version).values_list(
        "device_id", "device__hardware", "latency", "inference_count"
    )
    naive = fleet_latency.by_class(rows.iterator(chunk_size=2000), fleet_latency.min_cohort())
    py = time.perf_counter() - t0
    assert [c["p95"] for c in naive["classes"]] == [c["p95"] for c in out["classes"]]
    print(f"latency_by_hardware (PostgreSQL sums per hardware):{sql * 1000:,.0f} ms")
    print(f"every report read into Python:                      {py * 1000:,.0f} ms")
    for c in out["classes"]:
        print(f"  {c['hardware']:40} {c['devices']:>6,} devices  p50 {c['p50']:.1f} ms  p95 {c['p95']:.1f} ms")


if __name__ == "__main__":
    main()
