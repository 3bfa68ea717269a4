"""Plotly figures for the telemetry pages, built server-side from ``services.version_overview``.

Each function returns ``fig.to_json()``; the template hands it to ``Plotly.newPlot``. Hidden
(k-suppressed) cells are drawn as gaps with their reason in the hover text, never as numbers.
Titles are the page's headings (not drawn in the figure), legends sit above the plot so they never
meet the time axis, features carry the names the model was exported with (``ota.names``), every
version has one colour on every chart (``edgefleet.display.colours``), and histograms are drawn as
densities over the value axis: quantile bins hold equal shares, so as bars they were flat and
said nothing; per unit of the value axis they show the shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import plotly.graph_objects as go
from django.utils import timezone

from ota.names import label

LAYOUT = dict(
    margin=dict(l=55, r=20, t=30, b=45),
    height=340,
    template="plotly_white",
    legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"),
)
TIME_AXIS = dict(type="date", title=dict(text="window start"), automargin=True)


def _local(values: Sequence[datetime]) -> list[str]:
    """Times in the page's zone without an offset (Plotly drops offsets and would draw UTC)."""
    return [timezone.localtime(t).replace(tzinfo=None).isoformat(timespec="seconds") for t in values]


def drift_over_time(series: dict[str, list[tuple]], names: dict[str, str] | None = None) -> str:
    names = names or {}
    fig = go.Figure()
    for feature, pts in series.items():
        fig.add_trace(
            go.Scatter(
                x=_local([p[0] for p in pts]),
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=label(feature, names),
                customdata=[p[3] if len(p) > 3 else "" for p in pts],
                hovertemplate="%{x|%H:%M:%S} · PSI %{y:.3f}<br>%{customdata}<extra>%{fullData.name}</extra>",
            )
        )
    levels = [p[2] for pts in series.values() for p in pts]
    if levels:
        fig.add_hline(y=min(levels), line_dash="dot", annotation_text="lowest alarm level")
    fig.update_layout(yaxis_title="PSI", xaxis=TIME_AXIS, **LAYOUT)
    return fig.to_json()


def densities(edges: Sequence[float], shares: Sequence[float]) -> list[float]:
    """Share per unit of the value axis for each bin (a bin of zero width counts as width 1)."""
    out = []
    for i, share in enumerate(shares):
        width = float(edges[i + 1]) - float(edges[i])
        out.append(float(share) / width if width > 0 else float(share))
    return out


def _view_range(edges: Sequence[float], *dists: Sequence[float] | None, tail: float = 0.005) -> list[float]:
    """The part of the value axis holding all but ``tail`` of every distribution at each end.

    Default edges reach ±1000 so that anything is counted; drawn whole, the bins near zero vanish.
    """
    lo, hi = float(edges[-1]), float(edges[0])
    for d in dists:
        if not d or sum(d) <= 0:
            continue
        total, cum = float(sum(d)), 0.0
        first = last = None
        for i, share in enumerate(d):
            cum += float(share)
            if first is None and cum / total > tail:
                first = i
            if last is None and cum / total >= 1 - tail:
                last = i
        lo, hi = min(lo, float(edges[first or 0])), max(hi, float(edges[(last or len(d) - 1) + 1]))
    return [lo, hi] if lo < hi else [float(edges[0]), float(edges[-1])]


def overlay(data: dict | None, names: dict[str, str] | None = None, classes: Sequence[str] = ()) -> str:
    names = names or {}
    fig = go.Figure()
    if data and data["current"]:
        current, reference = data["current"], data["reference"]
        window = f"latest window ({data.get('summed') or str(data['n_devices']) + ' devices'})"
        edges = data["edges"]
        if edges:
            for name, dist, colour, fill in (
                ("reference", reference, "#94a3b8", "tozeroy"),
                (window, current, "#D55E00", None),
            ):
                if not dist:
                    continue
                dens = densities(edges, dist)
                fig.add_trace(
                    go.Scatter(
                        x=list(edges),
                        y=dens + dens[-1:],
                        name=name,
                        mode="lines",
                        line=dict(shape="hv", color=colour, width=2),
                        fill=fill,
                        customdata=[[f"{edges[i]:.3g} to {edges[i + 1]:.3g}", dist[i] * 100] for i in range(len(dist))]
                        + [["", 0.0]],
                        hovertemplate="%{customdata[0]}: %{customdata[1]:.1f}% of inferences<extra>%{fullData.name}"
                        "</extra>",
                    )
                )
            fig.update_layout(
                xaxis=dict(
                    title=dict(text=label(data["feature"], names)), range=_view_range(edges, reference, current)
                ),
                yaxis_title="share per unit of the value",
            )
        else:
            n = len(current)
            ticks = [classes[i] if i < len(classes) and classes[i] else f"class {i}" for i in range(n)]
            if reference:
                fig.add_trace(go.Bar(x=ticks, y=reference, name="reference", marker_color="#94a3b8"))
            fig.add_trace(go.Bar(x=ticks, y=current, name=window, marker_color="#D55E00"))
            fig.update_layout(barmode="group", yaxis_title="share of inferences", xaxis_title="predicted class")
    fig.update_layout(**LAYOUT)
    return fig.to_json()


def heatmap(heat: dict, names: dict[str, str] | None = None) -> str:
    names = names or {}
    cohorts, features = heat["cohorts"], heat["features"]
    z, text = [], []
    for c in cohorts:
        z.append([heat["values"].get((c, f)) for f in features])
        text.append([heat["notes"].get((c, f), "") for f in features])
    fig = go.Figure(
        go.Heatmap(
            z=z, x=[names.get(f, f) for f in features], y=cohorts, text=text, colorscale="YlOrRd", zmin=0, zmax=0.5,
            hovertemplate="%{y} · %{x}<br>PSI %{z:.3f}<br>%{text}<extra></extra>", colorbar=dict(title="PSI"),
        )
    )  # fmt: skip
    fig.update_layout(xaxis_title="feature", yaxis_title="cohort", **LAYOUT)
    return fig.to_json()


def health(series: dict[str, list[tuple]], colours: dict[str, str] | None = None) -> str:
    """Error rate and p95 latency per version, one colour and one legend entry per version."""
    from plotly.subplots import make_subplots

    colours = colours or {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("error rate", "latency p95 (ms)"), horizontal_spacing=0.1)
    for version, pts in series.items():
        x = _local([p[0] for p in pts])
        style = dict(
            mode="lines+markers",
            legendgroup=version,
            line=dict(color=colours.get(version)),
            customdata=[p[4] if len(p) > 4 else "" for p in pts],
        )
        rate = "%{x|%H:%M:%S} · error rate %{y:.2%}<br>%{customdata}<extra>%{fullData.name}</extra>"
        p95 = "%{x|%H:%M:%S} · p95 %{y:.1f} ms<br>%{customdata}<extra>%{fullData.name}</extra>"
        fig.add_trace(go.Scatter(x=x, y=[p[1] for p in pts], name=version, hovertemplate=rate, **style), row=1, col=1)
        fig.add_trace(
            go.Scatter(x=x, y=[p[3] for p in pts], name=version, showlegend=False, hovertemplate=p95, **style),
            row=1,
            col=2,
        )
    fig.update_xaxes(**TIME_AXIS)
    fig.update_layout(**{**LAYOUT, "margin": dict(l=55, r=20, t=50, b=45)})
    fig.update_layout(
        legend=dict(orientation="h", x=1, xanchor="right", y=1.12, yanchor="bottom", title_text="version")
    )
    return fig.to_json()
