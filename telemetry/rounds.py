"""Secure-aggregation rounds on the server: form groups, take each member's message, close phases at
their server-set deadlines, unmask (docs/secure-aggregation.md, docs/protocol.md "Rounds").

The protocol itself is ``agent.secagg.server.ServerRound`` (pure, no database). This module keeps
its state in ``AggRound`` / ``RoundMember`` / ``RoundMessage`` rows and rebuilds, for each step, just
the part of a ``ServerRound`` that step reads — so a worker or server restart between phases loses
nothing, and one message costs a few rows, not the whole round. Every step locks the round's row,
so a message and the job closing its phase never interleave.

What is stored is the protocol's minimum: signed public keys, dealt (sealed) shares and their
commitments, each member's inbox, the revealed shares — all deleted when the round ends — and the
running sum of masked vectors, never one vector on its own. After unmasking only the sum remains.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agent import dpnoise
from agent.encoding import Block, Layout, drift_layout, health_layout, implausible, sensitivity
from agent.secagg.config import RoundConfig
from agent.secagg.graph import choose_parameters
from agent.secagg.messages import (
    ADVERTISE,
    COMMIT_BYTES,
    DONE,
    FAILED,
    MASKED,
    PHASES,
    SHARE,
    UNMASK,
    AdvertiseKeys,
    MaskedInput,
    Refusal,
    ShareKeys,
    UnmaskShares,
    b64,
    unb64,
)
from agent.secagg.ring import Ring, RingOverflow
from agent.secagg.server import ServerRound
from fleet.models import Device
from ota.models import ModelVersion
from telemetry import round_plan
from telemetry.models import AggRound, RoundMember, RoundMessage
from telemetry.profiles import expected_bins, latency_bin_count, output_bin_count

DRIFT, HEALTH = "drift", "health"
DESIGN_DROPOUT = 0.30  # min_survivors = ⌈0.7 n⌉: the noise is calibrated for that many devices
MESSAGE_CLASSES = {ADVERTISE: AdvertiseKeys, SHARE: ShareKeys, MASKED: MaskedInput, UNMASK: UnmaskShares}


class RoundGone(Exception):
    """No such round (or the device is not told of it): 404."""


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def phase_seconds() -> int:
    """How long each phase stays open: two poll intervals, so a device that misses one poll still answers."""
    return int(_setting("EDGEFLEET_ROUND_PHASE_SECONDS", 2 * int(_setting("EDGEFLEET_POLL_INTERVAL", 60))))


def min_cohort() -> int:
    return int(_setting("EDGEFLEET_MIN_COHORT", 20))


# ---- configuration ---------------------------------------------------------------------------------


def layout_to_json(layout: Layout) -> list[list[Any]]:
    return [[b.name, b.kind, b.size, b.scale] for b in layout.blocks]


def layout_from_json(data: list[list[Any]]) -> Layout:
    return Layout(tuple(Block(str(n), str(k), int(size), int(scale)) for n, k, size, scale in data))


def layout_for(version: ModelVersion, budget: str) -> Layout:
    """The version's vector layout: the same bins the manifest tells devices (telemetry.profiles)."""
    if budget == HEALTH:
        return health_layout(latency_bin_count())
    bins = expected_bins(version)
    return drift_layout([(f["name"], len(f["edges"]) - 1) for f in bins["features"]], output_bin_count(bins["output"]))


_CONFIGS: dict[str, RoundConfig] = {}


def config_of(r: AggRound) -> RoundConfig:
    """The round's public configuration (immutable once formed, so cached per process)."""
    cfg = _CONFIGS.get(r.id)
    if cfg is None:
        keys = {idx: bytes(k) for idx, k in RoundMember.objects.filter(round=r).values_list("index", "identity_key")}
        cfg = RoundConfig(
            round_id=r.id,
            n=r.n,
            k=r.k,
            t=r.t,
            vector_length=r.vector_length,
            graph_seed=bytes(r.graph_seed),
            identity_keys=keys,
            ring_bits=r.ring_bits,
            min_survivors=r.min_survivors,
        )
        if len(_CONFIGS) > 256:
            _CONFIGS.clear()
        _CONFIGS[r.id] = cfg
    return cfg


