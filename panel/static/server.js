// Server page: follow the setup jobs (status, progress by task, the log) every 2 seconds
// while one is queued or running. Values are set as text, never as HTML.
(function () {
  "use strict";
  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
  var section = document.getElementById("jobs");
  if (!section) return;
  var url = section.dataset.url;
  var timer = null;

  function set(el, name, value) {
    var target = el.querySelector('[data-field="' + name + '"]');
    if (!target) return;
    target.textContent = value === null || value === undefined || value === "" ? (name === "current_task" ? "—" : "") : String(value);
    if (name === "status") target.className = "badge status-" + value;
    if (name === "error") target.hidden = !value;
  }

  function update(data) {
    var status = document.getElementById("server-status");
    if (status) { status.textContent = data.server.status; status.className = "badge status-" + data.server.status; }
    var hostKey = document.getElementById("host-key");
    if (hostKey && data.server.host_key_fingerprint) hostKey.textContent = data.server.host_key_fingerprint;
    var cert = document.getElementById("cert-fingerprint");
    if (cert && data.server.cert_fingerprint) cert.textContent = data.server.cert_fingerprint;
    var active = false;
    data.jobs.forEach(function (job) {
      var el = section.querySelector('[data-job="' + job.id + '"]');
      if (!el) { window.location.reload(); return; }
      ["status", "tasks_done", "current_task", "error"].forEach(function (k) { set(el, k, job[k]); });
      var log = el.querySelector('[data-field="log"]');
      if (log && log.textContent !== job.log) {
        var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = job.log;
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      if (job.status === "queued" || job.status === "running") active = true;
    });
    if (!active && timer) { clearInterval(timer); timer = null; }
  }

  function poll() {
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) update(data); })
      .catch(function () {});
  }

  var running = section.querySelector('.badge.status-queued, .badge.status-running');
  if (running) timer = setInterval(poll, 2000);
})();
