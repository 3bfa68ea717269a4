"""Plotly figures of a reference profile, built server-side and sent as JSON to the page.

Features are drawn as densities over their value axis (share of rows per unit of the value): the
profile's bins are quantile bins holding equal shares, so bars of their counts were all the same
height. Names come from the model's metadata where it has them (``ota.names``).

The figures are plain dicts in Plotly's JSON form: ``plotly.graph_objects`` validates every
property in Python (about 20 ms a figure on a busy machine, five figures a page), and plotly.js
draws the same dict with its own clean defaults.
"""

from collections.abc import Sequence

from ota.names import label

MAX_FEATURE_PLOTS = 24
LAYOUT = {
    "height": 260,
    "margin": {"l": 50, "r": 10, "t": 36, "b": 45},
    "showlegend": False,
}


def _title(text: str) -> dict:
    return {"text": text, "font": {"size": 13}, "x": 0, "xanchor": "left"}


def _classes(title: str, names: Sequence[str], counts: list[float]) -> dict:
    ticks = [names[i] if i < len(names) and names[i] else f"class {i}" for i in range(len(counts))]
    bar = {
        "type": "bar",
        "x": ticks,
        "y": list(counts),
        "marker": {"color": "#0072B2"},
        "hovertemplate": "%{x}: %{y:,} rows<extra></extra>",
    }
    layout = {"title": _title(title), "yaxis": {"title": {"text": "rows"}, "tickformat": ","}, **LAYOUT}
    return {"data": [bar], "layout": layout}


def _density(title: str, axis: str, edges: list[float], counts: list[float]) -> dict:
    total = float(sum(counts)) or 1.0
    dens = []
    for i, c in enumerate(counts):
        width = float(edges[i + 1]) - float(edges[i])
        dens.append(c / total / width if width > 0 else c / total)
    hover = [[f"{edges[i]:.3g} to {edges[i + 1]:.3g}", counts[i] / total * 100] for i in range(len(counts))]
    line = {
        "type": "scatter",
        "x": [float(e) for e in edges],
        "y": dens + dens[-1:],
        "mode": "lines",
        "line": {"shape": "hv", "color": "#0072B2", "width": 2},
        "fill": "tozeroy",
        "customdata": [*hover, ["", 0.0]],
        "hovertemplate": "%{customdata[0]}: %{customdata[1]:.1f}% of rows<extra></extra>",
    }
    layout = {
        "title": _title(title),
        "xaxis": {"title": {"text": axis}},
        "yaxis": {"title": {"text": "share per unit"}, "rangemode": "tozero"},
        **LAYOUT,
    }
    return {"data": [line], "layout": layout}


def profile_figures(
    profile: dict | None, names: dict[str, str] | None = None, classes: Sequence[str] = ()
) -> list[dict]:
    """One chart per feature (the first ``MAX_FEATURE_PLOTS``) and one for the output, each with a
    one-line summary (``alt``) the page prints as the chart's text alternative."""
    if not profile:
        return []
    names = names or {}
    figs = []
    output = profile.get("output") or {}
    if output.get("kind") == "classes":
        counts = output["counts"]
        total = float(sum(counts)) or 1.0
        shares = ", ".join(
            f"{classes[i] if i < len(classes) and classes[i] else f'class {i}'} {c / total:.0%}"
            for i, c in enumerate(counts)
        )
        figs.append(
            {"id": "output", "alt": f"output classes: {shares}", **_classes("output: argmax class", classes, counts)}
        )
    elif output.get("kind") == "bins":
        figs.append(
            {
                "id": "output",
                "alt": f"output values from {output['edges'][0]:.3g} to {output['edges'][-1]:.3g}",
                **_density("output values", "output", output["edges"], output["counts"]),
            }
        )
    for i, f in enumerate(profile.get("features", [])[:MAX_FEATURE_PLOTS]):
        name = label(f["name"], names)
        edges = f["edges"]
        alt = f"{name}: mean {f['mean']:.3g}, standard deviation {f['std']:.3g}, from {edges[0]:.3g} to {edges[-1]:.3g}"
        title = f"{name} · mean {f['mean']:.3g} · std {f['std']:.3g}"
        figs.append({"id": f"feature-{i}", "alt": alt, **_density(title, name, f["edges"], f["counts"])})
    return figs


