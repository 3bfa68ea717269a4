"""The whole story in a real Chromium: a live server on PostgreSQL and Redis, a real Celery worker, a
simulated fleet of real agents. An operator uploads v1 and watches it validate; the fleet installs
it; the operator creates a campaign for v2 with the dry run and watches the first wave pass; then
input drift appears in one cohort and v2 starts failing; the gate job rolls the campaign back by
itself, the campaign page and the overview show it, the drift charts draw, and the fleet is back on
v1. Screenshots of every step go to ``test-output/screenshots/story-*.png`` (see docs/tour.md).

At the moment of the rollback every part of the campaign page must agree with the decision (the
badge's time, the gate table, the chart's last point and its marker, the installs); once the fleet is
back, the version's drift alerts are resolved, no page shows a Python repr, and every page passes an
automated accessibility check (axe-core) with no serious or critical violation.
"""

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import Group

from accounts.models import ApiToken
from agent.simulate import SimOptions, run_simulation
from demo import models_onnx
from fleet import services as fleet_services
from fleet.models import Device
from fleet.tasks import flush_presence
from ota.models import ModelVersion
from rollout import outcome
from rollout.models import Campaign
from rollout.releases import create_release
from rollout.tasks import evaluate_campaigns
from telemetry.models import Alert
from telemetry.tasks import rollup_and_drift
from tests import a11y
from tests.test_pages_plain import REPR

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHOTS = Path(os.environ.get("TEST_OUTPUT_DIR", "test-output")) / "screenshots"
DEVICES, APAC = 40, 20


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"story-{name}.png"), full_page=True)


@pytest.fixture
def fast_fleet(settings: object, store: Path) -> None:
    """Compressed time (1 s polls, 3 s windows, 10 s rollups) and a k small enough for 40 devices."""
    settings.EDGEFLEET_POLL_INTERVAL = 1
    settings.EDGEFLEET_TELEMETRY_WINDOW = 3
    settings.EDGEFLEET_ROLLUP_SECONDS = 10
    settings.EDGEFLEET_MIN_COHORT = 5
    settings.EDGEFLEET_DP_DAILY_BUDGET = 100_000


@pytest.fixture
def sam(transactional_db: None, django_user_model: type) -> object:
    for name in ("viewer", "operator", "admin"):
        Group.objects.get_or_create(name=name)
    user = django_user_model.objects.create_user("sam", password="pw-sam-12345")
    user.groups.add(Group.objects.get(name="admin"))
    return user


