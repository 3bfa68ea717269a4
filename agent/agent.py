"""The ``Agent``: enrollment, the poll loop, updates, inference for the host application, telemetry.

Order of trust in an update: manifest signature (pinned key) -> manifest for this device, not expired,
not older than the last accepted (agent/verify.py) -> download (resumable) -> artifact sha256 ->
atomic install -> load + smoke inference -> switch. Any failure leaves the device on what it ran
before and becomes an event; nothing the server has not acknowledged is forgotten.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

from agent import __version__
from agent import conditions as install_rules
from agent.aggregate import LATENCY_EDGES_MS, WindowAggregator
from agent.backoff import Backoff
from agent.client import Client, DownloadIncomplete, Rejected, ServerAway
from agent.config import AgentConfig, detect_hardware
from agent.guard import Guard, GuardPolicy, Verdict
from agent.rounds import Rounds, load_identity, parse_hint, public_key_b64
from agent.runtime import ModelLoadError, Runtime, SessionPool
from agent.spool import Spool
from agent.store import Installed, ManifestMark, ModelStore, atomic_write
from agent.verify import (
    Accepted,
    ManifestRefused,
    VerifyError,
    accept_manifest,
    check_manifest,
    digest,
    verify_artifact,
    verify_manifest,
)
from agent.window import Window, WindowLog, grid_seconds, next_window

log = logging.getLogger(__name__)

EVENT_BATCH = 500
REPORT_BATCH = 100
MAX_VERIFY_FAILURES = 3  # a download that keeps failing its hash is refused until the manifest changes
DEFAULT_POLL = 60.0
DEFAULT_WINDOW = 300.0

KEEP_ON_REFUSAL = (401, 403, 408)  # refusals that are not the items' fault (429 is ServerAway)
DETAIL_STRING_MAX = 1000  # the server takes event details strings up to 2,048 characters

# A hook for the simulator: called around each inference with (model, version); returns extra
# latency in ms to add, or raises to make the inference fail.
Fault = Callable[[str, str], float]


class NoModel(Exception):
    """``predict`` was called before any version of the model is installed."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fit_details(value: Any, depth: int = 0) -> Any:
    """Event details as the server takes them (docs/protocol.md): long strings cut, non-finite
    numbers as null, nesting cut at three levels, so an odd error message cannot get an event refused."""
    if isinstance(value, dict):
        if depth >= 3:
            return str(value)[:DETAIL_STRING_MAX]
        return {str(k)[:64]: _fit_details(v, depth + 1) for k, v in list(value.items())[:32]}
    if isinstance(value, list | tuple):
        if depth >= 3:
            return str(value)[:DETAIL_STRING_MAX]
        return [_fit_details(v, depth + 1) for v in list(value)[:32]]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:DETAIL_STRING_MAX].encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    if value is None or isinstance(value, bool | int):
        return value
    return str(value)[:DETAIL_STRING_MAX]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        pool: SessionPool | None = None,
        client_cls: type[Client] = Client,
        http: requests.Session | None = None,
        guard_policy: GuardPolicy | None = None,
        fault: Fault | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        conditions: Callable[[], dict[str, Any]] | None = None,
        install_clock: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = config
        self.clock = clock  # wall-clock epoch seconds: telemetry windows lie on its grid
        # the clock maintenance windows are read on (the simulator compresses it; telemetry's stays real)
        self.install_clock = install_clock or clock
        # what the host says about power, network and idleness now (agent/conditions.py)
        self.conditions_source = conditions or (lambda: self.cfg.conditions or {})
        self.data = config.data_dir
        self.data.mkdir(parents=True, exist_ok=True)
        self.identity_path = self.data / "identity.json"
        self.manifest_path = self.data / "manifest.json"
        self.identity: dict[str, Any] | None = self._read_json(self.identity_path)
        self.store = ModelStore(self.data)
        self.spool = Spool(self.data / "spool.sqlite3", config.spool_max_items)
        self.pool = pool if pool is not None else SessionPool(config.ort_threads)
        self.client = client_cls(
            config.server, (self.identity or {}).get("token"), timeout=config.request_timeout, session=http
        )
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.backoff = Backoff(config.backoff_base, config.backoff_cap, self.rng)
        self.upload_backoff = Backoff(config.backoff_base, config.backoff_cap, self.rng)
        self.next_upload_at = 0.0
        self.guard_policy = guard_policy or GuardPolicy()
        self.fault = fault
        self.stats: Counter[str] = Counter()
        self.lock = threading.RLock()
        self.runtimes: dict[str, Runtime] = {}
        self.guards: dict[str, Guard] = {}
        self.window: Window | None = None
        self.closing: list[Window] = []  # windows that are over, waiting for their reports
        self.report_lock = threading.Lock()
        self.next_net_at = 0.0
        self.verify_failures: Counter[str] = Counter()
        self.manifest: dict[str, Any] | None = None
        self.etag: str | None = None
        self.marks = ManifestMark(self.data)
        self.accepted: Accepted | None = self.marks.load()
        self._last_refusal = ""  # the refusal last reported: the same one again is counted, not re-sent
        self.rounds = Rounds(self.client, load_identity(self.data / "round_identity.key"))
        self._waiting: dict[str, str] = {}  # model -> "version:reasons" last reported as install_waiting
        self.probation_path = self.data / "probation.json"
        self.probation: dict[str, dict[str, Any]] = self._read_json(self.probation_path) or {}
        self._load_manifest()
        self._start_runtimes()
        self.windows = WindowLog(self.data / "windows.json")
        self._resume_window()

    # -- persistence --------------------------------------------------------------------------------
    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def _load_manifest(self) -> None:
        """The saved manifest, if it is the accepted one (or, with no mark on disk, passes every check
        but expiry: then its sequence becomes the floor)."""
        saved = self._read_json(self.manifest_path)
        if not (saved and self.identity):
            return
        try:
            manifest = verify_manifest(saved["document"], self.identity["signing_key"])
            if self.accepted is None:
                self.accepted, _ = check_manifest(manifest, device_id=self.device_id, last=None, now=None)
                self.marks.save(self.accepted)
            elif manifest.get("device_id") != self.device_id or digest(manifest) != self.accepted.digest:
                log.warning("saved manifest is not the one last accepted; waiting for the server's")
                return
            self.manifest, self.etag = manifest, saved.get("etag")
        except (VerifyError, KeyError, TypeError, ValueError) as e:
            log.warning("saved manifest ignored: %s", e)

    def _start_runtimes(self) -> None:
        """After a restart (or a power cut): repair the store, then load what is active."""
        for note in self.store.recover():  # a file check, not an observation: the note names versions only
            self.event("fell_back", details={"rule": "file_check", "at_start": True, "reason": note})
        for model in list(self.store.state):
            inst = self.store.active(model)
            if inst is None:
                continue
            try:
                self._set_runtime(model, self._load(model, inst))
            except ModelLoadError as e:
                self.event("install_failed", model, inst.version, reason=f"at start: {e}")
                self.store.block(model, inst.sha256, "does not load at start")
                self._fall_back(model, Verdict(True, f"active version does not load: {e}", rule="load_failed"))

    # -- enrollment ---------------------------------------------------------------------------------
    @property
    def device_id(self) -> str | None:
        return (self.identity or {}).get("device_id")

    def enroll(self) -> str:
        """Enroll once; the token and the pinned signing key are kept in the data directory."""
        if self.identity:
            return self.identity["device_id"]
        hardware = self.cfg.hardware or detect_hardware(self.data)
        body = {
            "enrollment_key": self.cfg.enrollment_key,
            "name": self.cfg.name,
            "hardware": hardware,
            "labels": self.cfg.labels,
            "agent_version": __version__,
            "identity_key": public_key_b64(self.rounds.identity),
        }
        resp = self.client.enroll(body)
        identity = {
            "device_id": resp["device_id"],
            "token": resp["token"],
            "signing_key": resp["signing_key"],
            "poll_interval": resp.get("poll_interval"),
            "server": self.cfg.server,
        }
        atomic_write(self.identity_path, json.dumps(identity, indent=1).encode())
        self.identity_path.chmod(0o600)
        self.identity = identity
        self.client.token = identity["token"]
        self.stats["enrolled"] += 1
        return identity["device_id"]

    # -- intervals ----------------------------------------------------------------------------------
    def poll_interval(self) -> float:
        if self.cfg.poll_interval:
            return self.cfg.poll_interval
        if self.manifest:
            return float(self.manifest.get("poll_interval", DEFAULT_POLL))
        return float((self.identity or {}).get("poll_interval") or DEFAULT_POLL)

    def window_seconds(self) -> int:
        """The grid's W: the config's override (tests, the simulator's time compression), else the
        manifest's ``telemetry.window_seconds``; whole seconds, as the server checks."""
        value = self.cfg.window_seconds or ((self.manifest or {}).get("telemetry") or {}).get("window_seconds")
        try:
            return grid_seconds(value or DEFAULT_WINDOW)
        except (TypeError, ValueError):
            return int(DEFAULT_WINDOW)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set, honouring the poll interval, Retry-After and backoff."""
        stop = stop or threading.Event()
        while not stop.is_set():
            stop.wait(self.tick())

    def tick(self) -> float:
        """Do what is due now; return the seconds until something is due again."""
        now = time.monotonic()
        self.roll_window_if_due()
        if self.probation:
            self.check_probation()
        until_window = max(0.05, self.window.end - self.clock())
        if now < self.next_net_at:
            return min(self.next_net_at - now, until_window)
        try:
            self.enroll()
            self.poll_once()
            self.backoff.reset()
            delay = self.poll_interval() * self.rng.uniform(0.9, 1.1)
        except ServerAway as e:
            self.stats["server_away"] += 1
            delay = self.backoff.next_delay(e.retry_after)
            log.info("server away (%s); next try in %.1f s", e, delay)
        except Rejected as e:
            self.stats["rejected_calls"] += 1
            log.warning("server refused a call: %s", e)
            delay = max(self.poll_interval(), self.backoff.next_delay())
        self.next_net_at = time.monotonic() + delay
        return min(delay, until_window)

    def conditions(self) -> dict[str, Any]:
        """The install conditions now, as the host reports them (unknown keys and values dropped)."""
        try:
            return install_rules.clean(self.conditions_source())
        except Exception:  # a host callback that fails reports nothing (and so meets no requirement)
            log.warning("install conditions unavailable", exc_info=True)
            return {}

    def agent_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "models": {m: inst.version for m in self.store.state if (inst := self.store.active(m))}
        }
        conditions = self.conditions()
        if conditions:
            state["conditions"] = conditions
        return state

    def poll_once(self) -> bool:
        """Fetch the manifest, apply it, then send the spool. True when a new manifest was accepted.

        The poll comes first and uploads never raise: a device whose uploads keep failing (a bad
        batch, a 5xx, a timeout, a 429) still receives every manifest, rollbacks included. Only a
        failed manifest poll raises (``ServerAway``/``Rejected``), and then nothing is uploaded."""
        self.roll_window_if_due()
        self.stats["polls"] += 1
        doc, etag = self.client.manifest(self.etag, self.agent_state())
        changed = False
        try:
            if doc is None:
                self.stats["not_modified"] += 1
            else:
                changed = self._take_manifest(doc, etag)
            if self.manifest and self._unexpired():
                self.apply(self.manifest)
            elif self.manifest:
                # Instructions past their expiry install nothing; what runs keeps running. A 304 never
                # extends a manifest: drop the ETag so the next poll asks for the whole, fresh one.
                self.stats["manifest_expired"] += 1
                self.etag = None
        finally:
            self.take_part()
            self.upload()
        return changed

    def take_part(self) -> int:
        """Answer the phases of open aggregation rounds (agent/rounds.py); never raises, so a round
        cannot stop a poll. Returns how many messages were sent.

        A window that ended since the poll began is closed first, so a round's masked input can
        carry it in this poll rather than the next."""
        self.roll_window_if_due()
        try:
            return self.rounds.step(parse_hint(self.client.rounds_hint))
        except (ServerAway, Rejected) as e:
            self.stats["rounds_deferred"] += 1
            log.info("rounds deferred: %s", e)
            return 0

    def _take_manifest(self, doc: dict[str, Any], etag: str | None) -> bool:
        """Check a fetched manifest (agent/verify.py); True when it is new and now the accepted one."""
        try:
            manifest, mark, redelivery = accept_manifest(
                doc,
                self.identity["signing_key"],
                device_id=self.device_id,
                last=self.accepted,
                now=self.clock(),
                skew=self.cfg.clock_skew,
            )
        except ManifestRefused as e:  # never changes what is installed; counted and reported
            self._refused(e, doc)
            return False
        if redelivery:  # the accepted manifest again (same sequence, same bytes): harmless
            self.stats["manifest_redelivered"] += 1
            if self.manifest is None:
                atomic_write(self.manifest_path, json.dumps({"document": doc, "etag": etag}).encode())
            self.manifest, self.etag = manifest, etag
            return False
        self.marks.save(mark)  # the floor first: after a crash here, anything older is still refused
        self.accepted = mark
        atomic_write(self.manifest_path, json.dumps({"document": doc, "etag": etag}).encode())
        self.manifest, self.etag = manifest, etag
        self.verify_failures.clear()
        self._last_refusal = ""
        return True

    def _refused(self, e: ManifestRefused, doc: Any) -> None:
        self.stats["manifest_refused"] += 1
        self.stats[f"manifest_refused_{e.reason}"] += 1
        log.warning("manifest refused (%s): %s", e.reason, e)
        key = f"{e.reason}:{e}"
        if key == self._last_refusal:
            return  # the same manifest refused again (the server or a proxy keeps sending it)
        self._last_refusal = key
        shown = doc.get("manifest") if isinstance(doc, dict) else None
        offered = shown.get("sequence") if isinstance(shown, dict) else None
        details: dict[str, Any] = {"what": "manifest", "reason": e.reason, "message": str(e)[:300]}
        if type(offered) is int:
            details["sequence"] = offered
        if self.accepted is not None:
            details["accepted_sequence"] = self.accepted.sequence
        self.event("verify_failed", details=details)

    def _unexpired(self) -> bool:
        if self.accepted is None:
            return False
        clock = max(self.clock(), float(self.accepted.issued_at))
        return clock <= self.accepted.expires_at + self.cfg.clock_skew

    # -- updates ------------------------------------------------------------------------------------
    def apply(self, manifest: dict[str, Any]) -> None:
        conditions: dict[str, Any] | None = None
        for entry in manifest.get("models", []):
            name, art = entry["model"], entry["artifact"]
            fb = entry.get("fallback")
            act = self.store.active(name)
            blocked = self.store.blocked(name)
            if act and act.sha256 == art["sha256"]:
                self._waiting.pop(name, None)
                continue
            if entry.get("install") is not None and art["sha256"] not in blocked:
                if conditions is None:
                    conditions = self.conditions()
                reasons = install_rules.waiting_for(entry["install"], conditions, self.install_clock())
                if reasons:  # outside its window or conditions: what runs keeps running
                    self._note_waiting(name, entry["version"], reasons, conditions)
                    fb_sha = (fb or {}).get("artifact", {}).get("sha256")
                    if act is None and fb_sha and fb_sha not in blocked:  # a new device runs the release meanwhile
                        self.install(name, fb["version"], fb.get("version_id"), fb["artifact"])
                    continue
            self._waiting.pop(name, None)
            if art["sha256"] not in blocked and self.install(name, entry["version"], entry.get("version_id"), art):
                continue
            fb_sha = (fb or {}).get("artifact", {}).get("sha256")
            if fb_sha and fb_sha not in blocked and (not act or act.sha256 != fb_sha):
                self.install(name, fb["version"], fb.get("version_id"), fb["artifact"])

    def _note_waiting(self, model: str, version: str, reasons: list[str], conditions: dict[str, Any]) -> None:
        """Report ``install_waiting`` once per version and set of reasons (not every poll)."""
        self.stats["installs_waiting"] += 1
        key = f"{version}:{','.join(reasons)}"
        if self._waiting.get(model) == key:
            return
        self._waiting[model] = key
        clock = int(self.install_clock())  # the clock the window was read on (the simulator compresses it)
        self.event("install_waiting", model, version, reasons=",".join(reasons), clock=clock, **conditions)

    # -- probation ----------------------------------------------------------------------------------
    def _start_probation(self, model: str, inst: Installed) -> None:
        self.probation[model] = {"version": inst.version, "sha256": inst.sha256, "since": self.clock(), "n": 0}
        self._save_probation()

    def _save_probation(self) -> None:
        atomic_write(self.probation_path, json.dumps(self.probation).encode())

    def check_probation(self, model: str | None = None) -> None:
        """Commit each version whose probation is over: ``commit_after_inferences`` inferences or
        ``commit_after_seconds`` on it without a fallback. Reports ``committed``."""
        p = self.guard_policy
        with self.lock:
            for name in [model] if model else list(self.probation):
                prob = self.probation.get(name)
                if prob is None:
                    continue
                act = self.store.active(name)
                if act is None or act.sha256 != prob.get("sha256"):
                    self.probation.pop(name, None)  # it fell back or was replaced: nothing to commit
                    self._save_probation()
                    continue
                seconds = self.clock() - float(prob.get("since", 0))
                if prob.get("n", 0) >= p.commit_after_inferences or seconds >= p.commit_after_seconds:
                    self.probation.pop(name, None)
                    self._save_probation()
                    self.stats["commits"] += 1
                    self.event("committed", name, act.version, inferences=int(prob.get("n", 0)),
                               seconds=round(seconds, 1))  # fmt: skip

    def install(self, model: str, version: str, version_id: int | None, art: dict[str, Any]) -> bool:
        """Download, verify, install, load, smoke-test and activate one version. True if it is active."""
        sha, size = art["sha256"], int(art["size"])
        if not self.store.has(sha):
            part = self.store.part_for(sha)
            have = part.stat().st_size if part.exists() else 0
            self.event("download_started", model, version, resume_from=have)
            if have:
                self.stats["downloads_resumed"] += 1
            try:
                self.client.download(art["url"], part, size)
            except (DownloadIncomplete, ServerAway, Rejected) as e:
                self.stats["downloads_failed"] += 1
                self.event("download_failed", model, version, reason=str(e))
                if isinstance(e, ServerAway):
                    raise
                return False
            try:
                verify_artifact(part, sha, size)
            except VerifyError as e:
                part.unlink(missing_ok=True)
                self.stats["artifacts_refused"] += 1
                self.verify_failures[sha] += 1
                self.event("verify_failed", model, version, what="artifact", reason=str(e))
                if self.verify_failures[sha] >= MAX_VERIFY_FAILURES:
                    self.store.block(model, sha, f"sha256 mismatch {MAX_VERIFY_FAILURES} times")
                return False
            self.event("download_finished", model, version, bytes=size)
            self.store.install(part, sha)
        inst = Installed(version, sha, version_id)
        try:
            rt = self._load(model, inst)
            rt.smoke()
        except ModelLoadError as e:
            self.stats["install_failures"] += 1
            self.event("install_failed", model, version, reason=str(e))
            self.store.block(model, sha, str(e))
            return False
        self.event("installed", model, version, sha256=sha)
        with self.lock:
            previous = self.store.active(model)
            self.store.activate(model, inst)
            self._set_runtime(model, rt)
            self.guards.setdefault(model, Guard(self.guard_policy)).switched()
            self._start_probation(model, inst)
        self.stats["installs"] += 1
        self.event("activated", model, version, previous=previous.version if previous else None)
        return True

    def _load(self, model: str, inst: Installed) -> Runtime:
        return Runtime.load(self.pool, model, inst.version, inst.sha256, self.store.path_for(inst.sha256))

    def _set_runtime(self, model: str, rt: Runtime) -> None:
        self.runtimes[model] = rt
        self.guards.setdefault(model, Guard(self.guard_policy))
        if self.window is not None:  # active at any time in a window: reported for it, busy or not
            self.window.versions.add((model, rt.version))

    def _fall_back(self, model: str, verdict: Verdict) -> bool:
        """Go back to the previous version on disk without asking the server; report ``fell_back``."""
        with self.lock:
            cur, prev = self.store.active(model), self.store.previous(model)
            if self.probation.pop(model, None) is not None:  # a fallback ends probation uncommitted
                self._save_probation()
            if cur:
                self.store.block(model, cur.sha256, f"local guard: {verdict.reason}")
            if prev is None:
                self.runtimes.pop(model, None)
                self.event("fell_back", model, cur.version if cur else None, **verdict.public(), to=None)
                return False
            try:
                rt = self._load(model, prev)
            except ModelLoadError as e:
                self.event("install_failed", model, prev.version, reason=f"previous does not load: {e}")
                return False
            self.store.activate(model, prev)
            self._set_runtime(model, rt)
            self.guards[model].reset()
            self.stats["fallbacks"] += 1
            # the decision and its rule only: the observed error rate and latency stay on the device
            self.event("fell_back", model, cur.version if cur else None, **verdict.public(), to=prev.version)
            return True

    # -- inference ----------------------------------------------------------------------------------
    def predict(self, inputs: Any, model: str | None = None) -> dict[str, np.ndarray]:
        """Run the active version; feeds the window's aggregates and the local guard."""
        with self.lock:
            if model is None:
                if len(self.runtimes) != 1:
                    raise NoModel(f"installed models: {sorted(self.runtimes)}; name one")
                model = next(iter(self.runtimes))
            rt = self.runtimes.get(model)
            if rt is None:
                raise NoModel(f"no version of {model!r} installed")
        feeds = rt.feeds(inputs)
        error: Exception | None = None
        out = None
        t0 = time.perf_counter()
        try:
            extra = self.fault(model, rt.version) if self.fault else 0.0
            out = rt.run(feeds)
        except Exception as e:  # the host sees the error; the window counts it
            error, extra = e, 0.0
        latency = (time.perf_counter() - t0) * 1000 + extra
        with self.lock:
            self._advance_window(self.clock())  # an inference counts in the window it ended in
            self._aggregator(model, rt.version).record(feeds, out, latency)
            self.stats["inferences"] += 1
            if error:
                self.stats["inference_errors"] += 1
            guard = self.guards.setdefault(model, Guard(self.guard_policy))
            if self.runtimes.get(model) is rt:
                verdict = guard.observe(error is None, latency)
                if verdict.fall_back:
                    self._fall_back(model, verdict)
                elif error is None and model in self.probation:
                    self.probation[model]["n"] = self.probation[model].get("n", 0) + 1
                    if self.probation[model]["n"] >= self.guard_policy.commit_after_inferences:
                        self.check_probation(model)
        if error:
            raise error
        return out

    # -- telemetry ----------------------------------------------------------------------------------
    def _model_spec(self, model: str) -> dict[str, Any]:
        for entry in (self.manifest or {}).get("models", []):
            if entry["model"] == model:
                return entry.get("telemetry") or {}
        return {}

    def _names(self, model: str) -> bool:
        return any(e.get("model") == model for e in (self.manifest or {}).get("models", []))

    def _new_aggregator(self, model: str, version: str) -> WindowAggregator:
        tel = (self.manifest or {}).get("telemetry") or {}
        edges = tel.get("latency_edges_ms") or LATENCY_EDGES_MS
        return WindowAggregator(model, version, self._model_spec(model), edges)

    def _aggregator(self, model: str, version: str) -> WindowAggregator:
        key = (model, version)
        agg = self.window.aggs.get(key)
        if agg is None:
            agg = self.window.aggs[key] = self._new_aggregator(model, version)
        return agg

    def _open_window(self, now: float) -> Window:
        w = next_window(now, self.window_seconds(), self.windows.reported_until)
        w.versions = {(m, rt.version) for m, rt in self.runtimes.items()}
        return w

    def _resume_window(self) -> None:
        """At start: the window saved at a clean stop is resumed, or reported if it is over. Windows
        while the agent was not running are not back-filled."""
        now = self.clock()
        saved = self.windows.take_saved()
        with self.lock:
            if saved is not None and saved.end > now:
                saved.versions |= {(m, rt.version) for m, rt in self.runtimes.items()}
                self.window = saved
                return
            if saved is not None:
                self.closing.append(saved)
            self.window = self._open_window(now)

    def _advance_window(self, now: float) -> None:
        """Under ``self.lock``: if the open window is over, queue it and open the one holding ``now``
        (a gap of several windows, e.g. a suspend, is not back-filled). When the server changes W,
        the open window moves onto the new grid with what it holds: every report keeps the server's W."""
        w = self.window
        if w.end - w.start != self.window_seconds():
            self.window = self._open_window(now)
            self.window.versions |= w.versions
            self.window.aggs = w.aggs
            return
        if now >= w.end:
            self.closing.append(self.window)
            self.window = self._open_window(now)

    def roll_window_if_due(self) -> int:
        """Report every window that is over; returns how many reports went into the spool."""
        with self.report_lock:  # taken and reported as one, so ``closed`` never runs ahead of the vectors
            with self.lock:
                self._advance_window(self.clock())
                closing, self.closing = self.closing, []
                open_start = self.window.start
            n = self._report(closing)
            self.rounds.closed(open_start)  # every window before the open one is closed, vectors kept
        return n

    def close_window(self) -> int:
        """The same as ``roll_window_if_due``: a window is reported once it is over, never earlier."""
        return self.roll_window_if_due()

    def _report(self, windows: list[Window]) -> int:
        """One noisy report per (model, version) of each window: every version active in it, busy or
        idle, that the manifest names a layout for. Marked reported before spooling (at most once).
        Called under ``report_lock``."""
        if not windows:
            return 0
        privacy = ((self.manifest or {}).get("telemetry") or {}).get("privacy") or {}
        n = 0
        for w in windows:
            self.windows.mark_reported(w.end)
            for model, version in w.report_keys():
                agg = w.aggs.get((model, version))
                if agg is None:
                    if not self._names(model):
                        continue  # no layout from the server: a report would only be refused
                    agg = self._new_aggregator(model, version)
                self.rounds.window_closed(model, version, w.start, agg)
                self.spool.put("report", agg.report(privacy, self.np_rng, window=(w.start, w.end)))
                n += 1
        self.stats["reports_made"] += n
        return n

    def shutdown(self) -> None:
        """A clean stop: report what is over; keep the open window on disk for the next start."""
        self.roll_window_if_due()
        with self.lock:
            self.windows.save_open(self.window)

    # -- events and delivery ------------------------------------------------------------------------
    def event(self, kind: str, model: str | None = None, version: str | None = None, **details: Any) -> None:
        extra = details.pop("details", {})
        body = {
            "id": str(uuid.uuid4()),
            "kind": kind,
            "at": _now(),
            "model": model or "",
            "version": version or "",
            "details": _fit_details({**extra, **details}),
        }
        self.spool.put("event", body)
        self.stats[f"event_{kind}"] += 1

    def upload(self) -> None:
        """Send the spool unless uploads are backing off; never raises, so it cannot stop a poll.

        ``ServerAway`` (5xx, timeout, 429) and a refusal that is not the items' fault (401, 403,
        408) keep everything and back off uploads alone, honouring ``Retry-After``."""
        now = time.monotonic()
        if now < self.next_upload_at:
            self.stats["uploads_waiting"] += 1
            return
        try:
            self.flush()
        except ServerAway as e:
            self.stats["uploads_deferred"] += 1
            delay = self.upload_backoff.next_delay(e.retry_after)
            log.info("upload deferred (%s); next try in %.1f s", e, delay)
        except Rejected as e:
            self.stats["uploads_deferred"] += 1
            delay = max(self.poll_interval(), self.upload_backoff.next_delay())
            log.warning("server refused an upload (%s); next try in %.1f s", e, delay)
        else:
            self.upload_backoff.reset()
            delay = 0.0
        self.next_upload_at = time.monotonic() + delay

    def flush(self) -> None:
        """Send what the spool holds; raises ServerAway or Rejected (401/403/408: items stay)."""
        full, refused = self.spool.take_dropped(), self.spool.take_rejected()
        if full or refused:
            self.event("spool_dropped", count=full + refused, full=full, refused=refused)
        self._drain("event", EVENT_BATCH, self._send_events)
        self._drain("report", REPORT_BATCH, self._send_reports)

    def _drain(self, kind: str, limit: int, send: Callable[[list[dict[str, Any]]], tuple[list, list]]) -> None:
        """Send ``kind`` items oldest first. A batch refused as bad input (a 4xx other than 401,
        403, 408 and 429) is halved until the refused items stand alone; those are dropped and
        counted (``spool_dropped``), never retried: re-sending them cannot succeed, and keeping
        them would stall everything behind them."""
        size = limit
        while True:
            batch = self.spool.peek(kind, size)
            if not batch:
                return
            try:
                done, rejected = send(batch)
            except Rejected as e:
                if e.status in KEEP_ON_REFUSAL:
                    raise  # the token or the request's timing, not the items: keep them
                if len(batch) > 1:
                    size = max(1, len(batch) // 2)  # narrow down to what the server objects to
                    continue
                done, rejected = [], [batch[0]["id"]]
                log.warning("server refused %s %s as bad input; dropped: %s", kind, batch[0]["id"], e)
            self.spool.ack(done)
            self.spool.reject(rejected)
            self.stats[f"{kind}s_rejected"] += len(rejected)
            if not done and not rejected:
                return  # the server acknowledged nothing; try again at the next poll
            size = limit

    def _send_events(self, batch: list[dict[str, Any]]) -> tuple[list, list]:
        self.client.post_events(batch)
        self.stats["events_sent"] += len(batch)
        return [e["id"] for e in batch], []  # 200 acknowledges the whole batch (new or duplicate)

    def _send_reports(self, batch: list[dict[str, Any]]) -> tuple[list, list]:
        resp = self.client.post_telemetry(batch)
        done = list(resp.get("accepted", [])) + list(resp.get("duplicates", []))
        rejected = [r["id"] for r in resp.get("rejected", [])]
        self.stats["reports_sent"] += len(resp.get("accepted", []))
        return done, rejected

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "server": self.cfg.server,
            "models": {
                m: {
                    "active": (a.version if (a := self.store.active(m)) else None),
                    "previous": (p.version if (p := self.store.previous(m)) else None),
                    "blocked": self.store.blocked(m),
                }
                for m in self.store.state
            },
            "spool": {"events": self.spool.count("event"), "reports": self.spool.count("report")},
            "spool_counters": self.spool.counters(),
            "stats": dict(self.stats),
        }
