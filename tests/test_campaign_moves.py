"""Campaign changes reach only the devices whose desired state changed, moved in batches (rollout/moves.py).

Devices poll through the real poll path (Redis, signing, the forget log); the tests count how many
re-resolve their manifest after a start, an advance, a rollback, a pause, and a change too large to
move device by device; and run the move job killed mid-way, twice, and in a real Celery worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet import kept, manifests
from rollout import lifecycle, manifest, moves, placement
from rollout.api import campaign_status_json
from rollout.models import Campaign, CampaignMove
from tests import factories
from tests import test_campaign_factories as f

WAVES = [{"percent": 20, "min_soak_minutes": 0, "min_devices": 0}, {"percent": 40}, {"percent": 100}]


@pytest.fixture
def check_now(settings) -> None:
    """Every process reads the epochs at each poll, and the move job does not wait for them."""
    settings.EDGEFLEET_EPOCH_CHECK_SECONDS = 0


def build(n_eu: int = 60, n_us: int = 30) -> dict[str, Any]:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu")
    devices = [factories.device({"region": "eu"}, dict(f.HW)) for _ in range(n_eu)]
    devices += [factories.device({"region": "us"}, dict(f.HW)) for _ in range(n_us)]
    c = lifecycle.create_campaign(name="m", version=v2, cohort=eu, waves=WAVES, gates={"error_rate": 0.02})
    manifest.bump_generation()  # the release above (made without the service): processes reload
    return {"c": c, "devices": devices, "v1": v1, "v2": v2}


def poll_all(fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[Any, str]]:
    """Poll every device (fresh process memory); how many re-resolved, and each device's ETag."""
    real = manifest.resolve
    calls: list[Any] = []

    def counting(snapshot: Any, *args: Any, **kw: Any) -> Any:
        calls.append(snapshot.id)
        return real(snapshot, *args, **kw)

    monkeypatch.setattr(manifest, "resolve", counting)
    manifests._ready.clear()  # another process: only Redis holds the ready manifests
    etags = {d.pk: manifests.poll(token).etag for d, token in fleet["devices"]}
    monkeypatch.setattr(manifest, "resolve", real)
    return len(calls), etags


def reached(fleet: dict[str, Any], lo: int, hi: int) -> set[Any]:
    c = fleet["c"]
    return {
        d.pk for d, _ in fleet["devices"] if d.labels.get("region") == "eu" and lo <= placement.bucket(d.pk, c.pk) < hi
    }


def latest_move(c: Campaign) -> CampaignMove:
    return CampaignMove.objects.filter(campaign=c).order_by("-id").first()


def run_latest(c: Campaign, **kw: Any) -> CampaignMove:
    move = moves.run(latest_move(c).pk, **kw)
    assert move is not None and move.finished_at is not None
    return move


