"""The ``edgefleet`` CLI as a CI job runs it: a separate process speaking HTTP to a LIVE server.

The server is pytest-django's ``live_server`` with a real Celery worker validating uploads and
judging gates; the rollout story uses the fleet simulator's regressing devices exactly as
``tests/test_campaign_e2e.py`` does. The CLI runs as ``python -m edgefleet_cli`` (what the
``edgefleet`` console script calls) with its token and URL in the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from accounts.models import ApiToken
from rollout.models import Campaign
from tests.onnx_models import mlp_classifier
from tests.test_campaign_e2e import Simulation, _fresh_generation, all_on_v1, simulations, wait_for, world  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def cli_env(url: str, token: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(EDGEFLEET_URL=url, EDGEFLEET_TOKEN=token, EDGEFLEET_CONFIG=str(tmp_path / "none.toml"),
               PYTHONPATH=str(ROOT))  # fmt: skip
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


# ------------------------------------------------------------------------------- without a server


def test_usage_errors_and_missing_configuration_have_their_own_exit_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(PYTHONPATH=str(ROOT), EDGEFLEET_CONFIG=str(tmp_path / "missing.toml"))
    bad = run(["rollout"], env)
    assert bad.returncode == 64 and "usage" in bad.stderr  # never 2, which means "rolled back"
    unconfigured = run(["status"], env)
    assert unconfigured.returncode == 4 and "EDGEFLEET_URL" in unconfigured.stderr
    # a config file is read when the environment says nothing; the server here is not listening
    cfg = tmp_path / "config.toml"
    cfg.write_text('url = "http://127.0.0.1:9"\ntoken = "efa_x"\n')
    unreachable = run(["status"], {**env, "EDGEFLEET_CONFIG": str(cfg)})
    assert unreachable.returncode == 4 and "cannot reach http://127.0.0.1:9" in unreachable.stderr


def test_waves_syntax() -> None:
    from edgefleet_cli.main import parse_waves

    assert parse_waves("5,25,100", 30, 20) == [
        {"percent": 5.0, "min_soak_minutes": 30, "min_devices": 20},
        {"percent": 25.0, "min_soak_minutes": 30, "min_devices": 20},
        {"percent": 100.0, "min_soak_minutes": 30, "min_devices": 20},
    ]
    assert parse_waves("10%:1:3, 100::5", 30, 0) == [
        {"percent": 10.0, "min_soak_minutes": 1.0, "min_devices": 3},
        {"percent": 100.0, "min_soak_minutes": 30, "min_devices": 5},
    ]


# ---------------------------------------------------------------------------------- a live server


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.usefixtures("roles")
def test_push_stages_a_good_model_and_names_why_a_bad_one_is_rejected(
    live_server: Any, celery_worker: Any, operator: Any, viewer: Any, store: Path, tmp_path: Path
) -> None:
    env = cli_env(live_server.url, ApiToken.issue(operator, "ci")[1], tmp_path)
    good = tmp_path / "model.onnx"
    good.write_bytes(mlp_classifier().SerializeToString())
    done = run(["push", "fraud", str(good), "--label", "v3", "--wait", "--interval", "0.3", "--timeout", "120"], env)
    assert done.returncode == 0, done.stderr
    assert "uploaded fraud:v3 (validating)" in done.stdout and "staged: fraud:v3" in done.stdout

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
    bad = run(["push", "fraud", str(junk), "--label", "v4", "--wait", "--interval", "0.3"], env)
    assert bad.returncode == 1 and "rejected:" in bad.stderr and "ONNX" in bad.stderr, bad.stderr

    dup = run(["push", "fraud", str(good), "--label", "v3"], env)  # the server refuses: exit 1 with its message
    assert dup.returncode == 1 and "v3" in dup.stderr

    # read-only commands work with a viewer's token; acting with it is refused with exit 4
    view_env = cli_env(live_server.url, ApiToken.issue(viewer, "ro")[1], tmp_path)
    status = run(["status"], view_env)
    assert status.returncode == 0 and "devices: 0" in status.stdout
    refused = run(["push", "fraud", str(good), "--label", "v5"], view_env)
    assert refused.returncode == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.usefixtures("roles")
def test_a_rollout_that_the_gate_rolls_back_exits_2_with_the_gates_reason(
    request: pytest.FixtureRequest, operator: Any, tmp_path: Path
) -> None:
    from rollout.tasks import evaluate_campaigns

    fleet, sims = request.getfixturevalue("world"), request.getfixturevalue("simulations")

    Simulation(
        fleet,
        sims,
        duration=30.0,
        scenario="regression",
        regress_version="v2",
        regress_error_rate=0.3,
        regress_latency_ms=80.0,
        guard_min_samples=10**9,
    )
    wait_for(all_on_v1, 15, "every device on v1")
    env = cli_env(fleet["url"], ApiToken.issue(operator, "ci")[1], tmp_path)
    args = ["rollout", "fraud", "v2", "--cohort", "ring notin (lab)", "--waves", "30:1:3,100:0.05:10",
            "--gate", "error_rate=0.02", "--gate", "install_failure_rate=0.05", "--gate", "latency_p95=1.25",
            "--wait", "--interval", "0.5", "--timeout", "90"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet_cli", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        evaluate_campaigns.delay()  # the test plays beat, as the e2e tests do
        time.sleep(1.0)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, (out, err)
    # the rollback itself is in the decision line on stderr (a follower may see it only as the final state)
    assert "started: wave 1 of 2 (30%)" in out
    assert "rolled back: gate failed" in err and "error_rate: observed" in err, err
    campaign = Campaign.objects.get()
    assert campaign.state == "rolled_back" and campaign.cohort.selector == "ring notin (lab)"
    assert campaign.decisions.get(kind="rollback").actor_label == "system"


# ------------------------------------------------------------------ the --wait decision, read by read


class ScriptedApi:
    """The API as the watch loop sees it under load: each GET of the campaign answers the next state of
    a script, and the decisions list is what the server holds at that moment (the HTTP boundary)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.reads = 0
        self.decisions: list[dict[str, Any]] = []

    def _campaign(self, state: str, last: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": 1, "state": state, "model": "fraud", "version": "v2", "cohort": None, "wave": 1,
                "waves": [{"percent": 30}, {"percent": 100}], "progress": {}, "gates_report": [],
                "last_decision": last}  # fmt: skip

    def get(self, path: str, **params: Any) -> Any:
        step = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        if isinstance(step, Exception):
            raise step
        state, last = step
        if last and last not in self.decisions:
            self.decisions.append(last)
        return self._campaign(state, last)

    def pages(self, path: str, **params: Any) -> Any:
        kind, after = params.get("kind"), params.get("after") or 0
        return iter([d for d in self.decisions if (kind is None or d["kind"] == kind) and d["id"] > after])


