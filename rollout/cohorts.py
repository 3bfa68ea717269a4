"""The devices of a campaign's cohort, read from the database: one by one, or grouped in PostgreSQL.

Targeting (the dry run) and progress (the campaign page) read devices only through here; the placement
math they apply to each device or group is ``rollout.placement``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

from django.db import connection
from django.db.models import Q

from fleet import selectors
from fleet.models import Cohort, Device
from rollout import placement


def selector_text(cohort: Cohort | None) -> str:
    """The cohort's selector; "" (every device) when there is none."""
    return cohort.selector if cohort is not None else ""


def _cohort_prefilter(cohort: Cohort | None) -> Q:
    """A database filter for the cohort when fleet offers one; the Python predicate always decides."""
    if cohort is None:
        return Q()
    try:
        from fleet.services import selector_q  # landed by the fleet engineer
    except ImportError:
        return Q()
    try:
        return selector_q(selectors.parse(cohort.selector))
    except Exception:  # an odd selector: fall back to filtering in Python
        return Q()


def cohort_devices(cohort: Cohort | None) -> Iterator[tuple[Any, dict, dict]]:
    """(id, labels, hardware) of every device in the cohort (every device when there is none)."""
    match = selectors.predicate(selectors.parse(selector_text(cohort)))
    rows = Device.objects.filter(_cohort_prefilter(cohort)).filter(token_revoked_at__isnull=True)
    for device_id, labels, hardware in rows.values_list("id", "labels", "hardware").iterator(chunk_size=2000):
        if match(labels or {}):
            yield device_id, labels or {}, hardware or {}


# Device scans that group in PostgreSQL. A dry run or a campaign page over 100,000 devices used to
# fetch every device's labels and hardware and hash its id in Python (seconds); instead the database
# computes each device's bucket (the same sha256 as ``placement.bucket``) and groups devices by what
# placement looks at: labels, the hardware fields ``placement`` reads, the wave the bucket falls in
# and whether free storage clears the version's threshold. Python then judges each of the few
# hundred groups with the very same ``placement`` functions, so the answers are those of the
# per-device loop (``tests/test_campaign_grouped.py`` holds the two paths to each other).

# 2**64 mod 10000: the bucket takes the digest's first 8 bytes as an unsigned integer, PostgreSQL
# reads them as a signed bigint.
_WRAP = 2**64 % placement.BUCKETS
_N = placement.BUCKETS
_BUCKET_SQL = (
    f"(SELECT CASE WHEN x >= 0 THEN x %% {_N} ELSE ((x %% {_N}) + {_N} + {_WRAP}) %% {_N} END FROM (SELECT "
    "('x' || substr(encode(sha256(convert_to(\"fleet_device\".\"id\"::text || %s, 'UTF8')), 'hex'), 1, 16))"
    "::bit(64)::bigint AS x) AS digest)"
)
_HW_FIELDS = ("arch", "ram_mb", "ort_version", "providers")
_STORAGE = '("fleet_device"."hardware" -> \'storage_free_mb\')'


def grouped_scan_available() -> bool:
    return connection.vendor == "postgresql"


def _storage_thresholds(req: placement.Requirements) -> tuple[float, float]:
    """The free-storage levels ``placement.incompatibility`` demands for the fp32 and int8 build."""
    fp32 = max(req.min_storage_mb, placement.STORAGE_FACTOR * (req.size_bytes or 0) / placement.MIB)
    int8 = max(req.min_storage_mb, placement.STORAGE_FACTOR * (req.int8_size_bytes or 0) / placement.MIB)
    return fp32, int8


GROUPS_CACHE_SECONDS = 15


