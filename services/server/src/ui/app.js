// Meshfleet dashboard behaviour: live fragments over server-sent events, forms that call the
// JSON API with the session's CSRF token (the silence and rollout forms shaped as the API takes
// them, a rollout's plan preview shown before it starts), copy buttons and certificate countdowns.
"use strict";
window.__mfErrors = [];
window.addEventListener("error", (e) => window.__mfErrors.push(String(e.message)));

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(method, url, body) {
  const headers = { "x-csrf-token": csrf() };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(url, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    // Problem documents (RFC 9457) carry a human detail and the offending fields.
    const fields = (data && data.errors || []).map((e) => `${e.field}: ${e.message}`);
    const detail = (data && (data.detail || data.title)) || `The request failed (${resp.status}).`;
    throw new Error(fields.length > 1 ? fields.join("; ") : detail);
  }
  return data;
}

function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.dataset.kind === "labels") {
      const labels = {};
      for (const pair of el.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        const [k, ...v] = pair.split("=");
        labels[k.trim()] = v.join("=").trim();
      }
      body[el.name] = labels;
    } else {
      body[el.name] = el.value;
    }
  }
  return body;
}

// A silence's body: the matcher rows, an end (the chosen time, or now plus the duration) and
// the comment, as POST /api/v1/silences takes them.
function silenceBody(form) {
  const matchers = [];
  for (const row of form.querySelectorAll("[data-matcher]")) {
    const part = (name) => row.querySelector(`[data-part="${name}"]`).value;
    if (!part("name").trim() && !part("value")) continue;
    matchers.push({ name: part("name").trim(), op: part("op"), value: part("value") });
  }
  const until = form.elements.ends_at.value;
  const ends = until ? new Date(until) : new Date(Date.now() + Number(form.elements.duration.value) * 1000);
  if (Number.isNaN(ends.getTime())) throw new Error("ends_at: is not a date and time");
  return { matchers, ends_at: ends.toISOString(), comment: form.elements.comment.value };
}

// A rollout's body as POST /api/v1/rollouts (and /plan) take it: the wave settings nested, numbers as numbers.
function rolloutBody(form) {
  const value = (name) => form.elements[name].value.trim();
  const number = (name) => (value(name) === "" ? undefined : Number(value(name)));
  const waves = { canary_count: number("canary_count"), batch_percent: number("batch_percent") };
  if (value("canary_selector")) waves.canary_selector = value("canary_selector");
  const gates = { max_success_rate_drop_points: number("max_success_rate_drop_points"), max_p99_increase_percent: number("max_p99_increase_percent") };
  const settings = { waves, gates, max_concurrent: number("max_concurrent"), verify_seconds: number("verify_seconds"), soak_seconds: number("soak_seconds") };
  return { target_version: value("target_version"), selector: value("selector"), settings };
}

// A plan preview: each wave's clusters with their path, and the clusters left out with why.
function showPlan(out, plan) {
  const node = (tag, text, attrs = {}) => {
    const el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };
  const total = plan.waves.reduce((n, w) => n + w.clusters.length, 0);
  out.replaceChildren(node("p", `${total} cluster${total === 1 ? "" : "s"} to ${plan.target_version} in ${plan.waves.length} wave${plan.waves.length === 1 ? "" : "s"}; ${plan.skipped.length} left out.`, { "data-plan-total": total }));
  const waves = node("ol");
  plan.waves.forEach((w, i) => {
    const paths = w.clusters.map((c) => `${c.name} (${[c.from, ...c.hops].join(" → ")})`).join(", ");
    waves.append(node("li", `${w.kind}: ${paths}`, { "data-plan-wave": i }));
  });
  if (plan.waves.length) out.append(waves);
  if (plan.skipped.length) {
    const left = node("ul");
    for (const s of plan.skipped) left.append(node("li", `${s.name}: ${s.reason}`, { "data-plan-skipped": s.name }));
    out.append(node("p", "Left out:"), left);
  }
}

