"""Device list page timings with the fleet in PostgreSQL (default: the poll bench's 100,000 devices).

Renders /devices/ with filters through Django's test client in this process (no server, so the
figures are the view + queries + template alone) and prints median and worst of ``--repeat`` runs,
plus the number of queries per page. Run bench/poll_throughput.py first (it fills the database).

    .venv/bin/python bench/pages.py [--db edgefleet_bench_poll] [--repeat 5]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = [
    "/devices/",
    "/devices/?labels=region%3Deu",
    "/devices/?labels=region%3Deu%2C+hw+in+(rpi4)",
    "/devices/?status=online",
    "/devices/?status=offline",
    "/devices/?status=never",
    "/devices/?model=fraud",
    "/admin/fleet/device/",
    "/admin/fleet/device/?q=bench-99999",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="edgefleet_bench_poll")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.db}",
        REDIS_URL="redis://127.0.0.1:6379/11",
        DJANGO_SETTINGS_MODULE="edgefleet.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-not-for-production-0123456789",
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from fleet.models import Device

    user, _ = get_user_model().objects.get_or_create(username="bench-admin", defaults={"is_superuser": True})
    user.is_superuser = user.is_staff = True
    user.save()
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(user)
    print(f"{Device.objects.count()} devices in {args.db}")
    print(f"{'page':52} {'median ms':>10} {'worst ms':>9} {'queries':>8}")
    for url in PAGES:
        times = []
        for _ in range(args.repeat):
            with CaptureQueriesContext(connection) as q:
                t0 = time.perf_counter()
                resp = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, (url, resp.status_code)
        print(f"{url:52} {statistics.median(times):10.1f} {max(times):9.1f} {len(q.captured_queries):8d}")


if __name__ == "__main__":
    main()
