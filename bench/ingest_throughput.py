"""Telemetry ingest: reports acknowledged (durable) per second through the real endpoint, vs bare COPY.

    .venv/bin/python bench/ingest_throughput.py [--seconds 20] [--clients 4] [--batch 100] [--devices 400]

Starts gunicorn (2 workers, 127.0.0.1 only) on a fresh PostgreSQL database (bench_telemetry_ingest),
enrolls devices, and has ``--clients`` threads POST batches of ``--batch`` reports for ``--seconds``
(each report a new grid window of its device: at most 574 per device, the 48 h max age).
Then COPYs the same number of identical rows into a scratch copy of the table in the same run.
"""

import argparse
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import requests
from _telemetry_setup import ROOT, fresh_database, released_version

PORT = 18765


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--devices", type=int, default=400)
    args = ap.parse_args()
    url = fresh_database("bench_telemetry_ingest")
    from django.conf import settings

    settings.EDGEFLEET_DP_DAILY_BUDGET = 1e9  # the bench measures ingest, not the budget
    from tests import factories
    from tests.telemetry_support import report

    version = released_version()
    tokens = [factories.device(labels={"region": "eu"}, name=f"b{i}")[1] for i in range(args.devices)]
    env = dict(
        os.environ, DATABASE_URL=url, EDGEFLEET_DP_DAILY_BUDGET="1e9", DJANGO_SETTINGS_MODULE="edgefleet.settings"
    )
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "edgefleet.wsgi", "-b", f"127.0.0.1:{PORT}", "-w", "2"],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{PORT}/healthz", timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.2)
        template = report(version)
        acked = [0]
        errors = [0]
        sent_rows: list[dict] = []
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds
        # One report per device, version and window: each device walks back over the grid windows of
        # the last 48 h (the max age), a batch at a time, so every report is a new window.
        w = int(settings.EDGEFLEET_TELEMETRY_WINDOW)
        newest = (int(time.time()) // w - 1) * w
        per_device = (int(settings.EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS) - 2 * w) // w
        used = [0] * len(tokens)

        def windows(d: int, n: int) -> list[tuple[str, str]]:
            with lock:
                first, used[d] = used[d], min(used[d] + n, per_device)
            starts = [newest - j * w for j in range(first, used[d])]
            iso = [(datetime.fromtimestamp(t, UTC), datetime.fromtimestamp(t + w, UTC)) for t in starts]
            return [(a.isoformat(), b.isoformat()) for a, b in iso]

        def client(i: int) -> None:
            s = requests.Session()
            k = i
            while time.monotonic() < stop:
                d = k % len(tokens)
                token = tokens[d]
                k += args.clients
                cells = windows(d, args.batch)
                if not cells:
                    if min(used) >= per_device:
                        return  # every device has reported every window it may
                    continue
                body = {
                    "reports": [dict(template, id=str(uuid.uuid4()), window_start=a, window_end=b) for a, b in cells]
                }
                r = s.post(
                    f"http://127.0.0.1:{PORT}/api/v1/telemetry", json=body,
                    headers={"Authorization": f"Bearer {token}"}, timeout=30,
                )  # fmt: skip
                with lock:
                    if r.status_code == 202:
                        acked[0] += len(r.json()["accepted"])
                        if len(sent_rows) < 1:
                            sent_rows.append(body["reports"][0])
                    else:
                        errors[0] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(10)
    from telemetry.models import Report

    stored = Report.objects.count()
    print(
        f"endpoint: {acked[0]:,} reports acknowledged in {elapsed:.1f} s = {acked[0] / elapsed:,.0f} reports/s "
        f"({args.clients} clients, batches of {args.batch}, gunicorn -w 2); stored {stored:,}; "
        f"failed batches {errors[0]}"
    )
    copy_same_rows(stored)


def copy_same_rows(n: int) -> None:
    """COPY ``n`` rows equal to what the endpoint stored into a scratch copy of the table."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("CREATE TABLE bench_copy (LIKE telemetry_report INCLUDING ALL)")
        cur.execute(
            "SELECT device_id, version_id, window_start, window_end, inference_count, error_count, latency::text, "
            "outputs::text, features::text, mechanism, epsilon, received_at FROM telemetry_report LIMIT 1"
        )
        row = list(cur.fetchone())
        buf = io.StringIO()
        start = row[2]
        for i in range(n):  # one row per window, as the unique constraint wants
            row[2] = start - timedelta(seconds=i)
            buf.write("\t".join([str(uuid.uuid4()), *map(str, row)]) + "\n")
        buf.seek(0)
        t0 = time.perf_counter()
        cur.copy_expert(
            "COPY bench_copy (id, device_id, version_id, window_start, window_end, inference_count, error_count, "
            "latency, outputs, features, mechanism, epsilon, received_at) FROM STDIN",
            buf,
        )
        connection.commit() if not connection.get_autocommit() else None
        secs = time.perf_counter() - t0
    print(f"bare COPY of the same {n:,} rows (same indexes): {secs:.2f} s = {n / secs:,.0f} rows/s")


if __name__ == "__main__":
    sys.exit(main())
