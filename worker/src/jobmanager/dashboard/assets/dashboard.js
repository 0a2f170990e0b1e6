// The streamjob dashboard: polls GET /dashboard/state every two seconds and renders it.
// Every value goes into the page as text (textContent), never as HTML.
"use strict";
(() => {
  const POLL_MS = 2000;
  let jobId = null;
  let latest = null;

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) n.setAttribute(k, String(v));
    }
    for (const c of children) n.append(c instanceof Node ? c : String(c ?? ""));
    return n;
  }
  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const rate = (v) => (v ? SJChart.fmt(Math.round(v * 10) / 10) : "0");

  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }
  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }
  // An event time (epoch ms) as local wall-clock time; the date only when it is not today.
  function eventTime(ms) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    const time = d.toTimeString().slice(0, 8);
    return d.toDateString() === new Date().toDateString() ? time : `${d.toISOString().slice(0, 10)} ${time}`;
  }
  function fillRows(table, rows) {
    $(table).querySelector("tbody").replaceChildren(...rows);
  }

  function renderJob(s) {
    const o = s.overview;
    jobId = o.jobId;
    $("job-name").textContent = o.jobId;
    document.title = `streamjob · ${o.jobId}`;
    const state = $("job-state");
    state.textContent = o.state;
    state.className = `badge ${o.state}`;
    $("uptime").textContent = duration(s.nowMs - s.startedAtMs);
    $("topic").textContent = o.topic;
    $("partition-count").textContent = num(o.partitionCount);
    $("eps").textContent = rate(o.eventsPerSecond);
    $("total-lag").textContent = num(o.totalLag);
    const r = o.restoredFrom || {};
    $("restored").textContent = r.kind === "startingOffsets" ? "starting offsets" : `${r.kind} ${r.id}`;
    $("last-checkpoint").textContent = o.lastCheckpoint
      ? `#${o.lastCheckpoint.id}, ${duration(s.nowMs - o.lastCheckpoint.createdAtMs)} ago` : "none yet";
    const w = o.watermark;
    $("watermark").textContent = w ? eventTime(w.watermarkMs) : "series off";
    $("final-before").textContent = w ? eventTime(w.finalBeforeMs) : "–";
    renderRedis(s);
  }

  // The Redis topology: mode, shards and migrating slots; the primaries and the read's age on hover.
  function renderRedis(s) {
    const r = s.overview.redis;
    const cell = $("redis");
    if (!r) {
      cell.textContent = "not reported yet";
      cell.removeAttribute("title");
      return;
    }
    const parts = r.mode === "cluster"
      ? [`cluster · ${r.shards} shard${r.shards === 1 ? "" : "s"}`, r.migratingSlots ? `${num(r.migratingSlots)} slots migrating` : "no slot migrating"]
      : [`${r.mode} · ${r.primaries.join(", ")}`];
    cell.textContent = parts.join(" · ");
    cell.className = r.migratingSlots ? "migrating" : "";
    cell.title = `primaries: ${r.primaries.join(", ")}; read ${duration(s.nowMs - r.lastRefreshMs)} ago`;
  }

  function renderPartitions(s) {
    fillRows("partitions", s.overview.partitions.map((p) => el("tr",
      { class: p.retrying ? "retrying" : undefined, "data-partition": p.partition },
      el("td", {}, p.partition), el("td", {}, p.state + (p.retrying ? " · retrying" : "")),
      el("td", {}, p.owner ?? "–"), el("td", { class: "num" }, num(p.committedOffset)),
      el("td", { class: "num" }, num(p.highWatermark)), el("td", { class: "num" }, num(p.lag)),
      el("td", { class: "num" }, rate(p.eventsPerSecond)),
      el("td", { class: "num", "data-watermark": p.watermarkMs }, eventTime(p.watermarkMs) + (p.idle ? " · idle" : "")))));
    fillRows("taskmanagers", s.overview.taskmanagers.map((t) => el("tr", {},
      el("td", {}, t.id), el("td", {}, t.revision ?? "–"),
      el("td", {}, t.heldBack ? `held back: ${t.heldBack}`
        : (t.partitions.length ? t.partitions.join(", ") : (t.idle ? "idle" : "–"))),
      el("td", { class: "num" }, `${duration(t.lastHeartbeatMsAgo)} ago`))));
  }

  function snapshotRows(list, now) {
    if (!list.length) return [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none yet"))];
    return list.map((x) => el("tr", { "data-id": x.id },
      el("td", {}, x.id), el("td", { class: "path" }, x.path),
      el("td", { class: "num" }, bytes(x.sizeBytes)), el("td", { class: "num" }, duration(now - x.createdAtMs))));
  }

  function renderSide(s) {
    $("dlq-total").textContent = num(s.deadLetters.total);
    const kinds = Object.entries(s.deadLetters.byKind);
    fillRows("dlq", kinds.length ? kinds.map(([k, n]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(n))))
      : [el("tr", {}, el("td", { colspan: 2, class: "muted" }, "none"))]);
    fillRows("savepoints", snapshotRows(s.savepoints, s.nowMs));
    fillRows("checkpoints", snapshotRows(s.checkpoints, s.nowMs));
    $("api-token").hidden = !s.tokenRequired;
    const problems = s.problems.map((p) => el("li", { class: p.severity },
      el("span", { class: "sev" }, p.severity), el("span", { class: "when" }, new Date(p.atMs).toLocaleTimeString()),
      el("span", {}, p.partition !== undefined ? `partition ${p.partition}` : "job"),
      el("span", { class: "muted" }, p.owner ?? ""), el("span", {}, `${p.source}: ${p.message}`)));
    for (const e of s.errors || []) problems.unshift(el("li", { class: "warning" }, el("span", { class: "sev" }, "error"), el("span", {}, e)));
    $("problems").replaceChildren(...(problems.length ? problems : [el("li", { class: "muted" }, "nothing to report")]));
  }

  function renderChart(s) {
    SJChart.line($("throughput"), s.throughput.map((p) => ({ t: p.atMs, v: p.eventsPerSecond })));
  }

  async function poll() {
    try {
      const response = await fetch("/dashboard/state", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      latest = await response.json();
      renderJob(latest);
      renderPartitions(latest);
      renderSide(latest);
      renderChart(latest);
      $("conn").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("conn").classList.remove("stale");
    } catch (e) {
      $("conn").textContent = `jobmanager unreachable (${e.message}); retrying`;
      $("conn").classList.add("stale");
    }
  }

  async function pollOperation(requestId, token, result) {
    for (let i = 0; i < 120; i++) {
      await new Promise((r) => setTimeout(r, 500));
      const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/savepoints/${encodeURIComponent(requestId)}`, { cache: "no-store" });
      const op = await response.json();
      if (op.status === "COMPLETED") {
        result.textContent = `savepoint written: ${op.location}`;
        result.className = "success";
        return poll();
      }
      if (op.status === "FAILED") {
        result.textContent = `savepoint failed: ${op.failureCause}`;
        result.className = "error";
        return;
      }
    }
    result.textContent = "savepoint still in progress; see the list below";
  }

  async function triggerSavepoint(event) {
    event.preventDefault();
    const button = $("savepoint-trigger");
    const result = $("savepoint-result");
    const token = $("api-token").value.trim();
    if (token) sessionStorage.setItem("streamjob-token", token);
    button.disabled = true;
    result.className = "muted";
    result.textContent = "triggering…";
    try {
      const headers = { "content-type": "application/json" };
      if (token) headers.authorization = `Bearer ${token}`;
      const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/savepoints`, { method: "POST", headers, body: "{}" });
      const body = await response.json().catch(() => ({}));
      if (response.status !== 202) {
        result.textContent = `refused (${response.status}): ${(body.errors || []).join("; ")}`;
        result.className = "error";
        return;
      }
      result.textContent = `in progress (request ${body.requestId})…`;
      await pollOperation(body.requestId, token, result);
    } catch (e) {
      result.textContent = `failed: ${e.message}`;
      result.className = "error";
    } finally {
      button.disabled = false;
    }
  }

  $("api-token").value = sessionStorage.getItem("streamjob-token") || "";
  $("savepoint-form").addEventListener("submit", triggerSavepoint);
  window.addEventListener("resize", () => latest && renderChart(latest));
  poll();
  setInterval(poll, POLL_MS);
})();
