// Campaign composer: show the bodies the chosen format needs and the variables the chosen lists offer.
(function () {
  "use strict";
  var form = document.querySelector("form.compose");
  if (!form) return;
  var listFields = JSON.parse(form.dataset.listFields || "{}");

  function format() {
    var checked = form.querySelector("input[name=format]:checked");
    return checked ? checked.value : "plain";
  }

  function showParts() {
    var f = format();
    form.querySelector("[data-part=text]").hidden = f === "html";
    form.querySelector("[data-part=html]").hidden = f === "plain";
  }

  function showVariables() {
    var names = ["email", "unsubscribe_url"];
    Array.prototype.forEach.call(form.querySelector("select[name=lists]").selectedOptions, function (option) {
      (listFields[option.value] || []).forEach(function (name) {
        if (names.indexOf(name) === -1) names.push(name);
      });
    });
    var target = document.getElementById("variables");
    target.replaceChildren();
    names.forEach(function (name, i) {
      var code = document.createElement("code");
      code.textContent = name;
      if (i) target.appendChild(document.createTextNode(" "));
      target.appendChild(code);
    });
  }

  form.querySelectorAll("input[name=format]").forEach(function (el) { el.addEventListener("change", showParts); });
  form.querySelector("select[name=lists]").addEventListener("change", showVariables);
  showParts();
  showVariables();

  // A new schedule starts in the browser's own time zone when the panel knows it (UTC otherwise).
  var zone = form.querySelector("select[name=schedule_zone][data-default=browser]");
  var browserZone = window.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && browserZone && zone.querySelector('option[value="' + browserZone + '"]')) zone.value = browserZone;
  var scheduled = form.querySelector("input[name=schedule]");
  var when = form.querySelector(".schedule-when");
  function showWhen() { when.style.display = scheduled.checked ? "" : "none"; }
  if (scheduled && when) { scheduled.addEventListener("change", showWhen); showWhen(); }
})();
