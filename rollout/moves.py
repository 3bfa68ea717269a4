"""Moving the devices a campaign change reaches, in Celery batches, without touching the rest.

A start, advance or rollback of a keyed campaign changes what the devices of one bucket range are
told: wave 1's range on start, the new wave's on advance, everything covered on rollback; pause and
resume change nothing a device is told. Instead of bumping the generation (every device of the fleet
re-resolves on its next poll), the transition bumps only the data epoch (processes reload what they
resolve from; ready manifests stay valid) and records a ``CampaignMove``. The job
(``rollout.move_devices``) walks the range's device keys by index in batches, drops the ready
manifest of each device of the cohort that can run the version (``fleet.manifests.invalidate``) and
saves its cursor and count per batch: a killed job resumes from the last batch (``resume_stale``,
beat), a batch run twice changes nothing more (a dropped manifest re-resolves to the same content).

The generation is still bumped (every device re-resolves) when a targeted move cannot be made or is
not worth it: legacy buckets, no Redis (no forget log) or no kept counts, a change reaching more
than ``GLOBAL_SHARE`` of the fleet (then the fleet-wide cost is at most 1/GLOBAL_SHARE times k),
or a start that hides a rolled-back campaign of the same model (its devices change too).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from fleet import selectors
from rollout import cohorts, placement
from rollout.models import Campaign, CampaignMove

logger = logging.getLogger(__name__)
S = Campaign.State
BATCH = 2000
LEASE = timedelta(seconds=60)
GLOBAL_SHARE = float(getattr(settings, "EDGEFLEET_MOVE_GLOBAL_SHARE", 0.25))
_NIL = "00000000-0000-0000-0000-000000000000"


def bucket_range(kind: str, waves: list[dict[str, Any]], before: int, after: int) -> tuple[int, int] | None:
    """The buckets whose devices a transition changes; ``(0, 0)`` for none; None: not known (bump all)."""
    if kind == "start":
        return 0, placement.coverage(waves, after)
    if kind == "advance":
        return placement.coverage(waves, before), placement.coverage(waves, after)
    if kind == "rollback":
        return 0, placement.coverage(waves, after)
    if kind in ("pause", "resume"):
        return 0, 0
    return None


def _targeted_possible(campaign: Campaign, kind: str) -> bool:
    from fleet import presence

    if not cohorts.kept_available(campaign.bucketing) or presence.redis_client() is None:
        return False
    if kind == "start":  # a rolled-back campaign of the model stops deciding for its devices
        return not Campaign.objects.filter(model_id=campaign.model_id, state=S.ROLLED_BACK).exists()
    return True


def cohort_total(campaign: Campaign, ranges: list[tuple[int, int]]) -> int:
    """Devices of the campaign's cohort (not revoked) with a key in ``ranges``, from the kept counts."""
    from fleet import kept

    match = selectors.predicate(selectors.parse(cohorts.selector_text(campaign.cohort)))
    counts = kept.range_counts([ranges])
    known = kept.profiles({k for k, _ in counts})
    return sum(n for (k, _), n in counts.items() if k in known and not known[k].revoked and match(known[k].labels))


def plan(campaign: Campaign, kind: str, before_wave: int) -> CampaignMove | bool:
    """Called inside the transition's transaction. A move to run after commit; True: nothing to move
    (data reload only); False: bump the generation (every device re-resolves)."""
    buckets = bucket_range(kind, campaign.waves, before_wave, campaign.wave_index)
    if buckets is None or not _targeted_possible(campaign, kind):
        return False
    lo, hi = buckets
    ranges = placement.key_ranges(placement.campaign_offset(campaign.pk), lo, hi)
    if not ranges:
        return True
    from fleet import kept

    total = cohort_total(campaign, ranges)
    if total > GLOBAL_SHARE * max(kept.total(), 1):
        return False
    return CampaignMove.objects.create(campaign=campaign, kind=kind, ranges=[list(r) for r in ranges], total=total)


def after_commit(outcome: CampaignMove | bool) -> None:
    """Tell the resolver: the data epoch for a targeted move (then enqueue it), else the generation."""
    from rollout.manifest import bump_data, bump_generation

    if outcome is False:
        bump_generation()
        return
    bump_data()
    if isinstance(outcome, CampaignMove):
        from rollout.tasks import move_devices

        try:
            move_devices.delay(outcome.pk)
        except Exception:  # the broker is away: the beat's resume_stale enqueues it once it is back
            logger.warning("campaign %s: could not enqueue move %s", outcome.campaign_id, outcome.pk, exc_info=True)


