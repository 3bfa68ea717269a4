"""Agent units without a server: binning parity, DP calibration, spool bounds, store crash safety, backoff."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.agent import Agent
from agent.aggregate import LATENCY_EDGES_MS, WindowAggregator, feature_column, histogram
from agent.backoff import Backoff
from agent.client import Client, DownloadIncomplete, ServerAway, parse_retry_after
from agent.config import AgentConfig, detect_hardware, load_config
from agent.guard import Guard, GuardPolicy
from agent.privacy import add_noise, gaussian_sigma, report_sensitivity
from agent.runtime import Runtime, SessionPool, synthetic_inputs
from agent.spool import Spool
from agent.store import Installed, ModelStore
from agent.verify import VerifyError, canonical, sha256_file, verify_artifact, verify_manifest
from telemetry import binning
from tests.onnx_models import mlp_classifier, save

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "v1": save(mlp_classifier(seed=1), tmp_path / "v1.onnx"),
        "v2": save(mlp_classifier(seed=2), tmp_path / "v2.onnx"),
    }


# -- binning and aggregation ----------------------------------------------------------------------
def test_agent_histogram_agrees_with_server_binning() -> None:
    rng = np.random.default_rng(7)
    assert binning.LATENCY_EDGES_MS == LATENCY_EDGES_MS
    for edges in (binning.DEFAULT_FEATURE_EDGES, binning.LATENCY_EDGES_MS, binning.DEFAULT_SCORE_EDGES, [0.0, 1.0]):
        values = np.concatenate([rng.normal(0, 50, 2000), edges, [-1e9, 1e9]])
        assert np.array_equal(histogram(values, edges), binning.histogram(values, edges))
    assert np.array_equal(histogram([], [0, 1, 2]), binning.histogram(np.array([]), [0, 1, 2]))


def test_feature_is_column_j_of_its_input() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert feature_column({"input": x}, "input[2]").tolist() == [2, 6, 10]
    assert feature_column({"input": x}, "other[0]") is None
    assert feature_column({"input": x}, "input[9]") is None


def test_window_aggregates_counts_and_histograms_without_noise() -> None:
    spec = {
        "features": [{"name": "input[0]", "edges": [-1, 0, 1]}, {"name": "input[1]", "edges": [0, 10]}],
        "output": {"kind": "classes", "n": 3},
    }
    agg = WindowAggregator("m", "v1", spec, LATENCY_EDGES_MS)
    x = np.array([[-5, 1], [0.5, 2], [3, 3]], dtype=np.float32)
    probs = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    agg.record({"input": x}, {"probs": probs}, 3.0)
    agg.record({"input": x[:1]}, None, 700.0)  # a failed call of one row
    rep = agg.report({"mechanism": "none", "epsilon": 1.0}, np.random.default_rng(0))
    assert rep["inference_count"] == 4 and rep["error_count"] == 1
    assert rep["outputs"]["counts"] == [1, 1, 1]
    assert rep["features"]["input[0]"]["counts"] == binning.histogram(np.array([-5, 0.5, 3, -5]), [-1, 0, 1]).tolist()
    lat = rep["latency_ms"]["counts"]
    assert len(lat) == len(LATENCY_EDGES_MS) - 1 and sum(lat) == 4 and lat[2] == 3 and lat[9] == 1
    assert rep["privacy"] == {"mechanism": "none", "epsilon": 1.0}

    bins = WindowAggregator("m", "v1", {"output": {"kind": "bins", "edges": [0, 0.5, 1]}}, LATENCY_EDGES_MS)
    bins.record({"input": x}, {"score": np.array([[0.2], [0.9], [0.6]])}, 1.0)
    assert bins.report({"mechanism": "none"}, np.random.default_rng(0))["outputs"]["counts"] == [1, 2]


# -- differential privacy --------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon,sens", [(1.0, 1.0), (0.5, 7.0), (2.0, 3.0)])
def test_laplace_noise_variance_is_two_b_squared(epsilon: float, sens: float) -> None:
    rng = np.random.default_rng(1)
    noise = add_noise(np.zeros(200_000), "laplace", epsilon, sens, rng)
    expected = 2 * (sens / epsilon) ** 2
    assert abs(noise.mean()) < 0.05 * sens / epsilon
    assert noise.var() == pytest.approx(expected, rel=0.03)


def test_gaussian_noise_sigma_and_report_sensitivity() -> None:
    rng = np.random.default_rng(2)
    l1, l2 = report_sensitivity({"features": [{"name": f"input[{j}]", "edges": [0, 1]} for j in range(4)]})
    assert (l1, l2) == (7.0, pytest.approx(7**0.5))
    noise = add_noise(np.zeros(200_000), "gaussian", 1.0, l2, rng)
    assert noise.std() == pytest.approx(gaussian_sigma(l2, 1.0), rel=0.02)
    assert np.array_equal(add_noise(np.ones(3), "none", 1.0, 1.0, rng), np.ones(3))
    with pytest.raises(ValueError):
        add_noise(np.ones(3), "laplace", 0.0, 1.0, rng)
    with pytest.raises(ValueError):
        add_noise(np.ones(3), "rr", 1.0, 1.0, rng)


def test_report_counts_carry_calibrated_noise() -> None:
    spec = {"features": [{"name": "input[0]", "edges": [-1, 0, 1]}], "output": {"kind": "classes", "n": 2}}
    rng = np.random.default_rng(3)
    diffs = []
    for _ in range(3000):
        agg = WindowAggregator("m", "v", spec, LATENCY_EDGES_MS)
        agg.record({"input": np.zeros((10, 1), np.float32)}, {"p": np.tile([[0.9, 0.1]], (10, 1))}, 1.0)
        diffs.append(agg.report({"mechanism": "laplace", "epsilon": 1.0}, rng)["inference_count"] - 10)
    assert np.var(diffs) == pytest.approx(2 * report_sensitivity(spec)[0] ** 2, rel=0.1)


# -- spool -----------------------------------------------------------------------------------------
def test_spool_is_bounded_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite3", max_items=5)
    dropped = sum(sp.put("event", {"id": f"e{i}"}) for i in range(8))
    assert dropped == 3 and len(sp) == 5
    assert [e["id"] for e in sp.peek("event", 10)] == ["e3", "e4", "e5", "e6", "e7"]
    assert sp.take_dropped() == 3 and sp.take_dropped() == 0
    assert sp.counters()["dropped"] == 3


def test_spool_keeps_until_ack_across_restarts_and_ignores_replayed_ids(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.sqlite3")
    sp.put("report", {"id": "r1", "n": 1})
    sp.put("report", {"id": "r1", "n": 1})
    sp.put("event", {"id": "e1"})
    assert sp.count("report") == 1
    again = Spool(tmp_path / "s.sqlite3")  # a restart
    assert again.peek("report", 10) == [{"id": "r1", "n": 1}]
    again.ack(["r1"])
    again.reject(["e1"])
    assert len(again) == 0 and again.counters()["rejected"] == 1


def test_agent_reports_spool_drops_as_an_event(tmp_path: Path) -> None:
    cfg = AgentConfig(server="http://127.0.0.1:9", enrollment_key="k", data_dir=tmp_path, spool_max_items=3)
    agent = Agent(cfg)
    for i in range(5):
        agent.event("download_failed", "m", "v1", n=i)
    with pytest.raises(ServerAway):
        agent.flush()  # nothing listens on port 9
    kinds = [e["kind"] for e in agent.spool.peek("event", 10)]
    assert "spool_dropped" in kinds
    drop = next(e for e in agent.spool.peek("event", 10) if e["kind"] == "spool_dropped")
    assert drop["details"]["count"] == 2


# -- store: atomic install and recovery ------------------------------------------------------------
CRASH_CHILD = r"""
import os, sys
from pathlib import Path
from agent.store import Installed, ModelStore
data, src, sha, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
calls = [0]
def crash_at_n(f):
    def w(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os._exit(9)  # power cut: nothing after this reaches the disk
        return f(*a, **k)
    return w
os.replace, os.fsync, os.unlink = crash_at_n(os.replace), crash_at_n(os.fsync), crash_at_n(os.unlink)
store = ModelStore(data)
part = store.part_for(sha)
body = src.read_bytes()
with open(part, "wb") as f:
    f.write(body[: len(body) // 2])
    f.flush(); os.fsync(f.fileno())
    f.write(body[len(body) // 2 :])
    f.flush(); os.fsync(f.fileno())
store.install(part, sha)
store.activate("m", Installed("v2", sha))
print("done", calls[0])
"""


def test_a_crash_at_any_step_of_an_install_leaves_a_loadable_model(tmp_path: Path, models: dict) -> None:
    template = tmp_path / "template"
    store = ModelStore(template)
    sha1, sha2 = sha256_file(models["v1"]), sha256_file(models["v2"])
    shutil.copy(models["v1"], store.path_for(sha1))
    store.activate("m", Installed("v1", sha1))
    seen = set()
    for n in range(1, 30):
        data = tmp_path / f"run{n}"
        shutil.copytree(template, data)
        child = subprocess.run(
            [sys.executable, "-c", CRASH_CHILD, str(data), str(models["v2"]), sha2, str(n)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        after = ModelStore(data)
        after.recover()
        active = after.active("m")
        assert active is not None, f"crash at step {n} left no model"
        assert sha256_file(after.path_for(active.sha256)) == active.sha256
        ort.InferenceSession(str(after.path_for(active.sha256)), providers=["CPUExecutionProvider"])
        seen.add(active.version)
        if child.returncode == 0:
            assert "done" in child.stdout and active.version == "v2"
            assert after.previous("m").version == "v1"
            break
        assert child.returncode == 9, child.stderr
    else:
        pytest.fail("the install never completed")
    assert seen == {"v1", "v2"} and n >= 6  # crashed at every step between the first write and the end


def test_missing_or_corrupt_active_file_falls_back_to_previous(tmp_path: Path, models: dict) -> None:
    store = ModelStore(tmp_path)
    sha1, sha2 = sha256_file(models["v1"]), sha256_file(models["v2"])
    for sha, v in ((sha1, "v1"), (sha2, "v2")):
        shutil.copy(models[v], store.path_for(sha))
        store.activate("m", Installed(v, sha))
    assert store.active("m").version == "v2" and store.previous("m").version == "v1"
    with open(store.path_for(sha2), "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff\xff")
    store2 = ModelStore(tmp_path)
    notes = store2.recover()
    assert store2.active("m").version == "v1" and notes
    assert sha2 in store2.blocked("m")
    # and with the state file mid-write (a temp left over) nothing breaks
    (tmp_path / ".state.json.tmp").write_bytes(b'{"models": {"m": {"act')
    assert ModelStore(tmp_path).active("m").version == "v1"
    assert not (tmp_path / ".state.json.tmp").exists()


def test_agent_restart_loads_the_active_version_and_serves_predictions(tmp_path: Path, models: dict) -> None:
    store = ModelStore(tmp_path)
    sha1 = sha256_file(models["v1"])
    shutil.copy(models["v1"], store.path_for(sha1))
    store.activate("m", Installed("v1", sha1))
    agent = Agent(AgentConfig(server="http://127.0.0.1:9", enrollment_key="k", data_dir=tmp_path))
    out = agent.predict(np.zeros((2, 4), np.float32))
    assert out["probs"].shape == (2, 3)


# -- runtime ---------------------------------------------------------------------------------------
def test_smoke_inference_honours_symbolic_and_fixed_dims(tmp_path: Path) -> None:
    pool = SessionPool()
    for sym in (True, False):
        p = save(mlp_classifier(n_features=5, symbolic_batch=sym, seed=3), tmp_path / f"m{sym}.onnx")
        rt = Runtime.load(pool, "m", "v", f"sha{sym}", p)
        rt.smoke()
        feeds = synthetic_inputs(rt.session, batch=4)
        assert feeds["input"].shape == ((4, 5) if sym else (1, 5))
    assert len(pool) == 2
    assert pool.get(p, "shaFalse") is pool.get(tmp_path / "ignored", "shaFalse")  # one session per sha256


# -- verification ----------------------------------------------------------------------------------
def _signed(manifest: dict, key: Ed25519PrivateKey, key_id: str = "k1") -> dict:
    sig = base64.b64encode(key.sign(canonical(manifest))).decode()
    return {"manifest": manifest, "signature": {"alg": "Ed25519", "key_id": key_id, "value": sig}}


def test_manifest_signature_is_checked_against_the_pinned_key(tmp_path: Path, models: dict) -> None:
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    pinned = {"alg": "Ed25519", "key_id": "k1", "public_key": pub}
    m = {"protocol": 1, "models": [{"model": "ü", "version": "v2"}], "poll_interval": 60}
    assert verify_manifest(_signed(m, key), pinned) == m
    tampered = _signed(m, key)
    tampered["manifest"]["poll_interval"] = 1
    with pytest.raises(VerifyError):
        verify_manifest(tampered, pinned)
    with pytest.raises(VerifyError):
        verify_manifest(_signed(m, Ed25519PrivateKey.generate()), pinned)  # an impostor's key, same key id
    with pytest.raises(VerifyError):
        verify_manifest(_signed(m, key, key_id="other"), pinned)
    with pytest.raises(VerifyError):
        verify_manifest({"manifest": m}, pinned)
    sha = sha256_file(models["v1"])
    verify_artifact(models["v1"], sha, models["v1"].stat().st_size)
    with pytest.raises(VerifyError):
        verify_artifact(models["v2"], sha)


# -- guard -----------------------------------------------------------------------------------------
def test_guard_falls_back_on_error_or_latency_spike_but_not_on_noise() -> None:
    rng = np.random.default_rng(4)
    policy = GuardPolicy(min_samples=50)

    def guard_with_baseline() -> Guard:
        g = Guard(policy)
        for _ in range(200):
            g.observe(rng.random() > 0.01, float(rng.normal(5, 1)))
        g.switched()
        return g

    quiet = guard_with_baseline()
    assert not any(quiet.observe(rng.random() > 0.01, float(rng.normal(5, 1))).fall_back for _ in range(300))
    errors = guard_with_baseline()
    verdicts = [errors.observe(rng.random() > 0.3, 5.0) for _ in range(60)]
    assert verdicts[-1].fall_back and "error rate" in verdicts[-1].reason
    assert not verdicts[10].fall_back  # not before min_samples
    slow = guard_with_baseline()
    verdict = [slow.observe(True, float(rng.normal(60, 5))) for _ in range(60)][-1]
    assert verdict.fall_back and "latency" in verdict.reason and verdict.numbers["baseline_p90_ms"] < 10


# -- backoff, Retry-After, Range -------------------------------------------------------------------
def test_backoff_full_jitter_is_capped_and_never_undercuts_retry_after() -> None:
    b = Backoff(base=1.0, cap=30.0)
    delays = [b.next_delay() for _ in range(40)]
    assert all(0 <= d <= 30 for d in delays) and max(delays[10:]) > 8
    assert all(b.next_delay(retry_after=45) >= 45 for _ in range(20))
    b.reset()
    assert b.next_delay() <= 1.0
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None


class _Handler(http.server.BaseHTTPRequestHandler):
    """A tiny real HTTP server: 429 for the manifest, Range for an artifact."""

    hits: list[str]
    body = b""
    cut_after: int | None = None

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path + " " + (self.headers.get("Range") or ""))
        if self.path.startswith("/api/v1/manifest"):
            self.send_response(429)
            self.send_header("Retry-After", "3")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        data = self.body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(data[: self.cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(data)


@pytest.fixture
def tiny_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"hits": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", handler
    srv.shutdown()


def test_agent_honours_retry_after_without_hammering(tmp_path: Path, tiny_server: tuple) -> None:
    url, handler = tiny_server
    cfg = AgentConfig(server=url, enrollment_key="k", data_dir=tmp_path, poll_interval=0.1)
    agent = Agent(cfg)
    agent.identity = {"device_id": "d", "token": "t", "signing_key": {}}
    first = agent.tick()
    assert first >= 3.0 or agent.next_net_at - time.monotonic() >= 2.9
    for _ in range(20):  # the host's loop may wake often (window roll-over); no extra requests
        agent.tick()
    assert sum("manifest" in h for h in handler.hits) == 1
    assert agent.stats["server_away"] == 1


def test_download_resumes_with_range_after_a_cut(tmp_path: Path, tiny_server: tuple, models: dict) -> None:
    url, handler = tiny_server
    handler.body = models["v1"].read_bytes()
    handler.cut_after = cut = len(handler.body) // 2
    client = Client(url, token="t", timeout=5)
    part = tmp_path / "a.part"
    with pytest.raises(DownloadIncomplete):
        client.download("/api/v1/artifacts/x", part, len(handler.body))
    assert 0 < part.stat().st_size < len(handler.body)
    client.download("/api/v1/artifacts/x", part, len(handler.body))
    assert part.read_bytes() == handler.body
    assert handler.hits[-1].endswith(f"bytes={cut}-")


# -- config ----------------------------------------------------------------------------------------
def test_config_from_toml_and_json_with_flag_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'server = "http://127.0.0.1:8000/"\nenrollment_key = "efk_x"\ndata_dir = "/tmp/d"\n[labels]\nregion = "eu"\n'
    )
    cfg = load_config(tmp_path / "a.toml", name="cam-1")
    assert cfg.server == "http://127.0.0.1:8000" and cfg.labels == {"region": "eu"} and cfg.name == "cam-1"
    (tmp_path / "b.json").write_text(json.dumps({"server": "x", "enrollment_key": "k", "data_dir": "d", "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        load_config(tmp_path / "b.json")
    hw = detect_hardware(tmp_path)
    assert hw["cores"] >= 1 and hw["ram_mb"] > 0 and "CPUExecutionProvider" in hw["providers"]
    assert hw["ort_version"] == ort.__version__ and hw["storage_free_mb"] > 0


def test_cli_status_reads_the_data_dir(tmp_path: Path, models: dict) -> None:
    store = ModelStore(tmp_path)
    sha1 = sha256_file(models["v1"])
    shutil.copy(models["v1"], store.path_for(sha1))
    store.activate("m", Installed("v1", sha1))
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    assert json.loads(out.stdout)["models"]["m"]["active"]["version"] == "v1"