def public_config(r: AggRound) -> dict[str, Any]:
    """What every member is told once: the parameters ``RoundConfig`` needs, the layout, its noise."""
    cfg = config_of(r)
    return {
        "round": r.id,
        "model": r.version.model.name,
        "version": r.version.label,
        "budget": r.budget,
        "window_start": r.window_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_seconds": r.window_seconds,
        "n": r.n,
        "k": r.k,
        "t": r.t,
        "vector_length": r.vector_length,
        "ring_bits": r.ring_bits,
        "min_survivors": r.min_survivors,
        "graph_seed": b64(bytes(r.graph_seed)),
        "identity_keys": {str(i): b64(k) for i, k in sorted(cfg.identity_keys.items())},
        "layout": r.layout,
        "noise": {"sigma2": r.noise_sigma2, "bound": r.noise_bound},
    }


@dataclass(frozen=True)
class Noise:
    sigma2: Fraction
    bound: int


def plan_for(version: ModelVersion, budget: str, group_size: int = 0) -> round_plan.Plan:
    """What ``budget``'s rounds of ``version`` are calibrated for: the model's privacy policy
    (``telemetry.policy.policy_for``, the object the privacy page computes its figures from)."""
    from telemetry.policy import policy_for

    windows = round_plan.windows_per_day(int(_setting("EDGEFLEET_TELEMETRY_WINDOW", 300)))
    return round_plan.of_budget(policy_for(version.model), budget, windows, group_size)


def noise_for(layout: Layout, min_survivors: int, n: int, plan: round_plan.Plan) -> Noise:
    """Each device's discrete Gaussian noise for this round: the smallest whose ``plan.rounds_per_day``
    rounds a day keep a device within ``plan.epsilon_day`` (telemetry.accounting.calibrate), or none
    when ``EDGEFLEET_ROUND_NOISE`` is off (tests that check sums exactly)."""
    if not _setting("EDGEFLEET_ROUND_NOISE", True):
        return Noise(Fraction(0), 0)
    from telemetry.accounting import calibrate

    cal = calibrate(
        plan.epsilon_day, max(plan.rounds_per_day, 1), min_survivors, sensitivity(layout).l2, layout.length, plan.delta
    )
    dn = dpnoise.DeviceNoise.for_group(cal.sigma2_device, n, layout.length)
    return Noise(dn.sigma2, dn.bound)


def ring_bits_for(layout: Layout, n: int, noise: Noise) -> int:
    """The smallest of 32, 48, 64 bits in which no group sum can wrap."""
    dn = dpnoise.DeviceNoise(noise.sigma2, noise.bound)
    for bits in (32, 48, 64):
        try:
            dpnoise.check_ring(Ring(bits), layout.max_coordinate, n, dn)
            return bits
        except RingOverflow:
            continue
    raise ValueError("no ring holds this round's sums")


# ---- forming rounds ------------------------------------------------------------------------------


def form_round(
    version: ModelVersion,
    budget: str,
    window_start: datetime,
    window_seconds: int,
    group: int,
    devices: list[Device],
    now: datetime | None = None,
    plan: round_plan.Plan | None = None,
) -> AggRound:
    """One round over ``devices`` (each with an enrolment identity key), indices in random order;
    its noise calibrated for ``plan`` (default: the model's policy for ``budget``)."""
    now = now or timezone.now()
    devices = [d for d in devices if d.identity_key]
    n = len(devices)
    if n < max(2, min_cohort()):
        raise ValueError(f"{n} device(s) with identity keys, fewer than EDGEFLEET_MIN_COHORT={min_cohort()}")
    params = choose_parameters(n, dropout=DESIGN_DROPOUT)
    min_survivors = min(n, max(2, math.ceil((1 - DESIGN_DROPOUT) * n)))
    layout = layout_for(version, budget)
    noise = noise_for(layout, min_survivors, n, plan or plan_for(version, budget, n))
    order = list(devices)
    secrets.SystemRandom().shuffle(order)
    with transaction.atomic():
        r = AggRound.objects.create(
            id=uuid.uuid4().hex,
            version=version,
            budget=budget,
            window_start=window_start,
            window_seconds=window_seconds,
            group=group,
            n=n,
            k=params.k,
            t=params.t,
            vector_length=layout.length,
            ring_bits=ring_bits_for(layout, n, noise),
            min_survivors=min_survivors,
            graph_seed=secrets.token_bytes(32),
            layout=layout_to_json(layout),
            noise_sigma2=str(noise.sigma2),
            noise_bound=noise.bound,
            deadline=now + timedelta(seconds=phase_seconds()),
            created_at=now,
        )
        RoundMember.objects.bulk_create(
            RoundMember(round=r, device=d, index=i, identity_key=unb64(d.identity_key, 32, "identity_key"))
            for i, d in enumerate(order, start=1)
        )
        _publish_hints(r, [(d.id, i) for i, d in enumerate(order, start=1)])
    return r


