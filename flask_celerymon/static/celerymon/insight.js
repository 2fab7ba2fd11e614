/* flask_celerymon insight pages: keeps the task page's canvas graph live.
 *
 * The graph (#canvas, rendered on the server) names its own fragment URL in data-src; while
 * some of its tasks have not finished (data-final="0") it is fetched again every 2 s and
 * swapped in when it changed. No inline script: the page works without this file.
 */
(function () {
  "use strict";
  var INTERVAL = 2000;

  function refresh() {
    var box = document.getElementById("canvas");
    if (!box || box.dataset.final === "1" || document.hidden) return;
    fetch(box.dataset.src, { credentials: "same-origin" })
      .then(function (resp) { return resp.ok ? resp.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var t = document.createElement("template");
        t.innerHTML = html.trim();
        var next = t.content.querySelector("#canvas");
        if (next && next.outerHTML !== box.outerHTML) box.replaceWith(next);
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }

  if (document.getElementById("canvas")) setInterval(refresh, INTERVAL);
})();
