// The Millwright commissioning page: /api/state once, then /api/events (server-sent) live.
// Read-only; every text from the gateway goes in with textContent, never as HTML.
"use strict";

const spark = { step: 2, samples: 150, series: {} };  // device -> point -> [[t, v], ...]
const shown = {};  // device -> { article, rows: point -> tr }

function $(sel, root = document) { return root.querySelector(sel); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}
function clock(epoch) { return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–"; }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function show(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" && !Number.isInteger(value)) return String(+value.toPrecision(7));
  return String(value);
}
function fill(dl, pairs) {
  dl.replaceChildren();
  for (const [key, value, cls] of pairs) {
    dl.append(el("dt", "", key));
    const dd = el("dd", cls || "", value);
    dd.dataset.key = key;
    dl.append(dd);
  }
}

function renderOutbox(o) {
  const dropped = Object.entries(o.dropped || {}).map(([k, v]) => k + "=" + v).join(", ");
  fill($("#outbox dl"), [
    ["depth", o.depth + " events, " + o.readings + " readings"],
    ["bytes", bytes(o.bytes) + " of " + bytes(o.max_bytes)],
    ["oldest", ago(o.oldest_age_s)],
    ["capacity left", o.hours_left === null ? "– (no ingest yet)" : o.hours_left + " h at the current rate"],
    ["dropped", dropped || "none", dropped ? "bad" : ""],
    ["writable", o.writable ? "yes" : "NO", o.writable ? "" : "bad"],
  ]);
}

function renderUplink(u) {
  fill($("#uplink dl"), [
    ["connected", u.connected ? "yes" : "no", u.connected ? "" : "bad"],
    ["in flight", u.in_flight === null ? "–" : String(u.in_flight)],
    ["last ack", clock(u.last_ack)],
    ["problem", u.problem || "none", u.problem ? "bad" : ""],
  ]);
}

function renderAssets(assets) {
  $("#assets-section").hidden = !assets.length;
  const body = $("#assets tbody");
  body.replaceChildren();
  for (const a of assets) {
    const tr = el("tr");
    tr.dataset.asset = a.name;
    const state = el("span", "badge alarm-state " + a.state.split(" ")[0], a.state);
    const stateCell = el("td");
    stateCell.append(state);
    if (a.skipped) stateCell.append(el("small", "", " (not evaluated: " + a.skipped + ")"));
    const alarms = el("ul", "alarms");
    for (const alarm of a.alarms.slice().reverse()) {
      alarms.append(el("li", "", clock(alarm.time) + "  p=" + show(alarm.probability)));
    }
    const alarmCell = el("td");
    alarmCell.append(a.alarms.length ? alarms : el("span", "", "none"));
    tr.append(el("td", "", a.name),
              el("td", "probability", a.probability === null ? "–" :
                 show(a.probability) + " (threshold " + a.threshold + ")"),
              stateCell,
              el("td", "", a.model.name + " " + a.model.version + " · " + a.model.sha256.slice(0, 12)),
              alarmCell);
    body.append(tr);
  }
}

function sparkline(points) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  if (points.length > 1) {
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map(([t, v]) =>
      (((t - t0) / (t1 - t0 || 1)) * 118 + 1).toFixed(1) + "," +
      (22 - ((v - lo) / (hi - lo || 1)) * 20).toFixed(1)).join(" "));
    svg.append(line);
  }
  return svg;
}

function remember(device, p) {
  if (typeof p.value !== "number" || p.quality !== "good") return;
  const byPoint = spark.series[device] || (spark.series[device] = {});
  const ring = byPoint[p.name] || (byPoint[p.name] = []);
  const last = ring[ring.length - 1];
  if (!last || p.time >= last[0] + spark.step) ring.push([p.time, p.value]);
  if (ring.length > spark.samples) ring.splice(0, ring.length - spark.samples);
}

function deviceArticle(d) {
  if (shown[d.name]) return shown[d.name];
  const article = $("#device-template").content.firstElementChild.cloneNode(true);
  article.dataset.device = d.name;
  $(".name", article).textContent = d.name;
  $("#devices").append(article);
  return (shown[d.name] = { article, rows: {} });
}

