"""What a device may claim in a report: the server's privacy parameters, grid windows close to now,
one report per device, version and window, and counts a real device could have produced.

Each test here failed before the server stopped trusting these numbers (issue 10).
"""

import math
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from pydantic import ValidationError

from rollout.manifest import telemetry_settings
from telemetry import services
from telemetry.api import BatchIn
from telemetry.models import PrivacyLedger, Report, Rollup
from tests import factories
from tests.telemetry_support import grid_seconds, grid_window, report

URL = "/api/v1/telemetry"


@pytest.fixture
def setup(db) -> tuple:
    version = factories.staged_version("fraud", "v1")
    factories.release(version)
    device, token = factories.device(labels={"region": "eu"})
    return version, device, token


def post(client, token: str, body: object) -> object:
    return client.post(URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def codes(resp: object) -> list[str]:
    assert resp.status_code == 202, resp.content
    return [r["code"] for r in resp.json()["rejected"]]


def ingest(device, *reports: dict, now: datetime | None = None) -> dict:
    return services.ingest_reports(device.id, BatchIn.model_validate({"reports": list(reports)}).reports, now=now)


def at_window(version, start: datetime, seconds: int | None = None, **over) -> dict:
    end = start + timedelta(seconds=seconds or grid_seconds())
    return report(version, window_start=start.isoformat(), window_end=end.isoformat(), **over)


# --- 1. privacy parameters are the server's ---------------------------------------------------------


@pytest.mark.django_db
def test_a_report_must_carry_exactly_the_assigned_mechanism_and_epsilon(setup, client) -> None:
    version, device, token = setup
    odd = [report(version, privacy={"mechanism": "laplace", "epsilon": e}) for e in (1e-300, 0.5, 0.999999, 1.000001)]
    odd.append(report(version, privacy={"mechanism": "gaussian", "epsilon": 1.0}))
    odd.append(report(version, privacy={"mechanism": "none", "epsilon": 1.0}))
    assigned = telemetry_settings()["privacy"]
    told = report(version, privacy={"mechanism": assigned["mechanism"], "epsilon": assigned["epsilon"]})
    resp = post(client, token, {"reports": [*odd, told]})
    assert codes(resp) == ["privacy_mismatch"] * 6
    assert resp.json()["accepted"] == [told["id"]]
    assert "laplace" in resp.json()["rejected"][0]["message"]
    assert PrivacyLedger.objects.get(device=device).spent == 1.0, "a refused report spends nothing"


@pytest.mark.django_db
def test_the_assignment_follows_what_the_manifest_tells(setup, client, settings) -> None:
    version, _, token = setup
    settings.EDGEFLEET_DP_EPSILON = 0.5
    assert telemetry_settings()["privacy"]["epsilon"] == 0.5
    half = report(version, privacy={"mechanism": "laplace", "epsilon": 0.5})
    one = report(version, privacy={"mechanism": "laplace", "epsilon": 1.0})
    resp = post(client, token, {"reports": [half, one]})
    assert resp.json()["accepted"] == [half["id"]] and codes(resp) == ["privacy_mismatch"]
    assert Report.objects.get(id=half["id"]).epsilon == 0.5
    from telemetry.models import PrivacyAssignment

    assert ("laplace", 0.5) in set(PrivacyAssignment.objects.values_list("mechanism", "epsilon"))


@pytest.mark.django_db
def test_rollups_take_noise_from_the_server_not_from_a_stored_row(setup) -> None:
    """An epsilon of 1e-300 written straight into the table (a row from before the check, or a bug) used to
    raise OverflowError in every run of the job; a small one silenced drift alarms for the cohort."""
    version, _, _ = setup
    devices = [factories.device(labels={"region": "eu"}, name=f"n{i}")[0] for i in range(3)]
    start = grid_window(back=3)[0]
    for d in devices:
        assert ingest(d, at_window(version, start))["accepted"]
    planted = Report.objects.filter(device=devices[2]).values_list("id", flat=True).get()
    with connection.cursor() as cur:
        cur.execute("UPDATE telemetry_report SET epsilon = 1e-300 WHERE id = %s", [planted])
    services.update_rollups(now=datetime.now(UTC) + timedelta(seconds=30))
    roll = Rollup.objects.get(version=version, cohort="all")
    assert roll.n_reports == 2
    from telemetry import trust

    assert roll.noise_var == pytest.approx(2 * trust.noise_variance("laplace", 1.0, trust.shape_of(version)))
    assert roll.noise_var == pytest.approx(2 * 2 * 7.0**2)  # Laplace b = (4 features + 3) / ε, variance 2b²
    assert Report.objects.get(id=planted).quarantined


# --- 3. the ledger charges the day received; windows on the grid, close to now ----------------------


@pytest.mark.django_db
def test_the_ledger_charges_the_day_the_server_received_the_report(setup) -> None:
    version, device, _ = setup
    now = datetime.now(UTC).replace(microsecond=0)
    yesterday = grid_window(back=int(30 * 3600 / grid_seconds()), now=now)[0]
    out = ingest(device, at_window(version, yesterday), at_window(version, grid_window(now=now)[0]), now=now)
    assert len(out["accepted"]) == 2
    ledgers = list(PrivacyLedger.objects.filter(device=device).values_list("day", "spent", "reports"))
    assert ledgers == [(now.date(), 2.0, 2)]


@pytest.mark.django_db
def test_backdated_windows_cannot_spend_other_days_budgets(setup, settings) -> None:
    """The attack: windows spread over the last 30 days each spent a fresh daily budget."""
    version, device, _ = setup
    settings.EDGEFLEET_DP_DAILY_BUDGET = 2.5
    now = datetime.now(UTC).replace(microsecond=0)
    per_day = 86400 // grid_seconds()
    old = [at_window(version, grid_window(back=per_day * d, now=now)[0]) for d in range(3, 30)]
    recent = [at_window(version, grid_window(back=b, now=now)[0]) for b in (1, per_day, per_day + 5, 2)]
    out = ingest(device, *old, *recent, now=now)
    rejected = [r["code"] for r in out["rejected"]]
    assert rejected == ["bad_window"] * len(old) + ["budget_exhausted"] * 2
    assert out["accepted"] == [recent[0]["id"], recent[1]["id"]]
    assert list(PrivacyLedger.objects.filter(device=device).values_list("day", "spent", "refused")) == [
        (now.date(), 2.0, 2)
    ]


@pytest.mark.django_db
def test_windows_must_lie_on_the_device_window_grid(setup) -> None:
    version, device, _ = setup
    w = grid_seconds()
    now = datetime.now(UTC).replace(microsecond=0)
    s = grid_window(back=3, now=now)[0]
    naive = at_window(version, s)
    naive.update(window_start=naive["window_start"][:19], window_end=naive["window_end"][:19])  # no UTC offset
    bad = [
        at_window(version, s + timedelta(seconds=1)),  # off the grid by a second
        at_window(version, s + timedelta(microseconds=250)),  # the first inference's microsecond
        at_window(version, s, seconds=w - 1),
        at_window(version, s, seconds=w + 1),
        at_window(version, s, seconds=2 * w),  # two windows in one report
        at_window(version, s - timedelta(seconds=w / 2)),
    ]
    # A time without its UTC offset is malformed, not a bad window: the strict parse refuses the
    # whole batch (400 naming the field; fleet/wire.py), before any window is looked at.
    with pytest.raises(ValidationError, match="window_start"):
        ingest(device, naive, now=now)
    out = ingest(device, *bad, at_window(version, s), now=now)
    assert [r["code"] for r in out["rejected"]] == ["bad_window"] * len(bad)
    assert len(out["accepted"]) == 1
    assert "window_seconds" in out["rejected"][0]["message"] or "grid" in out["rejected"][0]["message"]
    # A grid with an offset: start times are multiples of window_seconds since the Unix epoch (UTC).
    assert int(Report.objects.get().window_start.timestamp()) % w == 0


@pytest.mark.django_db
def test_window_close_to_now_edges(setup, settings) -> None:
    version, device, _ = setup
    w = grid_seconds()
    skew = settings.EDGEFLEET_TELEMETRY_CLOCK_SKEW_SECONDS
    max_age = settings.EDGEFLEET_TELEMETRY_MAX_AGE_SECONDS
    assert max_age == 48 * 3600 and 0 < skew <= 300
    start, end = grid_window(back=-1)  # the window after the current one
    on_time = at_window(version, start)
    # the window may end at most `skew` seconds after the server's now: equality passes
    assert ingest(device, on_time, now=end - timedelta(seconds=skew))["accepted"] == [on_time["id"]]
    early = at_window(version, start + timedelta(seconds=w))
    out = ingest(device, early, now=end + timedelta(seconds=w) - timedelta(seconds=skew + 1))
    assert [r["code"] for r in out["rejected"]] == ["bad_window"] and "future" in out["rejected"][0]["message"]
    # and start at most max_age before now: equality passes, one window more does not
    oldest = at_window(version, start - timedelta(seconds=w))
    now = start - timedelta(seconds=w) + timedelta(seconds=max_age)
    assert ingest(device, oldest, now=now)["accepted"] == [oldest["id"]]
    too_old = at_window(version, start - timedelta(seconds=2 * w))
    out = ingest(device, too_old, now=now)
    assert [r["code"] for r in out["rejected"]] == ["bad_window"] and "older" in out["rejected"][0]["message"]


@pytest.mark.django_db
def test_a_device_back_from_a_day_offline_delivers_its_spool(setup) -> None:
    """A day of five-minute windows plus today's fit the default budget and the max age."""
    version, device, _ = setup
    now = datetime.now(UTC).replace(microsecond=0)
    per_day = 86400 // grid_seconds()
    spool = [at_window(version, grid_window(back=b, now=now)[0]) for b in range(1, 2 * per_day)]
    accepted = 0
    for i in range(0, len(spool), 500):
        accepted += len(ingest(device, *spool[i : i + 500], now=now)["accepted"])
    assert accepted == len(spool) == 2 * per_day - 1


# --- 4. one report per device, version and window ---------------------------------------------------


@pytest.mark.django_db
def test_a_second_report_for_a_window_is_a_duplicate_window(setup, client) -> None:
    version, device, token = setup
    s = grid_window(back=2)[0]
    first = at_window(version, s)
    assert post(client, token, {"reports": [first]}).json()["accepted"] == [first["id"]]
    resp = post(client, token, {"reports": [at_window(version, s), first]})
    out = resp.json()
    assert out["duplicates"] == [first["id"]], "resending the same id stays a harmless duplicate"
    assert [r["code"] for r in out["rejected"]] == ["duplicate_window"]
    assert Report.objects.count() == 1 and PrivacyLedger.objects.get(device=device).spent == 1.0
    # the same window of another version, and the next window, are separate reports
    v2 = factories.staged_version("fraud", "v2", seed=1)
    factories.release(v2)
    other = [at_window(v2, s), at_window(version, s + timedelta(seconds=grid_seconds()))]
    assert len(post(client, token, {"reports": other}).json()["accepted"]) == 2


@pytest.mark.django_db
def test_duplicate_window_inside_one_batch(setup, client) -> None:
    version, _, token = setup
    s = grid_window(back=2)[0]
    a, b = at_window(version, s), at_window(version, s)
    out = post(client, token, {"reports": [a, b]}).json()
    assert out["accepted"] == [a["id"]]
    assert out["rejected"][0]["id"] == b["id"] and out["rejected"][0]["code"] == "duplicate_window"


@pytest.mark.django_db
def test_ten_thousand_reports_for_one_window_give_one(setup, client, settings) -> None:
    version, device, token = setup
    settings.EDGEFLEET_DP_DAILY_BUDGET = 1e9  # not the budget: the window is what refuses them
    s = grid_window(back=2)[0]
    accepted, refused = 0, 0
    for _ in range(20):
        out = post(client, token, {"reports": [at_window(version, s) for _ in range(500)]}).json()
        accepted += len(out["accepted"])
        refused += sum(r["code"] == "duplicate_window" for r in out["rejected"])
    assert (accepted, refused) == (1, 9999)
    assert Report.objects.filter(device=device).count() == 1


@pytest.mark.django_db
def test_the_database_holds_one_report_per_window(setup) -> None:
    version, device, _ = setup
    s = grid_window(back=2)[0]
    ingest(device, at_window(version, s))
    row = Report.objects.get()
    row.id = uuid.uuid4()
    with pytest.raises(IntegrityError), transaction.atomic():
        row.save(force_insert=True)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_batches_for_one_window_cannot_both_win() -> None:
    version = factories.staged_version("fraud", "v1")
    factories.release(version)
    device, _ = factories.device(labels={"region": "eu"})
    s = grid_window(back=2)[0]
    for _round in range(5):
        start = s - timedelta(seconds=_round * grid_seconds())
        bodies = [[at_window(version, start) for _ in range(50)] for _ in range(2)]
        gate = threading.Barrier(2)
        results: list[dict] = []

        def send(body: list[dict], gate: threading.Barrier = gate, results: list = results) -> None:
            try:
                gate.wait()
                results.append(ingest(device, *body))
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(len(r["accepted"]) for r in results) == 1, results
        assert sum(len(r["rejected"]) for r in results) == 99
        assert Report.objects.filter(device=device, window_start=start).count() == 1
    assert PrivacyLedger.objects.get(device=device).spent == 5.0


# --- 6. every number a device sends has bounds ------------------------------------------------------


@pytest.mark.django_db
def test_counts_are_bounded_by_what_a_window_can_hold(setup, settings) -> None:
    version, device, _ = setup
    settings.EDGEFLEET_TELEMETRY_MAX_INFERENCES_PER_SECOND = 2
    w = grid_seconds()
    lo, hi = services.count_bounds(version)
    slack = 30 * math.sqrt(2 * 7.0**2)  # 30 sd of Laplace noise with b = (4 features + 3) / ε
    assert hi == pytest.approx(2 * w + slack) and lo == pytest.approx(-slack)

    def rep(back: int, **over) -> dict:
        return at_window(version, grid_window(back=back)[0], **over)

    edge = [rep(1, inference_count=hi), rep(2, error_count=lo)]
    lat = [0.0] * 12
    lat[3] = hi
    edge.append(rep(3, latency_ms={"counts": lat}))
    out = ingest(device, *edge)
    assert len(out["accepted"]) == 3, out
    over = [
        rep(4, inference_count=hi * 1.0001),
        rep(5, error_count=lo - 1),
        rep(6, latency_ms={"counts": [*lat[:11], 1e300]}),
        rep(7, outputs={"counts": [0.0, 1e15, 0.0]}),
    ]
    feature = rep(8)
    feature["features"]["input[2]"]["counts"][5] = -1e6
    out = ingest(device, *over, feature)
    assert [r["code"] for r in out["rejected"]] == ["out_of_range"] * 5
    assert "input[2]" in out["rejected"][-1]["message"]


@pytest.mark.django_db
def test_one_device_cannot_fail_the_install_gate_alone(setup) -> None:
    """The install failure rate used to count events: one device sending 50 failures failed the gate."""
    from django.utils import timezone

    from fleet.models import DeviceEvent

    old, _, _ = setup
    new = factories.staged_version("fraud", "v2", seed=1)
    devices = [factories.device(labels={"region": "eu"}, name=f"i{i}")[0] for i in range(21)]
    now = timezone.now()

    def event(d, kind: str, seconds: int = 0) -> None:
        DeviceEvent.objects.create(
            id=uuid.uuid4(), device=d, kind=kind, at=now + timedelta(seconds=seconds), model_name="fraud",
            version_label="v2",
        )  # fmt: skip

    for d in devices:
        event(d, "installed")
    for i in range(50):
        event(devices[0], "install_failed", seconds=i + 1)
    out = services.canary_vs_control(new.id, old.id, now - timedelta(hours=1), thresholds={"min_devices": 5})
    install = out["install_failure_rate"]
    assert install["n_canary"] == 21 and install["canary"] == pytest.approx(1 / 21)
    assert install["verdict"] == "pass"
    # A device whose latest install succeeded is not a failed device.
    event(devices[0], "installed", seconds=100)
    out = services.canary_vs_control(new.id, old.id, now - timedelta(hours=1), thresholds={"min_devices": 5})
    assert out["install_failure_rate"]["canary"] == 0.0


def test_noisy_rates_stay_within_zero_and_one() -> None:
    from telemetry import regression

    # noise made errors exceed a small inference count on the canary, and negative on the control
    v = regression.error_rate_verdict(50.0, 10.0, -3.0, 1000.0, 20, 20, 0.02, 5)
    assert v.canary == 1.0 and v.control == 0.0
    assert regression.clipped_rate(5.0, -2.0) is None and regression.clipped_rate(0.0, 0.0) is None


def test_unusable_privacy_settings_fail_the_system_check(settings) -> None:
    from telemetry.apps import telemetry_settings_check

    assert telemetry_settings_check() == []
    settings.EDGEFLEET_DP_EPSILON = 1e-300
    assert [e.id for e in telemetry_settings_check()] == ["telemetry.E001"]
    settings.EDGEFLEET_DP_EPSILON = 1.0
    settings.EDGEFLEET_DP_MECHANISM = "homemade"
    assert [e.id for e in telemetry_settings_check()] == ["telemetry.E001"]
