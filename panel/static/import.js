// List import: upload with a progress bar, then follow the import job until it ends.
// Values are set as text, never as HTML.
(function () {
  "use strict";
  var form = document.getElementById("import-form");
  if (form && window.XMLHttpRequest && window.FormData) {
    form.addEventListener("submit", function (event) {
      var box = document.getElementById("upload-progress");
      if (!form.querySelector('input[type="file"]').files.length) return;  // let the server say what is missing
      event.preventDefault();
      var bar = box.querySelector("progress");
      var label = box.querySelector('[data-field="label"]');
      box.hidden = false;
      form.querySelector('button[type="submit"]').disabled = true;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action || window.location.href);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        bar.max = e.total; bar.value = e.loaded;
        label.textContent = "Uploading… " + Math.round(100 * e.loaded / e.total) + "%";
      });
      xhr.addEventListener("load", function () {
        var type = xhr.getResponseHeader("Content-Type") || "";
        if (xhr.status === 202 && type.indexOf("application/json") === 0) {
          window.location.assign(JSON.parse(xhr.responseText).url);
          return;
        }
        // An error page (a form error, a file over the limit): show it as the browser would.
        document.open(); document.write(xhr.responseText); document.close();
      });
      xhr.addEventListener("error", function () {
        label.textContent = "The upload failed (the connection broke). Try again.";
        form.querySelector('button[type="submit"]').disabled = false;
      });
      xhr.send(new FormData(form));
    });
  }

  var job = document.getElementById("import-job");
  if (!job) return;
  var bar = document.getElementById("import-bar");
  function poll() {
    fetch(job.dataset.url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (data.state === "done" || data.state === "failed") { window.location.reload(); return; }
        bar.max = data.bytes_total || 1; bar.value = data.bytes_done;
        job.querySelector('[data-field="percent"]').textContent = Math.round(100 * data.bytes_done / (data.bytes_total || 1));
        job.querySelector('[data-field="rejected"]').textContent = data.rejected;
        window.setTimeout(poll, 500);
      })
      .catch(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 500);
})();
