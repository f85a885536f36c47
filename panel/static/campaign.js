// Campaign page: refresh the counts and the failures every 2 seconds; show the buttons
// that fit the campaign's status. Values are set as text, never as HTML.
(function () {
  "use strict";
  var stats = document.getElementById("stats");
  if (!stats) return;
  var url = stats.dataset.url;
  var controls = document.getElementById("controls");

  function showControls(status) {
    if (!controls) return;
    controls.dataset.status = status;
    controls.querySelectorAll("[data-when]").forEach(function (el) {
      el.hidden = el.dataset.when.split(" ").indexOf(status) === -1;
    });
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function update(data) {
    var s = data.stats;
    document.querySelectorAll("[data-stat]").forEach(function (el) {
      var key = el.dataset.stat;
      if (!(key in s)) return;
      el.textContent = typeof s[key] === "number" ? s[key].toLocaleString("en") : s[key];
      if (key === "status") el.className = "badge status-" + s[key];
    });
    showControls(s.status);
    var linkRows = document.querySelectorAll("#links tbody tr");
    if (data.links && linkRows.length === data.links.length) {
      linkRows.forEach(function (row, n) {
        row.querySelector("[data-link-clicks]").textContent = data.links[n].clicks.toLocaleString("en");
        row.querySelector("[data-link-recipients]").textContent = data.links[n].recipients.toLocaleString("en");
      });
    }
    var body = document.querySelector("#failures tbody");
    if (body) {
      body.replaceChildren();
      data.failures.forEach(function (f) {
        var row = document.createElement("tr");
        cell(row, f.at); cell(row, f.email); cell(row, f.status); cell(row, f.code, "num"); cell(row, f.reply, "reply");
        body.appendChild(row);
      });
      var none = document.getElementById("no-failures");
      if (none) none.hidden = data.failures.length > 0;
      document.getElementById("failures").hidden = data.failures.length === 0;
    }
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) update(data); })
      .catch(function () { /* offline for a moment: try again next time */ })
      .finally(function () { setTimeout(poll, 2000); });
  }

  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
  showControls(controls ? controls.dataset.status : "");
  setTimeout(poll, 2000);
})();
