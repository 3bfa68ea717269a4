"""Plotly figures for the telemetry pages, built server-side from ``services.version_overview``.

Each function returns ``fig.to_json()``; the template hands it to ``Plotly.newPlot``. Hidden
(k-suppressed) cells are drawn as gaps with their reason in the hover text, never as numbers.
"""

from __future__ import annotations

import plotly.graph_objects as go

LAYOUT = dict(margin=dict(l=50, r=20, t=40, b=40), height=340, template="plotly_white", legend=dict(orientation="h"))


def drift_over_time(series: dict[str, list[tuple]]) -> str:
    fig = go.Figure()
    for feature, pts in series.items():
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=feature))
    levels = [p[2] for pts in series.values() for p in pts]
    if levels:
        fig.add_hline(y=min(levels), line_dash="dot", annotation_text="lowest alarm level")
    fig.update_layout(title="PSI per feature over time (whole fleet)", yaxis_title="PSI", **LAYOUT)
    return fig.to_json()


def overlay(data: dict | None) -> str:
    fig = go.Figure()
    if data and data["current"]:
        edges = data["edges"]
        labels = (
            [f"{edges[i]:g}…{edges[i + 1]:g}" for i in range(len(edges) - 1)]
            if edges
            else [f"class {i}" for i in range(len(data["current"]))]
        )
        if data["reference"]:
            fig.add_trace(go.Bar(x=labels, y=data["reference"], name="reference", opacity=0.6))
        fig.add_trace(go.Bar(x=labels, y=data["current"], name=f"latest window ({data['n_devices']} devices)"))
        title = f"{data['feature']}: latest window vs reference"
    else:
        title = "No window with enough devices yet"
    fig.update_layout(title=title, barmode="overlay", yaxis_title="share", **LAYOUT)
    return fig.to_json()


def heatmap(heat: dict) -> str:
    cohorts, features = heat["cohorts"], heat["features"]
    z, text = [], []
    for c in cohorts:
        z.append([heat["values"].get((c, f)) for f in features])
        text.append([heat["notes"].get((c, f), "") for f in features])
    fig = go.Figure(
        go.Heatmap(
            z=z, x=features, y=cohorts, text=text, colorscale="YlOrRd", zmin=0, zmax=0.5,
            hovertemplate="%{y} · %{x}<br>PSI %{z:.3f}<br>%{text}<extra></extra>", colorbar=dict(title="PSI"),
        )
    )  # fmt: skip
    fig.update_layout(title="Drift by feature × cohort (latest window; blank = hidden, fewer than k)", **LAYOUT)
    return fig.to_json()


def health(series: dict[str, list[tuple]]) -> str:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("error rate", "latency p95 (ms)"))
    for label, pts in series.items():
        x = [p[0] for p in pts]
        fig.add_trace(go.Scatter(x=x, y=[p[1] for p in pts], mode="lines+markers", name=label), row=1, col=1)
        fig.add_trace(
            go.Scatter(x=x, y=[p[3] for p in pts], mode="lines+markers", name=f"{label} p95", showlegend=False),
            row=1,
            col=2,
        )
    fig.update_layout(title="Error rate and latency by version (whole fleet)", **LAYOUT)
    return fig.to_json()