def _claim(move_id: int) -> bool:
    now = timezone.now()
    return bool(
        CampaignMove.objects.filter(pk=move_id, finished_at=None)
        .filter(Q(leased_until=None) | Q(leased_until__lt=now))
        .update(leased_until=now + LEASE)
    )


def _batch(a: int, b: int, key: int, after_id: str, size: int) -> list[tuple[Any, ...]]:
    sql = (
        "SELECT id, token_hash, labels, hardware, token_revoked_at IS NOT NULL, fleet_device_key(id) "
        "FROM fleet_device WHERE fleet_device_key(id) >= %s AND fleet_device_key(id) < %s "
        "AND (fleet_device_key(id), id) > (%s, %s::uuid) ORDER BY fleet_device_key(id), id LIMIT %s"
    )

    with connection.cursor() as cur:
        cur.execute(sql, [a, b, key, after_id, size])
        return cur.fetchall()


def _load(value: Any) -> Any:
    """jsonb from a raw cursor (text), decoded only for the rows that need it."""
    return (json.loads(value) if isinstance(value, str) else value) or {}


def run(move_id: int, batch: int = BATCH, crash_after: int | None = None) -> CampaignMove | None:
    """Walk the move's ranges from its cursor; None if another job holds it or it is finished.

    ``crash_after``: stop with an error after that many batches, as a killed worker would (tests).
    """
    from fleet import manifests
    from rollout.targeting import requirements_for

    if not _claim(move_id):
        return None
    move = CampaignMove.objects.select_related("campaign__version", "campaign__cohort").get(pk=move_id)
    c = move.campaign
    settle = 2 * float(getattr(settings, "EDGEFLEET_EPOCH_CHECK_SECONDS", 0.5))
    wait = (move.created_at + timedelta(seconds=settle) - timezone.now()).total_seconds()
    if wait > 0:  # every process has reloaded the campaign data before a dropped device polls again
        time.sleep(wait)
    match = selectors.predicate(selectors.parse(cohorts.selector_text(c.cohort)))
    req = requirements_for(c.version, c.requirements)
    cursor = dict(move.cursor or {})
    batches = 0
    for i, (a, b) in enumerate(move.ranges):
        if i < cursor.get("range", 0):
            continue
        key, after = (cursor["key"], cursor["id"]) if cursor.get("range", 0) == i and "key" in cursor else (a, _NIL)
        while True:
            rows = _batch(a, b, key, after, batch)
            if not rows:
                break
            members = [r for r in rows if not r[4] and match(_load(r[2]))]
            drop = [r[1] for r in members if placement.incompatibility(_load(r[3]), req) is None]
            if not manifests.invalidate(drop):
                from rollout.manifest import bump_generation

                bump_generation()  # Redis went away: every device re-resolves instead
            key, after = rows[-1][5], str(rows[-1][0])
            cursor = {"range": i, "key": key, "id": after}
            with transaction.atomic():
                CampaignMove.objects.filter(pk=move.pk).update(
                    cursor=cursor, done=F("done") + len(members), leased_until=timezone.now() + LEASE
                )
            batches += 1
            if crash_after is not None and batches >= crash_after:
                raise RuntimeError("worker lost (simulated)")
        cursor = {"range": i + 1}
    move.refresh_from_db()
    move.finished_at = timezone.now()
    move.total = max(move.total, move.done)  # devices enrolled meanwhile
    move.cursor, move.leased_until = cursor, None
    move.save(update_fields=["finished_at", "total", "cursor", "leased_until"])
    return move


def resume_stale() -> int:
    """Enqueue the moves whose job died (lease run out) or never started; returns how many."""
    from rollout.tasks import move_devices

    now = timezone.now()
    stale = CampaignMove.objects.filter(finished_at=None).filter(
        Q(leased_until__lt=now) | Q(leased_until=None, created_at__lt=now - LEASE)
    )
    ids = list(stale.values_list("pk", flat=True)[:100])
    for pk in ids:
        move_devices.delay(pk)
    return len(ids)


def progress(campaign: Campaign) -> dict[str, Any] | None:
    """The campaign's latest move for the page and the API: ``{kind, done, total, finished}``."""
    move = campaign.moves.first() if campaign.pk else None
    if move is None:
        return None
    return {
        "kind": move.kind,
        "done": min(move.done, move.total),
        "total": move.total,
        "finished": move.finished_at is not None,
        "started_at": move.created_at,
        "finished_at": move.finished_at,
    }
