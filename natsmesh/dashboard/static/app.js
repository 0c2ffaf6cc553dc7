// natsmesh dashboard: plain JS, no dependencies. Everything from the server is put
// into the page as text (textContent, SVG text nodes), never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const state = { topology: { nodes: [], edges: [] }, services: [], view: "topology", service: null };
let credential = sessionStorage.getItem("natsmesh-credential") || "";
let tapAbort = null;
let eventsAbort = null;

function authHeaders() {
  if (!credential) return {};
  return credential.includes(".") ? { authorization: "Bearer " + credential } : { "x-api-key": credential };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = {
  rps: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1)),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(v < 1 ? 1 : 0) + "%"),
  ms: (v) => (v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 2 : 0) + " ms"),
};

function setLive(kind, text) {
  const live = document.getElementById("live");
  live.dataset.state = kind;
  live.textContent = text;
}

// -- server-sent events over fetch (so that a credential header can go with them) --------

async function stream(path, onEvent, abort) {
  const response = await fetch(path, { headers: authHeaders(), signal: abort.signal, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    showLogin();
    throw new Error("unauthorized");
  }
  if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

let following = false;

async function followEvents() {
  if (following) return;  // one stream: a second sign-in must not start another
  following = true;
  try {
    for (;;) {
      eventsAbort = new AbortController();
      try {
        await stream("/api/v1/events", (kind, data) => {
          if (kind !== "update") return;
          state.topology = data.topology;
          state.services = data.services;
          setLive("live", "live · " + new Date().toLocaleTimeString());
          render();
          refreshService();
        }, eventsAbort);
      } catch (err) {
        if (err.message === "unauthorized") return;
      }
      setLive("down", "reconnecting…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  } finally {
    following = false;
  }
}

function showLogin() {
  const form = document.getElementById("login");
  form.hidden = false;
  setLive("down", "sign in");
}

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  credential = document.getElementById("credential").value.trim();
  sessionStorage.setItem("natsmesh-credential", credential);
  document.getElementById("login").hidden = true;
  followEvents();
  route();  // the view that asked for a key, again with it
});

// -- topology -------------------------------------------------------------------------------

function layout(nodes, edges) {
  // Columns by call depth: callers that nobody calls first, then what they call.
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.source === e.target) continue;
      const d = depth.get(e.source) + 1;
      if (d > depth.get(e.target) && d < nodes.length) { depth.set(e.target, d); moved = true; }
    }
    if (!moved) break;
  }
  const columns = new Map();
  for (const n of nodes) {
    const d = depth.get(n.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n.id);
  }
  const width = document.getElementById("graph").clientWidth || 900, height = 520;
  const keys = [...columns.keys()].sort((a, b) => a - b);
  const pos = new Map();
  keys.forEach((d, i) => {
    const ids = columns.get(d);
    ids.forEach((id, j) => {
      // The lower part of the canvas: arcs over skipped columns need the room above.
      pos.set(id, { x: ((i + 0.5) * width) / keys.length, y: 180 + ((j + 0.5) * (height - 200)) / ids.length });
    });
  });
  return pos;
}

