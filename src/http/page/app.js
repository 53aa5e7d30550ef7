// The call board: live calls from /api/calls kept current by /api/stream (EventSource resumes
// by itself with Last-Event-ID after a drop), ended calls from /api/history, what failed, and
// the journal. Everything comes from this admin listener; nothing from any other host.
"use strict";

const live = new Map(); // "provider/call_id" -> Call
let oldestEnded = null;

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
};

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  if (r.status === 401) { location.reload(); throw new Error("401"); }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

const key = (c) => `${c.provider}/${c.call_id}`;

function seconds(from, to) {
  if (!from) return "";
  const s = Math.max(0, Math.round(((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function participants(call) {
  return call.participants.map((p) =>
    el("span", { class: "who" }, `${p.dn} ↔ ${p.party_number || p.party_dn || "?"} `,
      el("span", { class: "status" }, p.left_at ? "left" : p.status)));
}

function drawLive() {
  const body = document.querySelector("#live tbody");
  body.replaceChildren();
  const calls = [...live.values()].sort((a, b) => (a.started_at || "").localeCompare(b.started_at || ""));
  for (const c of calls) {
    body.append(el("tr", { "data-call": key(c) },
      el("td", {}, c.provider), el("td", {}, c.call_id),
      el("td", {}, el("span", { class: `dir ${c.direction}` }, c.direction)),
      el("td", { class: "duration", "data-started": c.started_at || "" }, seconds(c.started_at)),
      el("td", {}, ...participants(c))));
  }
  if (!calls.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 5 }, "no call right now")));
  document.getElementById("live-count").textContent = calls.length ? `(${calls.length})` : "";
}

function recordingCell(call) {
  return el("td", {}, ...call.recordings.map((r) =>
    r.state === "downloaded" && r.path
      ? el("audio", { controls: "", preload: "metadata", src: "/api/recordings/" + r.path.split("/").map(encodeURIComponent).join("/") })
      : el("span", { class: "status", title: r.error || "" }, `${r.id}: ${r.state}`)));
}

function endedRow(c) {
  return el("tr", { "data-call": key(c) },
    el("td", {}, c.provider), el("td", {}, c.call_id),
    el("td", {}, el("span", { class: `dir ${c.direction}` }, c.direction)),
    el("td", {}, c.ended_at ? new Date(c.ended_at).toLocaleString() : ""),
    el("td", {}, seconds(c.started_at, c.ended_at)),
    el("td", {}, c.end_reason || ""), recordingCell(c));
}

function showEnded(c) {
  const body = document.querySelector("#ended tbody");
  const row = endedRow(c);
  const old = body.querySelector(`tr[data-call="${CSS.escape(key(c))}"]`);
  if (old) old.replaceWith(row); else body.prepend(row);
}

async function loadEnded() {
  const q = oldestEnded ? `&before=${encodeURIComponent(oldestEnded)}` : "";
  const { calls } = await api(`/api/history?limit=25${q}`);
  const body = document.querySelector("#ended tbody");
  for (const c of calls) body.append(endedRow(c));
  if (calls.length) oldestEnded = calls[calls.length - 1].ended_at;
}

function retryButton(path, after) {
  return el("button", { onclick: async (e) => { e.target.disabled = true; await api(path, { method: "POST" }); after(); } }, "Retry");
}

async function loadFailures() {
  const { jobs } = await api("/api/recordings/jobs?state=failed&limit=50");
  const jb = document.querySelector("#jobs tbody");
  jb.replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, j.id), el("td", {}, `${j.provider}/${j.call_id}`), el("td", {}, j.recording_id),
    el("td", {}, j.attempts), el("td", {}, j.last_error || ""),
    el("td", {}, j.path ? retryButton(`/api/recordings/jobs/${j.id}/retry`, loadFailures) : ""))));
  const db = document.querySelector("#deliveries tbody");
  db.replaceChildren();
  const { endpoints } = await api("/api/endpoints");
  for (const ep of endpoints) {
    const { deliveries } = await api(`/api/deliveries?endpoint=${encodeURIComponent(ep.name)}&state=failed&limit=50`);
    for (const d of deliveries) db.append(el("tr", {},
      el("td", {}, ep.name), el("td", {}, d.event_id), el("td", {}, d.type),
      el("td", {}, `${d.provider}/${d.call_id}`), el("td", {}, d.attempts), el("td", {}, d.last_error || ""),
      el("td", {}, retryButton(`/api/deliveries/${encodeURIComponent(d.event_id)}/retry`, loadFailures))));
  }
}

async function loadEvents() {
  const form = new FormData(document.getElementById("event-filter"));
  const q = new URLSearchParams({ limit: "50" });
  for (const [k, v] of form) if (v) q.set(k, v);
  const { events } = await api(`/api/events?${q}`);
  const body = document.querySelector("#events tbody");
  const shown = document.getElementById("event-body");
  body.replaceChildren(...events.map((e) => el("tr", {
    onclick: () => { shown.hidden = false; shown.textContent = JSON.stringify(e.body, null, 2); },
  }, el("td", {}, e.id), el("td", {}, new Date(e.received_at).toLocaleString()), el("td", {}, e.provider), el("td", {}, e.name))));
}

function onEvent(message) {
  const event = JSON.parse(message.data);
  const call = event.call;
  if (call.state === "active") live.set(key(call), call);
  else { live.delete(key(call)); showEnded(call); }
  drawLive();
  if (event.type === "recording.failed") loadFailures();
}

let streams = 0; // EventSources opened so far

function connect() {
  const link = document.getElementById("link");
  const stream = new EventSource("/api/stream");
  const first = streams++ === 0;
  let opened = false;
  stream.onopen = async () => {
    link.textContent = "live"; link.className = "link up";
    if (!opened && !first) {
      // A new stream, not the browser's own resume: it sends no Last-Event-ID, so what ended
      // or failed while it was down is read again.
      oldestEnded = null;
      document.querySelector("#ended tbody").replaceChildren();
      loadEnded();
      loadFailures();
    }
    opened = true;
    // What changed while the page was away from the stream (the first load too).
    const { calls } = await api("/api/calls");
    live.clear();
    for (const c of calls) live.set(key(c), c);
    drawLive();
  };
  stream.onmessage = onEvent;
  stream.onerror = () => {
    link.textContent = "disconnected: reconnecting…"; link.className = "link down";
    // The browser retries a dropped connection itself, with Last-Event-ID. An answer that is
    // not a stream (a proxy's 502 while the daemon restarts, a 401 once the session is gone)
    // closes it for good instead: open a new one, after a request that reloads the page on a
    // 401 (the page then asks for the token).
    if (stream.readyState === EventSource.CLOSED) {
      setTimeout(() => api("/api/calls").catch(() => {}).finally(connect), 3000);
    }
  };
}

document.getElementById("more-ended").addEventListener("click", loadEnded);
document.getElementById("event-filter").addEventListener("submit", (e) => { e.preventDefault(); loadEvents(); });
setInterval(() => {
  for (const td of document.querySelectorAll("#live .duration")) td.textContent = seconds(td.dataset.started);
}, 1000);
drawLive();
connect();
loadEnded();
loadFailures();
loadEvents();
