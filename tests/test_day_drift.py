"""The drift job's day test on round rollups (telemetry/day_drift.py) on real PostgreSQL: the day's
mean shift of each feature is stored beside the window's PSI, opens the alert, and says why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from telemetry import day_drift, services
from telemetry.models import Alert, DriftResult
from tests.test_round_rollups import fleet, hour, window_rounds
from tests.test_round_rollups import version as version  # the fixture

pytestmark = pytest.mark.django_db


def _windows(version: Any, devices: list, hours: list[int], shift: float, rng: np.random.Generator) -> None:
    for h in hours:
        window_rounds(version, devices, hour(h) + timedelta(minutes=5), rng, shift=shift, sigma2=400)


def _latest(version: Any, feature: str) -> DriftResult:
    return DriftResult.objects.filter(version=version, cohort="all", feature=feature).latest("window_start")


def test_a_day_without_shift_stores_the_test_and_raises_nothing(version: Any) -> None:
    rng = np.random.default_rng(1)
    _windows(version, fleet(60), [6, 5, 4, 3], 0.0, rng)
    services.rollup_and_drift()
    r = _latest(version, "input[0]")
    assert r.mean_z is not None and abs(r.mean_z) < r.mean_level and not r.drifted
    assert r.mean_level == pytest.approx(2.5758, abs=1e-3)  # two-sided, 1 % per feature-day
    assert not Alert.objects.filter(kind="drift", version=version).exists()


def test_a_shift_over_the_day_opens_the_alert_and_names_the_mean(version: Any, viewer_client: Any) -> None:
    rng = np.random.default_rng(2)
    devices = fleet(60)
    _windows(version, devices, [8], 0.0, rng)  # the reference is learned from the first window
    _windows(version, devices, [4, 3, 2], 1.0, rng)
    services.rollup_and_drift()
    r = _latest(version, "input[0]")
    assert r.mean_shift > 0 and r.mean_z > r.mean_level and r.drifted
    other = _latest(version, "input[1]")  # only the first feature moved
    assert abs(other.mean_z) < other.mean_level
    alert = Alert.objects.get(kind="drift", version=version, feature="input[0]", state="open")
    assert alert.numbers["mean_z"] == pytest.approx(r.mean_z)
    if r.psi <= r.threshold:  # the mean test alone found it: the message says so
        assert alert.message.startswith("mean moved by +")
    page = viewer_client.get(f"/telemetry/versions/{version.id}/").content.decode()
    assert "day&#x27;s mean shift" in page or "day's mean shift" in page
    assert f"{r.mean_shift:+.2f}σ (z {r.mean_z:.1f}, alarm above 2.58)" in page


def test_only_the_day_before_the_window_end_counts(version: Any) -> None:
    rng = np.random.default_rng(3)
    devices = fleet(60)
    _windows(version, devices, [30, 29], 1.0, rng)  # more than a day before
    _windows(version, devices, [2], 0.0, rng)
    end = hour(2) + timedelta(minutes=5, seconds=300)
    windows = day_drift.day_windows(version.pk, end)
    assert len(windows) == 1 and len(windows[0]) == 3
    assert day_drift.day_windows(version.pk, hour(2) + timedelta(minutes=5)) == []  # the window itself is not before


def test_reference_variance_from_bin_noise_or_sample_size() -> None:
    scores = np.array([-1.0, 1.0])
    assert day_drift.reference_var(scores, [1.0, 1.0], None, 100) == pytest.approx(1 / 100)
    assert day_drift.reference_var(scores, [1.0, 1.0], 0.01, 0) == pytest.approx(2 * 1.0 * 0.01)
    assert day_drift.reference_var(scores, [1.0, 1.0], None, 0) == 0.0
    assert day_drift.reference_var(scores, [1.0, 1.0], None, None) == 0.0
