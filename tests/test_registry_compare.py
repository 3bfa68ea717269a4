"""Two versions side by side, and the latency the fleet measured per hardware class (k-suppressed).

Telemetry rows are written directly (the ingest path has its own tests); what is under test is how
the pages group, suppress and show them.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from ota import aliases
from ota.models import ModelVersion, Variant
from telemetry import fleet_latency
from telemetry.binning import LATENCY_EDGES_MS
from telemetry.models import DriftResult, Report, Rollup
from tests import factories

pytestmark = pytest.mark.django_db

RPI = {"arch": "aarch64", "cores": 4, "ram_mb": 4096, "accelerator": "none"}
X86 = {"arch": "x86_64", "cores": 8, "ram_mb": 16384, "accelerator": "none"}
N_BINS = len(LATENCY_EDGES_MS) - 1


def hist(bin_index: int, n: float = 100.0) -> list[float]:
    """All of ``n`` inferences in one latency bin (bin 4 is 10-20 ms)."""
    return [n if i == bin_index else 0.0 for i in range(N_BINS)]


def profile(mean: float, classes: list[float]) -> dict:
    feats = [
        {"name": f"input[{j}]", "edges": [mean - 1, mean, mean + 1], "counts": [50, 50], "mean": mean, "std": 0.5}
        for j in range(4)
    ]
    output = {"kind": "classes", "n": 3, "counts": classes}
    return {"source": "reference_set", "n": 100, "features": feats, "output": output}


def report_row(version: ModelVersion, device: Any, latency: list[float], **over: Any) -> Report:
    start = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    fields = {
        "id": uuid.uuid4(),
        "device": device,
        "version": version,
        "window_start": start - timedelta(minutes=over.pop("back", 0)),
        "window_end": start + timedelta(minutes=5),
        "inference_count": sum(latency),
        "error_count": 0.0,
        "latency": latency,
        "outputs": [],
        "features": {},
        "mechanism": "laplace",
        "epsilon": 1.0,
        "received_at": timezone.now(),
    }
    fields.update(over)
    return Report.objects.create(**fields)


@pytest.fixture
def k3(settings: Any) -> int:
    settings.EDGEFLEET_MIN_COHORT = 3
    return 3


@pytest.fixture
def pair(db: None) -> dict[str, ModelVersion]:
    v1 = factories.staged_version("vib", "v1", seed=1)
    v2 = factories.staged_version("vib", "v2", seed=2, int8=True)
    v1.report = {
        **v1.report,
        "latency_ms": {"p50": 0.25, "p95": 0.5},
        "metadata": {"features": "rms,peak,kurtosis,skew", "classes": "normal,imbalance,bearing"},
    }
    v1.reference_profile = profile(0.0, [70, 20, 10])
    v1.save()
    v2.report = {
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 5]}],
        "outputs": [
            {"name": "probs", "dtype": "float32", "shape": ["batch", 3]},
            {"name": "label", "dtype": "int64", "shape": ["batch"]},
        ],
        "latency_ms": {"p50": 0.125, "p95": 0.375},
    }
    v2.reference_profile = profile(2.0, [40, 40, 20])
    v2.save()
    Variant.objects.filter(version=v2).update(metrics={"latency_ms": {"p50": 0.1, "p95": 0.2}, "agreement": 0.98})
    return {"v1": v1, "v2": v2}


# ---------------------------------------------------------------------------- latency per hardware


def test_hardware_class_is_read_from_what_the_device_declared() -> None:
    assert fleet_latency.hardware_class(RPI) == "aarch64 · cpu · 4 cores · 4 GiB"
    assert fleet_latency.hardware_class({"arch": "x86_64", "accelerator": "jetson", "ram_mb": 512}) == (
        "x86_64 · jetson · 512 MiB"
    )
    assert fleet_latency.hardware_class({}) == "unknown arch · cpu"
    assert fleet_latency.hardware_class(None) == "unknown arch · cpu"
    hostile = {"arch": "<script>x</script>", "cores": True, "ram_mb": float("nan")}
    assert "<" not in fleet_latency.hardware_class(hostile) and "cores" not in fleet_latency.hardware_class(hostile)


def test_by_class_sums_histograms_and_hides_classes_below_k() -> None:
    rows = [(f"d{i}", RPI, hist(4), 100.0) for i in range(3)]
    rows += [("d0", RPI, hist(6), 100.0)]  # a second window of the same device: devices stay 3
    rows += [(f"x{i}", X86, hist(1), 100.0) for i in range(2)]
    rows += [("bad", RPI, [1.0] * 3, 5.0), ("nan", RPI, [float("nan")] * N_BINS, 5.0), ("txt", RPI, "x", 1.0)]
    out = fleet_latency.by_class(rows, k=3)
    assert out["hidden"] == 1 and out["k"] == 3
    (row,) = out["classes"]
    assert row["hardware"] == "aarch64 · cpu · 4 cores · 4 GiB" and row["devices"] == 3 and row["inferences"] == 400
    assert 10 <= row["p50"] <= 20 and 50 <= row["p95"] <= 100
    # exactly k devices is shown; k + 1 needed hides it
    assert fleet_latency.by_class(rows, k=4)["classes"] == [] and fleet_latency.by_class(rows, k=4)["hidden"] == 2
    assert fleet_latency.by_class([], k=3) == {"classes": [], "hidden": 0, "k": 3}
    # noisy negative counts are clipped, not trusted
    noisy = [(f"d{i}", RPI, [-50.0, *hist(4)[1:]], 10.0) for i in range(3)]
    assert 10 <= fleet_latency.by_class(noisy, k=3)["classes"][0]["p50"] <= 20


def test_the_version_page_shows_fleet_latency_per_class_beside_the_server(
    pair: dict, k3: int, viewer_client: Client
) -> None:
    v1 = pair["v1"]
    for i in range(3):
        report_row(v1, factories.device(hardware=RPI, name=f"rpi-{i}")[0], hist(4))
    for i in range(2):
        report_row(v1, factories.device(hardware=X86, name=f"x86-{i}")[0], hist(1))
    # quarantined and old reports count nowhere: a third x86 device would otherwise reach k
    third = factories.device(hardware=X86, name="x86-q")[0]
    report_row(v1, third, hist(1), quarantined=True)
    report_row(v1, third, hist(1), back=60 * 24 * 10, received_at=timezone.now() - timedelta(days=10))
    page = viewer_client.get("/models/vib/versions/v1/").content.decode()
    section = page[page.index('id="fleet-latency"') :]
    section = section[: section.index('id="aliases"')]
    assert "server (validation, CPU)" in section and "0.250 ms" in section
    row = re.search(r'<tr data-hardware="aarch64 · cpu · 4 cores · 4 GiB">(.*?)</tr>', section).group(1)
    assert ">3<" in row and "ms" in row
    assert "x86_64" not in section
    assert "1 hardware class with fewer than 3 reporting devices not shown" in section
    # no reports at all: the empty state says why
    page = viewer_client.get("/models/vib/versions/v2/").content.decode()
    assert "No hardware class has 3 or more devices reporting this version yet." in page


def test_fleet_latency_is_kept_a_minute_per_version_and_k(
    pair: dict, k3: int, settings: Any, django_assert_num_queries: Any
) -> None:
    """The week's sum is costly on a big fleet: a second page within the minute reads no reports,
    and a changed k (or another version) is computed afresh, never served from another's entry."""
    v1 = pair["v1"]
    for i in range(3):
        report_row(v1, factories.device(hardware=RPI, name=f"rpi-{i}")[0], hist(4))
    first = fleet_latency.latency_by_hardware(v1.pk)
    assert [c["devices"] for c in first["classes"]] == [3]
    report_row(v1, factories.device(hardware=RPI, name="rpi-late")[0], hist(4))
    with django_assert_num_queries(0):
        assert fleet_latency.latency_by_hardware(v1.pk) == first  # kept: the fourth device waits
    settings.EDGEFLEET_MIN_COHORT = 4
    assert [c["devices"] for c in fleet_latency.latency_by_hardware(v1.pk)["classes"]] == [4]
    assert fleet_latency.latency_by_hardware(pair["v2"].pk)["classes"] == []


