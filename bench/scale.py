"""The fleet at scale: the figures of issue 17 that this branch changed, with memory, at ``--devices`` N.

Builds N devices with ``COPY`` (one stream; 1,000,000 in a few minutes) into its own PostgreSQL
database and reuses it on the next run with the same N (``--build`` forces a rebuild). Then prints:

- presence flush: N-dirty sets of 100k, 250k and 1M (up to N) flushed by ``fleet.presence.flush``
  (``COPY`` into a temporary table + one ``UPDATE … FROM``); ``--before`` also times the flush this
  replaced (``bulk_update``'s ``CASE WHEN``, 5,000 ids a round) on the first size;
- the worker manifest cache: hit rate of the LRU (fleet/lru.py) against the dict emptied when full,
  with a fleet of N polling uniformly and a hot tenth polling ten times as often, and bytes per entry;
- for reference: the overview's queries cold and warm, and a cohort's live count;
- kept counts (``kept``): the dry run, a cohort's live count, the overview and a campaign's progress
  before (scans of every device) and after (fleet/kept.py), cold and warm; campaign start, advance
  and rollback (the request, then the move job: rollout/moves.py); what the trigger costs writers.

Memory is the process's peak RSS after each step. Asserts nothing.

    .venv/bin/python bench/scale.py --devices 100000 [--database edgefleet_bench_scale]
        [--redis redis://127.0.0.1:6379/12] [--build] [--before] [--cache-size 300000]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._server import django_env

REGIONS = ("eu", "us", "ap")
HW = ("rpi4", "jetson", "x86")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def load() -> str:
    """The machine's load average: on a shared machine, wall times are only comparable at similar load."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


