"use strict";
// The duty desk: open incidents by district, pushed live over server-sent events.

const incidents = new Map();
const SEV = {3: ["高", "HIGH"], 2: ["中", "MEDIUM"], 1: ["低", "LOW"]};
const STATE = {
  new: "未确认 new", acknowledged: "已确认 acknowledged", dispatched: "已派遣 dispatched",
  resolved: "已处置 resolved", closed: "已关闭 closed",
};
const ALLOWED = {
  acknowledge: ["new"], dispatch: ["new", "acknowledged"],
  resolve: ["new", "acknowledged", "dispatched"], close: ["acknowledged", "dispatched", "resolved"],
};
let me = null;

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const reply = await fetch(path, init);
  if (reply.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const doc = await reply.json();
  if (!reply.ok) throw new Error(doc.error || reply.statusText);
  return doc;
}

function text(el, value) { el.textContent = value == null ? "" : String(value); return el; }

function since(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function secs(v) { return v == null ? "—" : `${Number(v).toFixed(1)} s`; }

function upsert(list) {
  for (const i of list) {
    if (i.state === "closed") incidents.delete(i.id); else incidents.set(i.id, i);
  }
  render();
}

function render() {
  const board = document.getElementById("board");
  const byDistrict = new Map();
  for (const i of incidents.values()) {
    const key = i.district || "未分配 unassigned";
    if (!byDistrict.has(key)) byDistrict.set(key, []);
    byDistrict.get(key).push(i);
  }
  const order = (a, b) => b.severity - a.severity || Date.parse(b.stored_at) - Date.parse(a.stored_at);
  const groups = [...byDistrict.entries()].map(([d, l]) => [d, l.sort(order)])
    .sort((a, b) => order(a[1][0], b[1][0]));
  for (const old of board.querySelectorAll(".district-group")) old.remove();
  document.getElementById("empty").hidden = incidents.size > 0;
  for (const [district, list] of groups) {
    const group = document.createElement("section");
    group.className = "district-group";
    text(group.appendChild(document.createElement("h2")), `${district} (${list.length})`);
    for (const i of list) group.appendChild(card(i));
    board.appendChild(group);
  }
  markSeen();
}

function card(i) {
  const node = document.getElementById("card").content.firstElementChild.cloneNode(true);
  node.dataset.id = i.id;
  node.classList.add(`sev${i.severity}`, `state-${i.state}`);
  if (i.escalation > 0) node.classList.add("escalated");
  text(node.querySelector(".sev"), SEV[i.severity].join(" "));
  text(node.querySelector(".title"), `${i.title_zh} · ${i.title_en}`);
  const site = text(node.querySelector(".site"), i.site_name ? `${i.site_name} (${i.site_id})` : i.site_id);
  site.addEventListener("click", (e) => { e.preventDefault(); showSite(i.site_id); });
  text(node.querySelector(".district"), i.district || "未分配 unassigned");
  text(node.querySelector(".raised"), `${i.raised_at || i.stored_at}`);
  const times = node.querySelector(".times");
  times.dataset.stored = i.stored_at;
  times.dataset.acked = i.acked_at || "";
  tick(times, i);
  const parts = [STATE[i.state]];
  if (i.acked_by) parts.push(`确认 ack: ${i.acked_by}`);
  if (i.dispatched_by) parts.push(`派遣 dispatch: ${i.dispatched_by}`);
  if (i.resolved_by) parts.push(`处置 resolve: ${i.resolved_by}`);
  if (i.cleared_at) parts.push("现场已恢复正常 back to normal at the kitchen");
  if (i.repeats) parts.push(`重复 repeated ×${i.repeats}`);
  if (i.escalation) parts.push(`已升级 escalated ×${i.escalation}`);
  text(node.querySelector(".state"), parts.join(" · "));
  for (const b of node.querySelectorAll("button[data-act]")) {
    b.disabled = !ALLOWED[b.dataset.act].includes(i.state);
    b.addEventListener("click", () => act(node, i.id, b.dataset.act));
  }
  return node;
}

function tick(times, i) {
  const stored = times.dataset.stored;
  const parts = [];
  if (!times.dataset.acked) parts.push(`未确认 unacknowledged ${since(stored)}`);
  parts.push(`首次查看 first view ${secs(i.to_view_s)}`);
  parts.push(`确认用时 to acknowledge ${secs(i.to_ack_s)}`);
  text(times, parts.join(" · "));
}

async function act(node, id, action) {
  const note = node.querySelector(".note").value;
  const err = node.querySelector(".err");
  text(err, "");
  try {
    await api(`/api/incidents/${id}/${action}`, {note});
  } catch (e) {
    text(err, e.message);
  }
}

async function markSeen() {
  if (document.visibilityState !== "visible") return;
  const ids = [...incidents.values()].filter((i) => !i.first_viewed_at).map((i) => i.id);
  if (ids.length) {
    try { await api("/api/incidents/seen", {ids}); } catch (e) { /* next render retries */ }
  }
}

function row(table, cells, header) {
  const tr = table.insertRow();
  for (const c of cells) text(tr.appendChild(document.createElement(header ? "th" : "td")), c);
}

async function showSite(siteId) {
  const doc = await api(`/api/sites/${encodeURIComponent(siteId)}`);
  const s = doc.site;
  document.getElementById("board").hidden = true;
  document.getElementById("site").hidden = false;
  text(document.getElementById("site-title"), `${s.name || s.site_id} (${s.site_id})`);
  const status = s.status || {};
  text(document.getElementById("site-meta"),
    `${s.district || "未分配 unassigned"} · ${s.address || ""} · 最后消息 last heard ${s.last_seen}` +
    ` · 状态 ${status.state || "?"} · 待传 pending ${s.pending ?? "?"}`);
  text(document.getElementById("site-gaps"), doc.gaps.length
    ? `缺失事件 missing events: ${doc.gaps.map((g) => g.first === g.last ? g.first : `${g.first}–${g.last}`).join(", ")}`
    : "");
  const det = document.getElementById("site-detectors");
  det.replaceChildren();
  row(det, ["名称 name", "状态 state", "%LEL", "锁存 latched"], true);
  for (const [name, d] of Object.entries(status.detectors || {})) {
    row(det, [d.label || name, d.state, d.lel == null ? "—" : d.lel, d.latched || ""]);
  }
  const valves = document.getElementById("site-valves");
  valves.replaceChildren();
  row(valves, ["名称 name", "状态 state"], true);
  for (const [name, v] of Object.entries(status.valves || {})) row(valves, [v.label || name, v.state]);
  const tl = document.getElementById("site-timeline");
  tl.replaceChildren();
  row(tl, ["#", "时间 time", "事件 event"], true);
  for (const e of doc.timeline) row(tl, [e.seq, e.utc, e.text_zh || e.kind]);
}

document.getElementById("back").addEventListener("click", () => {
  document.getElementById("site").hidden = true;
  document.getElementById("board").hidden = false;
});

async function load() {
  const doc = await api("/api/incidents");
  incidents.clear();
  upsert(doc.incidents);
}

function connect() {
  const live = document.getElementById("live");
  const feed = new EventSource("/api/events");
  feed.addEventListener("hello", () => { live.classList.remove("off"); load(); });
  feed.addEventListener("incidents", (e) => upsert(JSON.parse(e.data).incidents));
  feed.addEventListener("reload", () => load());
  feed.onerror = () => live.classList.add("off");  // the browser reconnects by itself
}

setInterval(() => {
  for (const el of document.querySelectorAll(".incident")) {
    const i = incidents.get(Number(el.dataset.id));
    if (i) tick(el.querySelector(".times"), i);
  }
}, 1000);
document.addEventListener("visibilitychange", markSeen);

(async () => {
  me = await api("/api/me");
  text(document.getElementById("who"),
    `${me.display_name} (${me.role === "admin" ? "全市 city" : me.district})`);
  connect();
})();
