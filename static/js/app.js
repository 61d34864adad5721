// backupsite — progressive enhancement only: every page works without JavaScript.
// An element with data-poll-url is refreshed from that URL while data-poll-active="true".
(function () {
  "use strict";
  var INTERVAL_MS = 1500;

  function poll(el) {
    var url = el.getAttribute("data-poll-url");
    window.setTimeout(function () {
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          var box = document.createElement("div");
          box.innerHTML = html.trim();
          var fresh = box.firstElementChild;
          if (!fresh) { return; }
          el.replaceWith(fresh);
          if (fresh.getAttribute("data-poll-active") === "true") {
            poll(fresh);
          } else {
            // Finished: reload once so the log and the summary are complete.
            window.location.reload();
          }
        })
        .catch(function () { poll(el); });
    }, INTERVAL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll-url][data-poll-active='true']").forEach(poll);
  });
})();
