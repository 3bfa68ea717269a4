// The privacy page: draws the detectable-shift curve and, as the operator edits a setting, fetches
// the figures for the unsaved values (telemetry/views.py model_privacy_preview) and shows them
// before anything is saved. Text only (textContent): nothing from the server is parsed as markup.
(function () {
  "use strict";
  var form = document.getElementById("privacy-form");
  var data = document.getElementById("privacy-payload");
  if (!form || !data) { return; }
  var TEXT = {"fig-shift-day": "shift_day", "fig-shift-hour": "shift_hour", "fig-canary-1": "canary_1",
    "fig-canary-3": "canary_3", "fig-smallest-health": "smallest_health", "fig-groups": "groups", "fig-canary": "canary"};

  function fmt(v) { return v === null || v === undefined ? "—" : v.toFixed(2); }

  function draw(payload) {
    var c = payload.figures.curve;
    var layout = {margin: {l: 55, r: 20, t: 30, b: 45}, height: 320, template: "plotly_white",
      xaxis: {type: "log", title: {text: "ε per device per day (drift budget)"}},
      yaxis: {title: {text: "smallest shift found (σ)"}, rangemode: "tozero"},
      legend: {orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom"},
      shapes: [{type: "line", x0: payload.values.epsilon_drift_day, x1: payload.values.epsilon_drift_day, yref: "paper", y0: 0, y1: 1, line: {dash: "dot"}}]};
    var traces = [
      {x: c.epsilon, y: c.day, mode: "lines+markers", name: "within a day"},
      {x: c.epsilon, y: c.hour, mode: "lines+markers", name: "within an hour"}
    ];
    window.Plotly.react("chart-privacy-curve", traces, layout, {responsive: true, displaylogo: false});
    var body = document.getElementById("curve-table");
    body.textContent = "";
    c.epsilon.forEach(function (e, i) {
      var tr = document.createElement("tr");
      [String(e), fmt(c.day[i]), fmt(c.hour[i])].forEach(function (v) {
        var td = document.createElement("td"); td.className = "num"; td.textContent = v; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function show(payload) {
    var problems = document.getElementById("privacy-problems");
    problems.textContent = "";
    (payload.problems || []).forEach(function (p) {
      var li = document.createElement("li"); li.textContent = p.reason; li.setAttribute("data-field", p.field);
      problems.appendChild(li);
    });
    document.getElementById("privacy-check").hidden = !(payload.problems || []).length;
    var nearest = document.getElementById("privacy-nearest");
    nearest.textContent = payload.nearest ? "Nearest setting that works (the figures are for it): " +
      Object.keys(payload.nearest).map(function (k) { return k + " " + payload.nearest[k]; }).join(", ") : "";
    if (!payload.figures) { return; }
    Object.keys(TEXT).forEach(function (id) {
      var el = document.getElementById(id); if (el) { el.textContent = payload.text[TEXT[id]]; }
    });
    document.getElementById("fig-fleet").textContent = String(payload.figures.fleet);
    document.getElementById("guarantee").textContent = payload.guarantee;
    draw(payload);
  }

  var timer = null, seq = 0;
  function refresh() {
    var params = new URLSearchParams(new FormData(form));
    params.delete("csrfmiddlewaretoken");
    params.set("fleet", params.get("plan_fleet") || "");
    var mine = ++seq;
    form.setAttribute("data-preview-state", "loading");
    fetch(form.getAttribute("data-preview-url") + "?" + params.toString(), {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (payload) {
        if (mine !== seq) { return; }
        show(payload);
        form.setAttribute("data-preview-state", "shown");
      })
      .catch(function () { form.setAttribute("data-preview-state", "failed"); });
  }
  form.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(refresh, 400); });
  document.addEventListener("DOMContentLoaded", function () { draw(JSON.parse(data.textContent)); });
})();