ROLLBACK = {"id": 7, "at": "2026-12-02T10:00:00Z", "kind": "rollback", "actor": "system",
            "reason": "gate failed: error_rate", "numbers": {"wave": 1, "gates": [
                {"name": "error_rate", "verdict": "fail", "observed": 0.3, "threshold": 0.02}]}}  # fmt: skip
PAUSE_BY_PERSON = {"id": 6, "at": "2026-12-02T09:59:00Z", "kind": "pause", "actor": "olivia", "reason": "look",
                   "numbers": {}}  # fmt: skip


def _watch(api: ScriptedApi, capsys: Any) -> tuple[int, str]:
    import argparse

    from edgefleet_cli import main as cli

    args = argparse.Namespace(timeout=30, interval=0, verbose=False)
    code = cli.watch(api, args, 1)
    return code, capsys.readouterr().err


def test_wait_reports_a_rollback_with_the_gates_reason_when_reads_race(capsys: Any) -> None:
    """The campaign's state and its "last decision" are separate reads: under load the state can say
    rolled back while the decision read is an older one. The exit code and the reason come from the
    settled state and the decision of that kind, read after it."""
    advance = {"id": 5, "at": "2026-12-02T09:58:00Z", "kind": "advance", "actor": "system",
               "reason": "wave 1 passed every gate", "numbers": {"wave": 1}}  # fmt: skip
    api = ScriptedApi([("running", advance), ("rolled_back", advance), ("rolled_back", ROLLBACK)])
    api.decisions.append(ROLLBACK)  # committed with the state; the embedded read lagged behind
    code, err = _watch(api, capsys)
    assert code == 2 and "rolled back: gate failed: error_rate" in err and "error_rate: observed 0.3" in err


def test_a_pause_by_a_person_is_followed_and_a_gate_rollback_after_it_is_2(capsys: Any) -> None:
    api = ScriptedApi([("running", None), ("paused", PAUSE_BY_PERSON), ("paused", PAUSE_BY_PERSON),
                       ("rolled_back", ROLLBACK)])  # fmt: skip
    code, err = _watch(api, capsys)
    assert code == 2 and "gate failed" in err


def test_wait_survives_transient_errors_under_load(capsys: Any) -> None:
    from edgefleet_cli.client import ApiError, Unreachable

    api = ScriptedApi([("running", None), Unreachable("timed out"), ApiError(503, "unavailable", "busy"),
                       ApiError(429, "throttled", "slow down"), ("rolled_back", ROLLBACK)])  # fmt: skip
    code, err = _watch(api, capsys)
    assert code == 2 and "retrying" in err


def test_wait_stops_on_a_refusal_that_is_not_transient(capsys: Any) -> None:
    from edgefleet_cli.client import ApiError

    api = ScriptedApi([("running", None), ApiError(404, "not_found", "There is no campaign 1.")])
    with pytest.raises(ApiError):
        _watch(api, capsys)
