"""Device endpoints of secure-aggregation rounds (docs/protocol.md, "Rounds").

``GET /api/v1/rounds`` lists the device's open rounds with each phase's inbox, ``GET
/api/v1/rounds/{id}`` the round's public configuration (fetched once), and ``POST
/api/v1/rounds/{id}/{phase}`` takes the device's message for a phase. Views only parse, call
``telemetry.rounds`` and answer; every refusal is a 4xx with the protocol's error shape.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from ninja import Router

from agent.secagg.messages import Refusal
from fleet import wire
from fleet.auth import device_auth
from fleet.errors import ProtocolError
from telemetry import rounds

router = Router(tags=["device protocol v1"])

# Refusal code → HTTP status: 400 the message is wrong, 403 this device may not say it, 409 not now.
STATUS = {
    "bad_message": 400,
    "wrong_round": 400,
    "wrong_length": 400,
    "not_neighbour": 400,
    "misaddressed": 400,
    "bad_share": 400,
    "duplicate_key": 400,
    "not_in_round": 403,
    "bad_signature": 403,
    "wrong_phase": 409,
    "late": 409,
    "replay": 409,
    "too_few": 409,
    "refused_request": 409,
}


def _gone(round_id: str) -> ProtocolError:
    return ProtocolError(404, "unknown_round", f"no round {round_id!r} for this device", "round")


@router.get("/rounds", auth=device_auth, summary="The device's open aggregation rounds and their inboxes")
def list_rounds(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"rounds": rounds.rounds_for(request.auth.id)})


# Before /rounds/{round_id}: Django tries the paths in order, and that one would take "answers" as an id.
MAX_ANSWERS = 16


@router.post(
    "/rounds/answers",
    auth=device_auth,
    summary="The device's messages to several rounds in one request (one transaction)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["answers"],
                        "properties": {
                            "answers": {
                                "type": "array",
                                "maxItems": MAX_ANSWERS,
                                "items": {
                                    "type": "object",
                                    "required": ["round", "phase", "message"],
                                    "properties": {
                                        "round": {"type": "string"},
                                        "phase": {"type": "string"},
                                        "message": {"type": "object"},
                                    },
                                },
                            }
                        },
                    }
                }
            }
        }
    },
    description="Each answer as POST /rounds/{round}/{phase} would take it; results in the same order, each "
    '{"accepted", "complete"} or {"status", "error": {code, message, field}} (docs/protocol.md, "Rounds").',
)
def post_answers(request: HttpRequest) -> JsonResponse:
    body: Any = wire.read_json(request)
    answers = body.get("answers") if isinstance(body, dict) else None
    if not isinstance(answers, list) or not 1 <= len(answers) <= MAX_ANSWERS:
        raise ProtocolError(400, "bad_message", f"answers: a list of 1 to {MAX_ANSWERS}", "answers")
    parsed = []
    for a in answers:
        if not isinstance(a, dict) or not isinstance(a.get("round"), str) or not isinstance(a.get("phase"), str):
            raise ProtocolError(400, "bad_message", "each answer is {round, phase, message}", "answers")
        parsed.append((a["round"][:64], a["phase"][:16], a.get("message")))
    out = []
    for (rid, phase, _), res in zip(parsed, rounds.receive_many(request.auth.id, parsed), strict=True):
        if isinstance(res, rounds.RoundGone):
            out.append(_failed(rid, phase, _gone(rid)))
        elif isinstance(res, Refusal):
            out.append(_failed(rid, phase, ProtocolError(STATUS[res.code], res.code, res.message, res.field)))
        else:
            out.append({"round": rid, "phase": phase, **res})
            if res["complete"]:
                _close_early(rid)
    return JsonResponse({"results": out})


def _failed(rid: str, phase: str, e: ProtocolError) -> dict[str, Any]:
    error = {"code": e.code, "message": e.message, "field": e.field}
    return {"round": rid, "phase": phase, "status": e.status, "error": error}


def _close_early(round_id: str) -> None:
    from telemetry.tasks import advance_round

    # robust: the answer is committed; a broker away must not turn it into a 500 (the deadline job
    # closes the phase instead)
    transaction.on_commit(lambda: advance_round.delay(round_id), robust=True)


@router.get("/rounds/{round_id}", auth=device_auth, summary="A round's public configuration")
def round_config(request: HttpRequest, round_id: str) -> JsonResponse:
    try:
        return JsonResponse(rounds.config_for(request.auth.id, round_id[:64]))
    except rounds.RoundGone:
        raise _gone(round_id[:64]) from None


@router.post(
    "/rounds/{round_id}/{phase}",
    auth=device_auth,
    summary="The device's message for one phase of a round",
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}},
    description="Body: the phase's message in the wire form of agent/secagg/messages.py (docs/protocol.md).",
)
def post_phase(request: HttpRequest, round_id: str, phase: str) -> JsonResponse:
    body: Any = wire.read_json(request)
    try:
        done = rounds.receive(request.auth.id, round_id[:64], phase, body)
    except rounds.RoundGone:
        raise _gone(round_id[:64]) from None
    except Refusal as e:
        raise ProtocolError(STATUS[e.code], e.code, e.message, e.field) from None
    if done["complete"]:
        _close_early(round_id)
    return JsonResponse(done)
