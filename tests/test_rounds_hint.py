"""The rounds hint on the manifest poll (fleet/round_hints.py, docs/protocol.md "Rounds").

The poll answer (200 and 304 alike) names, in ``X-Rounds``, the device's open rounds in which it is
still expected to answer, with each one's phase; the agent asks ``/api/v1/rounds`` only when that
names something it has not dealt with. Real PostgreSQL and Redis; devices through the Django test
client (the service-level part) and real agents against a live server (the agent's part).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.agent import Agent
from agent.rounds import parse_hint
from fleet import round_hints
from telemetry import rounds
from telemetry.models import AggRound, RoundMember
from tests import factories
from tests.test_rounds_e2e import fleet, install
from tests.test_rounds_service import NOW, Dev, advertise_all, enrol, health_round, share_all, step

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _exact(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = False
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300
    rounds.advance_due()  # the deadline job: finds no hints in this fresh Redis db, rebuilds (none), marks ready


def poll(d: Dev, etag: str | None = None) -> Any:
    extra = {"HTTP_IF_NONE_MATCH": etag} if etag else {}
    return d.http.get("/api/v1/manifest", HTTP_AUTHORIZATION=f"Bearer {d.token}", **extra)


def hint(d: Dev) -> str | None:
    return poll(d).headers.get("X-Rounds")


def test_the_poll_names_the_phase_each_member_still_has_to_answer() -> None:
    version = factories.staged_version()
    devs = enrol(20, version)
    assert hint(devs[0]) == ""  # no round: an empty hint, not an absent one
    r = health_round(version, devs)
    deadline = int(r.deadline.timestamp())
    first = poll(devs[0])
    assert first.status_code == 200 and first.headers["X-Rounds"] == f"{r.id}:advertise:{deadline}"
    again = poll(devs[0], first.headers["ETag"])
    assert again.status_code == 304 and again.headers["X-Rounds"] == f"{r.id}:advertise:{deadline}"
    silent = RoundMember.objects.get(round=r, device=devs[3].device).index
    advertise_all(r, devs, skip={silent})
    r = step(r)
    assert r.phase == "share"
    share = f"{r.id}:share:{int(r.deadline.timestamp())}"
    assert hint(devs[0]) == share
    assert hint(devs[3]) == ""  # dropped at advertise: nothing more to answer, so nothing to ask
    assert parse_hint(share) == [(r.id, "share", int(r.deadline.timestamp()))]
    share_all(r, devs)
    r = step(r)
    assert hint(devs[0]).startswith(f"{r.id}:masked:")
    rounds.advance(r.id, NOW, force=True)  # nobody sent a masked input: the round fails
    assert AggRound.objects.get(id=r.id).phase == "failed"
    assert {hint(d) for d in devs} == {""}  # an ended round leaves no hint behind


def test_with_redis_away_the_poll_carries_no_hint_and_rounds_go_on(settings: Any, monkeypatch: Any) -> None:
    import redis

    version = factories.staged_version()
    devs = enrol(20, version)
    away = redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2)
    monkeypatch.setattr(round_hints, "_client", away)  # the hint's Redis only: the poll's own cache stays
    assert round_hints.publish([(devs[0].device.id, "r", "share", 1)]) is False
    assert "X-Rounds" not in poll(devs[0]).headers  # no hint: the agent asks at every poll, as before
    r = health_round(version, devs)
    advertise_all(r, devs)
    assert step(r).phase == "share"


def test_parse_hint_takes_the_header_or_asks() -> None:
    assert parse_hint(None) is None
    assert parse_hint("") == []
    assert parse_hint("ab12:masked:17,cd:unmask:18") == [("ab12", "masked", 17), ("cd", "unmask", 18)]
    for bad in ("ab12:done:17", "ab12:masked:", ":masked:1", "ab12:masked:-1", "nonsense"):
        assert parse_hint(bad) is None  # not understood: ask, as with no hint


# ---- the agent ------------------------------------------------------------------------------------


def recording(agent: Agent) -> list[str]:
    """The paths the agent GETs besides the manifest (the HTTP client records, the server answers)."""
    seen: list[str] = []
    real = agent.client.get_json

    def get_json(path: str) -> Any:
        seen.append(path)
        return real(path)

    agent.client.get_json = get_json  # type: ignore[method-assign]
    return seen


def test_an_agent_asks_for_rounds_only_when_the_poll_names_one_to_answer(
    live_server: Any, tmp_path: Path, settings: Any, store: Path
) -> None:
    from rollout.manifest import bump_generation

    settings.EDGEFLEET_MIN_COHORT = 3
    settings.EDGEFLEET_ROUND_BUDGETS = "health"
    settings.EDGEFLEET_TELEMETRY_WINDOW = 12
    bump_generation()
    v1 = factories.staged_version(label="v1", seed=1)
    factories.release(v1)
    agents = fleet(live_server.url, tmp_path, 3)
    install(agents, "v1")
    asked = [recording(a) for a in agents]
    for a in agents:
        a.poll_once()
        a.poll_once()
    assert all("/api/v1/rounds" not in paths for paths in asked)  # no open round: no rounds request
    assert all(a.rounds.stats.get("not_asked", 0) >= 2 and "asked" not in a.rounds.stats for a in agents)

    assert rounds.form_rounds() == 1
    r = AggRound.objects.get()
    for a in agents:
        a.poll_once()
    assert all(paths.count("/api/v1/rounds") == 1 for paths in asked)
    assert all(a.rounds.stats.get("sent_advertise") == 1 for a in agents)
    for a in agents:
        a.poll_once()  # the phase has not moved: it was answered, nothing to ask
    assert all(paths.count("/api/v1/rounds") == 1 for paths in asked)

    assert rounds.advance(r.id, force=True) == "share"  # what the worker does once all have answered
    for a in agents:
        a.poll_once()
    assert all(paths.count("/api/v1/rounds") == 2 for paths in asked)
    assert all(a.rounds.stats.get("sent_share") == 1 for a in agents)


def test_the_openapi_schema_documents_the_hint_on_200_and_304(client: Any) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    responses = schema["paths"]["/api/v1/manifest"]["get"]["responses"]
    for status in ("200", "304"):
        header = responses[status]["headers"]["X-Rounds"]
        assert "unsigned" in header["description"] and header["schema"]["type"] == "string"


def test_hints_lost_with_redis_mean_ask_until_the_deadline_job_rebuilds_them() -> None:
    from django.conf import settings
    from redis import Redis

    version = factories.staged_version()
    devs = enrol(20, version)
    r = health_round(version, devs)
    name = f"{r.id}:advertise:{int(r.deadline.timestamp())}"
    assert hint(devs[0]) == name
    store = Redis.from_url(settings.REDIS_URL)
    store.delete(*store.keys(f"{round_hints.PREFIX}*"))  # what a Redis restarted empty holds
    assert hint(devs[0]) is None  # not "": an empty hash would say nothing is due; no header says ask
    rounds.advance_due()  # the deadline job sees the marker gone and rebuilds from PostgreSQL
    assert hint(devs[0]) == name and hint(devs[19]) == name
