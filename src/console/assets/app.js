// readyd console. No framework, nothing loaded from elsewhere: the page
// asks readyd's console API (same origin, session cookie) and renders.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = "";
let timer = null;

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, body };
}

let access = "read";
let tab = "overview";
let flags = [];

function showTab(name) {
  tab = name;
  $("overview").hidden = name !== "overview";
  $("flags").hidden = name !== "flags";
  $("deployments").hidden = name !== "deployments";
  $("history").hidden = name !== "history";
  $("timeline").hidden = name !== "timeline";
  $("config").hidden = name !== "config";
  for (const button of document.querySelectorAll("#tabs button")) {
    if (button.dataset.tab === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (name === "flags") { closeFlag(); loadFlags(); }
  if (name === "deployments") loadDeployments();
  if (name === "overview") loadCurrentDeployments();
  if (name === "history") loadHistory();
  if (name === "timeline") loadTimeline();
  if (name === "config") loadConfig();
}

function show(signedIn, session) {
  $("sign-in").hidden = signedIn;
  $("tabs").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  if (signedIn) { access = session.access; showTab(tab); }
  else { for (const id of ["overview", "flags", "config", "timeline", "history", "deployments"]) $(id).hidden = true; forget(); }
  $("who").textContent = signedIn ? `${session.actor} · ${session.access === "admin" ? "admin" : "read-only"}` : "";
  if (signedIn) {
    csrf = session.csrf;
    refresh();
    clearInterval(timer);
    // Within a second of a change, without a reload.
    timer = setInterval(refresh, 1000);
  } else {
    csrf = "";
    clearInterval(timer);
  }
}

// Signed out: nothing the last session was shown stays in the page (the
// next one may be read-only), and the next starts on the overview.
function forget() {
  tab = "overview";
  flags = [];
  flagsDrawn = "";
  stale = new Map();
  configDrawn = "";
  editing = null;
  usageDrawn = "";
  closeFlag();
  $("flag-detail").reset();
  for (const id of ["checks", "current-deployments", "flag-rows", "config-rows", "config-audit", "deploy-rows", "timeline-entries", "usage-rows",
    "history-chart", "history-legend"]) $(id).replaceChildren();
  for (const id of ["status", "meta", "maintenance", "try-result", "config-audit-title", "overview-error", "flags-message",
    "config-message", "deploy-message", "timeline-message", "history-message", "flag-facts", "usage-summary", "usage-day",
    "usage-week"]) $(id).textContent = "";
  for (const id of ["confirm", "config-confirm", "deploy-confirm", "config-audit-title"]) $(id).hidden = true;
}

const stateName = (state) => (state || "").replace(/^CHECK_STATE_/, "").toLowerCase();
const statusName = (status) => (status || "").replace(/^HEALTH_STATUS_/, "").toLowerCase();

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

// Durations arrive as JSON protobuf writes them ("1.250s").
const seconds = (text) => Number(String(text || "").replace(/s$/, ""));

function milliseconds(text) {
  const value = seconds(text);
  if (!text || !Number.isFinite(value)) return "–";
  return value < 0.01 ? `${(value * 1000).toFixed(2)} ms` : `${Math.round(value * 1000)} ms`;
}

// "3h 5m", "2m 10s", "42s".
function span(text) {
  const value = Math.floor(seconds(text));
  if (!Number.isFinite(value)) return text;
  const [h, m, s] = [Math.floor(value / 3600), Math.floor((value % 3600) / 60), value % 60];
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function render(report) {
  const status = statusName(report.status);
  $("status").textContent = status || "unknown";
  $("status").className = `status ${status}`;
  const stale = report.staleFor && report.staleFor !== "0s" ? ` · data stale for ${span(report.staleFor)}` : "";
  $("meta").textContent = `${report.environment} · ${report.instance} · readyd ${report.readydVersion} · up ${span(report.uptime)}${stale}`;
  $("maintenance").hidden = !report.maintenanceMode;
  $("maintenance").textContent = report.maintenanceMode ? `Maintenance: ${report.maintenanceMessage || "on"}` : "";
  const rows = (report.checks || []).map((check) => {
    const tr = document.createElement("tr");
    tr.appendChild(cell(check.name));
    const state = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = `state ${stateName(check.state)}`;
    badge.textContent = stateName(check.state);
    state.appendChild(badge);
    tr.appendChild(state);
    tr.appendChild(cell(milliseconds(check.latency)));
    tr.appendChild(cell(check.critical ? "yes" : "no"));
    tr.appendChild(cell(check.lastError || "", "error-text"));
    return tr;
  });
  $("checks").replaceChildren(...rows);
}

let ticks = 0;

async function refresh() {
  // The open page follows changes made anywhere (the API, the CLI, plain
  // SQL) without a reload: the overview every second, lists every two
  // (not while a change waits for its confirmation).
  ticks += 1;
  // A flag's usage changes at each usage flush (a minute by default).
  if (tab === "flags" && openKey && ticks % 10 === 5) loadUsage(openKey, true);
  if (tab === "flags" && $("confirm").hidden && ticks % 2 === 0) { loadFlags(true); return; }
  if (tab === "config" && $("config-confirm").hidden && !editing && ticks % 2 === 0) { loadConfig(true); return; }
  if (tab !== "overview") return;
  // Deployments change rarely: every five seconds.
  if (ticks % 5 === 0) loadCurrentDeployments();
  const { status, body } = await api("/console/api/health");
  if (status === 401) { show(false); return; }
  if (body && body.status) { render(body); $("overview-error").textContent = ""; }
  else { $("overview-error").textContent = (body && body.message) || `readyd answered ${status}`; }
}

// With onlyIfChanged (the periodic refresh), rows are redrawn only when
// something in them changed: a redraw would take the keyboard focus away
// from the control it is on.
async function loadFlags(onlyIfChanged) {
  const { status, body } = await api("/console/api/flags");
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("flags-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  flags = body.flags || [];
  renderFlags(onlyIfChanged);
}

let flagsDrawn = "";
// The stale flags' reasons by key (ListStaleFlags, 30 days), for the filter.
let stale = new Map();

async function loadStale() {
  const { status, body } = await api("/console/api/stale-flags");
  if (status !== 200) { $("flags-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  stale = new Map();
  for (const entry of body.flags || []) {
    stale.set(entry.key, [...(stale.get(entry.key) || []), entry.reason.replace(/_/g, " ")]);
  }
}

function renderFlags(onlyIfChanged) {
  const search = $("flag-search").value.trim().toLowerCase();
  const filter = $("flag-filter").value;
  // A flag without environments applies in every one.
  const environment = $("flag-environment").value.trim();
  const shown = flags.filter((flag) =>
    (!search || flag.key.includes(search) || (flag.description || "").toLowerCase().includes(search)) &&
    (filter === "all" || (filter === "stale" ? stale.has(flag.key) : (filter === "enabled") === Boolean(flag.enabled))) &&
    (!environment || !(flag.environments || []).length || flag.environments.includes(environment)));
  const drawn = JSON.stringify([access, shown]);
  if (onlyIfChanged && drawn === flagsDrawn) return;
  flagsDrawn = drawn;
  const rows = shown.map((flag) => {
    const tr = document.createElement("tr");
    tr.dataset.key = flag.key;
    const name = document.createElement("td");
    name.appendChild(button(flag.key, () => openFlag(flag)));
    name.firstChild.className = "link";
    const description = document.createElement("span");
    description.className = "description";
    description.textContent = filter === "stale" && stale.has(flag.key)
      ? `stale: ${stale.get(flag.key).join(", ")}`
      : flag.description || "";
    name.appendChild(description);
    tr.appendChild(name);
    const enabled = document.createElement("td");
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.className = "toggle";
    toggle.checked = Boolean(flag.enabled);
    toggle.disabled = access !== "admin";
    toggle.setAttribute("aria-label", `enable ${flag.key}`);
    toggle.addEventListener("change", () => {
      toggle.checked = Boolean(flag.enabled);
      propose(flag, { enabled: !flag.enabled });
    });
    enabled.appendChild(toggle);
    tr.appendChild(enabled);
    const rollout = document.createElement("td");
    const percent = document.createElement("input");
    percent.type = "number";
    percent.min = "0";
    percent.max = "100";
    percent.className = "rollout";
    percent.value = String(flag.rolloutPercentage || 0);
    percent.disabled = access !== "admin";
    percent.setAttribute("aria-label", `rollout of ${flag.key}`);
    const current = () => { percent.value = String(flag.rolloutPercentage || 0); };
    percent.addEventListener("change", () => {
      // Emptied on the way to a new number: nothing to propose yet.
      if (percent.value === "") return;
      const value = Number(percent.value);
      if (!Number.isInteger(value) || value < 0 || value > 100) {
        $("flags-message").textContent = "a rollout is a whole number from 0 to 100";
        current();
        return;
      }
      // The field keeps the proposed number until it is confirmed or not.
      propose(flag, { rolloutPercentage: value }, current);
    });
    rollout.appendChild(percent);
    tr.appendChild(rollout);
    tr.appendChild(cell(String(flag.version)));
    return tr;
  });
  $("flag-rows").replaceChildren(...rows);
}

// A change is shown as a diff and made only once confirmed; it names the
// version it was made from, so a change someone made meanwhile is not
// overwritten. Marks the list does not show (targeting, client-visible,
// permanent) are left out unless they are the change: absent, readyd keeps
// them as they are.
function propose(flag, change, onCancel) {
  const diff = Object.entries(change)
    .map(([field, value]) => `${field}: ${JSON.stringify(flag[field] ?? null)} → ${JSON.stringify(value)}`)
    .join(", ");
  $("confirm-text").textContent = `Change ${flag.key}: ${diff}?`;
  $("confirm").hidden = false;
  $("confirm-yes").onclick = async () => {
    $("confirm").hidden = true;
    const request = { ...flag, ...change, expectedVersion: flag.version };
    for (const field of ["version", "updatedAt", "updatedBy", "targeting", "clientVisible", "createdAt", "permanent"]) {
      if (!(field in change)) delete request[field];
    }
    const { status, body } = await api("/console/api/flags", { method: "POST", body: JSON.stringify(request) });
    if (status === 200) $("flags-message").textContent = "";
    else if (status === 409) $("flags-message").textContent = `${flag.key} was changed by someone else meanwhile; the list now shows their change.`;
    else $("flags-message").textContent = (body && body.message) || `readyd answered ${status}`;
    await loadFlags();
    // The flag's own page, if open, shows what is stored now; the fields
    // being edited there stay as they are.
    const stored = flags.find((candidate) => candidate.key === flag.key);
    if (stored && openKey === flag.key) showFlagFacts(stored);
  };
  $("confirm-no").onclick = () => { $("confirm").hidden = true; if (onCancel) onCancel(); };
}

// A flag's own page: every part of it, editable by an admin session, with
// readyd's validation messages next to the field they are about.
let openKey = null;

// "2026-12-06T21:00:00.123Z" → "2026-12-06 21:00:00 UTC".
const when = (time) => (time || "").replace("T", " ").replace(/\.\d*Z$/, "Z").replace(/Z$/, " UTC");

// What the page shows of a flag besides its editable fields: its title
// (version, type), creation time and the permanent mark.
function showFlagFacts(flag) {
  $("flag-title").textContent = `${flag.key} (version ${flag.version}, ${(flag.valueType || "").replace(/^FLAG_VALUE_TYPE_/, "").toLowerCase()})`;
  $("flag-facts").textContent = `Created ${when(flag.createdAt) || "–"} · ${flag.permanent
    ? "permanent: never listed as stale" : "not permanent"} · last changed by ${flag.updatedBy || "–"}`;
  $("flag-permanent").checked = Boolean(flag.permanent);
}

function openFlag(flag) {
  const other = openKey !== flag.key;
  openKey = flag.key;
  const form = $("flag-detail");
  $("flag-list").hidden = true;
  form.hidden = false;
  if (!$("try-key").value) $("try-key").value = flag.key;
  showFlagFacts(flag);
  if (other) {
    usageDrawn = "";
    $("usage-rows").replaceChildren();
    $("usage-day").textContent = "";
    $("usage-week").textContent = "";
    $("usage-summary").textContent = "Reading usage…";
  }
  loadUsage(flag.key);
  const field = (name) => form.elements.namedItem(name);
  field("description").value = flag.description || "";
  field("enabled").checked = Boolean(flag.enabled);
  field("clientVisible").checked = Boolean(flag.clientVisible);
  field("onValue").value = JSON.stringify(flag.onValue ?? null);
  field("offValue").value = JSON.stringify(flag.offValue ?? null);
  field("environments").value = (flag.environments || []).join(", ");
  field("targetUsers").value = (flag.targetUsers || []).join("\n");
  field("targetRoles").value = (flag.targetRoles || []).join(", ");
  field("rolloutPercentage").value = String(flag.rolloutPercentage || 0);
  field("targeting").value = flag.targeting ? JSON.stringify(flag.targeting, null, 2) : "";
  for (const element of form.elements) element.disabled = access !== "admin" && element.id !== "flag-close";
  showFieldErrors({});
  window.scrollTo(0, 0);
}

const HOUR = 3600 * 1000;
let usageDrawn = "";
const count = (n) => n.toLocaleString("en-US");

// A flag's usage (GetFlagUsage over the 168 whole hours to this one):
// evaluations per environment, variant and reason in the last 24 hours and
// 7 days, and the last hour with any. With onlyIfChanged, as loadFlags.
async function loadUsage(key, onlyIfChanged) {
  const current = Math.floor(Date.now() / HOUR) * HOUR;
  const since = new Date(current - 167 * HOUR).toISOString();
  const { status, body } = await api(`/console/api/flag-usage?key=${encodeURIComponent(key)}&since=${encodeURIComponent(since)}`);
  if (key !== openKey) return;
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("usage-summary").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  const dayStart = current - 23 * HOUR;
  const rows = new Map();
  let [day, week, last] = [0, 0, 0];
  for (const bucket of body.buckets || []) {
    const hour = Date.parse(bucket.hour);
    // uint64 arrives as a string.
    const n = Number(bucket.count) || 0;
    const id = JSON.stringify([bucket.environment, bucket.variant, bucket.reason]);
    const row = rows.get(id) || { environment: bucket.environment, variant: bucket.variant, reason: bucket.reason, day: 0, week: 0 };
    row.week += n;
    week += n;
    if (hour >= dayStart) { row.day += n; day += n; }
    if (n > 0) last = Math.max(last, hour);
    rows.set(id, row);
  }
  const sorted = [...rows.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, row]) => row);
  const drawn = JSON.stringify([sorted, last]);
  if (onlyIfChanged && drawn === usageDrawn) return;
  usageDrawn = drawn;
  $("usage-summary").textContent = last
    ? `Last evaluated in the hour from ${when(new Date(last).toISOString())}. Counts arrive at each usage flush (every minute by default).`
    : "Not evaluated in the last 7 days.";
  const trs = sorted.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.environment = row.environment;
    tr.dataset.variant = row.variant;
    tr.dataset.reason = row.reason;
    tr.appendChild(cell(row.environment));
    tr.appendChild(cell(row.variant));
    tr.appendChild(cell(row.reason));
    tr.appendChild(cell(count(row.day), "count day"));
    tr.appendChild(cell(count(row.week), "count week"));
    return tr;
  });
  if (!trs.length) {
    const tr = document.createElement("tr");
    const td = cell("No evaluations in the last 7 days.");
    td.colSpan = 5;
    tr.appendChild(td);
    trs.push(tr);
  }
  $("usage-rows").replaceChildren(...trs);
  $("usage-day").textContent = count(day);
  $("usage-week").textContent = count(week);
}

function closeFlag() {
  $("flag-detail").hidden = true;
  $("flag-list").hidden = false;
  openKey = null;
}

function showFieldErrors(errors) {
  for (const element of document.querySelectorAll("#flag-detail .field-error")) {
    element.textContent = errors[element.dataset.field] || "";
  }
}

// "rollout_percentage: is 150 …; targeting.rules[0].serve: …" → by field.
function fieldErrors(message) {
  const known = ["description", "on_value", "off_value", "environments", "target_users", "target_roles", "rollout_percentage", "targeting"];
  const errors = {};
  for (const part of (message || "").split("; ")) {
    const at = part.indexOf(": ");
    const path = at > 0 ? part.slice(0, at) : "";
    const name = known.find((field) => path === field || path.startsWith(`${field}.`) || path.startsWith(`${field}[`)) || "other";
    errors[name] = errors[name] ? `${errors[name]}; ${part}` : part;
  }
  return errors;
}

async function saveFlag(event) {
  event.preventDefault();
  const flag = flags.find((candidate) => candidate.key === openKey);
  if (!flag) return;
  const form = $("flag-detail");
  const field = (name) => form.elements.namedItem(name);
  const errors = {};
  const json = (name, error) => {
    const raw = field(name).value.trim();
    if (!raw) return undefined;
    try { return JSON.parse(raw); } catch (_) { errors[error] = "not JSON (a string needs quotes)"; return undefined; }
  };
  const list = (raw, separator) => raw.split(separator).map((item) => item.trim()).filter(Boolean);
  const request = {
    key: flag.key,
    description: field("description").value,
    enabled: field("enabled").checked,
    clientVisible: field("clientVisible").checked,
    valueType: flag.valueType,
    onValue: json("onValue", "on_value"),
    offValue: json("offValue", "off_value"),
    environments: list(field("environments").value, ","),
    targetUsers: list(field("targetUsers").value, "\n"),
    targetRoles: list(field("targetRoles").value, ","),
    rolloutPercentage: Number(field("rolloutPercentage").value),
    targeting: json("targeting", "targeting") || {},
    expectedVersion: flag.version,
  };
  if (Object.keys(errors).length) { showFieldErrors(errors); return; }
  const changed = Object.keys(request).filter((name) =>
    !["key", "valueType", "expectedVersion"].includes(name) &&
    JSON.stringify(request[name] ?? null) !== JSON.stringify(flag[name] ?? (name === "targeting" ? {} : null)));
  if (!changed.length) { showFieldErrors({ other: "nothing changed" }); return; }
  $("confirm-text").textContent = `Change ${flag.key}: ${changed.map((name) =>
    `${name}: ${JSON.stringify(flag[name] ?? null)} → ${JSON.stringify(request[name])}`).join(", ")}?`;
  $("confirm").hidden = false;
  $("confirm-yes").onclick = async () => {
    $("confirm").hidden = true;
    const { status, body } = await api("/console/api/flags", { method: "POST", body: JSON.stringify(request) });
    if (status === 200) {
      showFieldErrors({});
      await loadFlags();
      const saved = flags.find((candidate) => candidate.key === flag.key);
      if (saved) openFlag(saved);
    } else if (status === 409) {
      showFieldErrors({ other: `${flag.key} was changed by someone else meanwhile; reopen it to see their change.` });
    } else {
      showFieldErrors(fieldErrors((body && body.message) || `readyd answered ${status}`));
    }
  };
  $("confirm-no").onclick = () => { $("confirm").hidden = true; };
}

async function tryFlag(event) {
  event.preventDefault();
  let attributes = {};
  const raw = $("try-attributes").value.trim();
  if (raw) {
    try { attributes = JSON.parse(raw); } catch (_) { $("try-result").textContent = "attributes must be a JSON object"; return; }
  }
  const request = { key: $("try-key").value.trim(), context: { userId: $("try-user").value.trim(), attributes }, explain: true };
  const { status, body } = await api("/console/api/evaluate", { method: "POST", body: JSON.stringify(request) });
  $("try-result").textContent = status === 200
    ? `value ${JSON.stringify(body.value)}, variant ${body.variant}, reason ${body.reason}\n${(body.explanation || []).map((s, i) => `${i + 1}. ${s.detail}`).join("\n")}`
    : (body && body.message) || `readyd answered ${status}`;
}

const statusText = (status) => (status || "").replace(/^DEPLOYMENT_STATUS_/, "").toLowerCase().replace("_", " ");

// The overview's current deployment of every environment.
async function loadCurrentDeployments() {
  const { status, body } = await api("/console/api/current-deployments");
  if (status !== 200) return;
  const rows = (body.deployments || []).map((deployment) => {
    const tr = document.createElement("tr");
    tr.appendChild(cell(deployment.environment));
    tr.appendChild(cell(deployment.version));
    tr.appendChild(cell(deployment.deployedBy));
    tr.appendChild(cell((deployment.deployedAt || "").replace("T", " ").replace(/\..*Z$/, "Z")));
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell("No deployment recorded yet.");
    td.colSpan = 4;
    tr.appendChild(td);
    rows.push(tr);
  }
  $("current-deployments").replaceChildren(...rows);
}

async function loadDeployments() {
  const environment = encodeURIComponent($("deploy-environment").value.trim());
  const { status, body } = await api(`/console/api/deployments?environment=${environment}`);
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("deploy-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  const rows = (body.deployments || []).map((deployment) => {
    const tr = document.createElement("tr");
    tr.appendChild(cell(deployment.version));
    tr.appendChild(cell(deployment.environment));
    tr.appendChild(cell(statusText(deployment.status)));
    tr.appendChild(cell(deployment.deployedBy));
    tr.appendChild(cell((deployment.deployedAt || "").replace("T", " ").replace(/\..*Z$/, "Z")));
    const actions = document.createElement("td");
    if (access === "admin" && statusText(deployment.status) === "success") {
      const back = document.createElement("button");
      back.type = "button";
      back.textContent = "Roll back";
      back.addEventListener("click", () => proposeRollback(deployment));
      actions.appendChild(back);
    }
    tr.appendChild(actions);
    return tr;
  });
  $("deploy-rows").replaceChildren(...rows);
}

function proposeRollback(deployment) {
  $("deploy-confirm-text").textContent =
    `Roll ${deployment.environment} back from ${deployment.version} to the deployment before it?`;
  $("deploy-confirm").hidden = false;
  $("deploy-confirm-yes").onclick = async () => {
    $("deploy-confirm").hidden = true;
    const request = { environment: deployment.environment, reason: "rolled back from the console" };
    const { status, body } = await api("/console/api/rollback", { method: "POST", body: JSON.stringify(request) });
    $("deploy-message").textContent = status === 200 ? "" : (body && body.message) || `readyd answered ${status}`;
    loadDeployments();
  };
  $("deploy-confirm-no").onclick = () => { $("deploy-confirm").hidden = true; };
}

async function recordDeployment(event) {
  event.preventDefault();
  const request = {
    version: $("deploy-version").value.trim(),
    environment: $("deploy-env").value.trim(),
    commitSha: $("deploy-commit").value.trim(),
    notes: $("deploy-notes").value.trim(),
  };
  const { status, body } = await api("/console/api/deployments", { method: "POST", body: JSON.stringify(request) });
  $("deploy-message").textContent = status === 200 ? "" : (body && body.message) || `readyd answered ${status}`;
  loadDeployments();
}

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#0969da", "#8250df", "#1a7f37", "#bc4c00", "#bf3989", "#1b7c83"];

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// Overall status as bands (outages stand out), each check's latency as a
// line, over the chosen range.
async function loadHistory() {
  const hours = Number($("history-range").value);
  const { status, body } = await api(`/console/api/health-history?hours=${hours}`);
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("history-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  $("history-message").textContent = "";
  const records = (body.records || []).slice().reverse();
  const chart = $("history-chart");
  const [width, height, left, top] = [800, 260, 40, 10];
  const until = Date.now();
  const since = until - hours * 3600 * 1000;
  const x = (time) => left + ((time - since) / (until - since)) * (width - left - 10);
  const series = {};
  let highest = 1;
  const points = records.map((record) => {
    const time = Date.parse(record.recordedAt);
    const checks = (record.checks && record.checks.checks) || {};
    for (const [name, check] of Object.entries(checks)) {
      const latency = Number(check.latency_ms) || 0;
      highest = Math.max(highest, latency);
      (series[name] = series[name] || []).push([time, latency]);
    }
    return { time, overall: (record.checks && record.checks.overall) || statusName(record.status) };
  });
  const y = (latency) => height - 20 - (latency / highest) * (height - 30 - top);
  const parts = [svg("line", { x1: left, y1: height - 20, x2: width - 10, y2: height - 20, stroke: "#d8dde3" })];
  points.forEach((point, i) => {
    if (point.overall !== "unhealthy" && point.overall !== "degraded") return;
    const end = i + 1 < points.length ? points[i + 1].time : until;
    parts.push(svg("rect", {
      x: x(point.time), y: top, width: Math.max(1, x(end) - x(point.time)), height: height - 30,
      fill: point.overall === "unhealthy" ? "#ffebe9" : "#fff8c5", class: `band ${point.overall}`,
    }));
  });
  const legend = [];
  Object.entries(series).forEach(([name, values], i) => {
    const color = COLORS[i % COLORS.length];
    parts.push(svg("polyline", {
      points: values.map(([time, latency]) => `${x(time).toFixed(1)},${y(latency).toFixed(1)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.5,
    }));
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = color;
    item.append(swatch, `${name}`);
    legend.push(item);
  });
  const label = svg("text", { x: 2, y: top + 10, "font-size": 11, fill: "#5b6470" });
  label.textContent = `${Math.round(highest)} ms`;
  parts.push(label);
  chart.replaceChildren(...parts);
  $("history-legend").replaceChildren(...legend);
  if (!records.length) $("history-message").textContent = "No rows recorded in this range.";
}

// Everything that changed, on one time axis: "what changed right before
// the errors started?" is one look.
async function loadTimeline() {
  const hours = Number($("timeline-range").value);
  const environment = encodeURIComponent($("timeline-environment").value.trim());
  const { status, body } = await api(`/console/api/timeline?hours=${hours}&environment=${environment}`);
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("timeline-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  const entries = body.entries || [];
  $("timeline-message").textContent = entries.length ? "" : "Nothing happened in this range.";
  $("timeline-entries").replaceChildren(...entries.map((entry) => {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.dateTime = entry.at;
    time.textContent = entry.at.replace("T", " ").replace(/\..*$/, "").replace(/Z$/, "");
    const kind = document.createElement("span");
    kind.className = `kind ${entry.kind}`;
    kind.textContent = entry.kind;
    const what = document.createElement("span");
    what.textContent = entry.what;
    const who = document.createElement("span");
    who.className = "hint";
    who.textContent = `${entry.actor}${entry.environment ? ` · ${entry.environment}` : ""}`;
    item.append(time, kind, what, who);
    return item;
  }));
}

function button(text, onClick, className) {
  const element = document.createElement("button");
  element.type = "button";
  if (className) element.className = className;
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

let configDrawn = "";

// Rows as they apply to the environment, each saying where it comes from
// (`*` is inherited). Sensitive values arrive masked; an admin reveals one
// on purpose, and readyd records that in the audit trail. With
// onlyIfChanged, as loadFlags (a revealed value also stays shown until
// its row changes).
async function loadConfig(onlyIfChanged) {
  const environment = $("config-environment").value.trim();
  const { status, body } = await api(`/console/api/config?environment=${encodeURIComponent(environment)}`);
  if (status === 401) { show(false); return; }
  if (status !== 200) { $("config-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  $("config-message").textContent = "";
  const drawn = JSON.stringify([access, environment, body.entries]);
  if (onlyIfChanged && drawn === configDrawn) return;
  configDrawn = drawn;
  editing = null;
  const rows = (body.entries || []).map((entry) => {
    const tr = document.createElement("tr");
    tr.dataset.key = entry.key;
    tr.appendChild(cell(entry.key));
    const value = cell(entry.redacted ? "•••••• (sensitive)" : JSON.stringify(entry.value));
    value.className = "value";
    tr.appendChild(value);
    tr.appendChild(cell(entry.environment === "*" ? "* (inherited)" : entry.environment));
    tr.appendChild(cell(String(entry.version)));
    const actions = document.createElement("td");
    if (access === "admin") {
      if (entry.redacted) {
        actions.appendChild(button("Reveal", async () => {
          const request = { key: entry.key, environment: entry.environment };
          const answer = await api("/console/api/config/reveal", { method: "POST", body: JSON.stringify(request) });
          if (answer.status === 200) value.textContent = JSON.stringify(answer.body.value);
          else $("config-message").textContent = (answer.body && answer.body.message) || `readyd answered ${answer.status}`;
        }));
      } else {
        actions.appendChild(button("Edit", () => editConfig(entry, value, actions), "edit"));
      }
      actions.appendChild(button("History", () => configAudit(entry.key), "history"));
    }
    tr.appendChild(actions);
    return tr;
  });
  $("config-rows").replaceChildren(...rows);
}

// The row being edited ({key, environment}), if any: the list is not
// redrawn under the editor while it is open, and no other row can be
// edited meanwhile.
let editing = null;

// An inline editor in the value cell: the value as JSON, saved after a
// confirmation that shows the change, with the problem beside the field.
function editConfig(entry, value, actions) {
  editing = { key: entry.key, environment: entry.environment };
  const input = document.createElement("input");
  input.type = "text";
  input.className = "value-input";
  input.spellcheck = false;
  input.value = JSON.stringify(entry.value);
  input.setAttribute("aria-label", `New value of ${entry.key} (JSON)`);
  const problem = document.createElement("p");
  problem.className = "field-error";
  problem.id = `config-error-${entry.key}-${entry.environment}`;
  problem.setAttribute("role", "alert");
  input.setAttribute("aria-describedby", problem.id);
  const cancel = () => { editing = null; $("config-confirm").hidden = true; loadConfig(); };
  const save = () => {
    let next;
    try { next = JSON.parse(input.value); } catch (_) {
      problem.textContent = "not JSON (a string needs quotes)";
      input.setAttribute("aria-invalid", "true");
      return;
    }
    problem.textContent = "";
    input.removeAttribute("aria-invalid");
    if (JSON.stringify(next) === JSON.stringify(entry.value)) { problem.textContent = "nothing changed"; return; }
    $("config-confirm-text").textContent = `Change ${entry.key} (${entry.environment}): ${JSON.stringify(entry.value)} → ${JSON.stringify(next)}?`;
    $("config-confirm").hidden = false;
    $("config-confirm-yes").onclick = async () => {
      $("config-confirm").hidden = true;
      const request = { key: entry.key, environment: entry.environment, value: next, expectedVersion: entry.version };
      const { status, body } = await api("/console/api/config", { method: "POST", body: JSON.stringify(request) });
      if (status === 200) { $("config-message").textContent = ""; editing = null; loadConfig(); return; }
      problem.textContent = status === 409
        ? `${entry.key} was changed by someone else meanwhile; cancel to see their change.`
        : (body && body.message) || `readyd answered ${status}`;
    };
    $("config-confirm-no").onclick = () => { $("config-confirm").hidden = true; input.focus(); };
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); save(); }
    if (event.key === "Escape") cancel();
  });
  value.replaceChildren(input, problem);
  actions.replaceChildren(button("Save", save, "save"), button("Cancel", cancel, "cancel"));
  // One editor at a time: saving or cancelling redraws the list, which
  // would take a second open editor's text away with it.
  for (const other of document.querySelectorAll("#config-rows button.edit")) {
    other.disabled = true;
    other.title = "Save or cancel the open edit first";
  }
  input.focus();
}

async function configAudit(key) {
  const { status, body } = await api(`/console/api/config/audit?key=${encodeURIComponent(key)}`);
  $("config-audit-title").hidden = false;
  $("config-audit-title").textContent = `History of ${key}`;
  if (status !== 200) { $("config-message").textContent = (body && body.message) || `readyd answered ${status}`; return; }
  const action = (name) => (name || "").replace(/^CONFIG_AUDIT_ACTION_/, "").toLowerCase();
  $("config-audit").replaceChildren(...(body.entries || []).map((entry) => {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = (entry.changedAt || "").replace("T", " ").replace(/\..*$/, "");
    const what = document.createElement("span");
    const change = action(entry.action) === "reveal" ? "revealed"
      : `${action(entry.action)}: ${JSON.stringify(entry.oldValue ?? null)} → ${JSON.stringify(entry.newValue ?? null)}`;
    what.textContent = `${change} (${entry.environment})`;
    const who = document.createElement("span");
    who.className = "hint";
    who.textContent = entry.actor;
    item.append(time, what, who);
    return item;
  }));
}

async function start() {
  $("config-refresh").addEventListener("click", () => loadConfig());
  $("timeline-range").addEventListener("change", loadTimeline);
  $("timeline-refresh").addEventListener("click", loadTimeline);
  $("history-range").addEventListener("change", loadHistory);
  $("deploy-refresh").addEventListener("click", loadDeployments);
  $("deploy-form").addEventListener("submit", recordDeployment);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("flag-search").addEventListener("input", () => renderFlags());
  $("flag-filter").addEventListener("change", async () => {
    if ($("flag-filter").value === "stale") await loadStale();
    renderFlags();
  });
  $("flag-environment").addEventListener("input", () => renderFlags());
  $("try-form").addEventListener("submit", tryFlag);
  $("flag-detail").addEventListener("submit", saveFlag);
  $("flag-close").addEventListener("click", closeFlag);
  // The permanent mark changes on its own (after a confirmation), not with
  // the form's Save.
  $("flag-permanent").addEventListener("change", () => {
    const flag = flags.find((candidate) => candidate.key === openKey);
    if (!flag) return;
    $("flag-permanent").checked = Boolean(flag.permanent);
    propose(flag, { permanent: !flag.permanent });
    $("confirm-yes").focus();
  });
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value;
    $("token").value = "";
    const { status, body } = await api("/console/api/session", {
      method: "POST",
      body: JSON.stringify({ token, name: $("name").value }),
    });
    if (status === 200) { $("sign-in-error").textContent = ""; show(true, body); }
    else { $("sign-in-error").textContent = (body && body.message) || `readyd answered ${status}`; }
  });
  $("sign-out").addEventListener("click", async () => {
    await api("/console/api/sign-out", { method: "POST", body: "{}" });
    show(false);
  });
  const { status, body } = await api("/console/api/session");
  show(status === 200 && Boolean(body && body.signedIn), body);
}

start();