def variant_figure(rows: Sequence[dict]) -> dict | None:
    """Size against server latency, agreement as colour, the Pareto front joined by a line.

    ``rows`` are ``ota.services.variant_rows``: ``kind``, ``size``, ``p50``, ``agreement``, ``front``.
    """
    points = [r for r in rows if r.get("size") and r.get("p50") is not None]
    if len(points) < 2:
        return None
    front = sorted((r for r in points if r["front"]), key=lambda r: r["size"])
    agreement = [100 * (r["agreement"] if r["agreement"] is not None else 0) for r in points]
    scatter = {
        "type": "scatter",
        "mode": "markers+text",
        "x": [r["size"] / 1024 for r in points],
        "y": [r["p50"] for r in points],
        "text": [r["kind"] for r in points],
        "textposition": "top center",
        "marker": {
            "size": [14 if r["front"] else 9 for r in points],
            "symbol": ["diamond" if r["front"] else "circle" for r in points],
            "color": agreement,
            "cmin": min(90.0, *agreement),
            "cmax": 100,
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": "agreement %"}},
        },
        "customdata": agreement,
        "hovertemplate": "%{text}: %{x:,.1f} KiB, p50 %{y:.3f} ms, agreement %{customdata:.2f}%<extra></extra>",
    }
    line = {
        "type": "scatter",
        "mode": "lines",
        "x": [r["size"] / 1024 for r in front],
        "y": [r["p50"] for r in front],
        "line": {"dash": "dot", "color": "#555"},
        "hoverinfo": "skip",
    }
    names = ", ".join(r["kind"] for r in front)
    return {
        "id": "variants",
        "alt": f"size against server latency p50 of {len(points)} builds; on the Pareto front: {names}",
        "data": [line, scatter],
        "layout": {
            "title": _title("variants: size vs latency (colour: agreement with fp32; diamonds: Pareto front)"),
            "xaxis": {"title": {"text": "size (KiB)"}, "rangemode": "tozero"},
            "yaxis": {"title": {"text": "latency p50 (ms)"}, "rangemode": "tozero"},
            **{**LAYOUT, "height": 320},
        },
    }


def _recolour(trace: dict, colour: str, name: str, dash: str = "solid") -> dict:
    trace = {**trace, "name": name, "line": {**trace.get("line", {}), "color": colour, "dash": dash}}
    trace["fill"] = "none"
    trace["hovertemplate"] = f"{name}: " + trace["hovertemplate"]
    return trace


def overlay_figures(
    a: dict | None,
    b: dict | None,
    labels: tuple[str, str],
    names: dict[str, str] | None = None,
    classes: Sequence[str] = (),
) -> list[dict]:
    """Two versions' reference profiles on shared charts: output first, then every feature either has.

    A feature only one version has is drawn alone (its title says which). ``labels`` name the
    versions in legends and in the text alternative.
    """
    if not a and not b:
        return []
    a, b, names = a or {}, b or {}, names or {}
    colours = ("#0072B2", "#D55E00")
    layout_extra = {"showlegend": True, "legend": {"orientation": "h", "y": -0.3}}
    figs = []
    outs = [(p.get("output") or {}) for p in (a, b)]
    if all(o.get("kind") == "classes" for o in outs if o) and any(outs):
        data = []
        for o, lab, col in zip(outs, labels, colours, strict=True):
            if not o:
                continue
            total = float(sum(o["counts"])) or 1.0
            ticks = [classes[i] if i < len(classes) and classes[i] else f"class {i}" for i in range(len(o["counts"]))]
            data.append(
                {
                    "type": "bar",
                    "name": lab,
                    "x": ticks,
                    "y": [c / total for c in o["counts"]],
                    "marker": {"color": col},
                    "hovertemplate": f"{lab} %{{x}}: %{{y:.1%}}<extra></extra>",
                }
            )
        layout = {
            **LAYOUT,
            **layout_extra,
            "title": _title("output: argmax class"),
            "barmode": "group",
            "yaxis": {"title": {"text": "share of rows"}, "tickformat": ".0%"},
        }
        figs.append(
            {"id": "output", "alt": f"output classes of {' and '.join(labels)}", "data": data, "layout": layout}
        )
    elif any(o.get("kind") == "bins" for o in outs):
        data = [
            _recolour(_density("", "output", o["edges"], o["counts"])["data"][0], col, lab)
            for o, lab, col in zip(outs, labels, colours, strict=True)
            if o.get("kind") == "bins"
        ]
        layout = {**_density("output values", "output", [0, 1], [1])["layout"], **layout_extra}
        figs.append({"id": "output", "alt": f"output values of {' and '.join(labels)}", "data": data, "layout": layout})
    fa = {f["name"]: f for f in a.get("features", [])}
    fb = {f["name"]: f for f in b.get("features", [])}
    keys = list(fa) + [k for k in fb if k not in fa]
    for i, key in enumerate(keys[:MAX_FEATURE_PLOTS]):
        name = label(key, names)
        pair = [(f, lab, col) for f, lab, col in zip((fa.get(key), fb.get(key)), labels, colours, strict=True) if f]
        data = [
            _recolour(_density("", name, f["edges"], f["counts"])["data"][0], col, lab, "solid" if j == 0 else "dash")
            for j, (f, lab, col) in enumerate(pair)
        ]
        only = "" if len(pair) == 2 else f" (only {pair[0][1]})"
        means = "; ".join(f"{lab} mean {f['mean']:.3g}, std {f['std']:.3g}" for f, lab, _ in pair)
        layout = {**_density(f"{name}{only}", name, [0, 1], [1])["layout"], **layout_extra}
        figs.append({"id": f"feature-{i}", "alt": f"{name}{only}: {means}", "data": data, "layout": layout})
    return figs
