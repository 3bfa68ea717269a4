// The campaign page's canary-vs-control charts: one per gate, a point per gate check (the numbers the
// gate job judged, when it judged them), the campaign's decisions marked on the time axis, and a
// caption under each chart with the last check's figures in words (the chart's text alternative).
(function () {
  "use strict";
  var box = document.getElementById("gate-charts");
  if (!box || !window.Plotly) { return; }
  var script = document.getElementById("gate-charts-script");
  var live = script && script.getAttribute("data-live") === "1";
  var DECISION_COLOURS = {rollback: "#b91c1c", pause: "#b45309", abort: "#b91c1c", advance: "#15803d", complete: "#15803d"};
  var SYMBOLS = {pass: "circle", fail: "x", not_enough_data: "circle-open"};

  function fmt(v) {
    if (v === null || v === undefined) { return "hidden"; }
    if (Math.abs(v) >= 100) { return v.toLocaleString("en", {maximumFractionDigits: 1}); }
    return String(Number(v.toPrecision(4)));
  }
  function clock(iso) { return iso ? iso.slice(11, 19) : ""; }
  // Plotly reads a few HTML tags in chart text; a person's reason is shown as text, never as markup.
  function plainText(s) { return String(s || "").replace(/[<>&]/g, " "); }

  function caption(g, data) {
    var v = data.versions, last = g.last;
    if (!last) { return g.title + ": no gate check yet."; }
    var text = g.title + ", last check " + clock(last.at) + ": canary " + v.canary + " " + fmt(last.canary);
    if (v.control) { text += ", control " + v.control + " " + fmt(last.control); }
    if (g.configured) {
      text += "; observed " + fmt(last.observed) + " (" + g.meaning + ") against threshold " + fmt(g.threshold) + ": " + String(last.verdict).replace(/_/g, " ");
    } else {
      text += " (not a gate of this campaign)";
    }
    var marks = data.decisions.filter(function (d) { return d.kind !== "start"; });
    if (marks.length) {
      var d = marks[marks.length - 1];
      text += ". " + d.kind.charAt(0).toUpperCase() + d.kind.slice(1) + " at " + clock(d.at) + ".";
    } else {
      text += ".";
    }
    return text;
  }

  function draw(g, data) {
    var el = box.querySelector('[data-gate="' + g.name + '"]');
    if (!el) { return; }
    var s = g.series, v = data.versions, colours = data.colours || {};
    var traces = [];
    [["canary", v.canary], ["control", v.control]].forEach(function (side) {
      if (!side[1]) { return; }
      traces.push({
        x: s.x, y: s[side[0]], name: side[0] + " (" + side[1] + ")", mode: "lines+markers", connectgaps: false,
        line: {color: colours[side[1]]}, marker: {color: colours[side[1]], size: 7, symbol: s.verdict.map(function (x) { return SYMBOLS[x] || "circle"; })},
        customdata: s.observed.map(function (o, i) { return [fmt(o), String(s.verdict[i]).replace(/_/g, " ")]; }),
        hovertemplate: "%{x|%H:%M:%S} " + side[0] + " " + side[1] + ": %{y:.4g}<br>observed %{customdata[0]} → %{customdata[1]}<extra></extra>"
      });
    });
    var shapes = [], annotations = [];
    data.decisions.forEach(function (d, i) {
      var colour = DECISION_COLOURS[d.kind] || "#566676";
      shapes.push({type: "line", xref: "x", yref: "paper", x0: d.at, x1: d.at, y0: 0, y1: 1, line: {color: colour, width: 1.5, dash: d.kind === "rollback" ? "solid" : "dot"}});
      // Labels alternate between two heights so decisions close in time stay readable.
      annotations.push({x: d.at, xref: "x", yref: "paper", y: i % 2 ? 1.0 : 1.09, yanchor: "bottom", xanchor: "center", text: d.kind, hovertext: d.kind + " at " + clock(d.at) + (d.reason ? ": " + plainText(d.reason) : ""), showarrow: false, font: {size: 10, color: colour}});
    });
    if (g.configured && g.name === "install_failure_rate" && g.threshold !== null) {
      shapes.push({type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: g.threshold, y1: g.threshold, line: {color: "#b91c1c", dash: "dash", width: 1}});
    }
    var layout = {
      margin: {t: 72, r: 20, b: 40, l: 55}, height: 310,
      xaxis: {type: "date", tickformat: "%H:%M:%S"},
      yaxis: {rangemode: "tozero", automargin: true},
      legend: {orientation: "h", x: 0, xanchor: "left", y: 1.24, yanchor: "bottom"},
      shapes: shapes, annotations: annotations
    };
    Plotly.react(el, traces, layout, {displaylogo: false, responsive: true});
    var text = caption(g, data);
    el.setAttribute("aria-label", text);
    var cap = box.querySelector('[data-caption="' + g.name + '"]');
    if (cap) { cap.textContent = text; }
  }

  function load() {
    fetch(box.getAttribute("data-series-url"), {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) {
        data.gates.forEach(function (g) { draw(g, data); });
        var note = document.getElementById("chart-note");
        if (note) { note.textContent = data.checks + " gate check" + (data.checks === 1 ? "" : "s") + " charted."; }
        box.setAttribute("data-checks", String(data.checks));
      });
  }
  load();
  if (live) { setInterval(load, 15000); }
})();
