// List import: the upload goes up with a progress bar, then the same bar follows the import
// job until it ends, and the job's report replaces the page's content (the address stays the
// import page's). A job page opened directly follows its job and reloads when it ends.
// Values are set as text; other pages' HTML comes in through DOMParser, never innerHTML.
(function () {
  "use strict";

  function showPage(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var main = doc.querySelector("main");
    if (!main) { document.open(); document.write(html); document.close(); return; }
    document.querySelector("main").replaceWith(document.importNode(main, true));
    document.title = doc.title;
  }

  function follow(url, onProgress, onEnd) {
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (data.state === "done" || data.state === "failed") { onEnd(data); return; }
        onProgress(data);
        window.setTimeout(function () { follow(url, onProgress, onEnd); }, 500);
      })
      .catch(function () { window.setTimeout(function () { follow(url, onProgress, onEnd); }, 2000); });
  }

  var form = document.getElementById("import-form");
  if (form && window.XMLHttpRequest && window.FormData && window.DOMParser) {
    form.addEventListener("submit", function (event) {
      if (!form.querySelector('input[type="file"]').files.length) return;  // the server says what is missing
      event.preventDefault();
      var box = document.getElementById("upload-progress");
      var bar = box.querySelector("progress");
      var label = box.querySelector('[data-field="label"]');
      var button = form.querySelector('button[type="submit"]');
      box.hidden = false;
      button.disabled = true;
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
        if (xhr.status !== 202 || type.indexOf("application/json") !== 0) {
          showPage(xhr.responseText);  // a form error or a file over the limit, as the server wrote it
          return;
        }
        var job = JSON.parse(xhr.responseText);
        bar.value = 0;
        label.textContent = "Importing… 0%";
        follow(job.progress, function (data) {
          bar.max = data.bytes_total || 1; bar.value = data.bytes_done;
          label.textContent = "Importing… " + Math.round(100 * data.bytes_done / (data.bytes_total || 1)) + "% read, " +
            data.rejected + " rows rejected so far";
        }, function () {
          fetch(job.url, {credentials: "same-origin"}).then(function (r) { return r.text(); }).then(showPage);
        });
      });
      xhr.addEventListener("error", function () {
        label.textContent = "The upload failed (the connection broke). Try again.";
        button.disabled = false;
      });
      xhr.send(new FormData(form));
    });
  }

  var section = document.getElementById("import-job");
  if (!section) return;
  var jobBar = document.getElementById("import-bar");
  follow(section.dataset.url, function (data) {
    jobBar.max = data.bytes_total || 1; jobBar.value = data.bytes_done;
    section.querySelector('[data-field="percent"]').textContent = Math.round(100 * data.bytes_done / (data.bytes_total || 1));
    section.querySelector('[data-field="rejected"]').textContent = data.rejected;
  }, function () { window.location.reload(); });
})();
