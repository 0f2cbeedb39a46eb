// tuneserve's web page: a thin layer over the public HTTP API (no server-side rendering, no CDN).
"use strict";

const KEY = "tuneserve.apiKey";
const ACTIVE = new Set(["queued", "running", "finalizing"]);
const EXAMPLE = {
  name: "iris-mlp",
  dataset: { builtin: "iris" },
  model: { kind: "mlp", hidden: [32] },
  split: { test_fraction: 0.2, validation: { kind: "holdout", fraction: 0.25 }, seed: 0 },
  search_space: { lr: { low: 1e-3, high: 3e-2, log: true }, batch_size: { choices: [16, 32] } },
  budget: { n_trials: 8, max_epochs: 20, timeout_s: 300 },
  pruner: { kind: "median", n_startup_trials: 2, n_warmup_steps: 2 },
  sampler: { kind: "tpe", seed: 0 },
};

let timer = null;   // the current view's refresh timer
let viewToken = 0;  // bumps on navigation so late replies of the old view are dropped
const finishedJobs = new Map();  // id -> GET /jobs/{id} of a job that has finished

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return esc(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e5 ? v.toFixed(digits) : v.toExponential(2);
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

async function api(path, opts = {}) {
  // X-Requested-With: the server refuses POSTs a plain cross-site form could send (README "Security").
  const headers = { "X-Requested-With": "tuneserve-web", ...(opts.headers || {}) };
  const key = localStorage.getItem(KEY);
  if (key) headers["Authorization"] = `Bearer ${key}`;
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const res = await fetch(path, { ...opts, headers });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!res.ok) {
    const d = body && body.detail;
    const msg = Array.isArray(d) ? d.map((e) => e.msg).join("\n") : (d || `${res.status} ${res.statusText}`);
    const err = new Error(msg); err.status = res.status; throw err;
  }
  return body;
}

function statusBadge(s) { return `<span class="status ${esc(s)}">${esc(s)}</span>`; }
function progressBar(p, n, big = false) {
  const done = (p && p.counted) || 0;
  const pct = n ? Math.min(100, (100 * done) / n) : 0;
  return `<div class="bar${big ? " big" : ""}" title="${done} / ${n} trials"><span style="width:${pct}%"></span></div>`;
}
function testScore(m) {
  if (!m) return "–";
  for (const k of ["accuracy", "r2", "roc_auc", "f1_macro", "mae", "loss"]) if (m[k] !== undefined) return `${k} ${fmt(m[k])}`;
  return "–";
}

function schedule(fn, ms) { clearTimeout(timer); timer = setTimeout(fn, ms); }

// ------------------------------------------------------------------------------------------- job list
async function showJobs(token) {
  const view = document.getElementById("view");
  let page;
  try { page = await api("/jobs?limit=50"); } catch (e) {
    if (token === viewToken) view.innerHTML = `<p class="errors">${esc(e.message)}</p>`;
    return schedule(() => showJobs(token), 5000);
  }
  // A finished job no longer changes: its details are fetched once, active ones on every refresh.
  const details = await Promise.all(page.items.map((j) => finishedJobs.get(j.id) || api(`/jobs/${j.id}`).then((d) => {
    if (!ACTIVE.has(d.status)) finishedJobs.set(d.id, d);
    return d;
  }).catch(() => j)));
  if (token !== viewToken) return;
  const rows = details.map((j) => `
    <tr class="job-row" data-id="${esc(j.id)}">
      <td><a href="#/jobs/${esc(j.id)}">${esc(j.name)}</a><div class="muted"><code>${esc(j.id.slice(0, 8))}</code></div></td>
      <td>${statusBadge(j.status)}</td>
      <td>${progressBar(j.progress, j.n_trials)}<span class="muted">${(j.progress && j.progress.counted) || 0} / ${j.n_trials}</span></td>
      <td class="num">${fmt(j.best_trial && j.best_trial.value)}</td>
      <td>${esc(testScore(j.test_metrics))}</td>
      <td class="muted">${esc(when(j.created_at))}</td>
    </tr>`).join("");
  view.innerHTML = `
    <h1>Jobs <span class="muted">(${page.total}, newest first)</span></h1>
    <table id="jobs"><thead><tr><th>job</th><th>status</th><th>progress</th><th>best value</th><th>test score</th><th>created</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="6" class="muted">No jobs yet: <a href="#/submit">submit one</a>.</td></tr>`}</tbody></table>`;
  view.querySelectorAll("tr.job-row").forEach((tr) => tr.addEventListener("click", (ev) => {
    if (ev.target.tagName !== "A") location.hash = `#/jobs/${tr.dataset.id}`;
  }));
  schedule(() => showJobs(token), 3000);
}

