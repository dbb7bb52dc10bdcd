// hnboot dashboard: live updates from one server-sent event stream, and
// the red buttons enabled only once the target's name is typed. The pages
// work without this file; it adds no request a reader would not make.
(function () {
  "use strict";

  // Red buttons: the server checks the typed name too.
  function wireConfirms(root) {
    root.querySelectorAll("input[data-confirm]").forEach(function (input) {
      var button = input.form.querySelector("button.red");
      if (!button) return;
      var sync = function () { button.disabled = input.value.trim() !== input.dataset.confirm; };
      input.addEventListener("input", sync);
      sync();
    });
  }

  // A change on the server: fetch this page again and swap its <main>,
  // unless the user is typing in a form (their input would be lost).
  var busy = false, again = false;
  function refresh() {
    var a = document.activeElement;
    if (a && a.form && a.tagName !== "BUTTON") { again = true; return; }
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/ui/login") >= 0) { location.href = r.url; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main"), cur = document.getElementById("main");
        if (fresh && cur) {
          cur.replaceChildren.apply(cur, Array.from(fresh.childNodes).map(function (n) { return document.importNode(n, true); }));
          wireConfirms(cur);
          var live = document.getElementById("live");
          if (live) live.textContent = "updated " + new Date().toLocaleTimeString();
        }
      })
      .catch(function () {})
      .finally(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 500); }
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireConfirms(document);
    if (!document.getElementById("logout") || !window.EventSource) return;
    var es = new EventSource("/ui/events");
    es.addEventListener("change", refresh);
    document.addEventListener("focusout", function () { if (again) { again = false; refresh(); } });
  });
})();
