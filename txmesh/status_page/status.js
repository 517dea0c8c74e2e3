// txmesh's live status page: polls /status.json every second and redraws the tables.  Plain DOM (no framework,
// no build step); every value goes in through textContent, never as HTML.
"use strict";

(function () {
  var POLL_MS = 1000;
  var updates = 0;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }

  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) { tr.appendChild(c); });
    return tr;
  }

  function num(v, cls) { return el("td", v, "num" + (cls ? " " + cls : "")); }

  function seconds(v) {
    if (v === null || v === undefined) { return "–"; }
    if (v < 1) { return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms"; }
    return v.toFixed(2) + " s";
  }

  function rate(v) { return v === null || v === undefined ? "–" : v.toFixed(1); }

  function percent(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }

  function uptime(s) {
    if (s === undefined || s === null) { return ""; }
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + Math.floor(s % 60) + "s";
  }

  function fill(tableId, rows) {
    var body = document.querySelector("#" + tableId + " tbody");
    var fresh = document.createElement("tbody");
    rows.forEach(function (r) { fresh.appendChild(r); });
    if (!rows.length) {
      var empty = el("td", "none", "note");
      empty.colSpan = document.querySelectorAll("#" + tableId + " thead th").length;
      fresh.appendChild(row([empty]));
    }
    body.parentNode.replaceChild(fresh, body);
  }

  function renderServer(server) {
    document.getElementById("version").textContent = server.version ? server.version : "";
    var facts = document.getElementById("server");
    facts.textContent = "";
    [["state", server.state], ["node", server.node && server.node.id], ["uptime", uptime(server.uptime_seconds)],
     ["python", server.python], ["twisted", server.twisted], ["mode", server.hot_path_mode]]
      .forEach(function (f) {
        if (f[1]) { facts.appendChild(el("span", f[0] + ": " + f[1])); }
      });
  }

  function renderListeners(listeners) {
    fill("listeners", listeners.map(function (l) {
      var state = l.draining ? el("td", "draining", "warn") : (l.accepting ? el("td", "accepting", "ok")
                                                                         : el("td", "not accepting", "bad"));
      return row([el("td", l.name), el("td", l.protocol), el("td", l.address), el("td", (l.bound || []).join(", ")),
                  num(l.connections), state]);
    }));
  }

  function clusterRow(name, protocol, hostsCell, c) {
    var failureClass = c.failure_rate ? (c.failure_rate >= 0.05 ? "bad" : "warn") : "";
    var lat = c.latency_seconds || {};
    return row([el("td", name), el("td", protocol || ""), hostsCell, num(rate(c.requests_per_second)),
                num(percent(c.failure_rate), failureClass), num(seconds(lat.p50)), num(seconds(lat.p90)),
                num(seconds(lat.p99)), num(c.requests_total)]);
  }

  function renderClusters(status) {
    var rows = status.clusters.map(function (c) {
      var cls = c.total_hosts && c.healthy_hosts === c.total_hosts ? "ok" : (c.healthy_hosts ? "warn" : "bad");
      return clusterRow(c.name, c.protocol, num(c.healthy_hosts + " / " + c.total_hosts, cls), c);
    });
    if (status.no_cluster) {
      rows.push(clusterRow("(no cluster: local replies)", "", num("–"), status.no_cluster));
    }
    fill("clusters", rows);
    document.getElementById("window").textContent =
      status.window_seconds ? "(rates over the last " + status.window_seconds.toFixed(0) + " s)" : "(collecting…)";
    var hosts = [];
    status.clusters.forEach(function (c) {
      c.hosts.forEach(function (h) {
        var health = h.healthy ? el("td", "healthy", "ok")
                               : el("td", "unhealthy" + (h.health_flags && h.health_flags.length
                                                            ? " (" + h.health_flags.join(", ") + ")" : ""), "bad");
        hosts.push(row([el("td", c.name), el("td", h.address), health, num(h.active_requests), num(h.weight)]));
      });
    });
    fill("hosts", hosts);
  }

  function render(status) {
    renderServer(status.server || {});
    renderListeners(status.listeners || []);
    renderClusters(status);
    updates += 1;
    document.body.dataset.updates = String(updates);
    var conn = document.getElementById("connection");
    conn.className = "connection";
    conn.textContent = "updated " + new Date(status.time * 1000).toLocaleTimeString();
  }

  function poll() {
    fetch("/status.json", {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(render)
      .catch(function (e) {
        var conn = document.getElementById("connection");
        conn.className = "connection down";
        conn.textContent = "admin API unreachable (" + e.message + "); retrying";
      })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }

  poll();
})();
