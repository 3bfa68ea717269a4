"""Every chart names features as the model or its reference set does, never only ``input[0]``.

Names come from the model's ``features`` metadata, else from a reference .csv's column headers
(kept by validation as ``reference_columns``). Validation runs for real (sandbox child, onnxruntime).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.test import Client

from accounts.models import ApiToken
from ota import profiles
from ota.models import ModelVersion
from ota.names import feature_names
from tests.test_registry_upload import npz_bytes, onnx_bytes, upload_and_validate, upload_file

pytestmark = pytest.mark.django_db

HEADERS = ["rms", "peak", "kurtosis", "temperature"]
INPUTS = [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]


@pytest.fixture
def token(operator: Any) -> str:
    return ApiToken.issue(operator, "pipeline")[1]


def csv_bytes(headers: list[str], rows: int = 60, seed: int = 1) -> bytes:
    x = np.random.default_rng(seed).normal(size=(rows, len(headers)))
    lines = [",".join(headers)] + [",".join(f"{v:.5f}" for v in row) for row in x]
    return ("\n".join(lines) + "\n").encode()


def figures_of(page: str, script_id: str = "profile-figures") -> list[dict]:
    return json.loads(re.search(rf'id="{script_id}"[^>]*>(.*?)</script>', page, re.S).group(1))


def test_column_names_only_for_plain_csv_headers_of_one_2d_input() -> None:
    cols = {h: np.zeros(3) for h in HEADERS}
    assert profiles.column_names(cols, INPUTS, "csv") == {
        "reference_columns": {f"input[{j}]": h for j, h in enumerate(HEADERS)}
    }
    assert profiles.column_names({f"input[{j}]": np.zeros(3) for j in range(4)}, INPUTS, "csv") == {}
    assert profiles.column_names(cols, INPUTS, "npz") == {}
    two = [*INPUTS, {"name": "extra", "dtype": "float32", "shape": ["batch", 1]}]
    assert profiles.column_names(cols, two, "csv") == {}


def test_metadata_names_win_and_hostile_headers_are_cleaned() -> None:
    report = {"inputs": INPUTS, "reference_columns": {f"input[{j}]": h for j, h in enumerate(HEADERS)}}
    assert feature_names(report)["input[0]"] == "rms"
    assert feature_names({**report, "metadata": {"features": "a,b,c,d"}})["input[0]"] == "a"
    hostile = {"inputs": INPUTS, "reference_columns": {"input[0]": "<img src=x onerror=1>", "bogus": "x"}}
    assert feature_names(hostile) == {"input[0]": "img srcx onerror1"}
    assert feature_names({"inputs": INPUTS, "reference_columns": "nope"}) == {}


def test_csv_headers_name_the_features_on_every_chart(
    client: Client,
    token: str,
    store: Path,
    viewer_client: Client,
) -> None:
    v1 = upload_and_validate(client, token, reference=upload_file(csv_bytes(HEADERS), "ref.csv"))
    assert v1.status == "staged", v1.error
    assert v1.report["reference_columns"] == {f"input[{j}]": h for j, h in enumerate(HEADERS)}
    x = np.random.default_rng(2).normal(size=(80, 4)).astype(np.float32)
    v2 = upload_and_validate(
        client, token, "v2", file=upload_file(onnx_bytes(seed=2)), reference=upload_file(npz_bytes(input=x), "ref.npz")
    )
    assert v2.status == "staged" and "reference_columns" not in v2.report

    def feature_titles(figs: list[dict]) -> list[str]:
        return [f["layout"]["title"]["text"] for f in figs if f["id"].startswith("feature-")]

    # the version page's reference profile
    titles = feature_titles(figures_of(viewer_client.get("/models/fraud/versions/v1/").content.decode()))
    assert [t.split(" · ")[0] for t in titles] == [f"{h} (input[{j}])" for j, h in enumerate(HEADERS)]
    # the compare page borrows v1's names for v2 (same contract)
    page = viewer_client.get("/models/fraud/compare/", {"a": "v1", "b": "v2"}).content.decode()
    titles = feature_titles(figures_of(page))
    assert len(titles) == 4
    assert all(t.startswith(f"{h} (input[{j}])") for j, (t, h) in enumerate(zip(titles, HEADERS, strict=True)))
    # the telemetry page's feature picker
    page = viewer_client.get(f"/telemetry/versions/{v1.pk}/").content.decode()
    assert "rms (input[0])" in page and "temperature (input[3])" in page
    assert ModelVersion.objects.count() == 2


def test_no_chart_title_is_a_bare_tensor_column_when_names_exist() -> None:
    from ota.charts import overlay_figures, profile_figures
    from telemetry import charts

    names = {f"input[{j}]": h for j, h in enumerate(HEADERS)}
    prof = {
        "n": 10,
        "features": [
            {"name": f"input[{j}]", "edges": [0.0, 1.0, 2.0], "counts": [5, 5], "mean": 1.0, "std": 0.5}
            for j in range(4)
        ],
        "output": {"kind": "bins", "edges": [0.0, 1.0], "counts": [10]},
    }
    bare = re.compile(r"^input\[\d+\]")
    for figs in (profile_figures(prof, names), overlay_figures(prof, prof, ("v1", "v2"), names)):
        for f in figs:
            assert not bare.match(f["layout"]["title"]["text"]), f["layout"]["title"]
            assert not bare.match(f["alt"])
    drift = json.loads(charts.drift_over_time({"input[0]": []}, names))
    assert all(not bare.match(t.get("name", "")) for t in drift.get("data", []))
