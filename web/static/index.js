"use strict";
const $ = (id) => document.getElementById(id);
const api = (path, opts = {}) => fetch(path, { ...opts, headers: { "Authorization": "Bearer " + sessionStorage.getItem("runhub.key"), "Content-Type": "application/json" } })
  .then(async (r) => { const b = await r.json().catch(() => ({})); if (!r.ok) throw new Error(b.detail || b.error || ("HTTP " + r.status)); return b; });
function cell(tr, node) { const td = document.createElement("td"); td.append(node); tr.append(td); }
function text(s) { return document.createTextNode(s == null ? "" : String(s)); }
function badge(status) { const s = document.createElement("span"); s.className = "badge " + status; s.textContent = status; return s; }
let project = sessionStorage.getItem("runhub.project");
let task = null;
async function loadTasks() {
  const page = await api(`/api/projects/${project}/tasks/?limit=100`);
  $("tasks").classList.remove("hidden"); $("tasklist").replaceChildren();
  for (const t of page.results) {
    const tr = document.createElement("tr"); const a = document.createElement("a");
    a.href = "#"; a.textContent = t.title; a.onclick = (e) => { e.preventDefault(); task = t; loadRuns(); };
    cell(tr, a); cell(tr, t.latest_run ? badge(t.latest_run.status) : text("no runs")); $("tasklist").append(tr);
  }
}
async function loadRuns() {
  const page = await api(`/api/projects/${project}/tasks/${task.id}/runs/?limit=100`);
  $("runs").classList.remove("hidden"); $("runstitle").textContent = "Runs of " + task.title; $("runlist").replaceChildren();
  for (const r of page.results) {
    const tr = document.createElement("tr"); const a = document.createElement("a");
    a.href = `/runs/${r.id}?project=${project}&task=${task.id}`; a.textContent = r.id.slice(0, 8);
    cell(tr, a); cell(tr, badge(r.status)); cell(tr, text(r.created_at)); $("runlist").append(tr);
  }
}
const fail = (e) => { $("error").textContent = e.message; };
$("signin").onsubmit = (e) => { e.preventDefault(); sessionStorage.setItem("runhub.key", $("key").value); project = $("project").value; sessionStorage.setItem("runhub.project", project); loadTasks().catch(fail); };
$("newtask").onsubmit = (e) => { e.preventDefault(); api(`/api/projects/${project}/tasks/`, { method: "POST", body: JSON.stringify({ title: $("title").value }) }).then(loadTasks).catch(fail); };
$("runtask").onclick = () => api(`/api/projects/${project}/tasks/${task.id}/runs/`, { method: "POST", body: "{}" }).then(loadRuns).catch(fail);
if (sessionStorage.getItem("runhub.key") && project) loadTasks().catch(fail);
