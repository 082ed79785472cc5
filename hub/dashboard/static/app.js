// Drover dashboard: keeps the page live without reloading it. The hub
// sends a "change" event over server-sent events when anything changes;
// the page then fetches its own main content (?fragment=1) and morphs the
// page into it: only what changed changes, and every element that is still
// there stays the same node, so a link under the pointer or a button with
// the keyboard focus is never swapped out from under the user. Open
// <details> stay open, and typing is never interrupted.
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

  // keyOf names an element across renders: its id, the data-key the
  // templates give items of a list (rows, banners, events), or the
  // attribute its list names in data-key-by (the tiles' href: a page of
  // thousands of tiles need not carry a key for each).
  function keyOf(n) {
    if (n.nodeType !== 1) return "";
    var list = n.parentNode, by = list && list.nodeType === 1 && list.getAttribute("data-key-by");
    return n.id || n.getAttribute("data-key") || (by && n.getAttribute(by)) || "";
  }

  // kind is what a node is: its tag and key, and its first class (the
  // classes after the first say its state, which may change).
  function kind(n) {
    if (n.nodeType !== 1) return "#" + n.nodeType;
    return n.tagName + "#" + keyOf(n) + "." + (n.getAttribute("class") || "").split(" ")[0];
  }

  // morphChildren makes parent's children look like next's. A keyed child
  // is kept wherever it is, any other while one of its kind is ahead of
  // the cursor; nodes with no counterpart are added or dropped. Kept nodes
  // stay where they are (moving a node takes the focus from it) unless
  // keyed nodes change order.
  function morphChildren(parent, next) {
    var wanted = {}, keyed = {}, n, c, following;
    for (n = next.firstChild; n; n = n.nextSibling) {
      if (keyOf(n)) wanted[keyOf(n)] = true;
    }
    for (c = parent.firstChild; c; c = following) {
      following = c.nextSibling;
      if (!keyOf(c)) continue;
      if (wanted[keyOf(c)]) keyed[keyOf(c)] = c;
      else parent.removeChild(c);
    }
    var cursor = parent.firstChild;
    for (n = next.firstChild; n; n = following) {
      following = n.nextSibling; // n itself may move into the page
      var k = keyOf(n), match = null;
      if (k) {
        if (keyed[k] && kind(keyed[k]) === kind(n)) match = keyed[k];
        delete keyed[k];
      } else {
        for (c = cursor; c && !keyOf(c) && !match; c = c.nextSibling) {
          if (kind(c) === kind(n)) match = c;
        }
      }
      if (!match) {
        parent.insertBefore(n, cursor);
        continue;
      }
      if (match !== cursor) place(parent, match, cursor);
      cursor = match.nextSibling;
      morph(match, n);
    }
    while (cursor) {
      c = cursor;
      cursor = cursor.nextSibling;
      parent.removeChild(c);
    }
  }

  // place brings match, a node after cursor, to the cursor: it drops the
  // unkeyed nodes in between, which have no counterpart, or when a keyed
  // node is in between (a new order), moves match.
  function place(parent, match, cursor) {
    for (var c = cursor; c !== match; c = c.nextSibling) {
      if (keyOf(c)) {
        parent.insertBefore(match, cursor);
        return;
      }
    }
    while (cursor !== match) {
      c = cursor;
      cursor = cursor.nextSibling;
      parent.removeChild(c);
    }
  }

  // morph updates node in place to look like next, a node of the same kind.
  function morph(node, next) {
    if (node.nodeType !== 1) {
      if (node.nodeValue !== next.nodeValue) node.nodeValue = next.nodeValue;
      return;
    }
    // Whether a <details> is open is the user's choice once it is shown.
    var keep = node.tagName === "DETAILS" ? "open" : "";
    for (var i = node.attributes.length - 1; i >= 0; i--) {
      var name = node.attributes[i].name;
      if (name !== keep && !next.hasAttribute(name)) node.removeAttribute(name);
    }
    for (var j = 0; j < next.attributes.length; j++) {
      var a = next.attributes[j];
      if (a.name !== keep && node.getAttribute(a.name) !== a.value) node.setAttribute(a.name, a.value);
    }
    morphChildren(node, next);
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
        var next = document.createElement("template");
        next.innerHTML = html;
        morphChildren(main, next.content);
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
