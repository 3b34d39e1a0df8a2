// The lab manager's dashboard: plain JavaScript, no build step.
// Data comes from api/vms and api/progress (same origin, hub login cookie);
// every user-supplied string is set with textContent, never as HTML.
"use strict";

const XSRF = document.body.dataset.xsrf;
const REFRESH_S = 5;
const CPU_ALERT = 0.8; // drawn as a dashed line on the plots (cores)
let rows = [];
let sort = { key: "user", dir: 1 };
let timer = null;
const busy = new Set(); // "user/action" while a request is in flight

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function duration(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function idleSeconds(iso) {
  return iso ? (Date.now() - Date.parse(iso)) / 1000 : null;
}

async function api(path, opts = {}) {
  const r = await fetch(path, {
    credentials: "same-origin",
    headers: { "X-XSRFToken": XSRF, "Content-Type": "application/json" },
    ...opts,
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `${r.status} ${r.statusText}`);
  return body;
}

// #status: the outcome of the instructor's last action; it stays until the
// next one (a refresh every few seconds must not wipe out "failed: ...").
// #updated: when the page last refreshed, or why it could not.
function show(id, text, error) {
  const s = $(id);
  s.textContent = text;
  s.classList.toggle("error", error);
}
const setStatus = (text, error = false) => show("#status", text, error);
const setUpdated = (text, error = false) => show("#updated", text, error);

// -- the VM table -----------------------------------------------------------
function sortValue(r, key) {
  switch (key) {
    case "idle": return idleSeconds(r.last_activity) ?? Infinity;
    case "flags": return r.flags.length;
    case "cpu": case "memory": case "uptime": return r[key] ?? -1;
    default: return String(r[key] ?? "");
  }
}

function sparkline(history, now) {
  const W = 160, H = 28, span = 3600;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const max = Math.max(1, ...history.map((h) => h[1]));
  const y = (v) => (H - 2 - (v / max) * (H - 4)).toFixed(1);
  const x = (t) => (((t - (now - span)) / span) * W).toFixed(1);
  const thr = document.createElementNS(svg.namespaceURI, "line");
  thr.setAttribute("class", "thr");
  thr.setAttribute("x1", 0); thr.setAttribute("x2", W);
  thr.setAttribute("y1", y(CPU_ALERT)); thr.setAttribute("y2", y(CPU_ALERT));
  svg.append(thr);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", history.map((h) => `${x(h[0])},${y(h[1])}`).join(" "));
  svg.append(line);
  const title = document.createElementNS(svg.namespaceURI, "title");
  const last = history.length ? history[history.length - 1][1] : null;
  title.textContent = history.length
    ? `${history.length} samples, now ${last.toFixed(2)} cores, peak ${max.toFixed(2)}`
    : "no samples yet";
  svg.append(title);
  return svg;
}

async function act(r, action) {
  const verb = { reset: "Reset", restart: "Restart", stop: "Stop" }[action];
  const what = action === "stop" ? `${r.user}'s server` : `${r.user}'s VM`;
  if (!confirm(`${verb} ${what}?`)) return;
  const id = `${r.key}/${action}`;
  busy.add(id);
  render();
  setStatus(`${verb}: ${r.user} …`);
  try {
    const q = r.server ? `?server=${encodeURIComponent(r.server)}` : "";
    await api(`api/users/${encodeURIComponent(r.user)}/${action}${q}`, { method: "POST", body: "{}" });
    setStatus(`${verb}: ${r.user} — requested`);
  } catch (e) {
    setStatus(`${verb} ${r.user} failed: ${e.message}`, true);
  } finally {
    busy.delete(id);
    refresh();
  }
}

function render(now = Date.now() / 1000) {
  const filter = $("#filter").value.trim().toLowerCase();
  const shown = rows
    .filter((r) => !filter || r.user.toLowerCase().includes(filter))
    .sort((a, b) => {
      const va = sortValue(a, sort.key), vb = sortValue(b, sort.key);
      return (va < vb ? -1 : va > vb ? 1 : 0) * sort.dir || a.user.localeCompare(b.user);
    });
  const tbody = $("#vms tbody");
  tbody.replaceChildren(...shown.map((r) => {
    const state = el("span", { class: `badge ${r.state.replace(/\W/g, "")}` }, r.state);
    const actions = el("td", {},
      ...["reset", "restart", "stop"].map((a) => el("button", {
        class: "act", "data-action": a, onclick: () => act(r, a),
        ...(busy.has(`${r.key}/${a}`) || r.pending ? { disabled: "" } : {}),
        title: { reset: "power-cycle the VM onto the course kernel, fresh root filesystem",
                 restart: "stop and start the whole server (new VM and notebook)",
                 stop: "stop the server" }[a],
      }, a[0].toUpperCase() + a.slice(1))));
    const flags = r.flags.map((f) => f.rule).join(", ");
    return el("tr", { "data-user": r.user },
      el("td", {}, r.server ? `${r.user}/${r.server}` : r.user),
      el("td", {}, r.backend),
      el("td", { class: "state" }, state),
      el("td", { class: "num" }, duration(r.uptime)),
      el("td", { class: "num", title: r.last_activity || "" },
        r.last_activity ? `${duration(idleSeconds(r.last_activity))} ago` : "–"),
      el("td", { class: "num" }, r.cpu == null ? "–" : `${(r.cpu * 100).toFixed(0)}%`),
      el("td", { class: "num" }, r.memory == null ? "–" : `${(r.memory / 2 ** 20).toFixed(0)} MiB`),
      el("td", {}, sparkline(r.history, now)),
      el("td", { class: flags ? "flag" : "" }, flags || "–"),
      actions);
  }));
  $("#empty").hidden = rows.length > 0;
  const running = rows.filter((r) => r.state === "running").length;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  $("#summary").textContent = `${plural(rows.length, "server")}, ${plural(running, "VM")} running`;
  for (const th of document.querySelectorAll("#vms th[data-key]")) {
    th.setAttribute("aria-sort", th.dataset.key === sort.key
      ? (sort.dir > 0 ? "ascending" : "descending") : "none");
  }
}

// -- suspended VMs (api/suspended) ---------------------------------------------
async function saved(st, action) {
  const what = action === "resume" ? `Resume ${st.user}'s server from its suspended VM?`
    : `Discard ${st.user}'s saved VM ${st.name} (${(st.bytes / 1e6).toFixed(1)} MB)? It cannot be undone.`;
  if (!confirm(what)) return;
  setStatus(`${action}: ${st.user} …`);
  try {
    const q = action === "discard" ? `?state=${encodeURIComponent(st.name)}` : "";
    await api(`api/users/${encodeURIComponent(st.user)}/${action}${q}`, { method: "POST", body: "{}" });
    setStatus(`${action}: ${st.user} — done`);
  } catch (e) {
    setStatus(`${action} ${st.user} failed: ${e.message}`, true);
  } finally {
    refresh();
  }
}

function renderSuspended(states) {
  $("#suspended").hidden = states.length === 0;
  $("#saved tbody").replaceChildren(...states.map((st) => el("tr", { "data-user": st.user },
    el("td", {}, st.user),
    el("td", { title: st.name }, st.restorable ? (st.running ? "suspended (server running)" : "suspended")
      : "kept (could not be restored)"),
    el("td", { class: "num" }, `${(st.bytes / 1e6).toFixed(1)} MB`),
    el("td", { class: "num" }, new Date(st.saved_at * 1000).toLocaleString()),
    el("td", {},
      el("button", { class: "act", "data-action": "resume", onclick: () => saved(st, "resume"),
        ...(st.restorable && !st.running ? {} : { disabled: "" }),
        title: "start the student's server; it resumes this VM" }, "Resume"),
      el("button", { class: "act", "data-action": "discard", onclick: () => saved(st, "discard"),
        title: "delete this saved VM (the student's next start boots afresh)" }, "Discard")))));
}

function renderFlags(flags) {
  $("#flags").hidden = flags.length === 0;
  $("#flag-list").replaceChildren(...flags.map((f) => el("li", {},
    el("b", {}, f.server ? `${f.user}/${f.server}` : f.user), ` — ${f.rule}: ${f.detail} `,
    `(${new Date(f.raised * 1000).toLocaleTimeString()}, action: ${f.action}) `,
    el("button", { class: "act", onclick: async () => {
      try { await api(`api/flags/${f.id}/clear`, { method: "POST", body: "{}" }); refresh(); }
      catch (e) { setStatus(`clearing the flag failed: ${e.message}`, true); }
    } }, "Dismiss"))));
}

// -- the progress grid --------------------------------------------------------
async function renderProgress() {
  const lab = $("#lab").value;
  const data = await api(`api/progress${lab ? `?lab=${encodeURIComponent(lab)}` : ""}`);
  const results = data.results;
  const labs = [...new Set(results.map((r) => r.lab))].sort();
  const sel = $("#lab");
  for (const l of labs) {
    if (![...sel.options].some((o) => o.value === l)) sel.append(el("option", { value: l }, l));
  }
  const checks = [...new Set(results.map((r) => `${r.lab}:${r.check}`))].sort();
  const students = [...new Set([...rows.map((r) => r.user), ...results.map((r) => r.user)])].sort();
  const at = new Map(results.map((r) => [`${r.user}|${r.lab}:${r.check}`, r]));
  $("#grid thead").replaceChildren(el("tr", {}, el("th", {}, "Student"),
    ...checks.map((c) => el("th", { class: "check", title: c }, c)), el("th", {}, "Passed")));
  $("#grid tbody").replaceChildren(...students.map((s) => {
    let passed = 0;
    const cells = checks.map((c) => {
      const r = at.get(`${s}|${c}`);
      if (!r) return el("td", { class: "none", title: `${c}: not tried` }, "·");
      if (r.passed) passed++;
      const when = new Date(r.last_time * 1000);
      const hhmm = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      return el("td", {
        class: r.passed ? "pass" : "fail", "data-check": c,
        title: `${c}: ${r.passed ? "passed" : "failing"} after ${r.attempts} attempt(s), ` +
               `last ${when.toLocaleString()}` + (r.message ? `\n${r.message}` : ""),
      }, r.passed ? "✓" : "✗", el("small", { class: "when" }, hhmm));
    });
    return el("tr", { "data-user": s }, el("th", {}, s), ...cells,
      el("td", { class: "num" }, `${passed}/${checks.length}`));
  }));
  $("#grid-empty").hidden = results.length > 0;
}

// -- refreshing ---------------------------------------------------------------
async function refresh() {
  try {
    const data = await api("api/vms");
    rows = data.rows;
    render(data.now);
    renderFlags(data.flags);
    renderSuspended((await api("api/suspended")).states);
    if (!$("#tab-progress").hidden) await renderProgress();
    setUpdated(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    setUpdated(`refresh failed: ${e.message}`, true);
  }
}

function schedule() {
  clearInterval(timer);
  if ($("#auto").checked) timer = setInterval(refresh, REFRESH_S * 1000);
}

for (const th of document.querySelectorAll("#vms th[data-key]")) {
  th.addEventListener("click", () => {
    sort = { key: th.dataset.key, dir: sort.key === th.dataset.key ? -sort.dir : 1 };
    render();
  });
}
for (const tab of document.querySelectorAll("nav .tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll("nav .tab")) {
      t.setAttribute("aria-selected", String(t === tab));
      $(`#tab-${t.dataset.tab}`).hidden = t !== tab;
    }
    refresh();
  });
}
$("#filter").addEventListener("input", () => render());
$("#lab").addEventListener("change", () => renderProgress().catch((e) => setStatus(e.message, true)));
$("#auto").addEventListener("change", schedule);
$("#every").textContent = REFRESH_S;
refresh();
schedule();
