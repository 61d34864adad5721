// backupsite — buttons answered with a fragment, progressively enhanced (the destination
// pages' Test connection and "trust this fingerprint", the wizard's Test connection and
// Measure now). Without this script such a button sends its form and the server shows
// the whole page again with the answer. With it, a submit button that has
// data-fragment-region="<selector>" is sent in the background (X-Requested-With: fetch)
// and the server's fragment replaces that region, so nothing typed (passwords included)
// is lost. The region may say what to show meanwhile (data-busy-text) and when the
// background request failed (data-failed-text). If the server cannot answer with a
// fragment (a 422: the settings have errors), the form is sent the normal way, with the
// button that was pressed, and the page shows the errors next to their fields.
(function () {
  "use strict";

  function post(form, name, value) {
    var data = new FormData(form);
    data.append(name, value);
    return fetch(form.getAttribute("action") || window.location.href, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" }
    });
  }

  function sendNormally(form, submitter) {
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = submitter.name;
    input.value = submitter.value;
    form.appendChild(input);
    form.submit();
  }

  function busyText(region) {
    var status = document.createElement("p");
    status.className = "muted";
    status.textContent = region.getAttribute("data-busy-text");
    region.replaceChildren(status);
    return status;
  }

  function send(form, submitter, region) {
    if (form.hasAttribute("data-fragment-busy")) { return; }
    form.setAttribute("data-fragment-busy", "");
    var buttons = form.querySelectorAll("button[type='submit']");
    buttons.forEach(function (b) { b.disabled = true; });
    region.setAttribute("aria-busy", "true");
    var status = region.hasAttribute("data-busy-text") ? busyText(region) : null;
    post(form, submitter.name, submitter.value)
      .then(function (response) {
        if (response.ok || response.status === 429) {
          return response.text().then(function (html) {
            region.innerHTML = html;  // a fragment rendered (and escaped) by the server
            if (region.hasAttribute("tabindex")) { region.focus(); }
          });
        }
        throw new Error("HTTP " + response.status);
      })
      .catch(function () {
        if (status && region.hasAttribute("data-failed-text")) {
          status.textContent = region.getAttribute("data-failed-text");
        }
        sendNormally(form, submitter);
      })
      .finally(function () {
        form.removeAttribute("data-fragment-busy");
        region.removeAttribute("aria-busy");
        buttons.forEach(function (b) { b.disabled = false; });
      });
  }

  document.addEventListener("submit", function (event) {
    var submitter = event.submitter;
    if (!submitter || !submitter.hasAttribute("data-fragment-region") || !window.fetch || !window.FormData) {
      return;
    }
    var form = event.target;
    var region = form.querySelector(submitter.getAttribute("data-fragment-region"));
    if (!region) { return; }
    event.preventDefault();
    send(form, submitter, region);
  });

  // For scripts that refresh a region by themselves (the wizard's preview).
  window.backupsiteFragments = { post: post };
})();
