// daqbridge lab panel. Everything shown comes from the server as JSON and is put into the page
// as text (textContent, attributes): nothing received is ever evaluated or parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const panel = {
  config: null,
  worker: null,
  manager: {},
  run: null,
  live: {},            // data key -> {value, units, device, time}
  latencies: [],       // ms from an event document's time to its point drawn in the page
  pending: [],         // times of the events received and not drawn yet
  shadow: {},
};
window.daqbridgePanel = panel;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else tr.appendChild(el("td", c));
  }
  return tr;
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function secs(v) { return v === null || v === undefined ? "-" : `${(v * 1000).toFixed(1)} ms`; }

// --- the token -----------------------------------------------------------------------------

function token() { return sessionStorage.getItem("daqbridge-token") || ""; }

function initToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash.slice(1));
  if (m) {
    sessionStorage.setItem("daqbridge-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("token").value = token();
  $("token").addEventListener("change", () => sessionStorage.setItem("daqbridge-token", $("token").value));
}

async function act(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers["X-Daqbridge-Token"] = token();
  const reply = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  let data = {};
  try { data = await reply.json(); } catch (e) { data = { error: `HTTP ${reply.status}` }; }
  return { ok: reply.ok, status: reply.status, data };
}

function say(text, ok) {
  const m = $("run-message");
  m.textContent = text;
  m.className = ok ? "message ok" : "message refused";
}

// --- run control ---------------------------------------------------------------------------

function deviceSelect(name, devices, limits) {
  const select = el("select");
  select.dataset.field = name;
  select.appendChild(el("option", "", ""));
  for (const d of devices) {
    const opt = el("option", d);
    opt.value = d;
    select.appendChild(opt);
  }
  const wrap = el("span");
  wrap.appendChild(select);
  if (limits) {
    const shown = el("span", "", "limits");
    const update = () => {
      const lim = (panel.worker && panel.worker.limits || {})[select.value];
      shown.textContent = lim ? ` limits ${fmt(lim[0])} … ${fmt(lim[1])}` : "";
    };
    select.addEventListener("change", update);
    wrap.appendChild(shown);
  }
  return wrap;
}

function buildForm() {
  const plan = panel.config.plans.find((p) => p.name === $("plan-select").value);
  const box = $("plan-fields");
  box.replaceChildren();
  $("plan-usage").textContent = plan.usage;
  $("detectors-box").classList.toggle("hidden", !plan.detectors);
  const devices = panel.config.devices;
  for (const f of plan.fields) {
    const label = el("label", `${f.name} `);
    let input;
    if (f.kind === "motor" || f.kind === "device") {
      input = deviceSelect(f.name, devices, f.kind === "motor");
    } else if (f.kind === "bool") {
      input = el("select");
      input.dataset.field = f.name;
      for (const v of ["", "true", "false"]) { const o = el("option", v); o.value = v; input.appendChild(o); }
      if (f.default !== null && f.default !== undefined) input.value = String(f.default);
    } else {
      input = el("input");
      input.type = "text";
      input.dataset.field = f.name;
      input.size = f.kind === "list" || f.kind === "list_devices" ? 16 : 8;
      input.placeholder = f.annotation || f.kind;
      if (f.default !== null && f.default !== undefined) input.value = String(f.default);
    }
    label.appendChild(input);
    box.appendChild(label);
  }
}

async function submitPlan(ev) {
  ev.preventDefault();
  const values = {};
  for (const input of $("plan-fields").querySelectorAll("[data-field]")) {
    if (input.value !== "") values[input.dataset.field] = input.value;
  }
  const detectors = Array.from($("detectors").selectedOptions).map((o) => o.value);
  const md = $("plan-md").value.split("\n").map((s) => s.trim()).filter((s) => s);
  say("checking…", true);
  const r = await act("/api/queue", { plan: $("plan-select").value, values, detectors, md, start: true });
  if (r.ok) say(`queued ${r.data.plan}${r.data.started ? " and started" : ""}`, true);
  else say(r.data.error || `refused (HTTP ${r.status})`, false);
}

async function control(action) {
  const r = await act(`/api/control/${action}`);
  if (r.ok) say(`${action}: done`, true);
  else say(r.data.error || `refused (HTTP ${r.status})`, false);
}

// --- the lab: instruments and leases --------------------------------------------------------

function deviceState(id, d, w) {
  if (d.stack === "native") {
    const port = Object.values(w.ports || {}).find((p) => p && p.port === d.resource);
    if (port && port.state === "lost") return port.reopens ? "reconnecting" : "lost";
    return d.connected ? "connected" : "NOT connected";
  }
  const h = ((w.legacy || {}).instruments || {})[d.instrument];
  return h ? h.state : "unknown";
}

function valuesOf(id, w) {
  const out = [];
  const read = ((w.values || {})[id] || {});
  if (read.error) out.push(`error: ${read.error}`);
  const fields = Object.assign({}, read.fields || {});
  for (const [key, v] of Object.entries(panel.live)) {
    if (v.device === id) fields[key] = v;   // a run's events are newer than the last read
  }
  for (const [key, v] of Object.entries(fields)) {
    out.push(`${key} = ${fmt(v.value)}${v.units ? " " + v.units : ""}`);
  }
  return out.join("; ");
}

function drawInstruments() {
  const w = panel.worker;
  if (!w) return;
  const body = $("instruments").tBodies[0];
  const rows = [];
  for (const [id, d] of Object.entries(w.devices || {}).sort()) {
    if (d.error && Object.keys(d).length === 1) continue;
    const state = deviceState(id, d, w);
    const tr = row([id, d.stack, d.instrument, d.resource || (d.stack === "legacy" ? "(legacy driver)" : "-"),
      state, valuesOf(id, w)]);
    tr.dataset.device = id;
    tr.cells[4].className = `state-${state.split(" ")[0]}`;
    rows.push(tr);
  }
  for (const [iid, why] of Object.entries(w.failures || {})) {
    const tr = row([iid, "-", iid, "-", "failed", why]);
    tr.dataset.device = iid;
    tr.cells[4].className = "state-failed";
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function stat(s) {
  if (!s || !s.count) return "-";
  return `${secs(s.p50)} / ${secs(s.p95)} / ${secs(s.max)}`;
}

function drawLeases() {
  const w = panel.worker;
  if (!w) return;
  const rows = [];
  for (const l of w.leases || []) {
    const tr = row([l.resource, l.state, l.holder || "free", l.holder ? secs(l.held_for) : "-",
      (l.waiters || []).join(", ") || "none", fmt(l.transactions), stat(l.wait), stat(l.hold)],
      l.holder ? "held" : "");
    tr.dataset.resource = l.resource;
    rows.push(tr);
  }
  $("leases").tBodies[0].replaceChildren(...rows);
}

// --- queue and manager ----------------------------------------------------------------------

function itemText(i) {
  const args = (i.args || []).map(fmt).join(", ");
  const kw = Object.entries(i.kwargs || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(", ");
  return `${i.name}(${[args, kw].filter((s) => s).join(", ")})`;
}

function drawManager() {
  const m = panel.manager;
  $("manager-state").textContent = m.error ? "lab not answering" : `${m.manager_state || "?"}`;
  if (m.error) $("worker-error").textContent = m.error;
}

function drawQueue(items) {
  $("queue").replaceChildren(...items.map((i) => el("li", itemText(i))));
}

function drawDone(items) {
  $("done").replaceChildren(...items.map((i) => {
    const li = el("li", `${itemText(i)}: ${i.exit_status}${i.msg ? " — " + i.msg : ""}`);
    li.className = i.exit_status === "completed" ? "ok" : "refused";
    return li;
  }));
  refreshHistory();
}

// --- live documents -------------------------------------------------------------------------

function hintedFields(desc) {
  const out = [];
  for (const h of Object.values(desc.hints || {})) out.push(...(h.fields || []));
  return out;
}

function onDocument(name, doc, received) {
  if (name === "start") {
    const dims = ((doc.hints || {}).dimensions || []);
    const motors = dims.length && dims[0][0][0] !== "time" ? dims.map((d) => d[0][0]) : [];
    panel.run = { start: doc, descriptors: {}, x: motors[0] || null, y: null, motors, points: [],
      events: 0, shape: doc.shape || null, stop: null, pixels: [] };
    panel.shadow = {};
    $("live-title").textContent = `scan ${doc.scan_id}: ${doc.plan_name} (${doc.uid.slice(0, 8)})`;
    $("peak-stats").textContent = "";
    drawPlot($("live-plot"), [], null, null);
    const raster = panel.run.shape && panel.run.shape.length === 2;
    $("raster").classList.toggle("hidden", !raster);
    $("live-plot").classList.toggle("hidden", raster);
    if (raster) $("raster").getContext("2d").clearRect(0, 0, 300, 300);
    $("camera-box").classList.add("hidden");
    progress();
  } else if (!panel.run || (doc.run_start && doc.run_start !== panel.run.start.uid && name !== "event")) {
    return;
  } else if (name === "descriptor") {
    panel.run.descriptors[doc.uid] = doc;
    if (doc.name === "primary" && !panel.run.y) {
      const hinted = hintedFields(doc).filter((f) => !panel.run.motors.includes(f));
      const keys = Object.entries(doc.data_keys).filter(([k, v]) => !(v.shape || []).length);
      panel.run.y = hinted[0] || (keys.find(([k]) => !panel.run.motors.includes(k)) || [null])[0];
    }
  } else if (name === "event") {
    const desc = panel.run.descriptors[doc.descriptor];
    if (!desc) return;
    for (const [obj, keys] of Object.entries(desc.object_keys || {})) {
      for (const k of keys) {
        if (k in doc.data) {
          panel.live[k] = { value: doc.data[k], units: (desc.data_keys[k] || {}).units, device: obj };
        }
      }
    }
    shadowRows(doc.data);
    if (desc.name !== "primary") return;
    panel.run.events += 1;
    const x = panel.run.x ? doc.data[panel.run.x] : doc.seq_num;
    const y = doc.data[panel.run.y];
    if (typeof x === "number" && typeof y === "number") panel.run.points.push([x, y]);
    if (panel.run.shape && panel.run.shape.length === 2) panel.run.pixels.push([doc.seq_num - 1, y]);
    if (received) panel.pending.push(doc.time);
    redraw();
  } else if (name === "stop") {
    panel.run.stop = doc;
    const r = panel.run;
    if (r.shape && r.shape.length === 2) paintRaster();
    else drawPlot($("live-plot"), r.points, r.x || "seq_num", r.y);
    progress();
    drawInstruments();
    peakStats();
  }
}

// At most one redraw per frame however fast events come: the browser shares the machine with
// the lab, and a scan must not wait for its own plot. An event's delay is taken when its point
// has been drawn.
// 15 redraws a second at most: the browser shares the machine with the lab (measured: at 25 a
// second chromium took a fifth of a core during a 200-point scan), the eye sees no difference.
const REDRAW_MS = 66;
const MARKED_POINTS = 60;  // beyond this a curve reads better, and draws faster, without dots
let redrawQueued = false;
let redrawn = 0;
let instrumentsDrawn = 0;
function redraw() {
  if (redrawQueued) return;
  redrawQueued = true;
  setTimeout(() => requestAnimationFrame(paint), Math.max(0, redrawn + REDRAW_MS - Date.now()));
}

function paint() {
  redrawQueued = false;
  redrawn = Date.now();
  const r = panel.run;
  if (!r) return;
  if (r.shape && r.shape.length === 2) paintRaster();
  else drawPlot($("live-plot"), r.points, r.x || "seq_num", r.y);
  progress();
  const now = Date.now();
  for (const t of panel.pending.splice(0)) panel.latencies.push(now - t * 1000);
  if (now - instrumentsDrawn > 1000) { instrumentsDrawn = now; drawInstruments(); }
}

function progress() {
  const r = panel.run;
  if (!r) return;
  const total = r.start.num_points || 0;
  $("progress-bar").max = total || 1;
  $("progress-bar").value = total ? r.events : 0;
  const end = r.stop ? ` — ${r.stop.exit_status}${r.stop.reason ? ": " + r.stop.reason : ""}` : "";
  $("progress-text").textContent = `${r.events}${total ? " / " + total : ""} points${end}`;
}

function peakStats() {
  const pts = panel.run ? panel.run.points : [];
  if (pts.length < 3 || (panel.run.shape && panel.run.shape.length === 2)) return;
  let max = pts[0], min = pts[0], sum = 0, sumxy = 0;
  for (const p of pts) {
    if (p[1] > max[1]) max = p;
    if (p[1] < min[1]) min = p;
  }
  for (const p of pts) { sum += p[1] - min[1]; sumxy += p[0] * (p[1] - min[1]); }
  const half = (max[1] + min[1]) / 2;
  const above = pts.filter((p) => p[1] >= half).map((p) => p[0]);
  const fwhm = above.length ? Math.max(...above) - Math.min(...above) : null;
  const com = sum ? sumxy / sum : null;
  $("peak-stats").textContent =
    `peak ${fmt(max[1])} at ${fmt(max[0])}; minimum ${fmt(min[1])} at ${fmt(min[0])}; ` +
    `centre of mass ${fmt(com)}; width above half maximum ${fmt(fwhm)}`;
}

function shadowRows(data) {
  let changed = false;
  for (const key of Object.keys(data)) {
    const m = /^(.*)_shadow_diff_(.*)$/.exec(key);
    if (!m) continue;
    const [, id, field] = m;
    panel.shadow[`${id}_${field}`] = [data[`${id}_${field}`], data[`${id}_legacy_${field}`], data[key]];
    changed = true;
  }
  if (!changed) return;
  $("shadow").tBodies[0].replaceChildren(...Object.entries(panel.shadow).map(([k, v]) => {
    const tr = row([k, fmt(v[0]), fmt(v[1]), fmt(v[2])]);
    tr.dataset.field = k;
    return tr;
  }));
}

const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawPlot(target, points, xname, yname) {
  const W = 560, H = 300, L = 60, B = 30, T = 10, R = 10;
  const parts = [svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" })];
  if (points.length) {
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= Math.abs(y0) || 1; y1 += Math.abs(y1) || 1; }
    const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const py = (y) => H - B - (y - y0) / (y1 - y0) * (H - B - T);
    parts.push(svg("polyline", { class: "curve", points: points.map((p) => `${px(p[0])},${py(p[1])}`).join(" ") }));
    if (points.length <= MARKED_POINTS) {
      for (const p of points) parts.push(svg("circle", { class: "point", cx: px(p[0]), cy: py(p[1]), r: 3 }));
    }
    parts.push(svg("text", { x: L, y: H - 8 }, fmt(x0)), svg("text", { x: W - R - 60, y: H - 8 }, fmt(x1)));
    parts.push(svg("text", { x: 2, y: H - B }, fmt(y0)), svg("text", { x: 2, y: T + 10 }, fmt(y1)));
  }
  parts.push(svg("text", { x: W / 2 - 40, y: H - 8 }, xname || ""));
  parts.push(svg("text", { x: L + 6, y: T + 12 }, yname || ""));
  target.replaceChildren(...parts);
  target.dataset.points = String(points.length);
}

function paintRaster() {
  const r = panel.run;
  const [ny, nx] = r.shape;
  r.raster = r.raster || [];
  for (const [index, value] of r.pixels.splice(0)) {
    const row = Math.floor(index / nx);
    let col = index % nx;
    if (r.start.snaking && r.start.snaking[1] && row % 2 === 1) col = nx - 1 - col;
    r.raster.push([row, col, value]);
  }
  const vals = r.raster.map((p) => p[2]).filter((v) => typeof v === "number");
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const ctx = $("raster").getContext("2d");
  const w = 300 / nx, h = 300 / ny;
  for (const [rr, cc, v] of r.raster) {
    const g = hi > lo ? Math.round(255 * (v - lo) / (hi - lo)) : 128;
    ctx.fillStyle = `rgb(${g},${g},${255 - g})`;
    ctx.fillRect(cc * w, rr * h, Math.ceil(w), Math.ceil(h));
  }
  $("raster").dataset.pixels = String(r.raster.length);
  $("live-plot").dataset.points = String(r.raster.length);
}

// The camera's latest frame: 8-bit grey, already downsampled and scaled by the server
// (daqbridge/web/_camera.py), drawn as it comes; the server sends a few a second at most.
function drawFrame(f) {
  if (!f || !panel.run || f.run !== panel.run.start.uid) return;
  const box = $("camera-box");
  box.classList.remove("hidden");
  if (f.error) { $("camera-caption").textContent = f.error; $("camera-caption").className = "error"; return; }
  const canvas = $("camera");
  const grey = Uint8Array.from(atob(f.pixels), (c) => c.charCodeAt(0));
  canvas.width = f.width;
  canvas.height = f.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(f.width, f.height);
  for (let i = 0; i < grey.length; i++) {
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = grey[i];
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  Object.assign(canvas.dataset, { run: f.run, row: String(f.row), point: String(f.point), file: f.file });
  $("camera-caption").className = "";
  $("camera-caption").textContent = `${f.data_key}: point ${f.point + 1}, ` +
    `${f.frame_shape[1]}×${f.frame_shape[0]} px shown as ${f.width}×${f.height}, ` +
    `black ${fmt(f.low)} to white ${fmt(f.high)} counts`;
}

// One fetch at a time; a frame announced meanwhile is fetched after it (the server keeps only
// the latest, so a slow page skips frames instead of queueing them).
let frameFetching = false, frameAgain = false;
async function fetchFrame(note) {
  if (note.error) { drawFrame(note); return; }
  if (frameFetching) { frameAgain = true; return; }
  frameFetching = true;
  try {
    do {
      frameAgain = false;
      const reply = await fetch("/api/frame", { cache: "no-store" });
      if (reply.ok) drawFrame(await reply.json());
    } while (frameAgain);
  } finally {
    frameFetching = false;
  }
}

// --- history --------------------------------------------------------------------------------

let historyQuery = "";
async function refreshHistory(ev) {
  if (ev) { ev.preventDefault(); historyQuery = $("history-query").value; }
  const reply = await fetch(`/api/history?q=${encodeURIComponent(historyQuery)}`);
  const data = await reply.json();
  const err = $("history-error");
  err.classList.toggle("hidden", reply.ok);
  if (!reply.ok) { err.textContent = data.error; return; }
  $("history-runs").tBodies[0].replaceChildren(...data.runs.map((r) => {
    const link = el("a", "CSV", "csv");
    link.href = `/api/runs/${encodeURIComponent(r.uid)}/csv`;
    link.setAttribute("download", "");
    const exit = r.recovered ? `${r.exit_status} (recovered)` : (r.exit_status || "running");
    const events = (r.num_events || {}).primary || 0;
    const tr = row([r.scan_id, r.plan_name, r.sample || "", new Date(r.time * 1000).toLocaleString(),
      exit, events, link]);
    if (r.recovered) tr.cells[4].className = "recovered";
    tr.dataset.uid = r.uid;
    tr.addEventListener("click", (e) => { if (e.target !== link) showRun(r.uid); });
    return tr;
  }));
}

async function showRun(uid) {
  const reply = await fetch(`/api/runs/${encodeURIComponent(uid)}`);
  const data = await reply.json();
  $("run-detail").classList.remove("hidden");
  if (!reply.ok) { $("run-detail-title").textContent = data.error; return; }
  const s = data.summary;
  $("run-detail-title").textContent = `scan ${s.scan_id}: ${s.plan_name}, ${s.exit_status}` +
    (s.recovered ? " (recovered after a crash)" : "");
  const dims = (data.hints.dimensions || []);
  const cols = data.columns;
  const x = dims.length && dims[0][0][0] !== "time" && cols[dims[0][0][0]] ? dims[0][0][0] : "seq_num";
  const y = Object.keys(cols).find((k) => !["seq_num", "time", x].includes(k) && !k.includes("_shadow_diff_"));
  const pts = y ? (cols[x] || []).map((v, i) => [v, cols[y][i]]) : [];
  drawPlot($("run-plot"), pts, x, y);
  $("run-metadata").textContent = JSON.stringify({ start: data.start, stop: data.stop }, null, 1);
}

// --- the stream -----------------------------------------------------------------------------

function applyWorker(w) {
  panel.worker = w;
  $("worker-error").classList.add("hidden");
  drawInstruments();
  drawLeases();
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => { $("stream-state").textContent = "live"; });
  source.addEventListener("error", () => { $("stream-state").textContent = "stream: reconnecting"; });
  source.addEventListener("snapshot", (e) => {
    const s = JSON.parse(e.data);
    panel.manager = s.manager || {};
    drawManager();
    drawQueue(s.queue || []);
    drawDone(s.history || []);
    if (s.worker && Object.keys(s.worker).length) applyWorker(s.worker);
    for (const d of s.documents || []) onDocument(d.name, d.doc, null);
    drawFrame(s.frame);
  });
  source.addEventListener("frame", (e) => fetchFrame(JSON.parse(e.data)));
  source.addEventListener("manager", (e) => { panel.manager = JSON.parse(e.data); drawManager(); });
  source.addEventListener("queue", (e) => drawQueue(JSON.parse(e.data)));
  source.addEventListener("history", (e) => drawDone(JSON.parse(e.data)));
  source.addEventListener("worker", (e) => applyWorker(JSON.parse(e.data)));
  source.addEventListener("worker_error", (e) => {
    $("worker-error").textContent = JSON.parse(e.data);
    $("worker-error").classList.remove("hidden");
  });
  source.addEventListener("doc", (e) => {
    const m = JSON.parse(e.data);
    onDocument(m.name, m.doc, m.received);
  });
}

async function main() {
  initToken();
  panel.config = await (await fetch("/api/config")).json();
  $("lab-name").textContent = panel.config.lab.profile;
  $("read-only").classList.toggle("hidden", !panel.config.read_only);
  $("token-box").classList.toggle("hidden", !panel.config.token_required);
  for (const node of [$("plan-form"), $("controls")]) node.classList.toggle("hidden", panel.config.read_only);
  for (const p of panel.config.plans) { const o = el("option", p.name); o.value = p.name; $("plan-select").appendChild(o); }
  for (const d of panel.config.devices) { const o = el("option", d); o.value = d; $("detectors").appendChild(o); }
  $("plan-select").addEventListener("change", buildForm);
  buildForm();
  $("plan-form").addEventListener("submit", submitPlan);
  for (const b of $("controls").querySelectorAll("button")) b.addEventListener("click", () => control(b.dataset.action));
  $("history-form").addEventListener("submit", refreshHistory);
  connect();
  document.body.dataset.ready = "1";
}

main();
