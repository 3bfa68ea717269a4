"""Plotly figures of a reference profile, built server-side and sent as JSON to the page."""

import itertools
import json

import plotly.graph_objects as go

MAX_FEATURE_PLOTS = 24


def _bars(title: str, labels: list[str], counts: list[float]) -> dict:
    fig = go.Figure(go.Bar(x=labels, y=counts, marker_color="#2563eb"))
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=260,
        margin={"l": 40, "r": 10, "t": 36, "b": 60},
        xaxis={"tickangle": -45, "tickfont": {"size": 9}},
        yaxis={"title": "rows"},
    )
    return json.loads(fig.to_json())


def _bin_labels(edges: list[float]) -> list[str]:
    return [f"{a:.3g}–{b:.3g}" for a, b in itertools.pairwise(edges)]


def profile_figures(profile: dict | None) -> list[dict]:
    """One bar chart per feature (the first ``MAX_FEATURE_PLOTS``) and one for the output."""
    if not profile:
        return []
    figs = []
    output = profile.get("output") or {}
    if output.get("kind") == "classes":
        figs.append(
            {"id": "output", **_bars("output: argmax class", [str(i) for i in range(output["n"])], output["counts"])}
        )
    elif output.get("kind") == "bins":
        figs.append({"id": "output", **_bars("output values", _bin_labels(output["edges"]), output["counts"])})
    for i, f in enumerate(profile.get("features", [])[:MAX_FEATURE_PLOTS]):
        title = f"{f['name']} · mean {f['mean']:.3g} · std {f['std']:.3g}"
        figs.append({"id": f"feature-{i}", **_bars(title, _bin_labels(f["edges"]), f["counts"])})
    return figs