@pytest.fixture
def beat(celery_worker: object) -> Iterator[None]:
    """What beat does, at demo speed: the periodic jobs are sent through Redis to the real worker."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.5):
            for task in (flush_presence, evaluate_campaigns, rollup_and_drift):
                # Expiring like a beat entry that is not allowed to pile up: when the worker is slow,
                # stale ticks are dropped instead of queueing behind each other.
                task.apply_async(expires=3)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    yield
    stop.set()
    t.join()


def wait(cond: Callable[[], bool], timeout: float, what: str, campaign: Campaign | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(1)
    why = ""
    if campaign is not None:  # the gate job's last words say what it was waiting for
        last = campaign.decisions.order_by("-at")[:3]
        why = "; last decisions: " + " | ".join(f"{d.kind}: {d.reason} {d.numbers.get('gates', '')}" for d in last)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{why}")


def on_version(label: str) -> int:
    return Device.objects.filter(installed__vibration=label).count()


def test_the_whole_story(live_server, browser, page, login, sam, fast_fleet, beat, tmp_path) -> None:
    paths = models_onnx.build(tmp_path / "models")
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    # 1. Log in and upload v1 in the browser; it validates on the worker while the page watches.
    login(page, "sam", "pw-sam-12345")
    page.goto(f"{live_server.url}/models/upload/")
    page.set_input_files("#file-input", str(paths["v1"]))
    page.fill("#name-input", "vibration")
    page.fill("#label-input", "v1")
    page.set_input_files("input[name=reference]", str(paths["reference"]))
    page.click("#upload-button")
    page.wait_for_url(f"{live_server.url}/models/vibration/versions/v1/", timeout=60_000)
    page.wait_for_selector("#version-status[data-status=staged]", timeout=120_000)
    shot(page, "01-v1-staged")

    # 2. v1 goes to the whole fleet; v2 arrives from a training pipeline through the API.
    v1 = ModelVersion.objects.get(model__name="vibration", label="v1")
    create_release(v1, note="v1 for everyone", user=sam)
    _, token = ApiToken.issue(sam, "pipeline")
    with paths["v2"].open("rb") as model, paths["reference"].open("rb") as ref:
        r = requests.post(
            f"{live_server.url}/api/v1/models/vibration/versions",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": ("v2.onnx", model), "reference": ("reference.npz", ref)},
            data={"label": "v2", "notes": "refresh"},
            timeout=60,
        )
    assert r.status_code == 201, r.text
    fleet_services.save_cohort("apac", "region=apac", user=sam)

    # 3. The fleet: most devices misbehave on v2 when told to, the apac ones drift when told to.
    key = fleet_services.create_enrollment_key("story", user=sam)[1]
    common = dict(
        server=live_server.url,
        enrollment_key=key,
        duration=600,
        poll_interval=1,
        window_seconds=3,
        rows_per_step=64,
        workers=4,
        quiet=True,
        summary_every=600,
    )
    main = SimOptions(
        devices=DEVICES - APAC,
        scenario="regression",
        regress_version=None,
        seed=1,
        mix="region=eu:0.6,us:0.4;hw=rpi4:0.5,x86:0.5",
        data_dir=str(tmp_path / "main"),
        **common,
    )
    drift = SimOptions(
        devices=APAC,
        scenario="drift",
        fraction=1.0,
        drift_shift=0.0,
        seed=2,
        mix="region=apac:1;hw=rpi4:0.5,x86:0.5",
        data_dir=str(tmp_path / "apac"),
        **common,
    )
    fleet_stop = threading.Event()
    fleets = [threading.Thread(target=run_simulation, args=(o,), kwargs={"until": fleet_stop}) for o in (main, drift)]
    for t in fleets:
        t.start()
    try:
        story_after_enrollment(page, live_server, sam, main, drift)
        every_page_is_accessible(browser, page, live_server)
    finally:
        fleet_stop.set()
        for t in fleets:
            t.join(timeout=90)
    assert page.console_errors == []
    assert failed == []


def story_after_enrollment(page: object, live_server: object, sam: object, main: SimOptions, drift: SimOptions) -> None:
    """Steps 3 to 8, while the simulated fleet runs."""
    v1 = ModelVersion.objects.get(model__name="vibration", label="v1")
    wait(lambda: on_version("v1") >= DEVICES, 120, "every device to run v1")
    wait(lambda: ModelVersion.objects.get(label="v2").status == "staged", 120, "v2 to validate")
    page.goto(f"{live_server.url}/")
    page.wait_for_selector("#versions-chart .main-svg")
    assert page.inner_text("#stat-online") == str(DEVICES)
    shot(page, "02-overview-fleet-on-v1")
    time.sleep(6)  # two windows of v1 telemetry as the control baseline

    # 4. A campaign for v2, with the dry run in the form, then started.
    page.goto(f"{live_server.url}/campaigns/new/")
    page.fill("input[name=name]", "v2 to everyone")
    page.select_option("select[name=version]", label=str(ModelVersion.objects.get(label="v2")))
    page.fill("textarea[name=waves]", "25, 0.1, 5\n60, 0.1, 5\n100, 0.1, 5")
    # A function, not an expression string: Playwright evals strings in the page, which the CSP forbids.
    page.wait_for_function("() => document.querySelectorAll('#dry-run-waves tbody tr').length === 3")
    assert str(DEVICES) in page.inner_text("#dry-run-summary")
    shot(page, "03-campaign-dry-run")
    page.click("#campaign-form button[type=submit]")
    page.wait_for_selector("#campaign-state")
    campaign = Campaign.objects.get()
    page.click("#actions button.primary")
    page.wait_for_load_state("networkidle")
    assert "Running" in page.inner_text("#campaign-state")

    # 5. The first wave passes its gates and the campaign advances by itself.
    wait(lambda: Campaign.objects.get(pk=campaign.pk).wave_index >= 1, 180, "the gate job to advance wave 1", campaign)
    assert Campaign.objects.get(pk=campaign.pk).state == "running"
    page.reload()
    page.wait_for_selector("#chart-error .main-svg")
    assert "advance" in page.inner_text("main")
    shot(page, "04-campaign-wave-2")

    # 6. Trouble: drift in apac, errors and latency on v2. The gate job rolls back on its own.
    main.regress_version, drift.drift_shift = "v2", 1.5
    wait(lambda: Campaign.objects.get(pk=campaign.pk).state == "rolled_back", 240, "the automatic rollback")
    page.reload()
    assert page.inner_text("#campaign-state").lower() == "rolled back"
    timeline = page.inner_text("main")
    assert "rollback" in timeline and "system" in timeline
    the_page_agrees_with_the_decision(page, Campaign.objects.get(pk=campaign.pk))
    shot(page, "05-campaign-rolled-back")

    # 7. The overview shows the rollback among the automatic decisions; the fleet returns to v1.
    wait(lambda: on_version("v1") >= DEVICES, 120, "every device to be back on v1")
    assert on_version("v2") == 0

    def all_back() -> bool:
        page.goto(f"{live_server.url}/campaigns/{campaign.pk}/")
        back, took = map(int, re.search(r"(\d+) of (\d+)", page.inner_text("#returned")).groups())
        return back == took > 0

    # The card's counts may be a few seconds old (rollout/outcome.py): it catches up with the fleet.
    wait(all_back, 30, "the card to say every device that took v2 is back on v1")
    page.goto(f"{live_server.url}/")
    page.wait_for_selector("#versions-chart .main-svg")
    decisions = page.inner_text("main")
    assert "rollback" in decisions and "v2 to everyone" in decisions
    assert not REPR.findall(decisions), "no Python repr on the overview"
    in_use = page.inner_text("#versions-table tbody").split()
    assert in_use == ["vibration", "v1", str(DEVICES), "telemetry", "of", "v1"], "the table agrees with the fleet"
    v2 = ModelVersion.objects.get(label="v2")
    assert not Alert.objects.filter(version=v2, kind="drift", state="open").exists(), "the rollback answered them"
    shot(page, "06-overview-after-rollback")

    # 8. Drift in apac is charted: Plotly draws every chart of v1's telemetry page with data.
    wait(lambda: v1.alerts.filter(cohort="apac", state="open").exists(), 120, "a drift alert for apac")
    page.goto(f"{live_server.url}/telemetry/versions/{v1.pk}/")
    for chart in ("#chart-drift", "#chart-overlay", "#chart-heatmap", "#chart-health"):
        page.wait_for_selector(f"{chart} .main-svg")
    assert page.locator("#chart-drift .scatterlayer .trace").count() >= 1, "the drift chart has lines"
    assert "apac" in page.inner_text("main")
    shot(page, "07-drift-charts")


def the_page_agrees_with_the_decision(page: object, campaign: Campaign) -> None:
    """The campaign page right after the automatic rollback: every part tells the same story."""
    decision = campaign.decisions.get(kind="rollback")
    judged = {g["name"]: g for g in decision.numbers["gates"]}
    # The timeline's time of the rollback is the badge's (not the wave's start) and the chart marker's.
    row = page.locator("#timeline tbody tr", has_text="rollback").first.inner_text()
    when = re.search(r"\d\d:\d\d:\d\d", row).group(0)
    assert page.inner_text("#wave-state") == f"Rolled Back at {when}"
    page.wait_for_function("() => document.getElementById('gate-charts').dataset.checks !== undefined")
    chart = page.evaluate(
        """() => {
          const el = document.getElementById("chart-error");
          const last = (t) => t.y[t.y.length - 1];
          return {canary: last(el.data[0]), control: last(el.data[1]), marks: el.layout.annotations.map((a) => a.text)};
        }"""
    )
    # The chart's last point is the figure the gate judged (not a rollup window lagging behind it).
    assert chart["canary"] == pytest.approx(judged["error_rate"]["canary"])
    assert chart["control"] == pytest.approx(judged["error_rate"]["control"])
    assert "rollback" in chart["marks"]
    assert f"Rollback at {when}" in page.inner_text('[data-caption="error_rate"]')
    # The gate table shows the decision's numbers; a failing gate's observed value is above its threshold.
    gates = page.inner_text("#gates")
    failed = [name for name, row in judged.items() if row["verdict"] == "fail"]
    assert failed and decision.reason == f"gate failed: {', '.join(failed)}"
    for name in failed:
        assert judged[name]["observed"] > judged[name]["threshold"] and name in gates
    # The installs say what happened: devices that took v2, how many are back.
    returned = outcome.returned(campaign)
    assert returned is not None and returned.took > 0
    assert "Devices returned to v1" in page.inner_text("#returned")
    assert "Targeted now" not in page.inner_text("#install-progress")


def every_page_is_accessible(browser: object, page: object, live_server: object) -> None:
    """axe-core on every page of the story's end state: no serious or critical violation."""
    campaign = Campaign.objects.get()
    v1, v2 = (ModelVersion.objects.get(label=label) for label in ("v1", "v2"))
    device = Device.objects.first()
    urls = [
        "/",
        "/devices/",
        f"/devices/{device.pk}/",
        "/models/",
        "/models/vibration/",
        "/models/vibration/versions/v1/",
        "/models/upload/",
        "/releases/",
        "/campaigns/",
        "/campaigns/new/",
        f"/campaigns/{campaign.pk}/",
        f"/telemetry/versions/{v1.pk}/",
        f"/telemetry/versions/{v2.pk}/",
        "/telemetry/alerts/?state=all",
        "/cohorts/",
        "/enrollment-keys/",
        "/notifications/",
        "/accounts/tokens/",
        "/accounts/audit/",
    ]
    assert a11y.check(browser, page, live_server.url, urls) == {}
