/* Runs before the page is drawn (a blocking script in <head>, no inline script under the
 * Content-Security-Policy): mark that scripts run, and apply the remembered theme. */
(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.add("js");
  try {
    var theme = localStorage.getItem("celerymon-theme");
    if (theme) root.dataset.theme = theme;
  } catch (e) { /* storage refused (private mode) */ }
})();