function showError(form, message) {
  const out = form.querySelector(".form-error") || form.parentElement.querySelector(".form-error");
  if (out) out.textContent = message;
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.dataset.auth) {
    event.preventDefault();
    const body = formBody(form);
    try {
      if (form.dataset.auth === "signup") await api("POST", "/api/v1/signup", body);
      await api("POST", "/ui/session", { email: body.email, password: body.password });
      window.location.assign("/fleet");
    } catch (e) { showError(form, e.message); }
    return;
  }
  if (!form.dataset.api) return;
  event.preventDefault();
  // A form's buttons may each post elsewhere (a preview and a start of the same rollout).
  const by = event.submitter ? event.submitter.dataset : {};
  const confirmation = by.confirm || form.dataset.confirm;
  if (confirmation && !window.confirm(confirmation)) return;
  const method = form.dataset.method || "POST";
  try {
    const shapes = { silence: silenceBody, rollout: rolloutBody };
    const body = method === "DELETE" ? undefined : (shapes[form.dataset.shape] || formBody)(form);
    const result = await api(method, by.api || form.dataset.api, body);
    const then = by.then || form.dataset.then;
    showError(form, "");
    if (then === "plan") showPlan(form.querySelector("output.plan"), result);
    else if (then === "cluster") window.location.assign(`/clusters/${result.cluster.id}`);
    else if (then === "token") form.querySelector("output.secret").textContent = `Copy this token now, it is shown only once: ${result.token}`;
    else window.location.reload();
  } catch (e) { showError(form, e.message); }
});

document.addEventListener("change", (event) => {
  const el = event.target;
  if (el.matches("[data-submit-on-change]")) el.form.requestSubmit();
});

document.addEventListener("click", async (event) => {
  const el = event.target;
  if (el.matches("[data-logout]")) {
    try { await api("DELETE", "/ui/session"); } finally { window.location.assign("/login"); }
  }
  if (el.matches("[data-download]")) {
    // The manifest mints a bootstrap token, so it is fetched with a POST carrying the CSRF token.
    const out = el.parentElement.querySelector(".form-error");
    try {
      const resp = await fetch(el.dataset.download, { method: "POST", headers: { "x-csrf-token": csrf() }, credentials: "same-origin" });
      if (!resp.ok) throw new Error(`The manifest could not be made (${resp.status}).`);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await resp.blob());
      link.download = el.dataset.filename || "install.yaml";
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
      el.textContent = "Downloaded";
      el.dataset.downloaded = "true";
      if (out) out.textContent = "";
    } catch (e) { if (out) out.textContent = e.message; }
  }
  if (el.matches("[data-add-matcher]")) {
    const rows = el.form.querySelector("[data-matchers]");
    const row = rows.querySelector("[data-matcher]").cloneNode(true);
    for (const input of row.querySelectorAll("input, select")) {
      input.removeAttribute("id");
      input.removeAttribute("required");
      if (input.tagName === "INPUT") input.value = "";
    }
    rows.appendChild(row);
  }
  if (el.matches("[data-copy]")) {
    const text = document.getElementById(el.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(document.getElementById(el.dataset.copy));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
    el.textContent = "Copied";
    el.dataset.copied = "true";
  }
});

function countdowns() {
  const now = Date.now();
  for (const t of document.querySelectorAll("time[data-expires]")) {
    const delta = Math.round((Number(t.dataset.expires) - now) / 1000);
    const abs = Math.abs(delta);
    const text = abs < 3600 ? `${Math.floor(abs / 60)} min` : abs < 86400 ? `${Math.floor(abs / 3600)} h ${Math.floor((abs % 3600) / 60)} min` : `${Math.floor(abs / 86400)} d ${Math.floor((abs % 86400) / 3600)} h`;
    t.textContent = delta >= 0 ? `in ${text}` : `expired ${text} ago`;
  }
}

const sources = [];

function live() {
  for (const el of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(el.dataset.live);
    source.addEventListener("update", (e) => { el.innerHTML = e.data; countdowns(); });
    sources.push(source);
  }
}

// A page left for another may be kept (the back-forward cache) with its streams open; the
// browser allows six connections to a host, so a few live pages visited in turn would leave
// none for the next. Streams close when the page is hidden and open again if it comes back.
window.addEventListener("pagehide", () => { for (const source of sources.splice(0)) source.close(); });
window.addEventListener("pageshow", (e) => { if (e.persisted) live(); });

document.addEventListener("DOMContentLoaded", () => {
  live();
  countdowns();
  setInterval(countdowns, 30000);
});
