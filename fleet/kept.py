"""Kept device counts: how many devices of each profile have each device key, without reading devices.

A *profile* is what placement and the pages read of a device (labels, the hardware fields placement
uses, installed versions, revoked or not); a device's *key* is ``rollout.placement.device_key`` of its
id. A PostgreSQL trigger (migration ``fleet/0006``) writes a +1/-1 delta for every enrollment,
deletion, relabel, install report, hardware change or revocation, in the writer's own transaction;
``fold`` adds the deltas into ``ProfileCount`` (per key, and per hundred keys). Readers add the
deltas not folded yet, so counts are exact at once and a change costs work for the device it moved.

A campaign's bucket is the device key turned by the campaign's offset, so a wave (a bucket range) is
one or two key ranges: ``range_counts`` reads the hundred-key slots inside each range and single
keys only at its two edges. The cost is in profiles times slots, not devices.

PostgreSQL only (``available``); elsewhere callers scan devices as before.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import connection

SLOT = 100  # keys per level-1 slot
BUCKETS = 10_000

FOLD_SQL = """
WITH d AS (DELETE FROM fleet_profilecountdelta RETURNING profile_key, slot, n),
s AS (
  SELECT profile_key, 0 AS level, slot, sum(n) AS n FROM d GROUP BY profile_key, slot
  UNION ALL
  SELECT profile_key, 1 AS level, slot / 100, sum(n) FROM d GROUP BY profile_key, slot / 100
)
INSERT INTO fleet_profilecount (profile_key, level, slot, n)
SELECT profile_key, level, slot, n FROM s WHERE n <> 0
ON CONFLICT (profile_key, level, slot) DO UPDATE SET n = fleet_profilecount.n + EXCLUDED.n
"""


def available() -> bool:
    return connection.vendor == "postgresql"


def fold() -> int:
    """Add the trigger's deltas into the counts, in one statement (readers see before or after)."""
    with connection.cursor() as cur:
        cur.execute(FOLD_SQL)
        return cur.rowcount


@dataclass(frozen=True)
class Profile:
    labels: dict[str, Any]
    hardware: dict[str, Any]
    installed: dict[str, Any]
    revoked: bool


# A profile's content never changes under its key (the key is the md5 of the content).
_PROFILES: dict[uuid.UUID, Profile] = {}
_PROFILES_MAX = 200_000


def profiles(keys: set[uuid.UUID]) -> dict[uuid.UUID, Profile]:
    """The profiles for these keys, from memory, reading only the ones this process has not seen."""
    from fleet.models import DeviceProfile

    missing = [k for k in keys if k not in _PROFILES]
    if missing:
        if len(_PROFILES) + len(missing) > _PROFILES_MAX:
            _PROFILES.clear()
        rows = DeviceProfile.objects.filter(key__in=missing).values_list(
            "key", "labels", "hardware", "installed", "revoked"
        )
        for key, labels, hardware, installed, revoked in rows.iterator(chunk_size=5000):
            _PROFILES[key] = Profile(labels or {}, hardware or {}, installed or {}, revoked)
    return {k: _PROFILES[k] for k in keys if k in _PROFILES}


def _split(a: int, b: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Keys ``[a, b)`` as whole level-1 slots and the single keys at the edges."""
    first, last = -(-a // SLOT), b // SLOT
    if first >= last:
        return [], [(a, b)]
    edges = [(lo, hi) for lo, hi in ((a, first * SLOT), (last * SLOT, b)) if lo < hi]
    return [(first, last)], edges


def range_counts(segments: list[list[tuple[int, int]]]) -> dict[tuple[uuid.UUID, int], int]:
    """``(profile key, segment) -> devices`` whose key is in one of ``segments[i]``'s ranges ``[a, b)``.

    The ranges of different segments must not overlap. Reads the counts table by index (whole
    hundred-key slots plus the keys at each range's edges) and every unfolded delta.
    """
    counted: list[tuple[int, int, int, int]] = [(-1, 0, 0, -1)]  # level, lo, hi, segment (a row that never joins)
    raw: list[tuple[int, int, int]] = []  # lo, hi, segment (deltas are per key)
    for i, ranges in enumerate(segments):
        for a, b in ranges:
            if a >= b:
                continue
            raw.append((a, b, i))
            whole, edges = _split(a, b)
            counted += [(1, lo, hi, i) for lo, hi in whole] + [(0, lo, hi, i) for lo, hi in edges]
    if not raw:
        return {}
    r_values = ", ".join(["(%s, %s, %s, %s)"] * len(counted))
    f_values = ", ".join(["(%s, %s, %s)"] * len(raw))
    sql = f"""
        WITH r(level, lo, hi, seg) AS (VALUES {r_values}), f(lo, hi, seg) AS (VALUES {f_values})
        SELECT profile_key, seg, sum(n) FROM (
          SELECT c.profile_key, r.seg, c.n FROM r JOIN fleet_profilecount c
            ON c.level = r.level AND c.slot >= r.lo AND c.slot < r.hi
          UNION ALL
          SELECT d.profile_key, f.seg, d.n FROM fleet_profilecountdelta d JOIN f ON d.slot >= f.lo AND d.slot < f.hi
        ) x GROUP BY profile_key, seg
    """
    params: list[int] = [v for row in counted for v in row] + [v for row in raw for v in row]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return {(k, seg): int(n) for k, seg, n in cur.fetchall() if n}


def profile_totals() -> dict[uuid.UUID, int]:
    """Devices per profile, every key (level-1 counts plus unfolded deltas)."""
    sql = """
        SELECT profile_key, sum(n) FROM (
          SELECT profile_key, n FROM fleet_profilecount WHERE level = 1
          UNION ALL SELECT profile_key, n FROM fleet_profilecountdelta
        ) x GROUP BY profile_key
    """
    with connection.cursor() as cur:
        cur.execute(sql)
        return {k: int(n) for k, n in cur.fetchall() if n}


def totals_by_profile() -> list[tuple[Profile, int]]:
    """``(profile, devices)`` for every profile that has devices now."""
    counts = profile_totals()
    known = profiles(set(counts))
    return [(known[k], n) for k, n in counts.items() if k in known]


def count_matching(match: Any, include_revoked: bool = True) -> int:
    """Devices whose labels satisfy ``match`` (a ``fleet.selectors.predicate``)."""
    return sum(n for p, n in totals_by_profile() if (include_revoked or not p.revoked) and match(p.labels))


def installed_counts(models: list[str], totals: list[tuple[Profile, int]] | None = None) -> dict[str, dict[str, int]]:
    """Per model, devices by the version label they report installed (any device, revoked too)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for p, n in totals if totals is not None else totals_by_profile():
        for m in models:
            label = p.installed.get(m) if isinstance(p.installed, dict) else None
            if label:
                out[m][str(label)] += n
    return {m: dict(v) for m, v in out.items()}


def total() -> int:
    return sum(profile_totals().values())
