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

function show(signedIn, session) {
  $("sign-in").hidden = signedIn;
  $("overview").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
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

const stateName = (state) => (state || "").replace(/^CHECK_STATE_/, "").toLowerCase();
const statusName = (status) => (status || "").replace(/^HEALTH_STATUS_/, "").toLowerCase();

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function render(report) {
  const status = statusName(report.status);
  $("status").textContent = status || "unknown";
  $("status").className = `status ${status}`;
  const stale = report.staleFor && report.staleFor !== "0s" ? ` · data stale for ${report.staleFor}` : "";
  $("meta").textContent = `${report.environment} · ${report.instance} · readyd ${report.readydVersion} · up ${report.uptime}${stale}`;
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
    tr.appendChild(cell(check.latency || "–"));
    tr.appendChild(cell(check.critical ? "yes" : "no"));
    tr.appendChild(cell(check.lastError || "", "error-text"));
    return tr;
  });
  $("checks").replaceChildren(...rows);
}

async function refresh() {
  const { status, body } = await api("/console/api/health");
  if (status === 401) { show(false); return; }
  if (body && body.status) { render(body); $("overview-error").textContent = ""; }
  else { $("overview-error").textContent = (body && body.message) || `readyd answered ${status}`; }
}

async function start() {
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
  show(status === 200, body);
}

start();
