// backupsite — a form with one fieldset per kind (sources; the same markup as the
// destination form), progressively enhanced. Without this script the page works as it
// is: every kind's settings are shown under their headings, and the Test button reloads
// the page with the result. With it:
//  * only the chosen kind's fieldset is shown; the others are hidden and disabled (so
//    their fields are neither validated by the browser nor sent), and the Test button is
//    shown only for kinds that can be tested (data-testable on the kind's radio button);
//  * Test is sent in the background and the result replaces the result region, so
//    nothing typed (passwords included) is lost. If the server cannot answer with a
//    result (the settings have errors), the form is sent the normal way and the page
//    shows the errors next to their fields.
(function () {
  "use strict";

  function setupKinds(form) {
    var chooser = form.querySelector("[data-kind-chooser]");
    if (!chooser) { return; }
    var fieldsets = form.querySelectorAll("fieldset[data-kind]");
    var testButton = form.querySelector("[data-test-button]");
    var hint = chooser.querySelector("[data-no-js-hint]");
    if (hint) { hint.hidden = true; }

    function show() {
      var checked = chooser.querySelector("input[name='kind']:checked");
      var kind = checked ? checked.value : null;
      fieldsets.forEach(function (fieldset) {
        var active = fieldset.getAttribute("data-kind") === kind;
        fieldset.hidden = !active;
        fieldset.disabled = !active;
      });
      if (testButton) {
        testButton.hidden = !checked || checked.getAttribute("data-testable") !== "true";
      }
    }

    chooser.addEventListener("change", show);
    show();
  }

  function fallback(form, submitter) {
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = submitter.name;
    input.value = submitter.value;
    form.appendChild(input);
    form.submit();
  }

  function setupTest(form) {
    var region = form.querySelector("[data-test-result]");
    if (!region || !window.fetch || !window.FormData) { return; }
    var busy = false;

    form.addEventListener("submit", function (event) {
      var submitter = event.submitter;
      if (!submitter || submitter.name !== "action" || submitter.value !== "test") { return; }
      event.preventDefault();
      if (busy) { return; }
      busy = true;

      var data = new FormData(form);
      data.append(submitter.name, submitter.value);
      var buttons = form.querySelectorAll("button[type='submit']");
      buttons.forEach(function (b) { b.disabled = true; });
      region.setAttribute("aria-busy", "true");
      var status = document.createElement("p");
      status.className = "muted";
      status.textContent = region.getAttribute("data-testing-text") || "…";
      region.replaceChildren(status);

      fetch(form.getAttribute("action") || window.location.href, {
        method: "POST",
        body: data,
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" }
      })
        .then(function (response) {
          if (response.ok || response.status === 429) {
            return response.text().then(function (html) {
              region.innerHTML = html;  // a fragment rendered (and escaped) by the server
              region.focus();
            });
          }
          throw new Error("HTTP " + response.status);
        })
        .catch(function () {
          status.textContent = region.getAttribute("data-failed-text") || "";
          fallback(form, submitter);
        })
        .finally(function () {
          busy = false;
          region.removeAttribute("aria-busy");
          buttons.forEach(function (b) { b.disabled = false; });
        });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-kind-form]").forEach(function (form) {
      setupKinds(form);
      setupTest(form);
    });
  });
})();
