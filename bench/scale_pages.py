"""The pages issue 17 names, over HTTP (Django's test client, in process), on a database built by bench/scale.py.

Times each page cold (a new database session, no profile in process memory; the process itself is
warmed first: imports, templates, URLconf) and warm (median of three), with a draft and a rolled-back
campaign made for the run and removed after. Asserts nothing.

    .venv/bin/python bench/scale_pages.py --database bench_scale17_1m [--redis redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench._server import django_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", default="edgefleet_bench_scale")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args()
    django_env(args.database, args.redis, str(Path(tempfile.gettempdir()) / f"edgefleet-{args.database}"))
    import django

    django.setup()
    import scale
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from fleet import kept, tasks
    from fleet.models import Device
    from rollout import lifecycle
    from rollout.models import Campaign

    settings.ALLOWED_HOSTS = ["*"]
    m, v1, v2, cohort = scale._bench_rows()
    waves = [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}]
    draft = lifecycle.create_campaign(name="pages-draft", version=v2, cohort=cohort, waves=waves, gates={})
    back = Campaign.objects.create(
        name="pages-rolled-back", model=m, version=v2, previous_version=v1, cohort=cohort,
        state="rolled_back", waves=waves, wave_index=1,
    )  # fmt: skip
    users = get_user_model()
    user = users.objects.filter(username="bench-admin").first() or users.objects.create_superuser(
        "bench-admin", "bench@example.com", "x"
    )
    client = Client()
    client.force_login(user)
    tasks.count_statuses()  # the beat job's figure, as a deployment has it
    waves_q = "1%2C30%2C20%0A10%2C30%2C50%0A100%2C60%2C100"
    pages = [
        "/",
        f"/campaigns/{draft.pk}/",
        f"/campaigns/{back.pk}/",
        f"/campaigns/{back.pk}/live/",
        f"/campaigns/preview/?version={v2.pk}&cohort={cohort.pk}&waves={waves_q}&reserved_id=999999",
        "/cohorts/count?selector=region%3Deu",
        "/cohorts/",
        f"/api/v1/campaigns/{back.pk}",
    ]
    print(f"# bench/scale_pages.py on {args.database} ({Device.objects.count():,} devices, {os.cpu_count()} cores)")
    client.get("/devices/?limit=1")
    client.get("/campaigns/")
    try:
        for page in pages:
            connection.close()
            kept._PROFILES.clear()
            t0 = time.perf_counter()
            status = client.get(page).status_code
            cold = time.perf_counter() - t0
            warm = []
            for _ in range(3):
                t0 = time.perf_counter()
                client.get(page)
                warm.append(time.perf_counter() - t0)
            print(
                f"{status} {page[:60]:60s} cold {cold * 1000:6,.0f} ms  warm {statistics.median(warm) * 1000:6,.0f} ms"
            )
    finally:
        Campaign.objects.filter(pk__in=[draft.pk, back.pk]).delete()
    one, five, fifteen = os.getloadavg()
    print(f"load average {one:.1f} {five:.1f} {fifteen:.1f}")


if __name__ == "__main__":
    main()
