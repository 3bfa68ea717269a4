"""Campaigns end to end: the fleet simulator against a LIVE server, a real Celery worker judging gates.

Everything is real: HTTP polls and downloads through ``live_server``, PostgreSQL, Redis, the Celery
worker (threads of this process, consuming ``rollout.evaluate_campaigns`` from Redis), onnxruntime
in every simulated device. The test plays beat: it sends ``evaluate_campaigns.delay()`` every
``GATE_EVERY`` seconds, so the gate interval is short and known.

Time is compressed (``SPEED``): devices poll every second and close a telemetry window every two,
and waves soak for three seconds. Devices run 512 rows per wake-up so that the local-DP noise on
each report (Laplace, scale (F+3)/epsilon = 7 counts) is far below the 2-point error-rate gate.

The simulator runs for a fixed wall time (``run_simulation`` has no stop signal), so each test
chooses a duration that covers its story with room to spare, and asserts on the summary it returns.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import requests

from agent.simulate import SimOptions, run_simulation
from fleet.models import DeviceEvent
from rollout import cohorts, lifecycle, placement, targeting
from rollout.models import Campaign, Release
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

N = 40
SPEED = 60.0  # poll 60 s -> 1 s, window 120 s -> 2 s
GATE_EVERY = 1.0  # seconds between gate evaluations sent to the worker
SOAK = 0.05  # minutes: three seconds
GATES = {"error_rate": 0.02, "install_failure_rate": 0.05}


@pytest.fixture(autouse=True)
def _fresh_generation(request: pytest.FixtureRequest) -> None:
    """A fresh manifest generation for each test that uses the database (the bump counts there too;
    tests/test_cli.py imports this fixture for tests that need no database)."""
    if request.node.get_closest_marker("django_db") is None:
        return
    from rollout.manifest import bump_generation

    bump_generation()


@pytest.fixture
def world(live_server: Any, celery_worker: Any, settings: Any) -> dict[str, Any]:
    """v1 released to the whole fleet, v2 staged, an enrollment key for the simulator."""
    settings.EDGEFLEET_TELEMETRY_WINDOW = int(120 / SPEED)  # the server's window is the simulator's
    v1 = factories.staged_version(label="v1", seed=1)
    v2 = factories.staged_version(label="v2", seed=2)
    factories.release(v1)
    return {"url": live_server.url, "key": factories.enrollment_key("sim", max_uses=None)[1], "v1": v1, "v2": v2}


@pytest.fixture
def simulations(world: dict[str, Any]) -> Iterator[list[Simulation]]:
    """Simulations a test started are joined before the live server stops and the database is flushed."""
    started: list[Simulation] = []
    yield started
    for sim in started:
        sim.thread.join(timeout=sim.opts.duration + 120)


class Simulation:
    """``run_simulation`` in a thread; ``finish()`` joins it and returns its summary."""

    def __init__(self, world: dict[str, Any], started: list[Simulation], duration: float, **kw: Any) -> None:
        base: dict[str, Any] = dict(
            server=world["url"],
            enrollment_key=world["key"],
            devices=N,
            duration=duration,
            speed=SPEED,
            poll_interval=60.0,
            window_seconds=120.0,
            rows_per_step=256,
            steps_per_poll=2,
            workers=6,
            quiet=True,
            seed=11,
        )
        base.update(kw)
        self.opts = SimOptions(**base)
        self.summary: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self.thread.start()
        started.append(self)

    def _run(self) -> None:
        self.summary = run_simulation(self.opts)

    def finish(self) -> dict[str, Any]:
        self.thread.join(timeout=self.opts.duration + 120)
        assert self.summary is not None, "the simulator did not finish"
        return self.summary


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, gates: bool = False) -> None:
    """Poll ``predicate``; with ``gates`` also send the gate job to the worker every GATE_EVERY s."""
    from rollout.tasks import evaluate_campaigns

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gates:
            evaluate_campaigns.delay()
        if predicate():
            return
        time.sleep(GATE_EVERY if gates else 0.25)
    raise AssertionError(f"timed out waiting for {what}")


def activated(label: str, since: datetime | None = None) -> set[Any]:
    """Devices that told the server (through /events) they switched to ``label``."""
    qs = DeviceEvent.objects.filter(kind="activated", model_name="fraud", version_label=label)
    if since is not None:
        qs = qs.filter(at__gte=since)
    return set(qs.values_list("device_id", flat=True))


def all_on_v1() -> bool:
    return len(activated("v1")) >= N


def state(c: Campaign) -> tuple[str, int]:
    c.refresh_from_db()
    return c.state, c.wave_index


def targeted(c: Campaign) -> set[Any]:
    c.refresh_from_db()
    return set(targeting.targeted_device_ids(c)[0])


def operator_session(url: str, django_user_model: Any) -> requests.Session:
    """A logged-in operator's browser session over real HTTP (CSRF cookie and token included)."""
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("olga", password="pw-olga-12345")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    s = requests.Session()
    s.get(f"{url}/login/", timeout=10)
    r = s.post(
        f"{url}/login/",
        data={"username": "olga", "password": "pw-olga-12345", "csrfmiddlewaretoken": s.cookies["csrftoken"]},
        timeout=10,
    )
    assert r.ok and "sessionid" in s.cookies
    return s


