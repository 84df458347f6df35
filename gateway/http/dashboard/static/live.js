// Tether dashboard: the little script it needs (no framework, no network beyond this gateway).
// - <tbody data-live="URL">: every 2 s, replace its rows with the HTML fragment at URL.
// - <span data-reload="MS">: reload the page after MS (a live run's page).
// - <form data-confirm="TEXT">: ask before posting.
(function () {
  "use strict";
  var EVERY = 2000;

  function poll(body) {
    var url = body.getAttribute("data-live");
    function tick() {
      if (document.hidden) { return setTimeout(tick, EVERY); }
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) {
          if (r.redirected || !r.ok) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) { body.innerHTML = html; })
        .catch(function () { /* keep the rows shown; try again */ })
        .then(function () { setTimeout(tick, EVERY); });
    }
    setTimeout(tick, EVERY);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(poll);
    document.querySelectorAll("[data-reload]").forEach(function (el) {
      setTimeout(function () { location.reload(); },
                 parseInt(el.getAttribute("data-reload"), 10) || EVERY);
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  });
})();
