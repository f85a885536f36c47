// Campaign page, live figures: the delivery speed graph and the clicks and opens graph (SVG drawn
// here, no library), progress with its finish estimate, and the breakdown tables, refreshed every
// 3 seconds from the figures URL (only the minutes from the last one on). Text is set as text.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var PAD = { l: 44, r: 10, t: 10, b: 24 };
  var COUNTS = ["sent", "delivered", "deferred", "failed", "bounced_hard", "bounced_soft", "complaints",
                "unsubscribed", "clicks"];
  var RATES = ["delivery_rate", "bounce_rate", "complaint_rate", "click_rate"];
  var COMPLAINT_DANGER = 0.003;  // providers' threshold: over 0.3 % of delivered letters

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function nice(max) {  // a round top for the y axis, at least 4 (four grid lines of whole letters)
    if (max <= 4) return 4;
    var step = Math.pow(10, Math.floor(Math.log10(max)));
    var tops = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < tops.length; i++) if (tops[i] * step >= max) return tops[i] * step;
    return 10 * step;
  }

  function hhmm(t, withDay) {
    var iso = new Date(t * 1000).toISOString();
    return (withDay ? iso.slice(5, 10) + " " : "") + iso.slice(11, 16);
  }

  // points: [{t: unix seconds of the minute, <series>: count, ...}] oldest first; minutes absent
  // from it had nothing and are drawn as zero.
  function draw(svg, points, names, title) {
    var w = svg.clientWidth || 600, h = svg.clientHeight || 220;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.replaceChildren();
    var n = points.length;
    if (!n) {
      svg.appendChild(el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", "class": "axis" }, "Nothing yet"));
      svg.setAttribute("aria-label", title + ": nothing yet");
      return;
    }
    // Each minute is a step from its start to the next minute's (a lone minute is a line too).
    var t0 = points[0].t, t1 = points[n - 1].t + 60, max = 0, highest = 0, i, j;
    for (i = 0; i < n; i++) for (j = 0; j < names.length; j++) if (points[i][names[j]] > max) max = points[i][names[j]];
    highest = max;
    max = nice(max);
    var width = w - PAD.l - PAD.r, height = h - PAD.t - PAD.b, span = t1 - t0;
    // Coordinates to a tenth of a pixel, as numbers (toFixed on 60,000 of them took most of the time).
    var sx = width / span, sy = height / max;
    var x = function (t) { return Math.round((PAD.l + (t - t0) * sx) * 10) / 10; };
    var y = function (v) { return Math.round((PAD.t + height - v * sy) * 10) / 10; };
    var zero = y(0);
    for (i = 0; i <= 4; i++) {
      var v = max * i / 4, yy = y(v);
      svg.appendChild(el("line", { x1: PAD.l, x2: w - PAD.r, y1: yy, y2: yy, "class": "grid" }));
      svg.appendChild(el("text", { x: PAD.l - 6, y: +yy + 4, "text-anchor": "end", "class": "axis" },
                         v.toLocaleString("en")));
    }
    var withDay = span > 86400;
    var ticks = span >= 240 ? [[t0, "start"], [t0 + span / 2, "middle"], [t1, "end"]] : [[t0, "start"], [t1, "end"]];
    ticks.forEach(function (tick) {
      svg.appendChild(el("text", { x: x(tick[0]), y: h - 6, "text-anchor": tick[1], "class": "axis" },
                         hhmm(tick[0], withDay)));
    });
    for (j = 0; j < names.length; j++) {
      var name = names[j], d = "M", prev = null, p, left, level;
      for (i = 0; i < n; i++) {
        p = points[i];
        left = x(p.t);
        level = y(p[name] || 0);
        if (prev !== null && p.t - prev > 60) d += x(prev + 60) + "," + zero + "L" + left + "," + zero + "L";
        d += left + "," + level + "L" + x(p.t + 60) + "," + level + (i < n - 1 ? "L" : "");
        prev = p.t;
      }
      svg.appendChild(el("path", { d: d, "class": "series series-" + name }));
    }
    var last = points[n - 1];
    svg.setAttribute("aria-label", title + ": a minute from " + hhmm(t0, withDay) + " to " + hhmm(last.t, withDay) +
      " UTC; the latest minute " + names.map(function (s) { return (last[s] || 0) + " " + s; }).join(", ") +
      "; at most " + highest + " in a minute");
  }

  window.MailfleetGraph = { draw: draw };

  var figures = document.getElementById("figures");
  if (!figures) return;
  var url = figures.dataset.url;
  var graphs = [
    { svg: document.getElementById("speed-graph"), title: "Delivery speed" },
    { svg: document.getElementById("engagement-graph"), title: "Clicks and opens" },
  ].filter(function (g) { return g.svg; });
  graphs.forEach(function (g) { g.names = g.svg.dataset.series.split(" "); });
  var byMinute = {}, points = [], lastMinute = null;

  function take(minutes) {
    minutes.forEach(function (m) {
      var point = byMinute[m.minute];
      if (!point) {
        point = byMinute[m.minute] = { t: Date.parse(m.minute) / 1000 };
        points.push(point);
      }
      for (var key in m) if (key !== "minute") point[key] = m[key];
      if (lastMinute === null || m.minute > lastMinute) lastMinute = m.minute;
    });
    points.sort(function (a, b) { return a.t - b.t; });
  }

  function redraw() {
    graphs.forEach(function (g) { draw(g.svg, points, g.names, g.title); });
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function fillTable(table, data) {
    var body = table.querySelector("tbody"), rows = data.rows.slice();
    if (data.rest) rows.push(Object.assign({ label: "the other " + data.rest.keys + " domains", rest: true }, data.rest));
    body.replaceChildren();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      if (r.rest) tr.className = "rest";
      cell(tr, r.label);
      COUNTS.forEach(function (c) { cell(tr, r[c].toLocaleString("en"), "num"); });
      RATES.forEach(function (c) {
        var danger = c === "complaint_rate" && r[c] > COMPLAINT_DANGER;
        cell(tr, r[c] === null ? "–" : (100 * r[c]).toFixed(1), "num" + (danger ? " danger" : ""));
      });
      body.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      tr.className = "none";
      cell(tr, "Nothing sent yet.", "empty");
      tr.firstChild.colSpan = 14;
      body.appendChild(tr);
    }
  }

  function showProgress(p) {
    var set = function (key, text) {
      var node = figures.querySelector('[data-progress="' + key + '"]');
      if (node) node.textContent = text;
    };
    set("done", p.done.toLocaleString("en"));
    set("total", p.total.toLocaleString("en"));
    set("rate_per_minute", String(p.rate_per_minute));
    set("finish", p.finish_estimate ? "finishes about " + p.finish_estimate.slice(11, 16) + " UTC" : "no finish estimate");
    var bar = document.getElementById("progress-bar");
    if (bar) bar.style.width = (p.total ? (100 * p.done / p.total).toFixed(1) : 0) + "%";
  }

  function update(data) {
    take(data.minutes);
    redraw();
    showProgress(data.progress);
    document.querySelectorAll("table.breakdown").forEach(function (table) {
      var part = data.breakdowns[table.dataset.by];
      if (part) fillTable(table, part);
    });
  }

  function poll() {
    var ask = url + (lastMinute ? "?since=" + encodeURIComponent(lastMinute) : "");
    fetch(ask, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) update(data); })
      .catch(function () { /* offline for a moment: try again next time */ })
      .finally(function () { setTimeout(poll, 3000); });
  }

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(redraw, 150);
  });
  redraw();
  poll();
})();