// -------------------------------------------------------------------------------------------- job page
const PLOTS = [
  { kind: "intermediate", title: "Learning curves", wide: true },
  { kind: "history", title: "Optimisation history" },
  { kind: "importance", title: "Hyperparameter importance" },
];

async function drawPlot(jobId, kind, token) {
  const el = document.getElementById(`plot-${kind}`);
  try {
    const fig = await api(`/jobs/${jobId}/plots/${kind}`);
    if (token !== viewToken || !el) return;
    const msg = el.querySelector(".msg"); if (msg) msg.remove();
    fig.layout = { ...fig.layout, autosize: true, margin: { l: 60, r: 20, t: 50, b: 50 } };
    await Plotly.react(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
    el.dataset.traces = String(fig.data.length);
  } catch (e) {
    if (token !== viewToken || !el) return;
    el.innerHTML = `<div class="msg">${esc(e.message)}</div>`;
  }
}

function trialRows(items) {
  return items.map((t) => `
    <tr><td class="num">${t.number}</td><td>${statusBadge(t.state)}</td><td class="num">${fmt(t.value)}</td>
      <td class="num">${fmt(t.best_epoch)}</td><td class="num">${t.duration_s != null ? t.duration_s.toFixed(1) + " s" : "–"}</td>
      <td><code>${esc(Object.entries(t.params).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v, 3) : v}`).join(", "))}</code></td>
      <td class="reason">${esc(t.fail_reason || (t.interrupted ? "interrupted" : ""))}</td></tr>`).join("");
}

function dl(obj) {
  if (!obj) return `<p class="muted">–</p>`;
  return `<dl>${Object.entries(obj).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${typeof v === "object" && v !== null ? esc(JSON.stringify(v)) : fmt(v)}</dd>`).join("")}</dl>`;
}

async function downloadModel(jobId) {
  try {
    const key = localStorage.getItem(KEY);
    const res = await fetch(`/jobs/${jobId}/model`, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
    if (!res.ok) throw new Error(`model: ${res.status} ${res.statusText}`);
    const url = URL.createObjectURL(await res.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: `${jobId}.pt` });
    a.click(); URL.revokeObjectURL(url);
  } catch (e) { alert(e.message); }
}