# ---------------------------------------------------------------------------------------- compare


def _rollup(version: ModelVersion, n_devices: int, errors: float, latency: list[float], back: int = 1) -> Rollup:
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=back)
    return Rollup.objects.create(
        version=version,
        cohort="all",
        window_start=start,
        window_seconds=3600,
        n_reports=n_devices,
        n_devices=n_devices,
        inference_count=sum(latency),
        error_count=errors,
        latency=latency,
        outputs=[],
        features={},
    )


def test_compare_page_shows_contract_sizes_latency_variants_and_overlaid_profiles(
    pair: dict, k3: int, viewer_client: Client
) -> None:
    v1, v2 = pair["v1"], pair["v2"]
    # v1 ran on the fleet (k devices); v2 only on 2 devices: its fleet figures stay hidden
    _rollup(v1, 3, 5.0, hist(4, 1000.0))
    last = _rollup(v1, 4, 15.0, hist(5, 1000.0), back=0)
    DriftResult.objects.create(
        version=v1, cohort="all", feature="input[0]", window_start=last.window_start, n_devices=4, n_reports=4,
        psi=0.31, js=0.1, w1=0.2, ks=0.2, threshold=0.2, drifted=True,
    )  # fmt: skip
    _rollup(v2, 2, 500.0, hist(9, 1000.0))
    r = viewer_client.get("/models/vib/compare/", {"a": "v1", "b": "v2"})
    assert r.status_code == 200
    page = r.content.decode()
    diff = page[page.index('id="contract-diff"') :]
    diff = diff[: diff.index("</table>")]
    assert re.search(r'data-change="changed"><td>input</td><td><code>input</code>', diff)
    assert re.search(r'data-change="same"><td>output</td><td><code>probs</code>', diff)
    assert re.search(r'data-change="added"><td>output</td><td><code>label</code>', diff) and "added in v2" in diff
    assert "0.250 / 0.500 ms" in page and "0.125 / 0.375 ms" in page
    variants = page[page.index('id="compare-variants"') :]
    assert "int8" in variants and "98%" in variants
    fleet = page[page.index('id="compare-fleet"') :]
    fleet = fleet[: fleet.index("</table>")]
    assert "1.0%" in fleet  # v1: 20 errors in 2,000 inferences
    assert "0.310 · 1 feature" in fleet
    assert "not on 3+ devices" in fleet and "25.0%" not in fleet  # v2 stays hidden below k
    figures = json.loads(re.search(r'id="profile-figures"[^>]*>(.*?)</script>', page, re.S).group(1))
    output = figures[0]
    assert output["id"] == "output" and [t["name"] for t in output["data"]] == ["v1", "v2"]
    assert output["data"][0]["x"] == ["normal", "imbalance", "bearing"]
    assert abs(sum(output["data"][1]["y"]) - 1.0) < 1e-9
    feat = figures[1]
    assert [t["name"] for t in feat["data"]] == ["v1", "v2"]
    assert feat["layout"]["title"]["text"].startswith("rms (input[0])")
    assert "input[0]" not in [f["layout"]["title"]["text"] for f in figures]  # named, never the bare key
    assert 'href="/models/vib/versions/v1/"' in page