function renderTopology() {
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  const defs = svg("defs");
  for (const id of ["arrow", "arrow-bad"]) {
    const m = svg("marker", { id, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" });
    m.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
    defs.append(m);
  }
  graph.append(defs);
  const { nodes, edges } = state.topology;
  const pos = layout(nodes, edges);
  const xs = [...new Set([...pos.values()].map((p) => p.x))].sort((a, b) => a - b);
  const columnWidth = xs.length > 1 ? xs[1] - xs[0] : 0;
  const byName = new Map(state.services.map((s) => [s.name, s]));
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const g = svg("g", { class: "edge" + (e.failing ? " failing" : ""), "data-edge": e.source + "->" + e.target, "data-rps": String(e.rps), "data-failing": String(e.failing) });
    const x1 = a.x + 70, x2 = b.x - 70;
    const span = Math.round((b.x - a.x) / (columnWidth || 1));
    let path, lx, ly;
    if (x2 > x1 && span <= 1) {
      path = `M ${x1} ${a.y} C ${(x1 + x2) / 2} ${a.y}, ${(x1 + x2) / 2} ${b.y}, ${x2} ${b.y}`;
      lx = (x1 + x2) / 2; ly = (a.y + b.y) / 2;
    } else if (x2 > x1) {
      // Past a column: arc over the nodes between, higher for longer spans.
      const lift = 70 + 40 * span;
      const top = Math.min(a.y, b.y) - lift;
      path = `M ${a.x} ${a.y - 22} C ${a.x} ${top}, ${b.x} ${top}, ${b.x} ${b.y - 22}`;
      lx = (a.x + b.x) / 2; ly = top + lift * 0.25;
    } else {
      path = `M ${a.x} ${a.y + 22} C ${a.x} ${a.y + 120}, ${b.x} ${b.y + 120}, ${b.x} ${b.y + 22}`;
      lx = (a.x + b.x) / 2; ly = Math.max(a.y, b.y) + 100;
    }
    g.append(svg("path", { d: path, "marker-end": e.failing ? "url(#arrow-bad)" : "url(#arrow)" }));
    g.append(svg("text", { x: lx, y: ly - 6 }, `${fmt.rps(e.rps)} rps`));
    g.append(svg("text", { x: lx, y: ly + 14 }, `${fmt.pct(e.success)} · p99 ${fmt.ms(e.p99)}`));
    graph.append(g);
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const s = byName.get(n.id);
    const g = svg("g", { class: "node " + n.kind, "data-node": n.id, transform: `translate(${p.x - 70} ${p.y - 22})` });
    g.append(svg("rect", { width: 140, height: 44, rx: 8 }));
    g.append(svg("text", { x: 70, y: 18 }, n.id));
    const sub = n.kind === "service" && s ? `${s.count} inst · ${fmt.rps(s.rps)} rps` : "caller";
    g.append(svg("text", { x: 70, y: 35, class: "sub" }, sub));
    if (n.kind === "service") g.addEventListener("click", () => { location.hash = "#/service/" + encodeURIComponent(n.id); });
    graph.append(g);
  }
}

// -- services ---------------------------------------------------------------------------------

function successCell(v) {
  return el("td", { class: v === null ? "" : v < 0.95 ? "bad" : "ok" }, fmt.pct(v));
}

function renderServices() {
  const body = document.querySelector("#service-table tbody");
  body.replaceChildren(...state.services.map((s) => el("tr", { "data-service": s.name },
    el("td", {}, el("a", { href: "#/service/" + encodeURIComponent(s.name) }, s.name)),
    el("td", { "data-testid": "instances-" + s.name }, s.count),
    el("td", {}, s.subsets.join(", ")),
    el("td", {}, s.zones.join(", ")),
    el("td", {}, fmt.rps(s.rps)),
    successCell(s.success),
    el("td", {}, fmt.ms(s.p50)),
    el("td", {}, fmt.ms(s.p99)),
    el("td", {}, s.in_flight),
    el("td", { class: s.ejected ? "bad" : "" }, s.ejected),
  )));
  const select = document.getElementById("tap-service");
  const chosen = select.value;
  const names = state.services.filter((s) => s.count > 0).map((s) => s.name);
  if (names.join() !== [...select.options].map((o) => o.value).join()) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
}

// -- one service ------------------------------------------------------------------------------

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => (c instanceof HTMLTableCellElement ? c : el("td", {}, c)))))));
}

function schema(text) {
  if (!text) return "–";
  let pretty = text;
  try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* shown as sent */ }
  return el("details", {}, el("summary", {}, "schema"), el("pre", {}, pretty));
}

let serviceLoading = false;

// A service's page follows the beats too (its errors, instances and tables change), one
// fetch at a time: a slow answer must not pile fetches up behind it.
async function refreshService() {
  if (serviceLoading || state.view !== "service" || !state.service) return;
  serviceLoading = true;
  try { await renderService(state.service); } finally { serviceLoading = false; }
}

