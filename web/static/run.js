"use strict";
// The live log of one run. Every event is shown once: the viewer keeps the
// last seq it rendered, resumes from it after any disconnect, and ignores
// anything at or below it.
const $ = (id) => document.getElementById(id);
const runId = location.pathname.split("/").filter(Boolean).pop();
const q = new URLSearchParams(location.search);
const hash = new URLSearchParams(location.hash.slice(1));
const key = sessionStorage.getItem("runhub.key");
let token = hash.get("token");
let lastSeq = 0, ended = false, ws = null, backoff = 250, nextId = 1, canWrite = false;
const pending = new Map(); // JSON-RPC id -> callback
const MAX_ROWS = 5000;     // rendered rows; older ones are dropped from the DOM
let queue = [], frame = 0, follow = true;
let firstSeq = 0, loadingOlder = false; // the oldest seq shown; history loads what is before it
// SSE is the fallback when WebSockets do not get through (or ?transport=sse).
let useSSE = q.get("transport") === "sse", wsFailures = 0;
// A node closing with 1012 "service restart" (a drain, a deploy) asks its
// clients to reconnect at once, through the load balancer, to another
// node: the viewer does so within this many milliseconds (drawn at random,
// so that a node's thousands of viewers do not arrive in the same
// instant), and resumes after its last seq.
const RESTART_JITTER_MS = 250;

$("runid").textContent = runId.slice(0, 8);

function claims(t) {
  try { return JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))); } catch { return {}; }
}
function setConn(s) { const c = $("conn"); c.textContent = s; c.className = s; }

async function ensureToken() {
  if (token || !key) return;
  const r = await fetch(`/api/projects/${q.get("project")}/tasks/${q.get("task")}/runs/${runId}/connection_token/`,
    { headers: { "Authorization": "Bearer " + key } });
  if (!r.ok) throw new Error("could not get a connection token (HTTP " + r.status + ")");
  token = (await r.json()).token;
}

function send(method, params, cb) {
  const id = nextId++;
  if (cb) pending.set(id, cb);
  ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
}

