// backupsite — the backup wizard, progressively enhanced. Without this script every step
// works as it is: all fields are shown (with a hint which ones apply), and the extra
// buttons (Update preview, Measure now, Test connection, Trust) send the step and show
// it again with the answer. With it:
//  * fields that do not apply are hidden (the first start for "Manually only", the cron
//    field, the password or key fields of the other encryption choices, the new
//    destination's form while a saved one is picked);
//  * the preview of step 1 follows what is typed, the total of step 2 follows the
//    checkboxes, the strength of the backup password is shown while it is typed
//    (the server decides; the words are the same).
// Measure now, Test connection and Trust are sent in the background by fragments.js;
// the new destination's kinds swap by destination-form.js, as on the destination pages.
(function () {
  "use strict";

  function radioValue(form, name) {
    var checked = form.querySelector("input[type='radio'][name='" + name + "']:checked");
    return checked ? checked.value : "";
  }

  function fieldValue(form, suffix) {
    var el = form.querySelector("[name$='-" + suffix + "']");
    if (!el) { return ""; }
    if (el.type === "radio") { return radioValue(form, el.name); }
    return el.value;
  }

  function toggle(form, selector, visible) {
    form.querySelectorAll(selector).forEach(function (el) { el.hidden = !visible; });
  }

  function setupVisibility(form) {
    form.querySelectorAll("[data-no-js-hint]").forEach(function (el) { el.hidden = true; });
    function update() {
      var interval = fieldValue(form, "interval");
      if (form.querySelector("[name$='-interval']")) {
        toggle(form, "[data-show-for='cron']", interval === "cron");
        toggle(form, "[data-hide-for='manual']", interval !== "manual");
      }
      var encryption = fieldValue(form, "encryption");
      form.querySelectorAll("[data-show-for-encryption]").forEach(function (el) {
        el.hidden = el.getAttribute("data-show-for-encryption") !== encryption;
      });
      var target = fieldValue(form, "target");
      toggle(form, "[data-show-for-target='new']", target === "new");
      if (target) {
        form.querySelectorAll("[data-for-target]").forEach(function (el) {
          el.hidden = el.getAttribute("data-for-target") !== target;
        });
        var chosen = form.querySelector("input[name$='-target']:checked");
        var folder = form.querySelector("#remote-folder");
        if (chosen && folder && chosen.hasAttribute("data-folder")) {
          folder.textContent = chosen.getAttribute("data-folder");
        }
      }
    }
    form.addEventListener("change", update);
    update();
  }

  // --- step 2: the running total and the password's strength -------------------------
  function formatSize(bytes) {
    // As Django's filesizeformat: 1024-based, one decimal.
    var units = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    if (bytes < 1024) { return bytes + (bytes === 1 ? " byte" : " bytes"); }
    var i = 0, value = bytes;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return value.toFixed(1) + "\u00a0" + units[i];
  }

  function setupTotal(form) {
    function update() {
      var out = form.querySelector("[data-total]");
      if (!out) { return; }
      var total = 0;
      form.querySelectorAll("[data-source-row]").forEach(function (row) {
        var box = row.querySelector("input[type='checkbox']");
        var size = parseInt(row.getAttribute("data-size"), 10);
        if (box && box.checked && !isNaN(size)) { total += size; }
      });
      out.textContent = formatSize(total);
    }
    form.addEventListener("change", function (event) {
      if (event.target.matches("[data-source-row] input[type='checkbox']")) { update(); }
    });
  }

  function score(password) {
    // The rule of jobs/wizard/passwords.py, without its list of common passwords.
    if (password.length < 12 || new Set(password).size === 1) { return 0; }
    var classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^A-Za-z0-9]/].filter(function (re) { return re.test(password); }).length;
    var level = password.length < 16 ? 1 : (password.length < 20 ? 2 : 3);
    if (classes >= 3 && level < 3) { level += 1; }
    return level;
  }

  function setupStrength(form) {
    var out = form.querySelector("[data-strength-for]");
    if (!out) { return; }
    var input = document.getElementById(out.getAttribute("data-strength-for"));
    if (!input) { return; }
    input.addEventListener("input", function () {
      if (!input.value) { out.textContent = ""; out.removeAttribute("data-score"); return; }
      var s = score(input.value);
      out.setAttribute("data-score", String(s));
      out.textContent = (out.getAttribute("data-label") || "") + " " + out.getAttribute("data-hint-" + s);
    });
  }

  // --- step 1: the preview, refreshed in the background --------------------------------
  function setupPreview(form) {
    var region = form.querySelector("[data-preview-region]");
    var fragments = window.backupsiteFragments;
    if (!region || !window.fetch || !fragments) { return; }
    var button = form.querySelector("[data-preview-button]");
    if (button) { button.hidden = true; }
    var timer = null;
    function refresh() {
      fragments.post(form, "wizard_preview", "1")
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { region.innerHTML = html; } })
        .catch(function () { if (button) { button.hidden = false; } });
    }
    function later() {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 400);
    }
    form.addEventListener("input", later);
    form.addEventListener("change", later);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-wizard]").forEach(function (form) {
      setupVisibility(form);
      setupTotal(form);
      setupStrength(form);
      setupPreview(form);
    });
  });
})();
