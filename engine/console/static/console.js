// engine console: the live runs list (Server-Sent Events) and its filters. Nothing else
// runs in the page; every page is complete without this script.
"use strict";

(function () {
  const table = document.getElementById("runs");
  if (!table || !document.getElementById("filters")) {
    const all = document.getElementById("all");
    if (all) all.addEventListener("change", () => {
      document.querySelectorAll('input[name="run"]').forEach((box) => { box.checked = all.checked; });
    });
    return;
  }
  const base = document.body.dataset.base;
  const body = table.tBodies[0];
  const template = document.getElementById("row-template");
  const status = document.getElementById("f-status");
  const model = document.getElementById("f-model");
  const text = document.getElementById("f-text");
  const count = document.getElementById("count");
  const live = document.getElementById("live");
  const MAX_ROWS = 500;

  function matches(row) {
    const s = Number(row.dataset.status);
    const wanted = status.value;
    if (wanted === "ok" && row.dataset.failed === "yes") return false;
    if (wanted === "failed" && row.dataset.failed !== "yes") return false;
    if (wanted === "4xx" && !(s >= 400 && s < 500)) return false;
    if (wanted === "5xx" && !(s >= 500)) return false;
    const m = model.value.trim().toLowerCase();
    if (m && !row.dataset.model.toLowerCase().includes(m)) return false;
    const t = text.value.trim().toLowerCase();
    if (t && !row.dataset.text.toLowerCase().includes(t)) return false;
    return true;
  }

  function applyFilters() {
    let shown = 0;
    for (const row of body.rows) {
      const ok = matches(row);
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = `${shown} of ${body.rows.length} shown`;
  }

  function fmt(value) {
    if (typeof value === "number" && !Number.isInteger(value)) return value < 1 ? String(Number(value.toPrecision(6))) : value.toFixed(2);
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function row(run) {
    const tr = template.content.firstElementChild.cloneNode(true);
    const cell = (name) => tr.querySelector(`[data-f="${name}"]`);
    const facts = run.facts || {};
    tr.dataset.key = run.key;
    tr.dataset.status = run.status;
    tr.dataset.failed = run.failed ? "yes" : "no";
    tr.dataset.model = `${run.requested || ""} ${facts.model || ""}`;
    tr.dataset.text = [run.request_id, run.pipeline, run.outcome, ...Object.values(facts).map(fmt)].join(" ");
    tr.className = `run ${run.running ? "running" : run.failed ? "failed" : "ok"} fresh`;
    cell("time").textContent = run.time;
    const link = cell("link");
    link.textContent = run.request_id;
    link.href = `${base}/runs/${encodeURIComponent(run.key)}`;
    cell("pipeline").textContent = run.pipeline;
    cell("model").textContent = [run.requested, facts.model].filter(Boolean).join(" → ");
    cell("fallback").textContent = facts.fallback || "";
    cell("status").textContent = run.running ? "…" : run.status;
    cell("outcome").textContent = run.outcome;
    if (run.failed_steps && run.failed_steps.length) {
      const at = document.createElement("span");
      at.className = "muted";
      at.textContent = ` at ${run.failed_steps.join(", ")}`;
      cell("outcome").appendChild(at);
    }
    cell("duration").textContent = run.duration_ms == null ? "" : `${Number(run.duration_ms).toLocaleString(undefined, {minimumFractionDigits: 1, maximumFractionDigits: 1})} ms`;
    for (const [k, v] of Object.entries(facts)) {
      if (!k.includes("token") && !k.includes("cost")) continue;
      const span = document.createElement("span");
      span.textContent = `${k} ${fmt(v)}`;
      cell("usage").append(span, " ");
    }
    return tr;
  }

  function connect() {
    // The server ends each response after a few seconds; EventSource reconnects by itself
    // and sends Last-Event-ID, so no run is missed in between.
    const source = new EventSource(`${base}/events?after=${table.dataset.last}`);
    source.addEventListener("open", () => live.classList.add("on"));
    source.addEventListener("error", () => live.classList.remove("on"));
    source.addEventListener("run", (event) => {
      // A run is sent when it starts (running) and again when it ends: the second replaces
      // the first row in place.
      const run = JSON.parse(event.data);
      table.dataset.last = run.version;
      const tr = row(run);
      tr.hidden = !matches(tr);
      const old = body.querySelector(`tr[data-key="${CSS.escape(run.key)}"]`);
      if (old) old.replaceWith(tr);
      else body.insertBefore(tr, body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
      const empty = document.getElementById("empty");
      if (empty) empty.remove();
      applyFilters();
    });
  }

  for (const input of [status, model, text]) input.addEventListener("input", applyFilters);
  document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
  applyFilters();
  connect();
})();
