/* flask_celerymon monitor pages: live updates, control buttons, copy, theme.
 *
 * The pages are complete without this script. With it:
 * - a websocket (<prefix>/ws?view=...) swaps in the HTML fragments the server renders when
 *   something on the page changes (rows, the task detail and its canvas graph, or the whole
 *   #live-root of the insight and charts pages); it reconnects by itself and the "live" pill says how it is;
 *   when the server has as many live pages as it allows (close code 4503), the page reloads
 *   what it shows every data-poll milliseconds instead, trying the websocket again each time;
 * - forms with class "js-action" POST to the JSON API with fetch() and show the answer;
 * - times are shown in the browser's time zone; copy buttons; a light/dark/system switch.
 */
(function () {
  "use strict";

  var body = document.body;
  var cm = (window.celerymon = { socket: null, connects: 0, states: [] });

  // -- small helpers ---------------------------------------------------------------------

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = "0" + n; return n; }

  function toast(text, kind) {
    var box = $("#toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast " + (kind || "ok");
    el.setAttribute("role", kind === "bad" ? "alert" : "status");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(function () { el.classList.add("gone"); }, 4000);
    setTimeout(function () { el.remove(); }, 4600);
  }
  cm.toast = toast;

  function localTimes(root) {
    $all("time[data-ts]", root).forEach(function (el) {
      var d = new Date(parseFloat(el.dataset.ts) * 1000);
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
        " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
        "." + pad(d.getMilliseconds(), 3);
      el.title = el.getAttribute("datetime") + " (UTC)";
    });
  }

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content;
  }

  function swap(el, html) {
    if (!el) return;
    el.innerHTML = html;
    localTimes(el);
  }

  function replaceRow(row, html) {
    var frag = fragment(html);
    var fresh = frag.firstElementChild;
    if (!fresh) return null;
    localTimes(frag);
    if (row.dataset.state !== fresh.dataset.state || row.innerHTML !== fresh.innerHTML) {
      fresh.classList.add("flash");
    }
    row.replaceWith(fresh);
    return fresh;
  }

  // -- theme -----------------------------------------------------------------------------

  var THEMES = ["system", "dark", "light"];
  function setTheme(name) {
    if (name === "system") {
      delete document.documentElement.dataset.theme;
      try { localStorage.removeItem("celerymon-theme"); } catch (e) { /* private mode */ }
    } else {
      document.documentElement.dataset.theme = name;
      try { localStorage.setItem("celerymon-theme", name); } catch (e) { /* private mode */ }
    }
    var btn = $("#theme");
    if (btn) btn.title = "Theme: " + name;
  }
  var themeBtn = $("#theme");
  if (themeBtn) {
    setTheme(document.documentElement.dataset.theme || "system");
    themeBtn.addEventListener("click", function () {
      var now = document.documentElement.dataset.theme || "system";
      setTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
    });
  }

  // -- copy buttons ----------------------------------------------------------------------

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    var ok = document.execCommand("copy");
    ta.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest(".js-copy");
    if (!btn) return;
    var src = $(btn.dataset.copy);
    if (!src) return;
    copyText(src.textContent).then(
      function () { toast("Copied"); },
      function () { toast("Could not copy: select the text and copy it by hand", "bad"); }
    );
  });

  // -- control buttons (the JSON API) ----------------------------------------------------

  function csrfHeaders() {
    var h = { "Accept": "application/json", "X-Requested-With": "fetch" };
    var meta = $('meta[name="csrf-token"]');
    if (meta) h["X-CSRFToken"] = meta.content;
    return h;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("js-action")) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var buttons = $all("button", form);
    buttons.forEach(function (b) { b.disabled = true; });
    var data = new URLSearchParams(new FormData(form));
    fetch(form.action, {
      method: "POST",
      body: data,
      headers: csrfHeaders(),
      credentials: "same-origin",
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var json = null;
        try { json = JSON.parse(text); } catch (e) { /* a text answer */ }
        return { ok: resp.ok, status: resp.status, json: json, text: text };
      });
    }).then(function (r) {
      var msg = (r.json && (r.json.message || r.json.error)) || r.text || ("HTTP " + r.status);
      if (!r.ok) {
        toast(msg, "bad");
        return;
      }
      toast(msg, "ok");
      var newId = r.json && (r.json["task-id"] || r.json.task_id || r.json.id);
      if (form.dataset.follow === "task" && newId) {
        setTimeout(function () { location.href = body.dataset.base + "task/" + encodeURIComponent(newId); }, 600);
      } else if (form.dataset.reload) {
        setTimeout(function () {
          var url = new URL(location.href);
          url.searchParams.set("refresh", "1");
          location.href = url.toString();
        }, 800);
      }
    }).catch(function (err) {
      toast("Request failed: " + err.message, "bad");
    }).then(function () {
      buttons.forEach(function (b) { b.disabled = false; });
    });
  });

  // -- the workers filter box ------------------------------------------------------------

  var wfilter = $("#worker-filter");
  function filterWorkers() {
    if (!wfilter) return;
    var needle = wfilter.value.trim().toLowerCase();
    $all("#workers-table tbody tr[data-worker]").forEach(function (tr) {
      var hay = tr.dataset.worker.toLowerCase() + " " + tr.dataset.online;
      tr.hidden = !!needle && hay.indexOf(needle) === -1;
    });
  }
  if (wfilter) wfilter.addEventListener("input", filterWorkers);

  // -- live updates ----------------------------------------------------------------------

  var live = $("#live");
  var BUSY = 4503;  // the server's live-page cap is reached (flask_celerymon.web.hardening)
  var POLL_MS = Math.max(parseInt(body.dataset.poll, 10) || 5000, 200);
  function indicator(state, text) {
    cm.states.push(state);
    if (!live) return;
    live.dataset.state = state;
    live.querySelector("b").textContent = text;
    live.title = {
      live: "Live: the page updates by itself",
      reconnecting: "Reconnecting the live feed...",
      off: "Live updates are not available; reload to refresh",
      polling: "The server has too many live pages open: this one refreshes every " +
        Math.round(POLL_MS / 1000) + " s",
    }[state] || text;
  }

  var handlers = {
    worker: function (m) {
      var row = $('#workers-table tr[data-worker="' + CSS.escape(m.id) + '"]');
      if (row) {
        replaceRow(row, m.html);
      } else {
        var tbody = $("#workers-table tbody");
        if (!tbody) return;
        $all("tr.empty", tbody).forEach(function (e) { e.remove(); });
        var frag = fragment(m.html);
        localTimes(frag);
        var fresh = frag.firstElementChild;
        fresh.classList.add("flash");
        var next = $all("tr[data-worker]", tbody).find(function (tr) { return tr.dataset.worker > m.id; });
        tbody.insertBefore(fresh, next || null);
      }
      filterWorkers();
    },
    "worker-gone": function (m) {
      var row = $('#workers-table tr[data-worker="' + CSS.escape(m.id) + '"]');
      if (row) row.remove();
    },
    summary: function (m) {
      var cards = $("#worker-cards");
      if (cards) cards.replaceWith(fragment(m.cards));
      swap($("#worker-totals"), m.totals);
      var count = $("#worker-count");
      if (count) count.textContent = m.count;
    },
    task: function (m) {
      var table = $("#tasks-table");
      if (!table) return;
      var row = $('tr[data-task="' + CSS.escape(m.id) + '"]', table);
      if (row) {
        replaceRow(row, m.html);
        return;
      }
      if (!m.insert) return;
      var tbody = table.tBodies[0];
      $all("tr.empty", tbody).forEach(function (e) { e.remove(); });
      var frag = fragment(m.html);
      localTimes(frag);
      var fresh = frag.firstElementChild;
      fresh.classList.add("flash");
      tbody.insertBefore(fresh, tbody.firstChild);
      var per = parseInt(table.dataset.perPage, 10) || 15;
      var rows = $all("tr[data-task]", tbody);
      for (var i = per; i < rows.length; i++) rows[i].remove();
      var count = $("#tasks-count");
      if (count) {
        var total = (parseInt(count.dataset.total, 10) || 0) + 1;
        count.dataset.total = total;
        var shown = Math.min(per, $all("tr[data-task]", tbody).length);
        var atLeast = count.dataset.exact === "0" ? "at least " : "";
        count.textContent = "Showing 1 to " + shown + " of " + atLeast + total + " tasks";
      }
    },
    "new-tasks": function (m) {
      var hint = $("#new-tasks");
      if (!hint) return;
      var n = (parseInt(hint.dataset.n || "0", 10) || 0) + m.count;
      hint.dataset.n = n;
      hint.textContent = n + " new task" + (n === 1 ? "" : "s") + " - show";
      hint.hidden = false;
    },
    "task-detail": function (m) { swap($("#live-root"), m.html); },
    "worker-head": function (m) { swap($("#live-root"), m.html); },
    queues: function (m) { swap($("#live-root"), m.html); },
    page: function (m) { swap($("#live-root"), m.html); },
    canvas: function (m) {
      var here = $("#canvas");
      var fresh = fragment(m.html).firstElementChild;
      if (here && fresh) here.replaceWith(fresh);
    },
  };

  function apply(msg) {
    if (msg.type === "batch") {
      msg.items.forEach(function (it) {
        var fn = handlers[it.type];
        if (fn) fn(it);
      });
    }
  }

  function resync() {
    // After a reconnect: events may have been missed, so fetch the page again.
    fetch(location.href, { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("live-root") || doc.getElementById("main");
      var here = $("#live-root") || $("#main");
      var table = doc.getElementById("tasks-table");
      if (table && $("#tasks-table")) {
        $("#tasks-table").tBodies[0].replaceWith(table.tBodies[0]);
        var c = doc.getElementById("tasks-count");
        if (c && $("#tasks-count")) $("#tasks-count").replaceWith(c);
        localTimes($("#tasks-table"));
      } else if (fresh && here) {
        here.innerHTML = fresh.innerHTML;
        localTimes(here);
        filterWorkers();
      }
      var canvas = doc.getElementById("canvas");
      if (canvas && $("#canvas")) $("#canvas").replaceWith(document.importNode(canvas, true));
    }).catch(function () { /* the next reconnect tries again */ });
  }

  function feedUrl() {
    var view = body.dataset.live;
    var params = new URLSearchParams();
    if (view === "tasks" || PAGE_VIEWS.indexOf(view) !== -1) {
      new URLSearchParams(location.search).forEach(function (v, k) { params.append(k, v); });
    }
    params.set("view", view);
    var root = $("#live-root");
    if (view === "task") params.set("id", root.dataset.task);
    if (view === "worker") params.set("name", root.dataset.worker);
    if (view === "error-group") params.set("id", root.dataset.group);
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + location.host + body.dataset.ws + "?" + params.toString();
  }

  // pages whose query string says what they show (the server renders their #live-root)
  var PAGE_VIEWS = ["charts", "analytics", "errors", "alerts"];

  var delay = 500;
  function connect() {
    var sock;
    try {
      sock = new WebSocket(feedUrl());
    } catch (e) {
      indicator("off", "offline");
      return;
    }
    cm.socket = sock;
    var opened = false;
    sock.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "hello") {
        opened = true;
        delay = 500;
        cm.connects += 1;
        indicator("live", "live");
        if (cm.connects > 1) resync();
        return;
      }
      apply(msg);
    };
    sock.onclose = function (ev) {
      if (cm.socket !== sock) return;
      if (ev.code === 1008) {
        indicator("off", "offline");
        return;
      }
      if (ev.code === BUSY) {
        // no live feed for now: reload what the page shows, then ask for a feed again
        indicator("polling", "polling");
        cm.polls = (cm.polls || 0) + 1;
        resync();
        setTimeout(connect, POLL_MS);
        return;
      }
      indicator("reconnecting", "reconnecting");
      setTimeout(connect, opened ? 300 : delay);
      delay = Math.min(delay * 2, 8000);
    };
    sock.onerror = function () { /* onclose follows */ };
  }

  localTimes(document);
  if (!body.dataset.live && live) live.remove();
  if (body.dataset.live) {
    if (typeof window.WebSocket !== "function") {
      indicator("off", "offline");
    } else {
      indicator("reconnecting", "connecting");
      connect();
    }
  }
})();