def test_compare_by_alias_missing_versions_and_the_link_from_the_version_page(
    pair: dict, viewer_client: Client
) -> None:
    aliases.set_alias(pair["v2"], "production")
    page = viewer_client.get("/models/vib/compare/", {"a": "v1", "b": "@production"}).content.decode()
    assert 'id="contract-diff"' in page and "@production" in page
    r = viewer_client.get("/models/vib/compare/", {"a": "v1", "b": "<nope>"})
    assert r.status_code == 404 and "has no version “&lt;nope&gt;”" in r.content.decode()
    assert viewer_client.get("/models/vib/compare/").status_code == 200  # the picker alone
    assert viewer_client.get("/models/other/compare/", {"a": "v1", "b": "v2"}).status_code == 404
    # another model's version is not found under this model
    factories.staged_version("other", "o1", seed=7)
    assert viewer_client.get("/models/vib/compare/", {"a": "v1", "b": "o1"}).status_code == 404
    version_page = viewer_client.get("/models/vib/versions/v2/").content.decode()
    assert 'id="compare-form"' in version_page and 'action="/models/vib/compare/"' in version_page
    assert '<input type="hidden" name="b" value="v2">' in version_page


def test_compare_needs_a_login(client: Client, pair: dict) -> None:
    r = client.get("/models/vib/compare/", {"a": "v1", "b": "v2"})
    assert r.status_code == 302 and "/login" in r["Location"]
