/* flask_celerymon insight pages: keeps server-rendered parts of a page fresh.
 *
 * An element with an id and data-refresh="<seconds>" is fetched again from data-src (its own
 * fragment, or the page itself) every that many seconds and swapped in when it changed, until
 * it says data-final="1". The task page's canvas graph (#canvas, every 2 s while a task of it
 * runs), the error groups and the analytics tables (every 10 s) use it. No inline script: the
 * pages work without this file.
 */
(function () {
  "use strict";
  var due = {};

  function refresh(box) {
    var every = parseFloat(box.dataset.refresh) * 1000;
    var now = Date.now();
    if (!box.id || !every || box.dataset.final === "1" || document.hidden) return;
    if (due[box.id] && now < due[box.id]) return;
    due[box.id] = now + every;
    fetch(box.dataset.src || window.location.href, { credentials: "same-origin" })
      .then(function (resp) { return resp.ok ? resp.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById(box.id);
        var current = document.getElementById(box.id);
        if (next && current && next.outerHTML !== current.outerHTML) {
          current.replaceWith(document.importNode(next, true));
        }
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }

  function tick() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), refresh);
  }

  if (document.querySelector("[data-refresh]")) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), function (el) {
      due[el.id] = Date.now() + parseFloat(el.dataset.refresh) * 1000;
    });
    setInterval(tick, 1000);
  }
})();