@pytest.mark.django_db
def test_start_advance_and_rollback_re_resolve_only_the_devices_they_reach(
    check_now, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    monkeypatch.setattr(moves, "GLOBAL_SHARE", 1.0)
    fleet = build()
    c = fleet["c"]
    n = len(fleet["devices"])
    assert poll_all(fleet, monkeypatch)[0] == n  # first polls: everyone resolves once
    assert poll_all(fleet, monkeypatch)[0] == 0  # nothing changed: nobody does

    first = reached(fleet, 0, placement.coverage(WAVES, 0))
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.start(c.pk)
    move = run_latest(c)
    assert (move.kind, move.done, move.total) == ("start", len(first), len(first))
    count, etags = poll_all(fleet, monkeypatch)
    assert 0 < count == len(first) < n  # k of N devices re-resolve, not N

    second = reached(fleet, placement.coverage(WAVES, 0), placement.coverage(WAVES, 1))
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.advance(c.pk, reason="test")
    assert run_latest(c).total == len(second)
    count, after = poll_all(fleet, monkeypatch)
    assert count == len(second)
    assert {pk for pk in etags if etags[pk] != after[pk]} == second  # only they are told something new

    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.rollback(c.pk, reason="test")
    assert run_latest(c).kind == "rollback"
    count, back = poll_all(fleet, monkeypatch)
    assert count == len(first | second)
    assert {pk for pk in after if after[pk] != back[pk]} == first | second


@pytest.mark.django_db
def test_pause_and_resume_move_no_device_but_reload_the_data(
    check_now, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    monkeypatch.setattr(moves, "GLOBAL_SHARE", 1.0)
    fleet = build(20, 10)
    c = fleet["c"]
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.start(c.pk)
    run_latest(c)
    poll_all(fleet, monkeypatch)
    data = manifest.load_state().data
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.pause(c.pk, reason="test")
    assert latest_move(c).kind == "start"  # no new move
    assert manifest.load_state().data != data  # every process reloads the campaign
    assert poll_all(fleet, monkeypatch)[0] == 0


@pytest.mark.django_db
def test_a_change_reaching_more_than_the_share_re_resolves_everyone(
    check_now, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    fleet = build(20, 10)
    c = fleet["c"]
    poll_all(fleet, monkeypatch)
    monkeypatch.setattr(moves, "GLOBAL_SHARE", 0.0)  # any device is too many: bump the generation
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.start(c.pk)
    assert latest_move(c) is None
    assert poll_all(fleet, monkeypatch)[0] == len(fleet["devices"])


@pytest.mark.django_db
def test_a_killed_job_resumes_and_a_rerun_changes_nothing_more(
    check_now, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    monkeypatch.setattr(moves, "GLOBAL_SHARE", 1.0)
    fleet = build(60, 30)
    c = fleet["c"]
    Campaign.objects.filter(pk=c.pk).update(waves=[{"percent": 60}, {"percent": 100}])
    c.refresh_from_db()
    poll_all(fleet, monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.start(c.pk)
    move = latest_move(c)
    with pytest.raises(RuntimeError):
        moves.run(move.pk, batch=5, crash_after=2)  # dies after two batches
    move.refresh_from_db()
    assert move.finished_at is None and 0 < move.done <= 10 and move.cursor
    assert moves.run(move.pk) is None  # its lease still holds: a second job does not run alongside
    CampaignMove.objects.filter(pk=move.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
    assert moves.resume_stale() == 1  # the beat job enqueues it again
    done = moves.run(move.pk, batch=5)
    assert done is not None and done.done == done.total == len(reached(fleet, 0, 6000))
    count, etags = poll_all(fleet, monkeypatch)
    assert count == len(reached(fleet, 0, 6000))

    # the whole job again: the same devices re-resolve to the very same manifests
    CampaignMove.objects.filter(pk=move.pk).update(finished_at=None, cursor={}, done=0)
    again = moves.run(move.pk, batch=7)
    assert again is not None and again.done == done.total
    count, same = poll_all(fleet, monkeypatch)
    assert count == len(reached(fleet, 0, 6000)) and same == etags
    assert moves.run(move.pk) is None  # finished: nothing to do


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_moves_the_devices_and_the_page_shows_progress(celery_worker, check_now, monkeypatch) -> None:
    import time

    # Device keys are random: a 20 % wave of 40 cohort devices reaches more than a quarter of a fleet of
    # 50 about one run in 25, and then (rightly) falls back to re-resolving everyone. This test is about
    # the worker's move; the fallback has its own test above.
    monkeypatch.setattr(moves, "GLOBAL_SHARE", 1.0)
    fleet = build(40, 10)
    c = fleet["c"]
    lifecycle.start(c.pk)  # returns once the move is recorded; the worker does the rest
    move = latest_move(c)
    c.refresh_from_db()
    why = {  # what moves.plan decided from, should it fall back to the generation bump
        "state": c.state,
        "bucketing": c.bucketing,
        "targeted": moves._targeted_possible(c, "start"),
        "kept_total": kept.total(),
        "devices": len(fleet["devices"]),
        "rolled_back": list(Campaign.objects.filter(state="rolled_back").values_list("pk", flat=True)),
    }
    assert move is not None, why
    assert move.total == len(reached(fleet, 0, placement.coverage(WAVES, 0)))
    deadline = time.monotonic() + 30
    while latest_move(c).finished_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    status = campaign_status_json(Campaign.objects.select_related("model", "version", "cohort").get(pk=c.pk))
    assert status["move"]["finished"] and status["move"]["done"] == status["move"]["total"] == move.total
    for d, token in fleet["devices"]:
        wanted = "v2" if d.pk in reached(fleet, 0, placement.coverage(WAVES, 0)) else "v1"
        manifests._ready.clear()
        assert f'"version":"{wanted}"'.encode() in manifests.poll(token).body
