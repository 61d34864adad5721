// backupsite — the kind part of a destination form, progressively enhanced (the
// destination pages and the wizard's step 3: any element with data-destination-form
// around a [data-kind-chooser] and the kinds' fieldset[data-kind]). Without this script
// every kind's settings are shown under their headings and only the chosen kind's are
// used. With it, only the chosen kind's fieldset is shown; the others are hidden and
// disabled, so their fields are neither validated by the browser nor sent. (Test
// connection and "trust this fingerprint" are sent in the background by fragments.js.)
(function () {
  "use strict";

  function setupKinds(root) {
    var chooser = root.querySelector("[data-kind-chooser]");
    if (!chooser) { return; }
    var fieldsets = root.querySelectorAll("fieldset[data-kind]");
    var hint = chooser.querySelector("[data-no-js-hint]");
    if (hint) { hint.hidden = true; }

    function show() {
      var checked = chooser.querySelector("input[type='radio']:checked");
      var kind = checked ? checked.value : null;
      fieldsets.forEach(function (fieldset) {
        var active = fieldset.getAttribute("data-kind") === kind;
        fieldset.hidden = !active;
        fieldset.disabled = !active;
      });
    }

    chooser.addEventListener("change", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-destination-form]").forEach(setupKinds);
  });
})();
