"""The fleet simulator against a live server: every scenario runs through the real agent code paths."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from agent.simulate import SimOptions, parse_mix, run_simulation
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _fresh_generation() -> None:
    from rollout.manifest import bump_generation

    bump_generation()


@pytest.fixture(autouse=True)
def _server_window(settings: object) -> None:
    """The server's telemetry window is the simulator's compressed one (300 s at speed 60: 5 s)."""
    settings.EDGEFLEET_TELEMETRY_WINDOW = 5


@pytest.fixture
def key(db: None) -> str:
    return factories.enrollment_key()[1]


def opts(url: str, key: str, **kw: object) -> SimOptions:
    base = dict(server=url, enrollment_key=key, devices=6, duration=6.0, speed=60.0, workers=4, quiet=True, seed=3)
    base.update(kw)
    return SimOptions(**base)


def test_mix_parsing() -> None:
    assert parse_mix("region=eu:0.5,us:0.5;hw=rpi4") == {"region": [("eu", 0.5), ("us", 0.5)], "hw": [("rpi4", 1.0)]}


def test_healthy_fleet_enrolls_installs_and_reports(live_server: object, key: str) -> None:
    from fleet.models import Device
    from telemetry.models import Report

    factories.release(factories.staged_version(label="v1", seed=1))
    s = run_simulation(opts(live_server.url, key, duration=8.0))
    assert s["enrolled"] == 6 and s["versions"] == {"fraud:v1": 6}
    assert s["sessions"] == 1  # one shared onnxruntime session for six devices
    assert s["reports_sent"] >= 6 and s["inference_errors"] == 0
    assert Report.objects.count() == s["reports_sent"]
    assert {d.labels["region"] for d in Device.objects.all()} <= {"eu", "us", "apac"}
    assert sum(s["cohorts"].values()) == 6


def test_corrupt_artifacts_are_refused_and_crashed_downloads_resume(live_server: object, key: str) -> None:
    factories.release(factories.staged_version(label="v1", seed=1))
    s = run_simulation(opts(live_server.url, key, scenario="corrupt", fraction=1.0, devices=3))
    assert s["versions"] == {} and s["artifacts_refused"] >= 3 and s["installs"] == 0
    s = run_simulation(opts(live_server.url, key, scenario="crash-download", fraction=1.0, devices=3, seed=4))
    assert s["versions"] == {"fraud:v1": 3} and s["downloads_resumed"] == 3 and s["downloads_failed"] == 3


def test_flaky_network_still_converges(live_server: object, key: str) -> None:
    factories.release(factories.staged_version(label="v1", seed=1))
    s = run_simulation(opts(live_server.url, key, scenario="flaky", fraction=1.0, flaky_drop=0.3, duration=10.0))
    assert s["server_away"] > 0 and s["versions"] == {"fraud:v1": 6}


def test_a_regressing_version_is_fallen_back_from_locally(live_server: object, key: str) -> None:
    factories.release(factories.staged_version(label="v1", seed=1))
    v2 = factories.staged_version(label="v2", seed=2)

    def release_later() -> None:
        time.sleep(3.0)
        factories.release(v2)

    t = threading.Thread(target=release_later)
    t.start()
    s = run_simulation(
        opts(
            live_server.url,
            key,
            scenario="regression",
            regress_version="v2",
            regress_error_rate=0.6,
            steps_per_poll=10,
            guard_min_samples=20,
            duration=10.0,
        )
    )
    t.join()
    assert s["fallbacks"] == 6 and s["versions"] == {"fraud:v1": 6} and s["inference_errors"] > 0, s


def test_drifted_devices_report_shifted_feature_histograms(live_server: object, key: str) -> None:
    import numpy as np

    from fleet.models import Device
    from telemetry.models import Report

    factories.release(factories.staged_version(label="v1", seed=1))
    s = run_simulation(
        opts(live_server.url, key, scenario="drift", fraction=0.5, drift_shift=3.0, rows_per_step=256, duration=8.0)
    )
    assert 0 < s["touched"] < 6 and s["reports_sent"] >= 6, {k: v for k, v in s.items() if k != "options"}
    # Every window is reported, idle ones (pure noise: sd 10 a count) too. Keep the windows with at
    # least one 256-row call in them (an idle one passes 32 once in ~400) and sum them per device.
    sums: dict[object, np.ndarray] = {}
    for r in Report.objects.filter(inference_count__gt=32):
        sums[r.device_id] = sums.get(r.device_id, 0) + np.asarray(r.features["input[0]"])
    centre: dict[str, list[float]] = {"touched": [], "control": []}
    for device_id, total in sums.items():
        counts = np.clip(total, 0, None)
        group = Device.objects.get(pk=device_id).labels["sim_group"]
        centre[group].append(float(np.average(np.arange(len(counts)), weights=counts + 1e-9)))
    # a +3 sigma shift moves input[0]'s mass up by several bins on touched devices only
    assert centre["touched"] and centre["control"]
    assert min(centre["touched"]) > max(centre["control"]) + 1.5, centre


def test_idle_and_busy_devices_report_every_window_on_the_grid(live_server: object, key: str, settings: object) -> None:
    from django.db.models import Count

    from telemetry.models import Report

    settings.EDGEFLEET_TELEMETRY_WINDOW = 2
    factories.release(factories.staged_version(label="v1", seed=1))
    idle = run_simulation(opts(live_server.url, key, devices=3, steps_per_poll=0, window_seconds=120.0, duration=10.0))
    assert idle["inferences"] == 0 and idle["versions"] == {"fraud:v1": 3}
    busy = run_simulation(opts(live_server.url, key, devices=2, window_seconds=120.0, duration=10.0, seed=4))
    assert busy["inferences"] > 0
    reports = list(Report.objects.all())
    per_device = Counter(r.device_id for r in reports)
    assert len(per_device) == 5 and min(per_device.values()) >= 2  # the idle ones too: existence says nothing
    for r in reports:
        start, end = r.window_start, r.window_end
        assert start.microsecond == 0 and start.timestamp() % 2 == 0 and (end - start).total_seconds() == 2
    dup = Report.objects.values("device_id", "version_id", "window_start").annotate(n=Count("id")).filter(n__gt=1)
    assert not dup.exists()  # at most one report per device, version and window


def test_a_campaign_waits_for_its_window_and_devices_for_their_conditions(live_server: object, key: str) -> None:
    """Time compression: the maintenance-window clock starts 30 simulated minutes before a UTC window
    opens and runs 60 times as fast; the touched devices are on battery and a metered network for the
    first 40 simulated minutes (margins wide enough for a loaded test machine). Nobody installs v2
    before the window can have opened; unplugged devices wait for power; every device then installs,
    passes its probation and commits."""
    from datetime import UTC, datetime

    from fleet.models import DeviceEvent
    from rollout import lifecycle, progress

    factories.release(factories.staged_version(label="v1", seed=1))
    v2 = factories.staged_version(label="v2", seed=2)
    c = lifecycle.create_campaign(
        name="nightly", version=v2, cohort=None, waves=[{"percent": 100}], gates={},
        windows=["daily 01:00-02:00"], window_tz="UTC", conditions={"power": "external", "network": "unmetered"},
    )  # fmt: skip
    lifecycle.start(c.pk)
    sim_start = datetime(2026, 12, 7, 0, 30, tzinfo=UTC).timestamp()
    opens = datetime(2026, 12, 7, 1, 0, tzinfo=UTC).timestamp()
    before = time.time()  # the simulated clock starts after this: 01:00 is at least 30 s later
    s = run_simulation(
        opts(live_server.url, key, duration=70.0, sim_start=sim_start, fraction=0.5, unplugged_for=2400.0, seed=5)
    )
    assert s["versions"] == {"fraud:v2": 6}, s
    assert s["installs_waiting"] > 0 and s["commits"] >= 6, s
    events = list(DeviceEvent.objects.filter(model_name="fraud").order_by("at", "received_at"))
    v2_activations = [e for e in events if e.kind == "activated" and e.version_label == "v2"]
    assert len({e.device_id for e in v2_activations}) == 6
    assert min(e.at.timestamp() for e in v2_activations) >= before + 30 - 1  # event times are whole seconds
    waits = [e for e in events if e.kind == "install_waiting"]
    assert any("window" in e.details["reasons"] for e in waits)
    for e in waits:  # the window was read on the simulated clock, open exactly from 01:00
        assert ("window" in e.details["reasons"]) == (not opens <= e.details["clock"] < opens + 3600), e.details
    unplugged = {e.device_id for e in waits if "power" in e.details["reasons"]}
    assert 0 < len(unplugged) <= s["touched"] < 6  # only the touched devices ever wait for power
    for e in waits:
        if "power" in e.details["reasons"]:
            assert e.details["power"] == "battery" and "network" in e.details["reasons"]
    for device in unplugged:
        mine = [e for e in events if e.device_id == device]
        first_v2 = next(i for i, e in enumerate(mine) if e.kind == "activated" and e.version_label == "v2")
        waited = [i for i, e in enumerate(mine) if e.kind == "install_waiting" and "power" in e.details["reasons"]]
        assert max(waited) < first_v2  # it installed only once plugged in
    for device in {e.device_id for e in v2_activations}:
        assert any(e.kind == "committed" and e.version_label == "v2" and e.device_id == device for e in events)
    assert progress.committed_count(c) == 6