async function showMapping(device, point, box) {
  const query = "?device=" + encodeURIComponent(device) + "&point=" + encodeURIComponent(point);
  const answer = await fetch("/api/mapping" + query);
  const body = await answer.json();
  box.hidden = false;
  box.replaceChildren();
  if (!answer.ok) { box.append(el("p", "", body.error)); return; }
  const p = body.point;
  box.append(el("p", "", point + ": " + p.table + " " + body.address + ", configured as " + p.type +
                " " + p.byte_order + " · registers " + body.hex.join(" ") + " (" + body.registers.join(" ") + ")"));
  const table = el("table", "decodings");
  const head = el("tr");
  head.append(el("th", "", "type"), ...body.byte_orders.map((o) => el("th", "", o)));
  table.append(head);
  for (const row of body.rows) {
    const tr = el("tr");
    tr.dataset.type = row.type;
    tr.append(el("td", "", row.type));
    for (const order of body.byte_orders) {
      const configured = row.type === p.type && order === p.byte_order;
      const td = el("td", configured ? "match" : "", row.values[order]);
      td.dataset.order = order;
      tr.append(td);
    }
    table.append(tr);
  }
  box.append(table);
}

function renderDevice(d, now) {
  const { article, rows } = deviceArticle(d);
  const status = $(".status", article);
  status.textContent = d.online ? "online" : "offline";
  status.className = "status badge " + (d.online ? "online" : "offline");
  $(".since", article).textContent = "since " + clock(d.since) +
    (d.online ? "" : " · " + d.reason);
  const timing = [];
  if (d.poll_interval_s) timing.push("polled every " + d.poll_interval_s + " s");
  if (d.interval_s !== null) timing.push("last frames " + ago(d.interval_s) + " apart");
  if (d.poll_ms !== null) timing.push("last poll took " + d.poll_ms + " ms");
  timing.push(d.frames + " frames", d.errors + " errors");
  $(".timing", article).textContent = timing.join(" · ");
  $(".error", article).textContent = d.last_error ? "last error: " + d.last_error : "";
  const body = $(".points tbody", article);
  for (const p of d.points) {
    remember(d.name, p);
    let tr = rows[p.name];
    if (!tr) {
      tr = rows[p.name] = el("tr");
      tr.dataset.point = p.name;
      for (const cls of ["name", "value", "unit", "quality", "age", "spark", "help"]) {
        tr.append(el("td", cls));
      }
      $(".name", tr).textContent = p.name;
      if (d.protocol === "modbus") {
        const button = el("button", "registers", "registers");
        button.addEventListener("click", () => showMapping(d.name, p.name, $(".mapping", article)));
        $(".help", tr).append(button);
      }
      body.append(tr);
    }
    $(".value", tr).textContent = show(p.value);
    $(".unit", tr).textContent = p.unit || "";
    const quality = $(".quality", tr);
    quality.textContent = p.quality;
    quality.className = "quality " + p.quality;
    $(".age", tr).textContent = ago(Math.max(0, now - p.received));
    const series = (spark.series[d.name] || {})[p.name];
    $(".spark", tr).replaceChildren(series ? sparkline(series) : "");
  }
}

function render(state) {
  $("#gateway").textContent = state.gateway.site + "/" + state.gateway.id;
  $("#updated").textContent = "updated " + clock(state.now);
  renderOutbox(state.outbox);
  renderUplink(state.uplink);
  renderAssets(state.assets);
  for (const d of state.devices) renderDevice(d, state.now);
}

function setLink(live) {
  const link = $("#link");
  link.textContent = live ? "live" : "reconnecting";
  link.className = "badge " + (live ? "on" : "off");
}

async function start() {
  const first = await fetch("/api/state");
  const state = await first.json();
  spark.step = state.spark.step_s;
  spark.samples = state.spark.samples;
  for (const [device, points] of Object.entries(state.history)) {
    spark.series[device] = {};
    for (const [point, ring] of Object.entries(points)) spark.series[device][point] = ring.slice();
  }
  render(state);
  const events = new EventSource("/api/events");
  events.addEventListener("state", (e) => { setLink(true); render(JSON.parse(e.data)); });
  events.addEventListener("error", () => setLink(false));
}

start();
