"""The demo's story, told by a director thread next to a simulated fleet.

Version 1 goes live; version 2 rolls out in waves; once the first wave has passed, input drift
appears in the ``apac`` cohort and version 2 starts failing on the devices that run it; the gate
job rolls the campaign back and the devices return to version 1. Everything goes through the real
paths: the training-pipeline API for uploads, the worker for validation, real HTTP agents, the
beat jobs for gates and drift. The director only turns the simulator's scenario knobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache

from accounts.models import ApiToken
from demo import models_onnx
from fleet import services as fleet_services
from fleet.models import Cohort, Device
from ota.models import Model, ModelVersion
from rollout import lifecycle
from rollout.models import Campaign, Release
from rollout.releases import create_release

log = logging.getLogger("edgefleet.demo")

MODEL = "vibration"
USERNAME, PASSWORD = "demo", "edgefleet-demo"
RESTART_KEY = "demo:restart"
STATUS_KEY = "demo:status"
COHORTS = {"eu": "region=eu", "us": "region=us", "apac": "region=apac", "rpi4": "hw=rpi4"}
WAVES = [
    {"percent": 10, "min_soak_minutes": 1, "min_devices": 20},
    {"percent": 50, "min_soak_minutes": 1, "min_devices": 20},
    {"percent": 100, "min_soak_minutes": 1, "min_devices": 20},
]
GATES = {"install_failure_rate": 0.05, "error_rate": 0.02, "latency_p95": 1.5, "drift": 0.25}


def say(message: str) -> None:
    """Log a step of the story (once: the log goes to the console) and keep it for the overview page."""
    log.info("[demo] %s", message)
    cache.set(STATUS_KEY, {"message": message, "at": time.time()}, timeout=None)


def request_restart() -> None:
    cache.set(RESTART_KEY, True, timeout=3600)


def ensure_login() -> Any:
    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    user.set_password(PASSWORD)
    user.is_staff = True
    user.save()
    user.groups.set([Group.objects.get_or_create(name="admin")[0]])
    return user


def ensure_cohorts(user: Any) -> None:
    for name, selector in COHORTS.items():
        if not Cohort.objects.filter(name=name).exists():
            fleet_services.save_cohort(name, selector, f"demo cohort: {selector}", user=user)


@dataclass
class Pipeline:
    """A training pipeline pushing versions through the operator API, as a real one would."""

    server: str
    token: str
    session: requests.Session = field(default_factory=requests.Session)

    def push(self, label: str, path: Path, reference: Path | None, notes: str) -> dict:
        url = f"{self.server}/api/v1/models/{MODEL}/versions"
        headers = {"Authorization": f"Bearer {self.token}"}
        existing = self.existing(label)
        if existing is not None:
            return existing
        with path.open("rb") as f:
            files: dict[str, Any] = {"file": (path.name, f, "application/octet-stream")}
            if reference is not None:
                files["reference"] = (reference.name, reference.open("rb"), "application/octet-stream")
            r = self.session.post(url, headers=headers, files=files, data={"label": label, "notes": notes}, timeout=120)
        if r.status_code != 201:
            raise RuntimeError(f"upload of {label} failed: {r.status_code} {r.text[:300]}")
        return r.json()

    def _all(self, path: str) -> list[dict]:
        """Every item of a paged management-API list."""
        items: list[dict] = []
        cursor: str | None = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            headers = {"Authorization": f"Bearer {self.token}"}
            r = self.session.get(f"{self.server}/api/v1{path}", params=params, headers=headers, timeout=30)
            r.raise_for_status()
            body = r.json()
            items += body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return items

    def existing(self, label: str) -> dict | None:
        """The version if it was pushed before (a restart), found through the lists: asking for it by
        name would answer 404 on a fresh start, and the server logs every 404 as "Not Found"."""
        if not any(m["name"] == MODEL for m in self._all("/models")):
            return None
        return next((v for v in self._all(f"/models/{MODEL}/versions") if v.get("label") == label), None)

    def wait_staged(self, label: str, timeout: float = 300) -> None:
        url = f"{self.server}/api/v1/models/{MODEL}/versions/{label}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.session.get(url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30).json()
            if status.get("status") == "staged":
                return
            if status.get("status") == "rejected":
                raise RuntimeError(f"{label} was rejected: {status.get('error')}")
            time.sleep(1)
        raise TimeoutError(f"{label} did not validate within {timeout:.0f} s: is the worker running?")


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if cache.get(RESTART_KEY):
            return False
        time.sleep(step)
    return False


class Director:
    """Runs the story, then waits for a restart request (dashboard button or ``manage.py demo --restart``)."""

    def __init__(self, server: str, data_dir: Path, devices: int, knobs: dict[str, Any]) -> None:
        self.server, self.data_dir, self.devices, self.knobs = server.rstrip("/"), data_dir, devices, knobs
        self.stop = threading.Event()

    def setup(self) -> tuple[str, Pipeline]:
        self.user = user = ensure_login()
        ensure_cohorts(user)
        ApiToken.objects.filter(user=user, name="demo-pipeline").delete()
        _, token = ApiToken.issue(user, "demo-pipeline")
        key = fleet_services.create_enrollment_key("demo-fleet", user=user, default_labels={"fleet": "demo"})[1]
        self.paths = models_onnx.build(self.data_dir / "models")
        return key, Pipeline(self.server, token)

    def live_versions(self) -> dict[str, int]:
        """What the simulated devices run now, by version label."""
        rows = Device.objects.filter(labels__fleet="demo").values_list(f"installed__{MODEL}", flat=True)
        counts: dict[str, int] = {}
        for label in rows:
            if label:
                counts[str(label)] = counts.get(str(label), 0) + 1
        return counts

    def story(self, pipeline: Pipeline) -> None:
        self.knobs["calm"]()
        say("uploading version v1 through the pipeline API (validation runs on the worker)")
        pipeline.push("v1", self.paths["v1"], self.paths["reference"], "first release: trained on 4,000 windows")
        pipeline.wait_staged("v1")
        v1 = ModelVersion.objects.get(model__name=MODEL, label="v1")
        if not Release.objects.filter(model__name=MODEL).exists():
            create_release(v1, note="demo: v1 for the whole fleet", user=self.user)
        say("v1 is released to the whole fleet; waiting for devices to install it")
        wait_for(lambda: self.live_versions().get("v1", 0) >= 0.8 * self.devices, 300)
        say("uploading version v2 (a refresh trained on fewer, noisier labels)")
        pipeline.push("v2", self.paths["v2"], self.paths["reference"], "refresh: 300 new windows, some labels noisy")
        pipeline.wait_staged("v2")
        v2 = ModelVersion.objects.get(model__name=MODEL, label="v2")
        for c in Campaign.objects.filter(model__name=MODEL, state__in=["running", "paused", "draft", "scheduled"]):
            lifecycle.abort(c.pk, user=self.user, reason="demo restart")
        time.sleep(20)  # a couple of telemetry windows of v1 as the control baseline
        n = Campaign.objects.filter(model__name=MODEL).count() + 1
        campaign = lifecycle.create_campaign(
            name=f"v2 rollout #{n}",
            version=v2,
            cohort=None,
            previous_version=v1,
            waves=WAVES,
            gates=GATES,
            on_failure=Campaign.OnFailure.ROLLBACK,
            user=self.user,
        )
        lifecycle.start(campaign.pk, user=self.user, reason="demo: roll v2 out in waves")
        say(f"campaign '{campaign.name}' started: wave 1 is 10% of the fleet")
        if not wait_for(lambda: self._campaign(campaign.pk).wave_index >= 1 or self._ended(campaign.pk), 900):
            return
        if self._ended(campaign.pk):
            say(f"campaign ended early: {self._campaign(campaign.pk).state}")
            return
        say("wave 1 passed its gates; now input drift appears in apac and v2 starts failing on its devices")
        self.knobs["trouble"]()
        if wait_for(lambda: self._ended(campaign.pk), 900):
            state = self._campaign(campaign.pk).state
            say(f"campaign '{campaign.name}' is {state.replace('_', ' ')}; devices go back to v1 on their next poll")
            back = wait_for(lambda: self.live_versions().get("v1", 0) >= 0.95 * self.devices, 300)
            # No counts in the message: it stays on the overview while the live chart moves on.
            done = "the fleet is back on v1" if back else "devices are returning to v1"
            say(f"{done} (see Versions in use below) — restart the demo from the overview page to replay it")

    @staticmethod
    def _campaign(pk: int) -> Campaign:
        return Campaign.objects.get(pk=pk)

    def _ended(self, pk: int) -> bool:
        return self._campaign(pk).state in {"completed", "rolled_back", "aborted", "paused"}

    def run(self, pipeline: Pipeline) -> None:
        while not self.stop.is_set():
            cache.delete(RESTART_KEY)
            try:
                self.story(pipeline)
            except Exception as exc:  # keep the fleet running; say what broke
                log.exception("demo story failed")
                say(f"the story stopped: {exc}")
            while not self.stop.is_set() and not cache.get(RESTART_KEY):
                time.sleep(2)
            if cache.get(RESTART_KEY):
                say("restarting the story")


def model_exists() -> bool:
    return Model.objects.filter(name=MODEL).exists()
