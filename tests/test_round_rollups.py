"""Round rollups (telemetry/round_rollups.py): finished secure-aggregation rounds become the rollup
drift, charts and pages read, on real PostgreSQL.

Rounds here are ``AggRound`` rows in the state ``telemetry.rounds`` leaves them after unmasking
(``result`` = the sum of the survivors' ``agent.encoding`` vectors plus, where asked, discrete
Gaussian noise of the round's ``noise_sigma2``; ``u3`` the survivors; member rows) — the protocol
itself is tested in tests/test_rounds_*.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from agent.dpnoise import discrete_gaussian
from agent.encoding import encode
from telemetry import detectability as det
from telemetry import drift, rounds, services
from telemetry import group_sums as gs
from telemetry.models import AggRound, Alert, DriftResult, Quarantine, Rollup, RollupMark, RoundMember
from telemetry.round_rollups import update_round_rollups
from tests import factories
from tests.test_telemetry_jobs import fleet, hour, send

DONE, FAILED = AggRound.Phase.DONE, AggRound.Phase.FAILED
EDGES = det.default_edges(20)


@pytest.fixture
def version(db: Any) -> Any:
    v = factories.staged_version("fraud", "v1")
    factories.release(v)
    return v


def drift_vector(version: Any, rng: np.random.Generator, shift: float = 0.0, active: bool = True) -> np.ndarray:
    """A device's drift vector by the real encoding: 200 inferences, features ~ N(shift, 1)."""
    layout = rounds.layout_for(version, rounds.DRIFT)
    bins = services.expected_bins(version)
    hist = {}
    for i, f in enumerate(bins["features"]):
        s = shift if i == 0 else 0.0
        hist[f"feature:{f['name']}"] = rng.multinomial(200, det.bin_probabilities(f["edges"], s))
    hist["output"] = np.concatenate([rng.multinomial(190, [0.6, 0.3, 0.1]), [10]])
    return encode(layout, active, hist)


def health_vector(version: Any, rng: np.random.Generator, error_rate: float, active: bool = True) -> np.ndarray:
    layout = rounds.layout_for(version, rounds.HEALTH)
    lat = rng.multinomial(200, np.full(layout.block("latency").size, 1 / layout.block("latency").size))
    return encode(layout, active, {"latency": lat}, {"error_fraction": (error_rate * 200, 200)})


