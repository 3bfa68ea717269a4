"""The fleet at scale: the figures of issue 17 that this branch changed, with memory, at ``--devices`` N.

Builds N devices with ``COPY`` (one stream; 1,000,000 in a few minutes) into its own PostgreSQL
database and reuses it on the next run with the same N (``--build`` forces a rebuild). Then prints:

- presence flush: N-dirty sets of 100k, 250k and 1M (up to N) flushed by ``fleet.presence.flush``
  (``COPY`` into a temporary table + one ``UPDATE … FROM``); ``--before`` also times the flush this
  replaced (``bulk_update``'s ``CASE WHEN``, 5,000 ids a round) on the first size;
- the worker manifest cache: hit rate of the LRU (fleet/lru.py) against the dict emptied when full,
  with a fleet of N polling uniformly and a hot tenth polling ten times as often, and bytes per entry;
- for reference (not changed here): the overview's queries cold and warm, and a cohort's live count.

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
                hardware = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "ort_version": "1.17.1"}
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
                )
                buf.write("\t".join(row) + "\n")
            buf.seek(0)
            raw.copy_expert(
                "COPY fleet_device (id, name, hardware, labels, agent_version, token_hash, token_prefix, installed, "
                "enrolled_at) "
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


def bench_pages() -> None:
    from django.db import connection

    from fleet import overview, services

    print("\n## for reference (unchanged here): the overview's queries and a cohort's live count")
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
    ap.add_argument("--skip", default="", help="comma-separated: presence,cache,pages")
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
    print(f"\npeak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