def _cached_rows(sql: str, params: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """The grouped rows, kept ``GROUPS_CACHE_SECONDS`` in the shared cache under a hash of the query.

    The scan still reads every device of the cohort (about 100 ms for 100,000 on an idle machine,
    far more on a busy one), and the campaign page and its live fragment ask for it every few
    seconds per open browser. Fifteen seconds of staleness is harmless here: these are progress
    and preview counts for a person, the gate job and manifests never read them, and any change
    of cohort, campaign, wave plan or version requirements changes the query and so the key.
    """
    from django.core.cache import cache

    key = "rollout:groups:" + hashlib.sha256(repr((sql, [str(p) for p in params])).encode()).hexdigest()
    rows = cache.get(key)
    if rows is None:
        with connection.cursor() as cur:
            cur.execute(sql, params)
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        cache.set(key, rows, GROUPS_CACHE_SECONDS)
    return rows


def grouped_devices(
    cohort: Cohort | None,
    campaign_id: int,
    limits: list[int],
    req: placement.Requirements,
    installed_model: str | None = None,
    failed_label: str | None = None,
    cached: bool = False,
) -> Iterator[tuple[int, dict, dict, int | None, Any, bool]]:
    """``(n, labels, hardware, slot, installed, failed)`` per group of the cohort's devices.

    ``slot`` is the first ``i`` with ``bucket < limits[i]`` (None if none). ``hardware`` holds the
    fields placement reads; a numeric ``storage_free_mb`` is replaced by +inf or -inf according to
    the SQL comparison with the threshold of the variant the device gets, which is all
    ``incompatibility`` does with it.
    """
    import json

    from django.db.models import BooleanField, IntegerField, TextField
    from django.db.models.expressions import RawSQL

    match = selectors.predicate(selectors.parse(selector_text(cohort)))
    fp32, int8 = _storage_thresholds(req)
    number = f"jsonb_typeof({_STORAGE}) = 'number'"
    # Per device (inner query): the bucket, hashed once, and the grouped fields as text (sorting and
    # hashing text is much cheaper than jsonb). The outer query groups and counts.
    per_device: dict[str, Any] = {
        "g_bucket": RawSQL(_BUCKET_SQL, [f":{campaign_id}"], output_field=IntegerField()),
        "g_labels": RawSQL('"fleet_device"."labels"::text', [], output_field=TextField()),
        "g_storage_raw": RawSQL(f"CASE WHEN {number} THEN NULL ELSE {_STORAGE}::text END", [], TextField()),
        "g_ok_fp32": RawSQL(f"CASE WHEN {number} THEN ({_STORAGE})::text::float8 >= %s END", [fp32], BooleanField()),
        "g_ok_int8": RawSQL(f"CASE WHEN {number} THEN ({_STORAGE})::text::float8 >= %s END", [int8], BooleanField()),
    }
    for name in _HW_FIELDS:
        per_device[f"g_hw_{name}"] = RawSQL('("fleet_device"."hardware" -> %s)::text', [name], TextField())
    if installed_model is not None:
        per_device["g_installed"] = RawSQL('("fleet_device"."installed" -> %s)::text', [installed_model], TextField())
        per_device["g_failed"] = RawSQL(
            'EXISTS (SELECT 1 FROM fleet_deviceevent e WHERE e.device_id = "fleet_device"."id" '
            "AND e.kind = 'install_failed' AND e.model_name = %s AND e.version_label = %s)",
            [installed_model, failed_label or ""],
            BooleanField(),
        )
    inner = (
        Device.objects.filter(_cohort_prefilter(cohort))
        .filter(token_revoked_at__isnull=True)
        .annotate(**per_device)
        .values(*per_device)
        .order_by()
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    keys = [k for k in per_device if k != "g_bucket"]
    cases = " ".join(f"WHEN g_bucket < {int(lim)} THEN {i}" for i, lim in enumerate(limits))
    slot = f"CASE {cases} ELSE NULL END" if limits else "NULL"
    columns = ", ".join(keys)
    sql = f"SELECT {columns}, {slot} AS g_slot, count(*) FROM ({inner_sql}) AS d GROUP BY {columns}, g_slot"
    names = [*keys, "g_slot", "g_n"]
    if cached:
        rows = _cached_rows(sql, inner_params, names)
    else:
        with connection.cursor() as cur:
            cur.execute(sql, inner_params)
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def load(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    for row in rows:
        labels = load(row["g_labels"]) or {}
        if not match(labels):
            continue
        hw = {name: v for name in _HW_FIELDS if (v := load(row[f"g_hw_{name}"])) is not None}
        if row["g_storage_raw"] is not None and load(row["g_storage_raw"]) is not None:
            hw["storage_free_mb"] = load(row["g_storage_raw"])
        elif row["g_ok_fp32"] is not None:
            ok = row["g_ok_int8"] if placement.choose_variant(hw, req) == "int8" else row["g_ok_fp32"]
            hw["storage_free_mb"] = float("inf") if ok else float("-inf")
        yield row["g_n"], labels, hw, row["g_slot"], load(row.get("g_installed")), bool(row.get("g_failed"))


def kept_groups(
    cohort: Cohort | None,
    campaign_id: int,
    limits: list[int],
    installed_model: str | None = None,
) -> Iterator[tuple[int, dict, dict, int | None, Any, bool]]:
    """``grouped_devices`` for a keyed campaign, from the kept counts (``fleet.kept``): no device is read.

    Wave ``i`` reaches buckets ``[limits[i-1], limits[i])``; under the campaign's offset each is one
    or two ranges of device keys, counted per profile. ``failed`` is always False here: the devices
    whose install failed are read from their events (``rollout.progress``), k of them, not the fleet.
    """
    from fleet import kept

    match = selectors.predicate(selectors.parse(selector_text(cohort)))
    offset = placement.campaign_offset(campaign_id)
    bounds = [0, *limits, placement.BUCKETS]
    segments = [placement.key_ranges(offset, max(lo, 0), hi) for lo, hi in itertools.pairwise(bounds)]
    counts = kept.range_counts(segments)
    known = kept.profiles({key for key, _ in counts})
    none = len(limits)
    for (key, seg), n in counts.items():
        p = known.get(key)
        if p is None or p.revoked or n <= 0 or not match(p.labels):
            continue
        installed = p.installed.get(installed_model) if installed_model and isinstance(p.installed, dict) else None
        yield n, p.labels, p.hardware, (None if seg == none else seg), installed, False


def json_key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def kept_available(bucketing: str) -> bool:
    """Kept counts answer a campaign's waves when its buckets are keyed and the database keeps them."""
    from fleet import kept

    return bucketing == placement.KEYED and kept.available()


def overlapping_devices(a: Cohort | None, b: Cohort | None, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) devices that match both cohorts.

    With kept counts, the label sets matching both are found among the profiles, and only devices
    with one of those label sets are read (none when the cohorts do not meet)."""
    other = selectors.predicate(selectors.parse(selector_text(b)))
    from fleet import kept

    if kept.available():
        mine = selectors.predicate(selectors.parse(selector_text(a)))
        shared = {
            json_key(p.labels): p.labels
            for p, n in kept.totals_by_profile()
            if n > 0 and not p.revoked and mine(p.labels) and other(p.labels)
        }
        examples: list[str] = []
        for labels in list(shared.values())[:limit]:
            rows = Device.objects.filter(labels__contains=labels, token_revoked_at__isnull=True).filter(labels=labels)
            examples += [str(i) for i in rows.values_list("id", flat=True)[: limit - len(examples)]]
            if len(examples) >= limit:
                break
        return examples
    found: list[str] = []
    for device_id, labels, _ in cohort_devices(a):
        if other(labels):
            found.append(str(device_id))
            if len(found) >= limit:
                break
    return found