def post_form(s: requests.Session, url: str, data: dict[str, Any]) -> requests.Response:
    return s.post(url, data={**data, "csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=30)


# ------------------------------------------------------------------------------------------------ tests


def test_healthy_campaign_walks_every_wave_and_the_whole_fleet_ends_on_it(
    world: dict[str, Any], simulations: list[Simulation]
) -> None:
    sim = Simulation(world, simulations, duration=32.0)
    wait_for(all_on_v1, 15, "every device on v1")
    waves = [
        {"percent": 20, "min_soak_minutes": SOAK, "min_devices": 3},
        {"percent": 50, "min_soak_minutes": SOAK, "min_devices": 6},
        {"percent": 100, "min_soak_minutes": SOAK, "min_devices": 10},
    ]
    c = lifecycle.create_campaign(name="healthy", version=world["v2"], cohort=None, waves=waves, gates=GATES)
    lifecycle.start(c.pk)
    wave1 = targeted(c)
    assert 0 < len(wave1) < N

    wait_for(lambda: state(c)[0] == "completed", 25, "the campaign to complete", gates=True)
    summary = sim.finish()

    assert summary["versions"] == {"fraud:v2": N}, summary["versions"]
    assert summary["fallbacks"] == 0 and summary["install_failures"] == 0
    kinds = list(c.decisions.order_by("at", "id").values_list("kind", "actor_label"))
    # the worker (actor "system") advanced twice on passing gates, then completed
    acted = [k for k, a in kinds if a == "system" and k in ("advance", "complete", "pause", "rollback")]
    assert acted == ["advance", "advance", "complete"], kinds
    for d in c.decisions.filter(kind__in=["advance", "complete"]):
        assert d.numbers["verdict"] == "pass"
        assert d.numbers["reporting_devices"] >= c.waves[d.numbers["wave"] - 1]["min_devices"]
        assert {g["name"]: g["verdict"] for g in d.numbers["gates"]} == {n: "pass" for n in GATES}
    # waves only added devices: wave 1 devices switched before anyone else was asked to
    first = {
        dev: at
        for dev, at in DeviceEvent.objects.filter(kind="activated", version_label="v2").values_list("device_id", "at")
    }
    assert set(first) == activated("v2") and len(first) == N
    assert max(first[d] for d in wave1) < min(at for d, at in first.items() if d not in wave1)
    assert Release.objects.filter(version=world["v2"], campaign=c).exists()


def test_regressing_version_is_rolled_back_by_the_gate_and_every_device_returns(
    world: dict[str, Any], simulations: list[Simulation]
) -> None:
    # The device's own guard is switched off (it never judges): only the server's gate can bring
    # devices back, which is what this test is about.
    sim = Simulation(
        world,
        simulations,
        duration=24.0,
        scenario="regression",
        regress_version="v2",
        regress_error_rate=0.3,
        regress_latency_ms=80.0,
        guard_min_samples=10**9,
    )
    wait_for(all_on_v1, 15, "every device on v1")
    # A long soak is for letting a *healthy* wave prove itself before the next; a failing gate
    # must not wait for it (the regression is already hurting wave 1's devices).
    waves = [
        {"percent": 30, "min_soak_minutes": 1.0, "min_devices": 3},
        {"percent": 100, "min_soak_minutes": SOAK, "min_devices": 10},
    ]
    gates = {**GATES, "latency_p95": 1.25}
    c = lifecycle.create_campaign(name="regress", version=world["v2"], cohort=None, waves=waves, gates=gates)
    lifecycle.start(c.pk)
    canary = targeted(c)
    wait_for(lambda: state(c)[0] == "rolled_back", 20, "the automatic rollback", gates=True)
    summary = sim.finish()

    rollback = c.decisions.get(kind="rollback")
    assert rollback.actor_label == "system" and rollback.numbers["wave"] == 1
    assert rollback.numbers["elapsed_seconds"] < 60  # inside the soak
    failed = {g["name"] for g in rollback.numbers["gates"] if g["verdict"] == "fail"}
    # the regression raises errors and latency: whichever gate is significant first rolls back
    assert failed and failed <= {"error_rate", "latency_p95"}, rollback.numbers
    on_v2 = activated("v2")
    assert on_v2 and on_v2 <= canary  # only wave 1 ever ran the bad version
    assert on_v2 <= activated("v1", since=rollback.at)  # and each of them switched back after the decision
    assert summary["versions"] == {"fraud:v1": N}, summary["versions"]
    assert summary["fallbacks"] == 0 and summary["inference_errors"] > 0  # the server did it, not the guard


def test_pause_holds_the_fleet_overlap_is_refused_and_incompatible_devices_never_get_it(
    world: dict[str, Any], simulations: list[Simulation], django_user_model: Any
) -> None:
    """One story: a paused campaign (still active) holds its devices and blocks an overlapping one;
    after resume it completes, and the devices without room for the download stay on v1."""
    sim = Simulation(world, simulations, duration=34.0)
    http = operator_session(world["url"], django_user_model)
    wait_for(all_on_v1, 15, "every device on v1")
    waves = [
        {"percent": 25, "min_soak_minutes": SOAK, "min_devices": 2},
        {"percent": 100, "min_soak_minutes": SOAK, "min_devices": 6},
    ]
    # The simulator gives devices 512, 2048 or 16384 MB free: asking for 1024 MB excludes about a third.
    c = lifecycle.create_campaign(
        name="held", version=world["v2"], cohort=None, waves=waves, gates=GATES, requirements={"min_storage_mb": 1024}
    )
    lifecycle.start(c.pk)
    c.refresh_from_db()
    excluded = sum(c.exclusions.values())
    assert set(c.exclusions) == {"storage"} and 0 < excluded < N
    wave1 = targeted(c)
    assert wave1
    wait_for(lambda: activated("v2") >= wave1, 10, "wave 1 on v2")  # no gate job yet: wave 1 stays

    r = post_form(http, f"{world['url']}/campaigns/{c.pk}/pause/", {"reason": "hold for the night shift"})
    assert r.ok and state(c) == ("paused", 0)
    paused_at = c.decisions.get(kind="pause").at

    # Overlap: while this campaign is active, a second one for the same model over EU devices is refused.
    eu = factories_cohort("eu", "region=eu")
    r = post_form(
        http,
        f"{world['url']}/campaigns/new/",
        {"name": "second", "version": world["v2"].pk, "cohort": eu.pk, "waves": "100, 0, 0", "on_failure": "rollback"},
    )
    assert r.status_code == 400 and "one active campaign per model and device" in r.text
    assert re.search(r"already rolls out this model", r.text) and Campaign.objects.count() == 1

    # Held: gate jobs keep running for longer than the soak plus two telemetry windows; nothing moves.
    hold_until = time.monotonic() + 6.0
    wait_for(lambda: time.monotonic() > hold_until, 10, "the hold period", gates=True)
    assert state(c) == ("paused", 0)
    assert activated("v2") == wave1  # no device outside wave 1 installed v2 while paused
    assert not activated("v2", since=paused_at)

    r = post_form(http, f"{world['url']}/campaigns/{c.pk}/resume/", {})
    assert r.ok and state(c) == ("running", 0)
    wait_for(lambda: state(c)[0] == "completed", 20, "completion after resume", gates=True)
    summary = sim.finish()

    incompatible = excluded_devices(c)
    assert len(incompatible) == excluded
    assert not (activated("v2") & incompatible)  # never received it, not even after completion
    assert summary["versions"] == {"fraud:v2": N - excluded, "fraud:v1": excluded}, summary["versions"]
    assert [k for k in c.decisions.order_by("at", "id").values_list("kind", flat=True) if k != "hold"] == [
        "create",
        "start",
        "pause",
        "resume",
        "advance",
        "complete",
    ]


def factories_cohort(name: str, selector: str) -> Any:
    from fleet.models import Cohort

    return Cohort.objects.create(name=name, selector=selector)


def excluded_devices(c: Campaign) -> set[Any]:
    req = targeting.requirements_for(c.version, c.requirements)
    return {d for d, _, hw in cohorts.cohort_devices(c.cohort) if placement.incompatibility(hw, req)}