async function connect() {
  try { await ensureToken(); } catch (e) { $("error").textContent = e.message; return; }
  canWrite = claims(token).scope === "write";
  $("steer").classList.toggle("hidden", !canWrite || useSSE);
  if (useSSE) { connectSSE(); return; }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`);
  let opened = false;
  ws.onopen = () => {
    opened = true; wsFailures = 0;
    if (lastSeq > 0) { subscribe(lastSeq); return; }
    // First load: learn the newest seq, then replay the last 1,000 events.
    send("subscribe", { run_id: runId, after: "latest" }, (m) => {
      if (m.error) { $("error").textContent = m.error.message; return; }
      const from = Math.max(0, m.result.last_seq - 1000);
      send("unsubscribe", { run_id: runId });
      subscribe(from);
    });
  };
  ws.onmessage = (ev) => {
    let data; try { data = JSON.parse(ev.data); } catch { return; }
    for (const m of Array.isArray(data) ? data : [data]) {
      if (m.id != null && pending.has(m.id)) { const cb = pending.get(m.id); pending.delete(m.id); cb(m); continue; }
      if (m.method === "event") onEvent(m.params);
      else if (m.method === "stream_end") { ended = true; setConn("ended"); ws.close(); }
    }
  };
  ws.onclose = (ev) => {
    for (const cb of pending.values()) cb({ error: { message: "connection lost" } });
    pending.clear();
    if (ended) return;
    if (!opened && ++wsFailures >= 3) useSSE = true; // WebSockets do not get through: use SSE
    setConn("reconnecting");
    if (ev.code === 1012) { backoff = 250; setTimeout(connect, Math.random() * RESTART_JITTER_MS); return; }
    setTimeout(connect, backoff + Math.random() * backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

// connectSSE follows the run over Server-Sent Events after the last seq
// shown (from the first event on a first load: the fallback has no way to
// ask for the newest seq without an API key; the row cap bounds the page).
// EventSource reconnects by itself and resumes with Last-Event-ID.
// events=all: runhub's own events (agent connect/disconnect, artifacts),
// which an SSE stream leaves out by default (PostHog's app would show them
// as transcript lines), are rows here.
function connectSSE() {
  const c = claims(token);
  const path = `/api/projects/${c.team_id}/tasks/${c.task_id}/runs/${runId}/stream/`;
  const es = new EventSource(`${path}?token=${encodeURIComponent(token)}&after=${lastSeq}&events=all`);
  es.onopen = () => setConn("live");
  es.onmessage = (m) => {
    let ev; try { ev = JSON.parse(m.data); } catch { return; }
    onEvent({ run_id: runId, seq: m.lastEventId ? +m.lastEventId : null, event: ev });
  };
  es.addEventListener("stream-end", () => { ended = true; setConn("ended"); es.close(); });
  es.onerror = () => { if (!ended) setConn("reconnecting"); };
}

function subscribe(after) {
  send("subscribe", { run_id: runId, after }, (m) => {
    if (m.error) { $("error").textContent = m.error.message; return; }
    backoff = 250; setConn("live");
  });
}

function onEvent(p) {
  if (p.seq == null) { // agent_message_chunk: live text, not stored
    const t = p.event?.notification?.params?.update?.content?.text;
    if (typeof t === "string") $("chunk").textContent += t;
    return;
  }
  if (p.seq <= lastSeq) return; // already shown
  lastSeq = p.seq;
  if (!firstSeq) firstSeq = p.seq;
  queue.push(p);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const log = $("log"), batch = queue; queue = [];
  const frag = document.createDocumentFragment();
  for (const p of batch) { const li = row(p); if (li) frag.append(li); }
  log.append(frag);
  while (log.childElementCount > MAX_ROWS) log.firstElementChild.remove();
  if (follow) window.scrollTo(0, document.body.scrollHeight);
}

function str(v) { return typeof v === "string" ? v : JSON.stringify(v); }

// markdown renders the common Markdown of agent messages by building DOM
// nodes from text: nothing in a message is ever parsed as HTML, and links
// are kept only for http(s) URLs.
function markdown(src) {
  const out = document.createDocumentFragment();
  const blocks = src.replace(/\r\n/g, "\n").split(/\n```/);
  blocks.forEach((b, i) => {
    if (i % 2 === 1) { // a fenced code block: drop the info string
      const pre = document.createElement("pre"); const code = document.createElement("code");
      code.textContent = b.replace(/^[^\n]*\n/, "").replace(/\n?`*$/, ""); pre.append(code); out.append(pre); return;
    }
    for (const para of b.split(/\n{2,}/)) {
      const lines = para.split("\n").filter((l) => l.trim() !== "");
      if (!lines.length) continue;
      if (lines.every((l) => /^\s*([-*+]|\d+\.)\s+/.test(l))) {
        const ordered = /^\s*\d+\./.test(lines[0]);
        const list = document.createElement(ordered ? "ol" : "ul");
        for (const l of lines) { const item = document.createElement("li"); item.append(inlineMd(l.replace(/^\s*([-*+]|\d+\.)\s+/, ""))); list.append(item); }
        out.append(list); continue;
      }
      const p = document.createElement("p");
      lines.forEach((l, j) => {
        const h = /^#{1,6}\s+(.*)$/.exec(l);
        if (h) { const st = document.createElement("strong"); st.append(inlineMd(h[1])); p.append(st); }
        else p.append(inlineMd(l));
        if (j < lines.length - 1) p.append(document.createElement("br"));
      });
      out.append(p);
    }
  });
  return out;
}

// inlineMd handles `code`, **bold**, *em* / _em_ and [text](http(s) url).
function inlineMd(text) {
  const frag = document.createDocumentFragment();
  const re = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*|(?<![\w])_([^_]+)_(?![\w])|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    frag.append(text.slice(last, m.index));
    let el;
    if (m[1] !== undefined) { el = document.createElement("code"); el.textContent = m[1]; }
    else if (m[2] !== undefined) { el = document.createElement("strong"); el.textContent = m[2]; }
    else if (m[3] !== undefined || m[4] !== undefined) { el = document.createElement("em"); el.textContent = m[3] ?? m[4]; }
    else { el = document.createElement("a"); el.textContent = m[5]; el.href = m[6]; el.rel = "noopener noreferrer"; el.target = "_blank"; }
    frag.append(el);
    last = re.lastIndex;
  }
  frag.append(text.slice(last));
  return frag;
}

// row renders one event as text only: log content never becomes HTML.
function row(p, old) {
  const e = p.event || {};
  const li = document.createElement("li");
  li.dataset.seq = p.seq;
  const seq = document.createElement("span"); seq.className = "seq"; seq.textContent = p.seq;
  li.append(seq);
  const n = e.notification || {};
  const update = n.params?.update || {};
  const kind = n.method === "session/update" ? update.sessionUpdate : (n.method || e.type);
  if (e.type === "task_run_state") {
    if (!old) setState(e);
    li.className = "state";
    li.append(`status ${e.status}${e.stage ? " · " + e.stage : ""}`);
  } else if (e.type === "artifact") {
    const a = e.artifact || {}; li.className = "system"; li.append(`artifact ${a.name} (${a.type}, ${a.size} bytes)`);
    if (!old) $("artifacts").append(artifactItem(a));
  } else if (kind === "agent_message" || kind === "agent_message_chunk" || kind === "user_message") {
    $("chunk").textContent = "";
    li.className = "message"; li.append(markdown(str(update.content?.text ?? update.content ?? "")));
  } else if (kind === "tool_call" || kind === "tool_call_update") {
    const d = document.createElement("details"); const s = document.createElement("summary");
    s.textContent = `tool ${update.title || update.toolCallId || ""} · ${update.status || ""}`;
    const pre = document.createElement("pre"); pre.textContent = JSON.stringify(update, null, 2);
    d.append(s, pre); li.append(d);
  } else if (e.type === "agent_connected" || e.type === "agent_disconnected") {
    li.className = "system"; li.append(e.type.replace("_", " "));
  } else {
    const msg = n.params?.message ?? e.message ?? e.text ?? JSON.stringify(e);
    li.className = /error/i.test(kind || "") || n.params?.level === "error" || e.level === "error" ? "error" : "console";
    li.append(str(msg));
  }
  return li;
}

// artifactItem lists an artifact; with an API key (the signed-in flow) its
// name is a button that asks for a presigned download link.
function artifactItem(a) {
  const item = document.createElement("li");
  if (!key || !q.get("project")) { item.textContent = `${a.name} (${a.type})`; return item; }
  const b = document.createElement("button"); b.type = "button"; b.textContent = `Download ${a.name}`;
  b.dataset.path = a.storage_path;
  b.onclick = async () => {
    const r = await fetch(`/api/projects/${q.get("project")}/tasks/${q.get("task")}/runs/${runId}/artifacts/presign/`,
      { method: "POST", headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" }, body: JSON.stringify({ storage_path: a.storage_path }) });
    const body = await r.json().catch(() => ({}));
    if (r.ok && /^https?:\/\//.test(body.url)) location.assign(body.url); else $("error").textContent = body.error || "download failed";
  };
  item.append(b, ` (${a.type}, ${a.size} bytes)`);
  return item;
}

function setState(e) {
  const s = $("status"); s.textContent = e.status; s.className = "badge " + e.status;
  $("stage").textContent = e.stage ? "stage: " + e.stage : "";
  $("branch").textContent = e.branch ? "branch: " + e.branch : "";
  const pr = e.output?.pr_url; $("pr").replaceChildren();
  if (typeof pr === "string" && /^https?:\/\//.test(pr)) { const a = document.createElement("a"); a.href = pr; a.textContent = "pull request"; a.rel = "noopener"; $("pr").append(a); }
}

window.addEventListener("scroll", () => {
  follow = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  $("jump").classList.toggle("hidden", follow);
  if (window.scrollY < 200) loadOlder();
});

// loadOlder prepends the 500 events before the oldest one shown, keeping
// the reader's place on the page.
function loadOlder() {
  if (loadingOlder || firstSeq <= 1 || !ws || ws.readyState !== 1) return;
  loadingOlder = true;
  send("history", { run_id: runId, before: firstSeq, limit: 500 }, (m) => {
    loadingOlder = false;
    if (m.error || !m.result) return;
    const evs = m.result.events.filter((e) => e.seq < firstSeq);
    if (!evs.length) { firstSeq = 1; return; }
    const frag = document.createDocumentFragment();
    for (const e of evs) { const li = row({ seq: e.seq, event: e.event }, true); if (li) frag.append(li); }
    const before = document.body.scrollHeight;
    $("log").prepend(frag);
    firstSeq = evs[0].seq;
    window.scrollBy(0, document.body.scrollHeight - before);
  });
}
$("jump").onclick = () => { follow = true; window.scrollTo(0, document.body.scrollHeight); $("jump").classList.add("hidden"); };

function command(method, params) {
  if (!ws || ws.readyState !== 1) { $("answer").textContent = "not connected"; return; }
  $("answer").textContent = "…";
  send("command", { run_id: runId, method, params }, (m) => {
    $("answer").textContent = m.error ? "Error: " + m.error.message : "Agent: " + JSON.stringify(m.result);
  });
}
$("steer").onsubmit = (e) => { e.preventDefault(); const t = $("msg").value.trim(); if (t) { command("user_message", { content: t }); $("msg").value = ""; } };
$("cancel").onclick = () => command("cancel", {});
$("close").onclick = () => command("close", {});

connect();