async function showJob(jobId, token, first = true) {
  const view = document.getElementById("view");
  let job, trials;
  try {
    [job, trials] = await Promise.all([api(`/jobs/${jobId}`), api(`/jobs/${jobId}/trials?limit=500`)]);
  } catch (e) {
    if (token === viewToken) view.innerHTML = `<p class="errors">${esc(e.message)}</p><p><a href="#/">All jobs</a></p>`;
    return;
  }
  if (token !== viewToken) return;
  if (first) {
    view.innerHTML = `
      <p><a href="#/">← all jobs</a></p>
      <h1 id="job-title"></h1>
      <div class="actions">
        <span id="job-status"></span>
        <button id="cancel" class="danger">Cancel</button>
        <button id="download">Download model</button>
        <a class="button" href="/jobs/${esc(jobId)}/plots/parallel_coordinate?format=html" target="_blank">More plots</a>
      </div>
      <div id="job-progress"></div>
      <div class="cards">
        <div class="card"><h3>Progress</h3><div id="card-progress"></div></div>
        <div class="card"><h3>Best trial</h3><div id="card-best"></div></div>
        <div class="card"><h3>Test metrics (scored once)</h3><div id="card-test"></div></div>
      </div>
      <h2>Plots</h2>
      <div class="plots">${PLOTS.map((p) => `<div class="plot${p.wide ? " wide" : ""}" id="plot-${p.kind}"><div class="msg">${esc(p.title)}: loading…</div></div>`).join("")}</div>
      <h2>Trials <span class="muted" id="trial-count"></span></h2>
      <table id="trials"><thead><tr><th>#</th><th>state</th><th>value</th><th>best epoch</th><th>duration</th><th>params</th><th>failure cause</th></tr></thead><tbody></tbody></table>`;
    document.getElementById("cancel").addEventListener("click", async () => {
      try { await api(`/jobs/${jobId}/cancel`, { method: "POST" }); showJob(jobId, token, false); } catch (e) { alert(e.message); }
    });
    document.getElementById("download").addEventListener("click", () => downloadModel(jobId));
  }
  const p = job.progress || {};
  document.getElementById("job-title").innerHTML = `${esc(job.name)} <span class="muted"><code>${esc(job.id)}</code></span>`;
  document.getElementById("job-status").innerHTML = statusBadge(job.status) + (job.error ? ` <span class="reason">${esc(job.error)}</span>` : "");
  document.getElementById("job-progress").innerHTML = progressBar(p, job.n_trials, true);
  document.getElementById("card-progress").innerHTML = dl({
    "trials": `${p.counted || 0} / ${job.n_trials}`, complete: p.complete, pruned: p.pruned, failed: (p.failed || 0) + (p.config_failed || 0),
    running: p.running, started: when(job.started_at), finished: when(job.finished_at) });
  const bt = job.best_trial;
  document.getElementById("card-best").innerHTML = bt ? dl({ trial: bt.number, value: bt.value, "best epoch": bt.best_epoch, ...bt.params }) : `<p class="muted">no complete trial yet</p>`;
  document.getElementById("card-test").innerHTML = job.test_metrics ? dl(job.test_metrics) : `<p class="muted">after the search</p>`;
  document.getElementById("cancel").disabled = !ACTIVE.has(job.status);
  document.getElementById("download").disabled = job.status !== "succeeded";
  document.getElementById("trial-count").textContent = `(${trials.total}${trials.total > trials.items.length ? `, first ${trials.items.length} shown` : ""})`;
  document.querySelector("#trials tbody").innerHTML = trialRows(trials.items) || `<tr><td colspan="7" class="muted">no trials yet</td></tr>`;
  const active = ACTIVE.has(job.status);
  const view_ = document.getElementById("view");
  const prev = view_.dataset.status;
  view_.dataset.status = job.status;
  // Plots: on first show, every few polls while the job runs, and once more when it has just finished.
  const tick = Number(view_.dataset.tick || 0) + 1;
  view_.dataset.tick = String(tick);
  if (first || (active && tick % 3 === 0) || (prev && ACTIVE.has(prev) && !active)) {
    for (const pl of PLOTS) drawPlot(jobId, pl.kind, token);
  }
  if (active) schedule(() => showJob(jobId, token, false), 1500);
}

// ------------------------------------------------------------------------------------------ submit box
function showSubmit(token) {
  const view = document.getElementById("view");
  view.innerHTML = `
    <h1>Submit a job</h1>
    <p class="muted">Paste a job spec (JSON, as in <code>examples/</code>); it is sent to <code>POST /jobs</code>.</p>
    <textarea id="spec">${esc(JSON.stringify(EXAMPLE, null, 2))}</textarea>
    <div class="actions"><button class="primary" id="submit">Submit</button></div>
    <div class="errors" id="errors"></div>`;
  document.getElementById("submit").addEventListener("click", async () => {
    const errors = document.getElementById("errors");
    errors.textContent = "";
    let spec;
    try { spec = JSON.parse(document.getElementById("spec").value); } catch (e) { errors.textContent = `not JSON: ${e.message}`; return; }
    try {
      const job = await api("/jobs", { method: "POST", json: spec });
      if (token === viewToken) location.hash = `#/jobs/${job.id}`;
    } catch (e) { errors.textContent = e.message; }
  });
}

// -------------------------------------------------------------------------------------------- routing
function route() {
  clearTimeout(timer);
  const token = ++viewToken;
  const view = document.getElementById("view");
  delete view.dataset.status; delete view.dataset.tick;
  const m = location.hash.match(/^#\/jobs\/([^/?#]+)/);
  if (m) return showJob(decodeURIComponent(m[1]), token);
  if (location.hash === "#/submit") return showSubmit(token);
  return showJobs(token);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("api-key");
  input.value = localStorage.getItem(KEY) || "";
  input.addEventListener("change", () => {
    if (input.value) localStorage.setItem(KEY, input.value); else localStorage.removeItem(KEY);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
