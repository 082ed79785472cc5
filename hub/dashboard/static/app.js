// Drover dashboard: keeps the page live without reloading it. The hub
// sends a "change" event over server-sent events when anything changes;
// the page then fetches its own main content (?fragment=1) and swaps it
// in, keeping which <details> are open and never interrupting typing.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  if (!main || !main.dataset.live || !window.EventSource) return;

  var busy = false, again = false;

  function setLive(on) {
    if (!live) return;
    live.textContent = on ? "● Live" : "◌ Reconnecting…";
    live.className = "live " + (on ? "on" : "off");
  }

  function typing() {
    var a = document.activeElement;
    return a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA");
  }

  function fragmentURL() {
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    return u.toString();
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (typing()) { again = true; return; }
    busy = true;
    fetch(fragmentURL(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (resp) {
        if (resp.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search)); return null; }
        return resp.text();
      })
      .then(function (html) {
        if (html === null) return;
        var open = {};
        main.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
        main.innerHTML = html;
        main.querySelectorAll("details[id]").forEach(function (d) {
          if (Object.prototype.hasOwnProperty.call(open, d.id)) d.open = open[d.id];
        });
        document.dispatchEvent(new CustomEvent("drover:updated"));
      })
      .catch(function () { /* the next change or reconnect retries */ })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 250); }
      });
  }

  // Rollout buttons post in the background and then refresh the page's
  // content like any change, so the page is not reloaded; without this
  // script they are plain forms that redirect back.
  main.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.hasAttribute("data-async")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var button = form.querySelector("button");
    if (button) button.disabled = true;
    fetch(form.action, { method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form)) })
      .then(function (resp) {
        if (resp.ok) { refresh(); return; }
        return resp.text().then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var p = doc.querySelector("main p.error");
          showProblem(p ? p.textContent : "The hub answered " + resp.status + "; reload the page and try again.");
          if (button) button.disabled = false;
        });
      })
      .catch(function () {
        showProblem("The hub could not be reached; try again.");
        if (button) button.disabled = false;
      });
  });

  function showProblem(msg) {
    var p = main.querySelector(".act-problem");
    if (!p) {
      p = document.createElement("p");
      p.className = "error act-problem";
      p.setAttribute("role", "alert");
      var at = main.querySelector(".ro") || main.firstChild;
      main.insertBefore(p, at);
    }
    p.textContent = msg;
  }

  main.addEventListener("focusout", function () { if (again && !busy) setTimeout(refresh, 0); });

  var wasDown = false;
  var es = new EventSource(main.dataset.live);
  es.onopen = function () {
    setLive(true);
    // Changes made while the stream was down were missed: catch up.
    if (wasDown) refresh();
    wasDown = false;
  };
  es.onerror = function () { setLive(false); wasDown = true; };
  es.addEventListener("change", refresh);
})();
