"""Charts a person can read: feature names, densities over the value axis, one colour per version,
legends away from the time axis, and the key numbers in words beside every chart."""

import json

import pytest
from django.utils import timezone

from edgefleet import display
from ota import charts as profile_charts
from ota.names import class_names, feature_names, label
from telemetry import charts
from telemetry.binning import DEFAULT_FEATURE_EDGES

REPORT = {
    "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
    "metadata": {"features": "rms,peak,kurtosis,temperature", "classes": "normal,imbalance,bearing_fault"},
}


def test_features_and_classes_carry_the_names_the_model_was_exported_with() -> None:
    names = feature_names(REPORT)
    assert names == {"input[0]": "rms", "input[1]": "peak", "input[2]": "kurtosis", "input[3]": "temperature"}
    assert label("input[2]", names) == "kurtosis (input[2])" and label("output", names) == "output"
    assert class_names(REPORT) == ["normal", "imbalance", "bearing_fault"]
    # A list of the wrong length names no column (rather than the wrong ones); markup never reaches a chart.
    assert feature_names({**REPORT, "metadata": {"features": "a,b"}}) == {}
    hostile = {**REPORT, "metadata": {"features": '<a href="https://x">rms</a>,p,k,t'}}
    assert "<" not in feature_names(hostile)["input[0]"] and ">" not in feature_names(hostile)["input[0]"]
    assert feature_names({}) == {} and feature_names({"metadata": "not a dict"}) == {}


def test_quantile_bins_are_drawn_as_densities_not_flat_bars() -> None:
    edges = [0.0, 1.0, 1.5, 4.0]  # equal shares in bins of different widths
    dens = charts.densities(edges, [1 / 3, 1 / 3, 1 / 3])
    assert dens == pytest.approx([1 / 3, 2 / 3, 1 / 3 / 2.5])
    data = {"feature": "input[0]", "edges": edges, "current": [0.1, 0.2, 0.7], "reference": [1 / 3] * 3}
    data["n_devices"] = 30
    fig = json.loads(charts.overlay(data, feature_names(REPORT)))
    ref = fig["data"][0]
    assert ref["x"] == edges and ref["line"]["shape"] == "hv" and ref["y"][:3] == pytest.approx(dens)
    assert fig["layout"]["xaxis"]["title"]["text"] == "rms (input[0])"


def test_wide_default_bins_do_not_squash_the_view() -> None:
    edges = list(DEFAULT_FEATURE_EDGES)
    shares = [0.0] * (len(edges) - 1)
    shares[7], shares[8] = 0.5, 0.5  # everything between -0.5 and 0.5
    lo, hi = charts._view_range(edges, shares)
    assert (lo, hi) == (-0.5, 0.5)


def test_one_colour_per_version_and_legends_above_the_plot() -> None:
    colours = display.colours(["v1", "v2", "v3"])
    assert len(set(colours.values())) == 3 and display.colours(["v1", "v2"])["v1"] == colours["v1"]
    at = timezone.now()
    fig = json.loads(charts.health({"v1": [(at, 0.01, 1.0, 2.0)], "v2": [(at, 0.2, 1.0, 9.0)]}, colours))
    by_version: dict[str, set] = {}
    for trace in fig["data"]:
        by_version.setdefault(trace["name"], set()).add(trace["line"]["color"])
    assert by_version == {"v1": {colours["v1"]}, "v2": {colours["v2"]}}, "the same colour in both panels"
    assert sum(t.get("showlegend", True) for t in fig["data"]) == 2, "one legend entry per version"
    assert fig["layout"]["legend"]["yanchor"] == "bottom" and fig["layout"]["legend"]["y"] > 1
    drift = json.loads(charts.drift_over_time({"input[0]": [(at, 0.1, 0.2)]}, feature_names(REPORT)))
    assert drift["layout"]["legend"]["y"] > 1 and drift["data"][0]["name"] == "rms (input[0])"


def test_profile_charts_have_names_densities_and_words() -> None:
    profile = {
        "features": [{"name": "input[0]", "edges": [0.0, 1.0, 3.0], "counts": [50, 50], "mean": 1.2, "std": 0.8}],
        "output": {"kind": "classes", "n": 3, "counts": [60, 30, 10]},
    }
    figs = profile_charts.profile_figures(profile, feature_names(REPORT), class_names(REPORT))
    output, rms = figs
    assert output["alt"] == "output classes: normal 60%, imbalance 30%, bearing_fault 10%"
    assert output["data"][0]["x"] == ["normal", "imbalance", "bearing_fault"]
    assert rms["alt"].startswith("rms (input[0]): mean 1.2") and rms["data"][0]["y"][:2] == pytest.approx([0.5, 0.25])


@pytest.mark.parametrize(("n", "text"), [(324_000_121, "309.0 MiB"), (1023, "1,023 bytes"), (1, "1 byte"), (None, "—")])
def test_sizes_in_binary_units_named_as_such(n, text) -> None:
    assert display.size(n) == text


def test_plain_text_for_any_value() -> None:
    assert display.plain({"previous": None}) == "previous —"
    assert display.plain(["batch", 4]) == "batch, 4"
    assert display.plain({"a": {"b": [1, 2.5]}, "ok": True}) == "a b 1, 2.5 · ok yes"
    assert display.plain(1234567) == "1,234,567" and display.plain(0.123456) == "0.1235"
    assert display.shape(["batch", 4]) == "batch × 4" and display.shape([None, 3]) == "? × 3"