def ensure_database(name: str, env: dict[str, str], n: int, rebuild: bool) -> bool:
    """Create and migrate ``name`` unless it exists with ``n`` devices; True if (re)built."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        exists = cur.fetchone() is not None
    if exists and not rebuild:
        db = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=name)
        with db.cursor() as cur:
            try:
                cur.execute("SELECT count(*) FROM fleet_device")
                have = cur.fetchone()[0]
            except psycopg2.Error:
                have = -1
        db.close()
        if have == n:
            conn.close()
            return False
    from bench._server import fresh_database

    conn.close()
    fresh_database(name, env)
    return True


def build_devices(n: int) -> float:
    """N devices in one ``COPY`` stream; returns seconds."""
    import json

    from django.db import connection

    t0 = time.perf_counter()
    rng = random.Random(17)
    chunk = 100_000
    with connection.cursor() as cur:
        raw = cur.cursor
        for start in range(0, n, chunk):
            buf = io.StringIO()
            for i in range(start, min(n, start + chunk)):
                labels = {"fleet": "scale", "region": REGIONS[i % 3], "hw": HW[rng.randrange(3)]}
                hardware = {
                    "arch": "aarch64",
                    "cores": 4,
                    "ram_mb": 4096,
                    "ort_version": "1.17.1",
                    "storage_free_mb": 2048,
                }
                installed = {"vibration": "v1"} if i % 10 else {}
                row = (
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    f"scale-{i:07d}",
                    json.dumps(hardware),
                    json.dumps(labels),
                    "0.1.0",
                    f"{i:064x}",
                    f"eft_{i:07d}",
                    json.dumps(installed),
                    "2026-11-01T00:00:00+00:00",
                    "",
                    "{}",
                )
                buf.write("\t".join(row) + "\n")
            buf.seek(0)
            raw.copy_expert(
                "COPY fleet_device (id, name, hardware, labels, agent_version, token_hash, token_prefix, installed, "
                "enrolled_at, identity_key, conditions) "
                "FROM STDIN",
                buf,
            )
        cur.execute(
            "UPDATE fleet_device SET enrolled_at = now() - random() * interval '30 days', "
            "last_seen_at = CASE WHEN random() < 0.9 THEN now() - random() * interval '4 minutes' END"
        )
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE fleet_device")
    return time.perf_counter() - t0


def fill_dirty(ids: list[str], now: float) -> float:
    """Every id polled now (as drained from the web workers): hash + dirty set, pipelined."""
    import json

    from fleet import presence

    r = presence.redis_client()
    r.delete(presence.DIRTY)
    t0 = time.perf_counter()
    state = json.dumps({"vibration": "v2"})
    for start in range(0, len(ids), 10_000):
        pipe = r.pipeline(transaction=False)
        part = ids[start : start + 10_000]
        for did in part:
            pipe.hset(presence.hash_key(did), mapping={"seen": now, "state": state})
        pipe.sadd(presence.DIRTY, *part)
        pipe.execute()
    return time.perf_counter() - t0


def flush_before(batch: int = 5000) -> int:
    """The flush this branch replaced (main before issue 17): ``bulk_update`` per 5,000 ids."""
    from datetime import UTC, datetime

    from django.db import transaction

    from fleet import presence
    from fleet.models import Device

    r = presence.redis_client()
    total = 0
    while True:
        ids = [i.decode() for i in (r.spop(presence.DIRTY, batch) or [])]
        if not ids:
            return total
        pipe = r.pipeline(transaction=False)
        for did in ids:
            pipe.hmget(presence.hash_key(did), "seen", "state")
        import json

        rows = [
            Device(id=uuid.UUID(did), last_seen_at=datetime.fromtimestamp(float(s), UTC), installed=json.loads(st))
            for did, (s, st) in zip(ids, pipe.execute(), strict=True)
        ]
        with transaction.atomic():
            Device.objects.bulk_update(rows, ["last_seen_at", "installed"], batch_size=1000)
        total += len(rows)


def bench_presence(n: int, before: bool) -> None:
    from django.db import connection

    from fleet import presence

    with connection.cursor() as cur:
        cur.execute("SELECT id::text FROM fleet_device ORDER BY token_hash")
        all_ids = [row[0] for row in cur.fetchall()]
    print("\n## presence flush (beat every 15 s; 1M devices polling every 60 s dirty 250k per beat)")
    for size in [s for s in (100_000, 250_000, 1_000_000) if s <= n] or [n]:
        ids = all_ids[:size]
        fill = fill_dirty(ids, time.time())
        cpu0 = time.process_time()
        secs, written = timed(presence.flush)
        cpu = time.process_time() - cpu0
        print(
            f"flush {size:>9,} dirty: {secs:6.2f} s ({written:,} written, {size / secs:,.0f}/s; "
            f"{cpu:.1f} s CPU in this process; Redis fill {fill:.1f} s); peak RSS {rss_mb():.0f} MB; {load()}"
        )
        if before and size == min(100_000, n):
            fill_dirty(ids, time.time())
            cpu0 = time.process_time()
            secs, written = timed(flush_before)
            cpu = time.process_time() - cpu0
            print(
                f"  before (bulk_update): {secs:6.2f} s ({written:,} written; {cpu:.1f} s CPU in this process); "
                f"peak RSS {rss_mb():.0f} MB; {load()}"
            )


def bench_cache(n: int, size: int) -> None:
    """Hit rates of the LRU and of the dict emptied when full, one worker serving N devices."""
    from fleet.lru import LRU

    print(f"\n## worker manifest cache ({size:,} entries, fleet of {n:,})")
    rng = random.Random(1)
    hot = max(1, n // 10)
    polls = 3 * n

    def stream() -> Any:
        for _ in range(polls):  # a hot tenth polls ten times as often as the rest
            yield rng.randrange(hot) if rng.random() < 10 * hot / (10 * hot + n - hot) else rng.randrange(n)

    for name in ("lru", "dict emptied when full"):
        rng.seed(1)
        hits = hot_hits = hot_polls = 0
        if name == "lru":
            lru: LRU[int, bool] = LRU(size)
            for d in stream():
                got = lru.get(d) is not None
                if not got:
                    lru.put(d, True)
                hits += got
                hot_polls += d < hot
                hot_hits += got and d < hot
        else:
            plain: dict[int, bool] = {}
            for d in stream():
                got = d in plain
                if not got:
                    if len(plain) >= size:
                        plain.clear()
                    plain[d] = True
                hits += got
                hot_polls += d < hot
                hot_hits += got and d < hot
        print(
            f"{name:>24}: hit rate {hits / polls:6.1%} of all polls, "
            f"{hot_hits / max(1, hot_polls):6.1%} of the hot tenth's"
        )


def _bench_rows() -> tuple[Any, Any, Any, Any]:
    """A model with two staged versions and the cohort the kept-count figures use; old campaigns gone."""
    import hashlib

    from fleet.models import Cohort
    from ota.models import Artifact, Model, ModelVersion
    from rollout.models import Campaign

    m = Model.objects.get_or_create(name="vibration")[0]
    Campaign.objects.filter(model=m).delete()
    versions = []
    for label in ("v1", "v2"):
        sha = hashlib.sha256(f"bench-scale-{label}".encode()).hexdigest()
        art = Artifact.objects.get_or_create(sha256=sha, defaults={"size": 200_000, "storage_key": f"a/{sha}"})[0]
        versions.append(
            ModelVersion.objects.get_or_create(
                model=m,
                label=label,
                defaults={"status": "staged", "artifact": art, "report": {"opset": 17, "file_size": 200_000}},
            )[0]
        )
    cohort = Cohort.objects.get_or_create(name="bench-eu", defaults={"selector": "region=eu, hw in (rpi4, jetson)"})[0]
    return m, versions[0], versions[1], cohort


def _cold(fn: Callable[[], Any], clear_cache: bool = True) -> float:
    """Seconds for ``fn`` in a new database session with no profile in process memory (and, unless
    told, an empty shared cache: no grouped rows kept from an earlier call)."""
    from django.core.cache import cache
    from django.db import connection

    from fleet import kept

    connection.close()
    kept._PROFILES.clear()
    if clear_cache:
        cache.clear()
    return timed(fn)[0]


def _warm(fn: Callable[[], Any]) -> float:
    return statistics.median(timed(fn)[0] for _ in range(3))


def _ms(t: float) -> str:
    return f"{t * 1000:,.0f} ms"


def bench_kept(n: int) -> None:
    """Before (scans of every device) and after (kept counts, moves) for issue 17's request paths."""
    from unittest import mock

    from django.db import connection
    from django.urls import reverse

    from edgefleet.celery import app
    from fleet import bulk, kept, overview, services
    from fleet.models import Device
    from rollout import cohorts, lifecycle, moves, placement, progress, targeting
    from rollout.models import Campaign

    reverse("campaign-detail", args=[1])  # import the URLconf once, as a server has (not a request's cost)
    print("\n## kept counts: a trigger's deltas folded into per-profile counts by device key")
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM fleet_profilecountdelta")
        pending = cur.fetchone()[0]
    t, _ = timed(kept.fold)
    print(f"fold of {pending:,} deltas (the build's, once): {t:.2f} s; peak RSS {rss_mb():.0f} MB")
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM fleet_deviceprofile")
        profiles = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM fleet_profilecount")
        rows = cur.fetchone()[0]
    print(f"kept: {profiles:,} profiles, {rows:,} count rows for {n:,} devices")

    m, v1, v2, cohort = _bench_rows()
    waves = [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}]
    sel = cohort.selector

    def dry(bucketing: str) -> Any:
        return targeting.dry_run(version=v2, cohort=cohort, waves=waves, campaign_id=4242, bucketing=bucketing)

    before = _cold(lambda: dry(placement.LEGACY))
    after_cold, after_warm = _cold(lambda: dry(placement.KEYED)), _warm(lambda: dry(placement.KEYED))
    a, b = dry(placement.LEGACY), dry(placement.KEYED)
    print(
        f"dry run (4 waves, cohort {sel!r}): before (grouped scan, uncached) {_ms(before)}; "
        f"after cold {_ms(after_cold)}, warm {_ms(after_warm)} (totals {a.total:,} / {b.total:,})"
    )
    before = _warm(lambda: services.devices_matching(sel).count())
    after_cold, after_warm = _cold(lambda: services.count_matching(sel)), _warm(lambda: services.count_matching(sel))
    print(
        f"cohort live count: before (count over devices) {_ms(before)}; "
        f"after cold {_ms(after_cold)}, warm {_ms(after_warm)}"
    )
    with (
        mock.patch.object(kept, "available", lambda: False),
        mock.patch.object(overview, "kept_status_above", lambda: 10**12),
    ):
        before_cold, before_warm = _cold(overview.context), _warm(overview.context)
    from fleet import tasks

    job, _ = timed(tasks.count_statuses)  # the beat job, every 15 s (it runs for fleets of 50,000 or more)
    after_cold, after_warm = _cold(overview.context, clear_cache=False), _warm(overview.context)
    print(
        f"overview context: before cold {_ms(before_cold)}, warm {_ms(before_warm)}; "
        f"after cold {_ms(after_cold)}, warm {_ms(after_warm)} (status counts kept by a job taking {_ms(job)})"
    )
    legacy, keyed = (
        Campaign.objects.create(
            name=f"bench-{kind}",
            model=m,
            version=v2,
            previous_version=v1,
            cohort=cohort,
            state="paused",
            waves=waves,
            wave_index=1,
            bucketing=kind,
        )
        for kind in (placement.LEGACY, placement.KEYED)
    )
    before = _cold(lambda: progress.install_progress(Campaign.objects.get(pk=legacy.pk)))
    after_cold = _cold(lambda: progress.install_progress(Campaign.objects.get(pk=keyed.pk)))
    after_warm = _warm(lambda: progress.install_progress(Campaign.objects.get(pk=keyed.pk)))
    print(
        f"campaign progress (wave 2 of 4): before {_ms(before)}; after cold {_ms(after_cold)}, warm {_ms(after_warm)}"
    )
    Campaign.objects.filter(pk__in=[legacy.pk, keyed.pk]).delete()

    print("\n## campaign start: the request, then the move job")
    with mock.patch.object(kept, "available", lambda: False):
        before = _cold(lambda: (dry(placement.LEGACY), cohorts.overlapping_devices(cohort, None)))
    print(f"start's own scans before (uncached dry run + overlap scan in Python): {_ms(before)}")
    other = Campaign.objects.create(name="bench-other", model=m, version=v2, cohort=None, state="draft")
    c = lifecycle.create_campaign(
        name="bench-start", version=v2, cohort=cohort, waves=waves, gates={"error_rate": 0.02}
    )
    other.delete()
    t, _ = timed(lambda: lifecycle.start(c.pk))
    move = c.moves.first()
    print(f"lifecycle.start: {_ms(t)} (records the move of {move.total:,} devices; the job does the rest)")
    t, done = timed(lambda: moves.run(move.pk))
    print(f"move job: {done.done:,} cohort devices walked, in {t:.2f} s ({len(done.ranges)} key range(s)); {load()}")
    t, _ = timed(lambda: lifecycle.advance(c.pk, reason="bench"))
    move = c.moves.first()
    t2, done = timed(lambda: moves.run(move.pk))
    print(f"lifecycle.advance to 10%: {_ms(t)}; move job {done.done:,} devices in {t2:.2f} s")
    t, _ = timed(lambda: lifecycle.rollback(c.pk, reason="bench"))
    move = c.moves.first()
    t2, done = timed(lambda: moves.run(move.pk))
    print(f"lifecycle.rollback (10% covered): {_ms(t)}; move job {done.done:,} devices in {t2:.2f} s")
    app.control.purge()  # the delay()s above: no worker runs in this bench

    print("\n## what keeping the counts costs writers")
    ids = list(Device.objects.values_list("id", flat=True)[:1000])
    t, _ = timed(lambda: bulk.relabel(ids, {"bench": "x"}, []))
    t2, _ = timed(kept.fold)
    bulk.relabel(ids, {}, ["bench"])
    kept.fold()
    print(f"bulk relabel of 1,000 devices: {_ms(t)} (trigger included); fold of their 2,000 deltas: {_ms(t2)}")
    with connection.cursor() as cur:
        sample = "SELECT id FROM fleet_device ORDER BY id LIMIT 20000"
        undo = f"UPDATE fleet_device SET installed = installed - 'bench' WHERE id IN ({sample})"
        for on in (False, True):
            # without the trigger, the change is undone without it too, so the counts stay true
            cur.execute(f"ALTER TABLE fleet_device {'ENABLE' if on else 'DISABLE'} TRIGGER fleet_device_counts_upd")
            sql = (
                f'UPDATE fleet_device SET installed = installed || \'{{"bench": "{on}"}}\'::jsonb '
                f"WHERE id IN ({sample})"
            )
            t, _ = timed(lambda sql=sql: cur.execute(sql))
            cur.execute(undo)
            label = "with the trigger" if on else "without the trigger"
            print(f"UPDATE of 20,000 devices' installed (as the presence flush writes it), {label}: {_ms(t)}")
        cur.execute("ALTER TABLE fleet_device ENABLE TRIGGER fleet_device_counts_upd")
    kept.fold()


