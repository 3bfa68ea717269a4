"""The gate job judging on health-round sums, on real PostgreSQL (telemetry/canary_rounds.py).

Rounds are formed by the real service (``telemetry.rounds.form_round``, per model version: the
canary version's groups are canary devices, the previous version's are control devices); each
group's result is what the real SecAgg+ sum of the members' real ``agent.encoding`` health vectors,
with each member's discrete Gaussian noise at the round's own σ², unmasks to. The campaign is then
judged through the existing evaluation path and its verdict checked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agent import dpnoise
from agent.encoding import encode
from agent.secagg.messages import DONE, b64
from agent.secagg.primitives import identity_public_bytes
from agent.secagg.simulation import make_round, run_round
from rollout import evaluation, lifecycle
from rollout.models import Campaign, GateCheck
from telemetry import canary_rounds, rounds
from telemetry.models import AggRound
from tests import test_campaign_factories as f
from tests.test_campaign_trust import committed, report_sides

pytestmark = pytest.mark.django_db

WAVES = [{"percent": 100, "min_soak_minutes": 0, "min_devices": 5}]
GATES = {"error_rate": 0.02, "latency_p95": 1.25}
ROWS = 400  # inferences per device per window
LAT = [0, 10, 200, 150, 30, 8, 2, 0, 0, 0, 0, 0]  # mostly 2–10 ms


@pytest.fixture(autouse=True)
def _resolving_noise(settings: Any) -> None:
    """Real noise, at a health budget large enough that three windows resolve the canary goal."""
    settings.EDGEFLEET_ROUND_NOISE = True
    settings.EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY = 20000.0
    settings.EDGEFLEET_TELEMETRY_WINDOW = 300
    settings.EDGEFLEET_MIN_COHORT = 20


def fleet(on_failure: str = Campaign.OnFailure.ROLLBACK, cohort: bool = True) -> dict:
    m = f.model()
    v1, v2 = f.version(m, "v1"), f.version(m, "v2")
    f.release(v1)
    eu = f.cohort("eu", "region=eu") if cohort else None
    devices = []
    for _ in range(60):
        d = f.device({"region": "eu"}, {"fraud": "v1"})
        d.identity_key = b64(identity_public_bytes(Ed25519PrivateKey.generate()))
        d.save(update_fields=["identity_key"])
        devices.append(d)
    c = lifecycle.create_campaign(name="v2", version=v2, cohort=eu, waves=WAVES, gates=GATES, on_failure=on_failure)
    lifecycle.start(c.pk)
    c.refresh_from_db()
    for d in devices[:20]:
        committed(d, v2)
    return {"c": c, "v1": v1, "v2": v2, "canary": devices[:20], "control": devices[20:]}


def window(c: Campaign, w: int) -> datetime:
    return (c.started_at or timezone.now()) + timedelta(seconds=1 + 300 * w)


def health_round(version, start: datetime, group: int, devices: list, error_rate: float, rng, survivors: int = 0):
    """A finished health round whose result is the secure sum of real encoded, really noised vectors."""
    r = rounds.form_round(version, rounds.HEALTH, start, 300, group, devices, start)
    layout = rounds.layout_from_json(r.layout)
    noise = dpnoise.DeviceNoise(Fraction(r.noise_sigma2), r.noise_bound)
    alive = survivors or r.n
    inputs = {}
    for u in range(1, alive + 1):
        errors = int(rng.binomial(ROWS, error_rate))
        lat = rng.multinomial(ROWS, np.asarray(LAT) / sum(LAT))
        x = encode(layout, True, {"latency": lat}, {"error_fraction": (errors, ROWS)})
        inputs[u] = x + dpnoise.sample_noise(layout.length, noise)
    members = make_round(alive, layout.length, min_survivors=min(alive, r.min_survivors))
    _server, total = run_round(members, inputs)
    assert total is not None
    r.result = [int(v) for v in members.config.ring.centred(total)]
    r.u3, r.phase, r.finished_at = list(range(1, alive + 1)), DONE, start
    r.save(update_fields=["result", "u3", "phase", "finished_at"])
    return r


def run_windows(fl: dict, canary_rate: float, control_rate: float = 0.01, windows: int = 3, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for w in range(windows):
        start = window(fl["c"], w)
        health_round(fl["v2"], start, 0, fl["canary"], canary_rate, rng)
        health_round(fl["v1"], start, 0, fl["control"][:20], control_rate, rng)
        health_round(fl["v1"], start, 1, fl["control"][20:], control_rate, rng)


def gate(c: Campaign, name: str) -> dict:
    c.refresh_from_db()
    return next(g for g in c.gate_report["gates"] if g["name"] == name)


def test_a_canary_whose_errors_rose_is_rolled_back_on_round_sums() -> None:
    fl = fleet()
    run_windows(fl, canary_rate=0.30)
    assert evaluation.evaluate_campaign(fl["c"].pk) == "rollback"
    c = Campaign.objects.get(pk=fl["c"].pk)
    assert c.state == Campaign.State.ROLLED_BACK
    decision = c.decisions.get(kind="rollback")
    err = next(g for g in decision.numbers["gates"] if g["name"] == "error_rate")
    assert err["verdict"] == "fail" and err["observed"] > 0.2
    assert (err["n_canary"], err["groups_canary"], err["n_control"], err["groups_control"]) == (20, 1, 40, 2)
    assert "canary 20 devices in 1 group, control 40 devices in 2 groups, 3 window(s)" in err["detail"]
    check = GateCheck.objects.get(campaign=c)
    assert check.gates["error_rate"]["groups_canary"] == 1 and check.gates["error_rate"]["n_control"] == 40


def test_pause_when_the_campaign_says_pause() -> None:
    fl = fleet(on_failure=Campaign.OnFailure.PAUSE)
    run_windows(fl, canary_rate=0.30)
    assert evaluation.evaluate_campaign(fl["c"].pk) == "pause"
    assert Campaign.objects.get(pk=fl["c"].pk).state == Campaign.State.PAUSED


def test_a_healthy_canary_passes_on_round_sums_without_reading_reports_or_labels(viewer_client) -> None:
    fl = fleet()
    run_windows(fl, canary_rate=0.01)
    with CaptureQueriesContext(connection) as seen:
        comparison = evaluation.compare(fl["c"], fl["c"].started_at, 5)
    sql = " ".join(q["sql"] for q in seen.captured_queries)
    assert "telemetry_report" not in sql and '"labels"' not in sql
    assert comparison["error_rate"]["source"] == "rounds" and "drift" not in comparison
    assert evaluation.evaluate_campaign(fl["c"].pk) == "complete"
    err = gate(fl["c"], "error_rate")
    assert err["verdict"] == "pass" and abs(err["observed"]) < 0.02
    assert gate(fl["c"], "latency_p95")["verdict"] == "pass"
    page = viewer_client.get(f"/campaigns/{fl['c'].pk}/live/").content.decode()
    assert "20 devices in 1 group / 40 in 2 groups" in page


def test_below_k_survivors_on_a_side_is_not_enough_data_and_holds() -> None:
    fl = fleet()
    rng = np.random.default_rng(2)
    for w in range(3):
        start = window(fl["c"], w)
        health_round(fl["v2"], start, 0, fl["canary"], 0.30, rng, survivors=19)
        health_round(fl["v1"], start, 0, fl["control"][:20], 0.01, rng)
    assert evaluation.evaluate_campaign(fl["c"].pk) == "hold"
    err = gate(fl["c"], "error_rate")
    assert err["verdict"] == "not_enough_data" and err["n_canary"] == 19
    assert err["observed"] is None and err["canary"] is None, "no number from fewer than k devices"


def test_without_finished_rounds_on_both_sides_the_job_judges_on_reports() -> None:
    fl = fleet()
    rng = np.random.default_rng(3)
    start = window(fl["c"], 0)
    health_round(fl["v1"], start, 0, fl["control"][:20], 0.01, rng)  # control only
    rounds.form_round(fl["v2"], rounds.HEALTH, start, 300, 0, fl["canary"], start)  # canary still running
    assert canary_rounds.finished_windows(fl["v2"].pk, fl["v1"].pk, fl["c"].started_at) is None
    devices = fl["canary"] + fl["control"]
    report_sides({**fl, "devices": devices}, canary=20, control=30, canary_errors=300.0)
    assert evaluation.evaluate_campaign(fl["c"].pk) == "rollback"
    err = Campaign.objects.get(pk=fl["c"].pk).decisions.get(kind="rollback").numbers["gates"][0]
    assert err["name"] == "error_rate" and err.get("groups_canary") is None and err["n_control"] == 30


def test_a_window_still_running_on_one_side_is_left_for_the_next_evaluation() -> None:
    fl = fleet()
    run_windows(fl, canary_rate=0.01, windows=2)
    late = window(fl["c"], 2)
    rounds.form_round(fl["v2"], rounds.HEALTH, late, 300, 0, fl["canary"], late)  # open: not judged yet
    health_round(fl["v1"], late, 0, fl["control"][:20], 0.01, np.random.default_rng(4))
    sums = canary_rounds.finished_windows(fl["v2"].pk, fl["v1"].pk, fl["c"].started_at)
    assert sums is not None and len(sums[0]) == len(sums[1]) == 2


def test_void_rounds_are_left_out() -> None:
    fl = fleet()
    run_windows(fl, canary_rate=0.01, windows=1)
    AggRound.objects.filter(version=fl["v2"]).update(void=True, reason="void: test")
    assert canary_rounds.finished_windows(fl["v2"].pk, fl["v1"].pk, fl["c"].started_at) is None


def test_sums_too_noisy_for_the_canary_goal_fall_back_to_reports(settings) -> None:
    """At a strict health budget (ε = 0.5 a day over the policy's three soak rounds) a group of 20
    cannot resolve 1 % → 10 %: the round path does not pass the wave; with no reports either, the
    campaign holds."""
    settings.EDGEFLEET_PRIVACY_EPSILON_HEALTH_DAY = 0.5
    fl = fleet()
    run_windows(fl, canary_rate=0.01)
    sums = canary_rounds.finished_windows(fl["v2"].pk, fl["v1"].pk, fl["c"].started_at)
    assert sums is not None and len(sums[0]) == 3
    assert evaluation.evaluate_campaign(fl["c"].pk) == "hold"
    assert gate(fl["c"], "error_rate").get("groups_canary") is None


def test_the_window_the_wave_started_in_counts_one_that_ended_before_it_does_not() -> None:
    fl = fleet()
    rng = np.random.default_rng(5)
    started = fl["c"].started_at
    for start in (started - timedelta(seconds=100), started - timedelta(seconds=400)):
        health_round(fl["v2"], start, 0, fl["canary"], 0.01, rng)
        health_round(fl["v1"], start, 0, fl["control"][:20], 0.01, rng)
    sums = canary_rounds.finished_windows(fl["v2"].pk, fl["v1"].pk, started)
    assert sums is not None and len(sums[0]) == 1


def test_unreadable_round_sums_are_quarantined_and_the_job_judges_on_reports() -> None:
    from telemetry.models import Quarantine

    fl = fleet()
    run_windows(fl, canary_rate=0.30, windows=1)
    AggRound.objects.filter(version=fl["v2"]).update(result=[1, 2, 3])  # not the layout's length
    assert evaluation.evaluate_campaign(fl["c"].pk) == "hold", "no reports: nothing to judge on"
    q = Quarantine.objects.get(kind=Quarantine.Kind.GATE, key=f"{fl['v2'].pk}/rounds")
    assert "round sums unreadable" in q.reason
    AggRound.objects.all().delete()
    run_windows(fl, canary_rate=0.30, windows=1, seed=9)
    assert evaluation.evaluate_campaign(fl["c"].pk) == "rollback"
    assert not Quarantine.objects.filter(kind=Quarantine.Kind.GATE, key=f"{fl['v2'].pk}/rounds").exists()