def groups_of(devices: list[Any], size: int) -> list[list[Any]]:
    """Split into ⌊N / size⌋ groups of nearly equal size (each ≥ size), none if N < size."""
    count = len(devices) // max(size, 1)
    if count == 0:
        return []
    return [devices[i::count] for i in range(count)]


def campaign_versions() -> set[int]:
    """Versions in a running campaign, canary and control alike: the gate compares their health sums
    window by window, so both run health rounds every window while it soaks (``round_plan``)."""
    from rollout.models import Campaign

    ids: set[int] = set()
    for v, prev in Campaign.objects.filter(state=Campaign.State.RUNNING).values_list(
        "version_id", "previous_version_id"
    ):
        ids.update(x for x in (v, prev) if x is not None)
    return ids


def plans_for(
    version: ModelVersion, start: datetime, window: int, devices: int, in_campaign: bool, cache: dict
) -> list[round_plan.Plan]:
    """The rounds ``version`` runs in the window at ``start`` (``telemetry.round_plan`` over the model's
    policy). ``EDGEFLEET_ROUND_SCHEDULE = "every_window"`` runs every budget every window, each still
    calibrated as the policy says and stopped per device by ``within_budget`` (protocol tests)."""
    from telemetry.policy import policy_for

    key = version.model_id
    if key not in cache:
        cache[key] = policy_for(version.model)
    s = cache[key]
    floor = min_cohort()
    if _setting("EDGEFLEET_ROUND_SCHEDULE", "policy") == "every_window":
        size = max(min(s.group_size, devices), floor)
        windows = round_plan.windows_per_day(window)
        return [round_plan.of_budget(s, b, windows, size) for b in (round_plan.HEALTH, round_plan.DRIFT)]
    groups = max(s.canary // max(s.canary_group_size, 1), 1)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    seconds = int((start - midnight).total_seconds())
    return round_plan.plan(s, seconds, window, devices, in_campaign, groups, floor)


def form_rounds(now: datetime | None = None) -> int:
    """At each window: for every version enough devices run, the rounds its model's privacy policy
    schedules for this window (``plans_for``), in groups of the plan's size.

    Every device running the version takes part, active or not (no metadata says who was active),
    unless one more round would take it past its day's ε (``within_budget``).
    """
    now = now or timezone.now()
    window = int(_setting("EDGEFLEET_TELEMETRY_WINDOW", 300))
    start = datetime.fromtimestamp(int(now.timestamp()) // window * window, tz=now.tzinfo)
    budgets = [b for b in str(_setting("EDGEFLEET_ROUND_BUDGETS", "health,drift")).split(",") if b]
    running: dict[tuple[str, str], list[Device]] = {}
    for d in Device.objects.filter(token_revoked_at__isnull=True).exclude(identity_key=""):
        for model, label in (d.installed or {}).items():
            running.setdefault((model, str(label)), []).append(d)
    formed = 0
    policies: dict = {}
    soaking = campaign_versions()
    for (model, label), devices in running.items():
        if len(devices) < min_cohort():
            continue  # k-suppression: nothing is computed below EDGEFLEET_MIN_COHORT
        version = ModelVersion.objects.select_related("model").filter(model__name=model, label=label).first()
        if version is None:
            continue
        devices.sort(key=lambda d: str(d.id))
        secrets.SystemRandom().shuffle(devices)
        for plan in plans_for(version, start, window, len(devices), version.id in soaking, policies):
            if plan.budget not in budgets:
                continue
            if AggRound.objects.filter(version=version, budget=plan.budget, window_start=start).exists():
                continue
            members = within_budget(version, start, devices, plan)
            for g, group in enumerate(groups_of(members, plan.group_size)):
                form_round(version, plan.budget, start, window, g, group, now, plan)
                formed += 1
    return formed


def within_budget(version: ModelVersion, start: datetime, devices: list[Device], plan: round_plan.Plan) -> list[Device]:
    """The devices one more round of ``budget`` keeps within their day's ε (``accounting.may_join``).

    Every figure is what the server assigned: the charge of a round of ``size`` devices of this
    layout and noise, and each device's rounds of this budget already scheduled that UTC day (their
    stored parameters), never anything a device says. With noise off (tests of exact sums) there is
    nothing to account and everyone joins."""
    if not _setting("EDGEFLEET_ROUND_NOISE", True) or not devices:
        return devices
    from telemetry.accounting import RoundCharge, may_join

    budget, size = plan.budget, plan.group_size
    layout = layout_for(version, budget)
    min_survivors = min(size, max(2, math.ceil((1 - DESIGN_DROPOUT) * size)))
    noise = noise_for(layout, min_survivors, size, plan)
    charge = RoundCharge.for_round(sensitivity(layout).l2, noise.sigma2, min_survivors, layout.length)
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    today = {"round__window_start__gte": day, "round__window_start__lt": day + timedelta(days=1)}
    fields = ("device_id", "round_id", "round__layout", "round__noise_sigma2", "round__min_survivors")
    rows = RoundMember.objects.filter(device__in=devices, round__budget=budget, **today).values_list(*fields)
    charges: dict[str, RoundCharge] = {}
    scheduled: dict[Any, list[str]] = {}
    for device_id, rid, lay, sigma2, survivors in rows:
        if Fraction(sigma2) <= 0:
            continue  # formed with noise off (tests of exact sums): outside the accounting
        if rid not in charges:
            lay = layout_from_json(lay)
            charges[rid] = RoundCharge.for_round(sensitivity(lay).l2, Fraction(sigma2), survivors, lay.length)
        scheduled.setdefault(device_id, []).append(rid)
    eps = plan.epsilon_day
    verdicts: dict[tuple[str, ...], bool] = {}  # devices of the same groups share a schedule
    kept = []
    for d in devices:
        key = tuple(sorted(scheduled.get(d.id, [])))
        if key not in verdicts:
            verdicts[key] = may_join([charges[r] for r in key], charge, eps, plan.delta)
        if verdicts[key]:
            kept.append(d)
    return kept


# ---- what a device is told ----------------------------------------------------------------------


def expected(r: AggRound) -> set[int] | None:
    """Indices still expected to answer the round's phase (None: everyone; empty once it ended)."""
    if r.phase in (DONE, FAILED):
        return set()
    return {ADVERTISE: None, SHARE: set(r.u1), MASKED: set(r.u2), UNMASK: set(r.u3)}[r.phase]


def _publish_hints(r: AggRound, members: list[tuple[Any, int]] | None = None) -> None:
    """After the commit, tell each member's poll hint (fleet/round_hints.py) the round's phase, or
    that it has nothing more to answer here (dropped, or the round ended)."""
    from fleet import round_hints

    if members is None:
        members = list(RoundMember.objects.filter(round=r).values_list("device_id", "index"))
    want = expected(r)
    phase, deadline, rid = r.phase, int(r.deadline.timestamp()), r.id
    updates = [
        (device_id, rid, phase if want is None or index in want else None, deadline) for device_id, index in members
    ]
    transaction.on_commit(lambda: round_hints.publish(updates))


def _deadline(r: AggRound) -> str:
    return r.deadline.strftime("%Y-%m-%dT%H:%M:%SZ")


def rounds_for(device_id: uuid.UUID) -> list[dict[str, Any]]:
    """The device's open rounds: phase, deadline, its index, and — if it has not answered this
    phase yet — the phase's inbox (neighbours' keys, shares addressed to it, or the survivors)."""
    out = []
    members = (
        RoundMember.objects.filter(device_id=device_id)
        .exclude(round__phase__in=(DONE, FAILED))
        .select_related("round")
        .order_by("round__created_at")
    )
    for m in members:
        r = m.round
        entry: dict[str, Any] = {"round": r.id, "phase": r.phase, "deadline": _deadline(r), "index": m.index}
        entry["answered"] = m.reached == r.phase
        if not entry["answered"]:
            entry["inbox"] = _inbox(r, m.index)
        out.append(entry)
    return out


def _inbox(r: AggRound, index: int) -> Any:
    if r.phase == ADVERTISE:
        return None
    if r.phase == UNMASK:
        return {"round": r.id, "survivors": list(r.u3)}
    row = RoundMessage.objects.filter(round=r, index=index, kind=RoundMessage.Kind.INBOX, phase=r.phase).first()
    return row.payload if row else []


def config_for(device_id: uuid.UUID, round_id: str) -> dict[str, Any]:
    r = AggRound.objects.select_related("version__model").filter(id=round_id).first()
    if r is None or not RoundMember.objects.filter(round=r, device_id=device_id).exists():
        raise RoundGone(round_id)
    return public_config(r)


# ---- receiving -----------------------------------------------------------------------------------


def _server(r: AggRound, cfg: RoundConfig, **parts: Any) -> ServerRound:
    return ServerRound(
        cfg, phase=r.phase, reason=r.reason, u1=frozenset(r.u1), u2=frozenset(r.u2), u3=frozenset(r.u3), **parts
    )


def receive(device_id: uuid.UUID, round_id: str, phase: str, body: Any, now: datetime | None = None) -> dict:
    """Take one member's message for ``phase``; a ``Refusal`` says why not (recorded on the member).

    Returns ``{"accepted": phase, "complete": bool}``: complete when every expected member has
    answered, so the caller may close the phase early instead of waiting for its deadline.
    """
    now = now or timezone.now()
    if phase not in PHASES:
        raise Refusal("bad_message", f"phase must be one of {list(PHASES)}", "phase")
    try:
        with transaction.atomic():
            rows = AggRound.objects.select_for_update().defer(*_NOT_READ_BY_RECEIVE)
            r = rows.filter(id=round_id).first()
            if r is None:
                raise RoundGone(round_id)
            member = RoundMember.objects.filter(round=r, device_id=device_id).only("index", "reached").first()
            if member is None:
                raise Refusal("not_in_round", f"this device is not in round {round_id}", "round")
            result = _receive(r, member, phase, body, now)
    except Refusal as e:
        RoundMember.objects.filter(round_id=round_id, device_id=device_id).update(
            refusals=F("refusals") + 1, last_refusal=f"{phase}: {e.code}"[:200]
        )
        raise
    return result


# Fields a message never reads: not fetched under the lock (the layout and the result are the big ones).
_NOT_READ_BY_RECEIVE = ("layout", "result", "noise_sigma2", "created_at", "finished_at")


def receive_many(device_id: uuid.UUID, answers: list[tuple[str, str, Any]], now: datetime | None = None) -> list:
    """One device's messages to several rounds (its health and drift rounds, say) in one transaction:
    one commit instead of one each; each answer in its own savepoint, so a refused one leaves the
    others standing. Rounds are locked in id order, so two batches never wait on each other in a
    cycle. Returns, in the given order, each answer's ``receive`` result or its ``Refusal``/``RoundGone``."""
    now = now or timezone.now()
    order = sorted(range(len(answers)), key=lambda i: (answers[i][0], i))
    out: list[Any] = [None] * len(answers)
    with transaction.atomic():
        for i in order:
            round_id, phase, body = answers[i]
            try:
                out[i] = receive(device_id, round_id, phase, body, now)
            except (Refusal, RoundGone) as e:
                out[i] = e
    return out


def _receive(r: AggRound, member: RoundMember, phase: str, body: Any, now: datetime) -> dict:
    msg = MESSAGE_CLASSES[phase].from_wire(body)
    if msg.round_id != r.id:
        raise Refusal("wrong_round", f"message for round {msg.round_id!r}, this is {r.id!r}", "round")
    if msg.sender != member.index:
        raise Refusal(
            "not_in_round", f"this device is index {member.index} in round {r.id}, not {msg.sender}", "sender"
        )
    if r.phase == phase and now > r.deadline:
        raise Refusal("late", f"phase {phase!r} closed at {_deadline(r)}", "phase")
    if r.phase == phase and member.reached == phase:
        raise Refusal("replay", f"device {member.index} already answered phase {phase!r}", "sender")
    cfg = config_of(r)
    if phase == ADVERTISE:
        _server(r, cfg).receive_advertise(msg)
        RoundMessage.objects.create(round=r, index=member.index, kind=RoundMessage.Kind.ADVERT, payload=body)
    elif phase == SHARE:
        _server(r, cfg).receive_share_keys(msg)
        RoundMessage.objects.create(round=r, index=member.index, kind=RoundMessage.Kind.DEALT, payload=body)
    elif phase == MASKED:
        ring = cfg.ring
        running = ring.from_bytes(bytes(r.running_sum), cfg.vector_length) if r.phase == MASKED else None
        srv = _server(r, cfg, running_sum=running)
        srv.receive_masked(msg)
        r.running_sum = ring.to_bytes(srv.running_sum)
    else:
        inbox = RoundMessage.objects.filter(round=r, index=member.index, kind=RoundMessage.Kind.INBOX, phase=MASKED)
        commits = {}
        for row in inbox:  # the server's own routing of shares it checked on receipt: only the commitments
            for s in row.payload:
                commits[(int(s["sender"]), int(s["to"]))] = (
                    unb64(s["s_commit"], COMMIT_BYTES, "s_commit"),
                    unb64(s["b_commit"], COMMIT_BYTES, "b_commit"),
                )
        _server(r, cfg, commits=commits).receive_unmask(msg)
        RoundMessage.objects.create(round=r, index=member.index, kind=RoundMessage.Kind.REVEALED, payload=body)
    member.reached = phase
    member.save(update_fields=["reached"])
    r.answered += 1  # under the round's row lock; reset when the phase closes
    r.save(update_fields=["answered", "running_sum"] if phase == MASKED else ["answered"])
    return {"accepted": phase, "complete": r.answered >= _expected_count(r)}


def _expected_count(r: AggRound) -> int:
    return {ADVERTISE: r.n, SHARE: len(r.u1), MASKED: len(r.u2), UNMASK: len(r.u3)}[r.phase]


# ---- closing phases ------------------------------------------------------------------------------


def _messages(r: AggRound, kind: str) -> dict[int, Any]:
    return dict(RoundMessage.objects.filter(round=r, kind=kind).values_list("index", "payload"))


def _fail(r: AggRound, reason: str, now: datetime) -> None:
    r.phase, r.reason, r.running_sum, r.finished_at = FAILED, reason, None, now
    r.save(update_fields=["phase", "reason", "running_sum", "finished_at"])
    RoundMessage.objects.filter(round=r).delete()


def _mark_dropped(r: AggRound, phase: str, kept: list[int]) -> None:
    RoundMember.objects.filter(round=r, dropped="").exclude(index__in=kept).update(dropped=phase)


def advance(round_id: str, now: datetime | None = None, force: bool = False) -> str:
    """Close the round's phase if its deadline passed or every expected member answered (or
    ``force``); returns the phase the round is in afterwards."""
    now = now or timezone.now()
    with transaction.atomic():
        r = AggRound.objects.select_for_update().filter(id=round_id).first()
        if r is None or r.phase in (DONE, FAILED):
            return r.phase if r else FAILED
        if not (force or now >= r.deadline or r.answered >= _expected_count(r)):
            return r.phase
        cfg = config_of(r)
        step = {ADVERTISE: _close_advertise, SHARE: _close_share, MASKED: _close_masked, UNMASK: _finish}[r.phase]
        step(r, cfg, now)
        _publish_hints(r)
        return r.phase


def _next_deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=phase_seconds())


def _inbox_rows(r: AggRound, phase: str, outbox: dict[int, list[Any]]) -> None:
    RoundMessage.objects.bulk_create(
        RoundMessage(round=r, index=u, kind=RoundMessage.Kind.INBOX, phase=phase, payload=[m.to_wire() for m in msgs])
        for u, msgs in outbox.items()
    )


def _close_advertise(r: AggRound, cfg: RoundConfig, now: datetime) -> None:
    adverts = {u: AdvertiseKeys.from_wire(p) for u, p in _messages(r, RoundMessage.Kind.ADVERT).items()}
    srv = ServerRound(cfg, adverts=adverts)
    outbox = srv.close_advertise()
    _mark_dropped(r, ADVERTISE, sorted(srv.u1))
    if srv.phase == FAILED:
        _fail(r, srv.reason, now)
        return
    RoundMessage.objects.filter(round=r, kind=RoundMessage.Kind.ADVERT).exclude(index__in=srv.u1).delete()
    _inbox_rows(r, SHARE, outbox)
    r.u1, r.phase, r.deadline, r.answered = sorted(srv.u1), SHARE, _next_deadline(now), 0
    r.save(update_fields=["u1", "phase", "deadline", "answered"])


def _close_share(r: AggRound, cfg: RoundConfig, now: datetime) -> None:
    dealt = {u: ShareKeys.from_wire(p) for u, p in _messages(r, RoundMessage.Kind.DEALT).items()}
    srv = _server(r, cfg, dealt=dealt)
    outbox = srv.close_share_keys()
    _mark_dropped(r, SHARE, sorted(srv.u2))
    if srv.phase == FAILED:
        _fail(r, srv.reason, now)
        return
    RoundMessage.objects.filter(round=r, kind=RoundMessage.Kind.INBOX, phase=SHARE).delete()
    RoundMessage.objects.filter(round=r, kind=RoundMessage.Kind.DEALT).exclude(index__in=srv.u2).delete()
    _inbox_rows(r, MASKED, outbox)
    window_end = r.window_start + timedelta(seconds=r.window_seconds)
    r.u2, r.phase, r.answered = sorted(srv.u2), MASKED, 0
    r.deadline = max(now, window_end) + timedelta(seconds=phase_seconds())
    r.running_sum = cfg.ring.to_bytes(cfg.ring.zeros(cfg.vector_length))
    r.save(update_fields=["u2", "phase", "deadline", "running_sum", "answered"])


def _close_masked(r: AggRound, cfg: RoundConfig, now: datetime) -> None:
    sent = set(RoundMember.objects.filter(round=r, reached=MASKED).values_list("index", flat=True))
    srv = _server(r, cfg, sent=sent)
    request = srv.close_masked()
    _mark_dropped(r, MASKED, sorted(sent))
    if request is None:
        _fail(r, srv.reason, now)
        return
    r.u3, r.phase, r.deadline, r.answered = sorted(srv.u3), UNMASK, _next_deadline(now), 0
    r.save(update_fields=["u3", "phase", "deadline", "answered"])


def _finish(r: AggRound, cfg: RoundConfig, now: datetime) -> None:
    ring = cfg.ring
    b_rev: dict[int, dict[int, bytes]] = {}
    s_rev: dict[int, dict[int, bytes]] = {}
    answered = set()
    for holder, payload in _messages(r, RoundMessage.Kind.REVEALED).items():
        msg = UnmaskShares.from_wire(payload)
        answered.add(holder)
        for owner, share in msg.b_shares.items():
            b_rev.setdefault(owner, {})[holder] = share
        for owner, share in msg.s_shares.items():
            s_rev.setdefault(owner, {})[holder] = share
    srv = _server(
        r,
        cfg,
        adverts={u: AdvertiseKeys.from_wire(p) for u, p in _messages(r, RoundMessage.Kind.ADVERT).items()},
        dealt={u: ShareKeys.from_wire(p) for u, p in _messages(r, RoundMessage.Kind.DEALT).items()},
        running_sum=ring.from_bytes(bytes(r.running_sum), cfg.vector_length),
        b_revealed=b_rev,
        s_revealed=s_rev,
        answered=answered,
    )
    total = srv.finish()
    if total is None:
        _fail(r, srv.reason, now)
        return
    signed = [int(v) for v in ring.centred(total)]
    survivors = len(r.u3)
    why = implausible(
        layout_from_json(r.layout), np.asarray(signed, dtype=np.int64), survivors, survivors * r.noise_bound
    )
    r.result, r.void, r.reason = signed, why is not None, (f"void: {why}" if why else "")
    r.phase, r.running_sum, r.finished_at = DONE, None, now
    r.save(update_fields=["result", "void", "reason", "phase", "running_sum", "finished_at"])
    RoundMessage.objects.filter(round=r).delete()


def rebuild_hints() -> int:
    """Publish every open round's hints again (after Redis lost them), each under its round's lock so
    a phase closing meanwhile publishes after it; then mark the hints ready. Returns the rounds."""
    from fleet import round_hints

    ids = list(AggRound.objects.exclude(phase__in=(DONE, FAILED)).values_list("id", flat=True))
    for rid in ids:
        with transaction.atomic():
            r = AggRound.objects.select_for_update().only("id", "phase", "deadline", "u1", "u2", "u3").get(id=rid)
            _publish_hints(r)
    transaction.on_commit(round_hints.mark_ready)
    return len(ids)


def advance_due(now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Close every phase whose deadline has passed (the beat job; early closes come from ``receive``);
    first, rebuild the poll hints if Redis lost them."""
    from fleet import round_hints

    now = now or timezone.now()
    if round_hints.ready() is False:
        rebuild_hints()
    ids = list(
        AggRound.objects.exclude(phase__in=(DONE, FAILED))
        .filter(deadline__lte=now)
        .order_by("deadline")
        .values_list("id", flat=True)[:limit]
    )
    out: dict[str, int] = {}
    for rid in ids:
        phase = advance(rid, now)
        out[phase] = out.get(phase, 0) + 1
    return out