def bench_pages() -> None:
    from django.db import connection

    from fleet import overview, services

    print("\n## the overview's queries and a cohort's live count (kept counts on PostgreSQL)")
    connection.close()  # a new session: nothing of ours cached in it
    cold, _ = timed(overview.context)
    warm = statistics.median(timed(overview.context)[0] for _ in range(3))
    print(f"overview context: cold {cold * 1000:,.0f} ms, warm {warm * 1000:,.0f} ms")
    count = statistics.median(
        timed(lambda: services.count_matching("region=eu, hw in (rpi4, jetson)"))[0] for _ in range(3)
    )
    print(f"cohort live count (region=eu, hw in (rpi4, jetson)): {count * 1000:,.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--database", default="edgefleet_bench_scale")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--build", action="store_true", help="rebuild even if the database holds N devices")
    ap.add_argument("--before", action="store_true", help="also time the flush this replaced")
    ap.add_argument("--cache-size", type=int, default=300_000)
    ap.add_argument("--skip", default="", help="comma-separated: presence,cache,pages,kept")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    data = str(Path(tempfile.gettempdir()) / f"edgefleet-{args.database}")
    env = django_env(args.database, args.redis, data)
    built = ensure_database(args.database, env, args.devices, args.build)
    import django

    django.setup()
    print(f"# bench/scale.py --devices {args.devices:,} ({os.cpu_count()} cores)")
    if built:
        secs = build_devices(args.devices)
        print(f"built {args.devices:,} devices with COPY in {secs:.1f} s")
    else:
        print(f"reusing {args.database} ({args.devices:,} devices)")
    if "presence" not in skip:
        bench_presence(args.devices, args.before)
    if "cache" not in skip:
        bench_cache(args.devices, args.cache_size)
    if "pages" not in skip:
        bench_pages()
    if "kept" not in skip:
        bench_kept(args.devices)
    print(f"\npeak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
