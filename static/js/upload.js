// Registry pages: the upload form (drag and drop, XHR with a real progress bar) and, on a
// version page, reloading once validation ends plus drawing the reference profile charts.
(function () {
  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function setupUpload(form) {
    var zone = document.getElementById("dropzone");
    var input = document.getElementById("file-input");
    var chosen = document.getElementById("file-chosen");
    var bar = document.getElementById("progress-bar");
    var text = document.getElementById("progress-text");
    var box = document.getElementById("upload-progress");
    var err = document.getElementById("upload-error");
    var button = document.getElementById("upload-button");
    var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);

    function showError(msg) { err.textContent = msg; err.hidden = false; }
    function describe() {
      var f = input.files[0];
      if (f) { chosen.textContent = f.name + " · " + human(f.size); }
    }
    input.addEventListener("change", describe);
    ["dragenter", "dragover"].forEach(function (ev) {
      zone.addEventListener(ev, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (ev) {
      zone.addEventListener(ev, function (e) { e.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; describe(); }
    });

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      err.hidden = true;
      var f = input.files[0];
      if (!f) { showError("Choose the .onnx model file to upload."); return; }
      if (f.size === 0) { showError("The model file is empty: upload the .onnx file your exporter wrote."); return; }
      if (f.size > maxBytes) {
        showError("The file is " + human(f.size) + ", over the upload limit of " + form.getAttribute("data-max-human") + ".");
        return;
      }
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      box.hidden = false;
      button.disabled = true;
      xhr.upload.addEventListener("progress", function (ev) {
        if (!ev.lengthComputable) { return; }
        var pct = Math.round((ev.loaded / ev.total) * 100);
        bar.style.width = pct + "%";
        text.textContent = pct + "% · " + human(ev.loaded) + " of " + human(ev.total);
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (x) { body = null; }
        if (xhr.status === 201 && body && body.url) {
          bar.style.width = "100%";
          text.textContent = "Uploaded; opening the version page…";
          window.location.assign(body.url);
          return;
        }
        button.disabled = false;
        box.hidden = true;
        showError(body && body.error ? body.error.message : "The upload failed (HTTP " + xhr.status + ").");
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        showError("The upload was interrupted (network error). Try again.");
      });
      xhr.send(new FormData(form));
    });
  }

  function setupVersion(region) {
    // The status fragment is refreshed by edgefleet.js; when validation ends, reload once so the
    // report, variants and charts appear.
    if (region.getAttribute("data-initial-status") !== "validating") { return; }
    new MutationObserver(function () {
      var s = region.querySelector("[data-status]");
      if (s && s.getAttribute("data-status") !== "validating") { window.location.reload(); }
    }).observe(region, { childList: true, subtree: true });
  }

  function drawCharts(dataId, targetId) {
    var data = document.getElementById(dataId);
    var target = document.getElementById(targetId);
    if (!data || !target || typeof Plotly === "undefined") { return; }
    JSON.parse(data.textContent).forEach(function (fig) {
      var card = document.createElement("div");
      card.className = "card";
      var div = document.createElement("div");
      div.className = "chart";
      div.id = "chart-" + fig.id;
      div.setAttribute("role", "figure");
      div.setAttribute("aria-label", fig.alt || fig.id);
      card.appendChild(div);
      var caption = document.createElement("p");  // the chart's key numbers in words
      caption.className = "small muted";
      caption.textContent = fig.alt || "";
      card.appendChild(caption);
      target.appendChild(card);
      fig.layout.autosize = true;
      Plotly.newPlot(div, fig.data, fig.layout, { displayModeBar: false, responsive: true });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) { setupUpload(form); }
    var region = document.getElementById("status-region");
    if (region) { setupVersion(region); }
    drawCharts("profile-figures", "profile-charts");
    drawCharts("variant-figures", "variant-charts");
  });
})();
