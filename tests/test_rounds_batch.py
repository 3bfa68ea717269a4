"""One device's answers to several rounds in one request (POST /api/v1/rounds/answers), and the
per-phase answer counter that replaced a count per message. Real PostgreSQL; devices are the real
client state machine over the Django test client (tests/test_rounds_service.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent.secagg import client as cl
from telemetry import rounds
from telemetry.models import AggRound, RoundMember
from tests import factories
from tests.test_rounds_service import NOW, Dev, config_from, enrol, listing, step

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _exact(settings: Any) -> None:
    settings.EDGEFLEET_ROUND_NOISE = False
    settings.EDGEFLEET_ROUND_PHASE_SECONDS = 3600
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300


def two_rounds(version: Any, devs: list[Dev]) -> list[AggRound]:
    start = datetime.fromtimestamp(int(NOW.timestamp()) // 300 * 300, tz=UTC)
    members = [d.device for d in devs]
    return [rounds.form_round(version, b, start, 300, 0, members, NOW) for b in (rounds.HEALTH, rounds.DRIFT)]


def advert(d: Dev, r: AggRound) -> dict:
    cfg = config_from(d.get(f"/api/v1/rounds/{r.id}").json())
    _, msg = cl.advertise(cfg, listing(d, r.id)["index"], d.identity)
    return msg.to_wire()


def answers(d: Dev, items: list[dict]) -> Any:
    return d.post("/api/v1/rounds/answers", {"answers": items})


def test_one_request_answers_both_rounds_and_the_last_answer_completes_each() -> None:
    version = factories.staged_version()
    devs = enrol(20, version)
    health, drift = two_rounds(version, devs)
    for i, d in enumerate(devs):
        resp = answers(
            d,
            [
                {"round": health.id, "phase": "advertise", "message": advert(d, health)},
                {"round": drift.id, "phase": "advertise", "message": advert(d, drift)},
            ],
        )
        assert resp.status_code == 200, resp.content
        results = resp.json()["results"]
        assert [(x["round"], x["accepted"]) for x in results] == [(health.id, "advertise"), (drift.id, "advertise")]
        assert {x["complete"] for x in results} == {i == len(devs) - 1}  # complete exactly at the 20th, not before
    for r in (health, drift):
        assert AggRound.objects.get(id=r.id).answered == 20
        assert RoundMember.objects.filter(round=r, reached="advertise").count() == 20
        r = step(r)
        assert r.phase == "share" and r.answered == 0  # the counter starts again with the phase


def test_a_refused_answer_leaves_the_others_in_the_batch_standing_and_is_not_counted() -> None:
    version = factories.staged_version()
    devs = enrol(20, version)
    health, drift = two_rounds(version, devs)
    d = devs[0]
    good, other = advert(d, health), advert(d, drift)
    assert answers(d, [{"round": health.id, "phase": "advertise", "message": good}]).status_code == 200
    resp = answers(
        d,
        [
            {"round": health.id, "phase": "advertise", "message": good},  # a replay
            {"round": "f" * 32, "phase": "advertise", "message": other},  # no such round
            {"round": drift.id, "phase": "share", "message": other},  # a message of the wrong kind
            {"round": drift.id, "phase": "advertise", "message": other},  # fine
        ],
    )
    assert resp.status_code == 200
    got = [(x.get("status"), (x.get("error") or {}).get("code"), x.get("accepted")) for x in resp.json()["results"]]
    assert got == [
        (409, "replay", None),
        (404, "unknown_round", None),
        (400, "bad_message", None),
        (None, None, "advertise"),
    ]
    assert AggRound.objects.get(id=health.id).answered == 1 and AggRound.objects.get(id=drift.id).answered == 1
    member = RoundMember.objects.get(round=health, device=d.device)
    assert member.refusals == 1 and member.last_refusal == "advertise: replay"


@pytest.mark.parametrize(
    "body", [{}, {"answers": []}, {"answers": [{"round": "x", "phase": "advertise", "message": {}}] * 17}, [1]]
)
def test_a_malformed_batch_is_refused_whole(body: Any) -> None:
    d = enrol(1, factories.staged_version())[0]
    resp = d.post("/api/v1/rounds/answers", body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_message"