def make_round(
    version: Any,
    budget: str,
    window_start: datetime,
    group: int,
    devices: list,
    vectors: list[np.ndarray] | None,
    dropped: int = 0,
    sigma2: int = 0,
    phase: str = DONE,
    void: bool = False,
    reason: str = "",
    finished_at: datetime | None = None,
) -> AggRound:
    """A finished round over ``devices`` (the last ``dropped`` of them dropped out)."""
    layout = rounds.layout_for(version, budget)
    n = len(devices)
    survivors = list(range(1, n - dropped + 1))
    result = None
    if phase == DONE and vectors is not None:
        total = np.sum([vectors[i - 1] for i in survivors], axis=0)
        if sigma2:
            total = total + np.array([discrete_gaussian(Fraction(sigma2 * len(survivors))) for _ in total])
        result = [int(x) for x in total]
    r = AggRound.objects.create(
        id=uuid.uuid4().hex,
        version=version,
        budget=budget,
        window_start=window_start,
        window_seconds=300,
        group=group,
        n=n,
        k=min(n - 1, 10),
        t=(2 * n + 2) // 3,
        vector_length=layout.length,
        min_survivors=max(2, -(-7 * n // 10)),
        graph_seed=b"\0" * 32,
        layout=rounds.layout_to_json(layout),
        noise_sigma2=str(sigma2),
        phase=phase,
        deadline=window_start,
        reason=reason,
        u1=list(range(1, n + 1)),
        u2=list(range(1, n + 1)),
        u3=survivors if phase == DONE else [],
        result=result,
        void=void,
        created_at=window_start,
        finished_at=finished_at or timezone.now() - timedelta(minutes=1),
    )
    RoundMember.objects.bulk_create(
        RoundMember(round=r, device=d, index=i, identity_key=b"\0" * 32) for i, d in enumerate(devices, start=1)
    )
    return r


def window_rounds(
    version: Any,
    devices: list,
    start: datetime,
    rng: np.random.Generator,
    groups: int = 3,
    shift: float = 0.0,
    error_rates: tuple[float, ...] = (0.02, 0.03, 0.04),
    sigma2: int = 0,
    dropped: int = 0,
) -> dict[str, list[gs.GroupSum]]:
    """Drift and health rounds for one window over ``groups`` equal groups; returns the group sums."""
    size = len(devices) // groups
    out: dict[str, list[gs.GroupSum]] = {"drift": [], "health": []}
    for g in range(groups):
        members = devices[g * size : (g + 1) * size]
        dv = [drift_vector(version, rng, shift) for _ in members]
        hv = [health_vector(version, rng, error_rates[g % len(error_rates)]) for _ in members]
        for budget, vecs in (("drift", dv), ("health", hv)):
            r = make_round(version, budget, start, g, members, vecs, dropped=dropped if g == 0 else 0, sigma2=sigma2)
            r.refresh_from_db()
            out[budget].append(gs.GroupSum(rounds.layout_from_json(r.layout), np.array(r.result), len(r.u3), sigma2))
    return out


def rollup(version: Any, start: datetime) -> Rollup:
    return Rollup.objects.get(version=version, cohort="all", window_start=start)


@pytest.mark.django_db
def test_rounds_supersede_reports_and_give_the_medians_of_groups(version: Any) -> None:
    rng = np.random.default_rng(1)
    start = hour(2)
    send(version, fleet(21), rng, start + timedelta(minutes=1), n=300, backdate=True)
    services.update_rollups(settle_seconds=0)
    assert rollup(version, start).source == "reports" and rollup(version, start).n_devices == 21

    devices = fleet(60)
    sums = window_rounds(version, devices, start + timedelta(minutes=5), rng, dropped=2)
    out = update_round_rollups()
    assert out["rollups"] == 1 and out["rounds"] == 6

    r = rollup(version, start)
    assert r.source == "rounds" and r.n_reports == 0
    assert r.n_devices == 58 and r.n_groups == 3  # two of the first group dropped out
    drift_p, health_p = gs.pool(sums["drift"]), gs.pool(sums["health"])
    active = drift_p.active
    assert active == pytest.approx(58)
    feature = r.features["input[0]"]
    assert np.allclose(np.asarray(feature) / active, drift_p.distributions["feature:input[0]"])
    assert sum(feature) == pytest.approx(active)
    assert np.allclose(np.asarray(r.outputs) / active, drift_p.distributions["output"][:-1])
    assert r.inference_count == pytest.approx(health_p.active)
    assert r.error_count / r.inference_count == pytest.approx(0.03, abs=1 / 1024)  # the median group's rate
    assert r.noise_var == 0 and r.rounds["drift"]["bin_var"]["feature:input[0]"] == 0
    assert r.rounds["drift"]["groups"] == 3 and r.rounds["drift"]["devices"] == 58
    assert r.rounds["left_out"] == {"void": 0, "failed": 0, "reasons": {}}

    # Reports arriving later for that window do not mix into it: the rounds are what it shows.
    before = (r.features, r.n_devices, r.updated_at)
    send(version, fleet(3), rng, start + timedelta(minutes=2), n=300, backdate=True)
    services.update_rollups(settle_seconds=0)
    r = rollup(version, start)
    assert (r.features, r.n_devices, r.updated_at) == before


@pytest.mark.django_db
def test_rerun_changes_nothing_and_only_new_rounds_are_read(version: Any) -> None:
    rng = np.random.default_rng(2)
    devices = fleet(60)
    a, b = hour(3), hour(2)
    window_rounds(version, devices, a, rng)
    window_rounds(version, devices, b, rng)
    assert update_round_rollups()["rollups"] == 2
    stamps = {x.window_start: x.updated_at for x in Rollup.objects.all()}

    assert update_round_rollups() == {"rounds": 0, "rollups": 0, "unchanged": 0, "left_out": 0, "quarantined": 0}
    # Recomputing from scratch (the mark lost) finds every figure equal and writes nothing.
    RollupMark.objects.filter(name="rounds").delete()
    again = update_round_rollups()
    assert (again["rollups"], again["unchanged"]) == (0, 2)
    assert {x.window_start: x.updated_at for x in Rollup.objects.all()} == stamps

    # A round of window b finishing later: only b is recomputed; a is not touched.
    late = fleet(20)
    vecs = [drift_vector(version, rng) for _ in late]
    make_round(version, "drift", b + timedelta(minutes=5), 0, late, vecs, finished_at=timezone.now())
    out = update_round_rollups(now=timezone.now() + timedelta(minutes=1))
    assert (out["rounds"], out["rollups"]) == (1, 1)
    assert rollup(version, a).updated_at == stamps[a]
    rb = rollup(version, b)
    assert rb.updated_at > stamps[b] and rb.n_devices == 80
    assert rb.n_groups == 3 and rb.rounds["drift"]["windows"] == 2 and rb.rounds["drift"]["groups"] == 4
    assert services.summed(rb) == "80 devices in 3 groups × 2 windows"


@pytest.mark.django_db
def test_void_and_failed_rounds_are_left_out_with_their_reasons(version: Any) -> None:
    rng = np.random.default_rng(3)
    devices = fleet(80)
    start = hour(2)
    sums = window_rounds(version, devices[:60], start, rng)
    spoiled = devices[60:]
    bad = [drift_vector(version, rng) for _ in spoiled]
    bad[0] = bad[0] * 1000  # one device sends any ring element
    why = "void: feature:input[0]: mass 20972544 fits no count of active devices among 20"
    make_round(version, "drift", start, 3, spoiled, bad, void=True, reason=why)
    make_round(version, "health", start, 3, spoiled, None, phase=FAILED, reason="fewer than t = 14 shares")
    update_round_rollups()
    r = rollup(version, start)
    assert r.rounds["left_out"] == {"void": 1, "failed": 1, "reasons": {why: 1, "fewer than t = 14 shares": 1}}
    assert r.n_groups == 3 and r.n_devices == 60  # the spoiled group's devices are in no figure
    assert np.allclose(
        np.asarray(r.features["input[0]"]) / r.inference_count, gs.pool(sums["drift"]).distributions["feature:input[0]"]
    )

    # A window whose every round failed keeps what reports gave it (here: nothing).
    other = hour(4)
    make_round(version, "health", other, 0, devices[:20], None, phase=FAILED, reason="late", finished_at=timezone.now())
    assert update_round_rollups(now=timezone.now() + timedelta(minutes=1))["left_out"] == 1
    assert not Rollup.objects.filter(window_start=other).exists()


@pytest.mark.django_db
def test_an_unreadable_round_quarantines_its_window_only(version: Any) -> None:
    rng = np.random.default_rng(4)
    devices = fleet(60)
    good, broken = hour(3), hour(2)
    window_rounds(version, devices, good, rng)
    r = make_round(version, "drift", broken, 0, devices[:20], [drift_vector(version, rng) for _ in range(20)])
    AggRound.objects.filter(pk=r.pk).update(result=[1, 2, 3])  # not the layout's length
    out = update_round_rollups()
    assert (out["rollups"], out["quarantined"]) == (1, 1)
    q = Quarantine.objects.get(kind="rollup")
    assert "/rounds" in q.key and "length" in q.reason
    assert rollup(version, good).source == "rounds"


@pytest.mark.django_db
def test_drift_on_round_rollups_uses_the_rounds_noise_and_flags_the_shifted_feature(version: Any) -> None:
    """Reference learned from the first healthy round window; the next window shifts input[0] by
    0.7σ. Each device's noise σ² = 1,000 (the rounds' public parameter) sets the threshold."""
    rng = np.random.default_rng(5)
    devices = fleet(60)
    first, second = hour(3), hour(2)
    window_rounds(version, devices, first, rng, sigma2=1000)
    sums = window_rounds(version, devices, second, rng, shift=0.7, sigma2=1000)
    services.rollup_and_drift()

    profile = version.__class__.objects.get(pk=version.pk).reference_profile
    assert profile["source"] == "first_window" and profile["rollup"] == "rounds" and profile["n"] == 0
    pooled = gs.pool(sums["drift"])
    res = {d.feature: d for d in DriftResult.objects.filter(version=version, window_start=second)}
    assert set(res) == {"input[0]", "input[1]", "input[2]", "input[3]", "output"}
    ref = next(f["counts"] for f in profile["features"] if f["name"] == "input[1]")
    expected = drift.psi_threshold_shares(
        ref, pooled.bin_var["feature:input[1]"], None, profile["bin_var"]["feature:input[1]"]
    )
    assert res["input[1]"].threshold == pytest.approx(expected)
    assert res["input[1]"].threshold > drift.PSI_FLOOR  # the noise, not the floor, sets it
    assert res["input[1]"].n_devices == 60
    assert res["input[0]"].drifted and not res["input[1]"].drifted and not res["output"].drifted
    alerts = Alert.objects.filter(version=version, kind="drift", state="open")
    assert [a.feature for a in alerts] == ["input[0]"]
    assert "(60 devices)" in alerts[0].message


@pytest.mark.django_db
def test_pages_say_how_many_devices_and_groups_each_point_sums(version: Any, viewer_client: Any) -> None:
    rng = np.random.default_rng(6)
    devices = fleet(60)
    window_rounds(version, devices, hour(3), rng)
    window_rounds(version, devices, hour(2), rng, shift=0.7)
    window_rounds(version, devices[:15], hour(1), rng, groups=1)  # 15 devices: below k
    services.rollup_and_drift()

    resp = viewer_client.get(f"/telemetry/versions/{version.id}/")
    assert resp.status_code == 200
    html = resp.content.decode()
    figs = {k: json.loads(v) for k, v in resp.context["figures"].items()}
    for trace in figs["drift"]["data"]:
        assert trace["customdata"] == ["60 devices in 3 groups", "60 devices in 3 groups"]
        assert "%{customdata}" in trace["hovertemplate"]
    health = figs["health"]["data"]
    assert all(t["customdata"] == ["60 devices in 3 groups"] * 2 for t in health)
    assert figs["overlay"]["data"][-1]["name"] == "latest window (60 devices in 3 groups)"
    assert html.count('<td class="small">60 devices in 3 groups</td>') == 6  # 5 drift rows + 1 health row
    # Below k nothing of that window is shown, and the reason is.
    assert "hidden: 15 reporting device(s), fewer than the minimum of 20" in html
    assert "15 devices in 1 group" not in html
    assert len(health[0]["x"]) == 2
    assert not DriftResult.objects.filter(window_start=hour(1)).exists()


@pytest.mark.django_db
def test_report_rollups_still_say_they_come_from_reports(version: Any) -> None:
    rng = np.random.default_rng(7)
    send(version, fleet(21), rng, hour(2) + timedelta(minutes=1), n=300, backdate=True)
    services.update_rollups(settle_seconds=0)
    r = rollup(version, hour(2))
    assert services.summed(r) == "21 devices (per-device reports)"
    r.n_devices = 1
    assert services.summed(r) == "1 device (per-device reports)"
    one = Rollup(n_devices=1, n_groups=1, source="rounds", rounds={"drift": {"windows": 1}})
    assert services.summed(one) == "1 device in 1 group"


@pytest.mark.django_db
def test_a_window_with_health_rounds_only_shows_health_and_is_not_the_reference(version: Any) -> None:
    rng = np.random.default_rng(8)
    devices = fleet(60)
    start = hour(2)
    for g in range(3):
        members = devices[g * 20 : (g + 1) * 20]
        make_round(version, "health", start, g, members, [health_vector(version, rng, 0.01) for _ in members])
        make_round(version, "drift", start, g, members, None, phase=FAILED, reason="fewer than t = 14 shares")
    services.rollup_and_drift()
    r = rollup(version, start)
    assert r.source == "rounds" and r.features == {} and r.outputs == [] and len(r.latency) > 0
    assert r.rounds["left_out"]["failed"] == 3 and "drift" not in r.rounds
    assert r.error_count / r.inference_count == pytest.approx(0.01, abs=1 / 1024)
    version.refresh_from_db()
    assert version.reference_profile is None
    assert not DriftResult.objects.filter(version=version).exists()