async function renderService(name) {
  const section = document.getElementById("service");
  const response = await fetch("/api/v1/services/" + encodeURIComponent(name), { headers: authHeaders(), cache: "no-store" });
  if (state.view !== "service" || state.service !== name) return;  // the user moved on
  if (response.status === 401 || response.status === 403) { showLogin(); section.replaceChildren(el("p", {}, "sign in to see " + name)); return; }
  if (!response.ok) { section.replaceChildren(el("p", {}, `no service ${name} (${response.status})`)); return; }
  const s = await response.json();
  // A schema someone opened stays open across the refresh that follows each beat.
  const opened = [...section.querySelectorAll("details")].map((d) => d.open);
  section.replaceChildren(
    el("h2", {}, s.name + " "),
    el("p", {}, `${s.count} instances · ${fmt.rps(s.rps)} req/s · success ${fmt.pct(s.success)} · p50 ${fmt.ms(s.p50)} · p99 ${fmt.ms(s.p99)}`),
    el("h2", {}, "Instances"),
    table(["id", "zone", "version", "subset", "health", "ejected", "in flight", "avg processing"],
      s.instances.map((i) => [i.id, i.zone, i.version, i.subset, (s.registry || []).some((r) => r.id === i.id && !r.healthy) ? "unhealthy" : "ok", i.ejected ? "yes" : "no", i.in_flight, fmt.ms(i.average_ms)])),
    el("h2", {}, "Endpoints"),
    table(["endpoint", "subject", "req/s", "success", "p99", "request", "response"],
      s.endpoints.map((e) => [e.name, e.subject, fmt.rps(e.rps), fmt.pct(e.success), fmt.ms(e.p99), schema(e.request_schema), schema(e.response_schema)])),
    el("h2", {}, "Callers"),
    table(["caller", "req/s", "success", "p99"], s.callers.map((c) => [c.caller, fmt.rps(c.rps), fmt.pct(c.success), fmt.ms(c.p99)])),
    el("h2", {}, "Route table"),
    s.routes ? el("pre", {}, JSON.stringify(s.routes, null, 2)) : el("p", {}, "no route table (no controller, or defaults)"),
    el("h2", {}, "Clients"),
    s.clients ? table(["client", "kind", "applied", "latest", "state"], s.clients.map((c) => [c.client, c.kind, c.applied, c.latest, el("td", { class: c.state === "SYNCED" ? "ok" : "bad" }, c.state)])) : el("p", {}, "no controller"),
    el("h2", {}, "Recent errors"),
    recentErrors(s),
  );
  section.querySelectorAll("details").forEach((d, i) => { d.open = opened[i] || false; });
}

function causeChain(causes) {
  if (!causes.length) return "–";
  return el("ol", { class: "causes" }, ...causes.map((c) => el("li", {}, `${c.service}.${c.endpoint}: ${c.code} ${c.kind}: ${c.message}`)));
}

function recentErrors(s) {
  if (s.errors.length) {
    return table(["time", "instance", "endpoint", "error", "caused by", "trace id"],
      s.errors.map((e) => [new Date(e.at * 1000).toLocaleTimeString(), e.instance, e.endpoint,
        el("td", { class: "bad" }, `${e.code} ${e.kind}: ${e.message}`), el("td", {}, causeChain(e.causes)), e.trace_id || "–"]));
  }
  // Instances report their failed requests to an observer; until then, $SRV's last error.
  if (s.last_errors.length) return table(["instance", "last error"], s.last_errors.map((e) => [e.instance, e.error]));
  return el("p", {}, "none");
}

// -- tap --------------------------------------------------------------------------------------

function stopTap() {
  if (tapAbort) tapAbort.abort();
  tapAbort = null;
  document.getElementById("tap-start").disabled = false;
  document.getElementById("tap-stop").disabled = true;
  document.getElementById("tap-state").textContent = "";
}

async function startTap(name) {
  stopTap();
  const abort = (tapAbort = new AbortController());
  document.getElementById("tap-start").disabled = true;
  document.getElementById("tap-stop").disabled = false;
  document.getElementById("tap-state").textContent = "watching " + name;
  const body = document.querySelector("#tap-table tbody");
  body.replaceChildren();
  try {
    await stream("/api/v1/tap/" + encodeURIComponent(name), (kind, s) => {
      if (kind !== "sample") return;
      body.prepend(el("tr", { class: "sample" },
        el("td", {}, new Date(s.at * 1000).toLocaleTimeString()),
        el("td", {}, s.instance), el("td", {}, s.endpoint), el("td", {}, s.caller),
        el("td", { class: s.status >= 500 ? "bad" : "" }, s.status),
        el("td", {}, fmt.ms(s.latency_ms)), el("td", {}, s.trace_id || "–")));
      while (body.children.length > 200) body.lastChild.remove();
    }, abort);
  } catch (err) {
    if (err.name !== "AbortError") document.getElementById("tap-state").textContent = "tap ended: " + err.message;
  }
}

document.getElementById("tap-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = document.getElementById("tap-service").value;
  if (name) startTap(name);
});
document.getElementById("tap-stop").addEventListener("click", stopTap);

// -- views ------------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  state.view = ["topology", "services", "service", "tap"].includes(parts[0]) ? parts[0] : "topology";
  state.service = parts[1] ? decodeURIComponent(parts[1]) : null;
  for (const id of ["topology", "services", "service", "tap"]) document.getElementById(id).hidden = id !== state.view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === state.view);
  if (state.view !== "tap") stopTap();
  if (state.view === "service" && state.service) renderService(state.service);
  if (state.view === "tap" && state.service) {
    document.getElementById("tap-service").value = state.service;
    startTap(state.service);
  }
  render();
}

function render() {
  renderServices();
  if (state.view === "topology") renderTopology();
}

window.addEventListener("hashchange", route);
route();
followEvents();
