// The service's page: uploads (drag and drop or a file chooser) and the job list, polled every second.
"use strict";

const $ = (id) => document.getElementById(id);

function options() {
  const opts = {};
  const task = $("task").value.trim();
  if (task && task !== "total") opts.task = task;
  for (const flag of ["fast", "fastest", "ml", "statistics"]) if ($(flag).checked) opts[flag] = true;
  const extra = $("extra").value.trim();
  if (extra) Object.assign(opts, JSON.parse(extra));  // a typo shows as a message, see upload()
  return opts;
}

function say(text, error) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function upload(file) {
  let opts;
  try { opts = options(); } catch (e) { say("more options: not valid JSON (" + e.message + ")", true); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("options", JSON.stringify(opts));
  say("Uploading " + file.name + "...");
  const response = await fetch("/api/jobs", { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (response.ok) say("Job " + body.id + " queued.");
  else say(file.name + ": " + (body.detail || response.statusText), true);
  refresh();
}

function cell(row, content) {
  const td = row.insertCell();
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  return td;
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href; a.textContent = text;
  return a;
}

function describe(opts) {
  // {"task": "total", "fast": true, "roi_subset": ["liver"]} -> "total, fast, roi_subset: liver"
  const words = [opts.task || "total"];
  for (const [key, value] of Object.entries(opts)) {
    if (key === "task" || value === false || value === null) continue;
    words.push(value === true ? key : key + ": " + [].concat(value).join(" "));
  }
  return words.join(", ");
}

function jobRow(tbody, job) {
  const row = tbody.insertRow();
  row.id = "job-" + job.id;
  row.dataset.state = job.state;
  const id = document.createElement("code"); id.textContent = job.id;
  cell(row, id);
  const when = new Date(job.created * 1000);
  cell(row, when.toLocaleDateString() + " " + when.toLocaleTimeString()).className = "when";
  cell(row, describe(job.options)).className = "options";
  const state = cell(row, job.state);
  state.className = "state state-" + job.state;
  if (job.error) {
    const err = document.createElement("div"); err.className = "error-line"; err.textContent = job.error;
    state.appendChild(err);
  }
  const bar = document.createElement("span"); bar.className = "bar";
  const fill = document.createElement("span"); fill.style.width = Math.round(job.progress * 100) + "%";
  bar.appendChild(fill); bar.title = Math.round(job.progress * 100) + " %";
  cell(row, bar);
  const files = cell(row, "");
  files.className = "files";
  for (const name of job.files) files.appendChild(link("/api/jobs/" + job.id + "/files/" + encodeURIComponent(name), name));
  if (job.state === "done") files.appendChild(link("/api/jobs/" + job.id + "/report/", "report"));
  const action = document.createElement("button");
  const active = job.state === "queued" || job.state === "running";
  action.textContent = active ? "cancel" : "delete";
  action.onclick = async () => { await fetch("/api/jobs/" + job.id, { method: "DELETE" }); refresh(); };
  cell(row, action);
}

async function refresh() {
  const response = await fetch("/api/jobs");
  if (response.status === 401) { location.reload(); return; }  // the token cookie is gone: the login page
  const jobs = await response.json();
  const tbody = $("jobs").tBodies[0];
  tbody.replaceChildren();
  for (const job of jobs.reverse()) jobRow(tbody, job);  // newest first
  $("empty").hidden = jobs.length > 0;
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    for (const file of e.dataTransfer.files) upload(file);
  });
  $("file").addEventListener("change", (e) => { for (const file of e.target.files) upload(file); e.target.value = ""; });
  refresh();
  setInterval(refresh, 1000);
}

setUp();
