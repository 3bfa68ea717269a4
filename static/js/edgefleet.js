// Report the browser's time zone so pages show times in the operator's zone.
(function () {
  try {
    var tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (tz && document.cookie.indexOf("tz=" + tz) === -1) {
      document.cookie = "tz=" + tz + "; path=/; max-age=31536000; samesite=lax";
    }
  } catch (e) { /* old browser: UTC it is */ }
})();

// Live regions: an element with data-poll-url is refreshed from that URL every data-poll-ms.
window.edgefleetPoll = function (el) {
  var url = el.getAttribute("data-poll-url");
  var ms = parseInt(el.getAttribute("data-poll-ms") || "3000", 10);
  var tick = function () {
    fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null) { el.innerHTML = html; }
        if (!el.hasAttribute("data-poll-stop")) { setTimeout(tick, ms); }
      })
      .catch(function () { setTimeout(tick, ms * 2); });
  };
  setTimeout(tick, ms);
};
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-poll-url]").forEach(window.edgefleetPoll);
});

// Behaviour that used to sit in inline handlers (the Content-Security-Policy forbids them), bound
// once on the document so forms inside live regions get it too:
//   <form data-confirm="Question?">  asks before submitting;
//   <select data-autosubmit>         submits its form when changed.
document.addEventListener("submit", function (e) {
  var question = e.target.getAttribute && e.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) { e.preventDefault(); }
});
document.addEventListener("change", function (e) {
  if (e.target.matches && e.target.matches("select[data-autosubmit]") && e.target.form) { e.target.form.submit(); }
});

// <button data-copy="text">: copies the text (a full hash shown shortened) and says so.
document.addEventListener("click", function (e) {
  var button = e.target.closest && e.target.closest("button[data-copy]");
  if (!button) { return; }
  var text = button.getAttribute("data-copy");
  var done = function () {
    var before = button.textContent;
    button.textContent = "copied";
    setTimeout(function () { button.textContent = before; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () {});
  } else {
    var area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (err) { /* nothing to copy with */ }
    area.remove();
  }
});
