// The Trace page: austin-web's /trace/* answers for a receiver, a message or a template.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined) n.setAttribute(k, String(v));
    for (const c of children) n.append(c instanceof Node ? c : String(c ?? ""));
    return n;
  }
  const FIELD = { user: "receiver", message: "messageId", messageTemplate: "businessId" };

  async function call(kind, value) {
    const response = await fetch(`/trace/${kind}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ [FIELD[kind]]: value }),
    });
    const body = await response.json().catch(() => ({ msg: `HTTP ${response.status}` }));
    if (!response.ok || body.status !== "0") throw new Error(body.msg || `HTTP ${response.status}`);
    return body.data;
  }

  // Windows shown at most: the newest ones (a day has up to 1,440 minutes).
  const SHOWN_WINDOWS = 60;
  let jobId = null;

  async function getJson(path) {
    const response = await fetch(path);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.errors && body.errors[0]) || `HTTP ${response.status}`);
    return body;
  }

  // The template's event-time series (GET /jobs/{id}/series): one bar per window, the sum over
  // states; final windows solid, open ones pale.
  async function renderSeries(businessId) {
    const card = $("series-card");
    const note = $("series-note");
    card.hidden = false;
    note.removeAttribute("data-done");
    try {
      if (!jobId) jobId = (await getJson("/jobs")).jobs[0].id;
      const s = await getJson(`/jobs/${encodeURIComponent(jobId)}/series?businessId=${encodeURIComponent(businessId)}`);
      const windows = s.windows.slice(-SHOWN_WINDOWS);
      const total = (counts) => Object.values(counts).reduce((a, b) => a + b, 0);
      const time = (ms) => new Date(ms).toTimeString().slice(0, 5);
      SJChart.bars($("series-chart"), windows.map((w) => time(w.startMs)), windows.map((w) => total(w.counts)), {
        classes: windows.map((w) => (w.final ? "final" : "open")),
        attrs: windows.map((w) => ({ "data-start": w.startMs, "data-final": w.final })),
        empty: "no per-minute counts for this template",
      });
      const late = total(s.late), skewed = total(s.skewed);
      const shown = s.windows.length > SHOWN_WINDOWS ? `the newest ${SHOWN_WINDOWS} of ${s.windows.length} windows; ` : "";
      const fin = s.finalBeforeMs ? `final up to ${new Date(s.finalBeforeMs).toTimeString().slice(0, 8)}` : "no window final yet";
      note.textContent = `${shown}${fin}; late ${late.toLocaleString("en-US")}, absurd timestamps ${skewed.toLocaleString("en-US")}`;
      note.setAttribute("data-late", late);
      note.setAttribute("data-skewed", skewed);
      note.setAttribute("data-done", "series");
    } catch (e) {
      $("series-chart").replaceChildren();
      note.textContent = `per-minute series unavailable: ${e.message}`;
      note.setAttribute("data-done", "error");
    }
  }

  function renderTimeline(items) {
    $("timeline-card").hidden = false;
    $("template-card").hidden = true;
    $("series-card").hidden = true;
    const list = items.map((item) => {
      const link = el("a", { href: `#template=${item.businessId}` }, item.businessId);
      link.addEventListener("click", (e) => { e.preventDefault(); search("messageTemplate", item.businessId, true); });
      const chain = el("div", { class: "chain" });
      item.events.forEach((ev, i) => {
        if (i) chain.append(el("span", { class: "arrow" }, "→"));
        chain.append(el("span", { class: `step s${ev.state}`, "data-state": ev.state, title: ev.stateName },
          el("span", { class: "t" }, ev.time), ev.description));
      });
      return el("li", { class: "item", "data-business-id": item.businessId },
        el("div", { class: "head" }, el("b", {}, `template ${item.title}`), link,
          el("span", { class: "muted" }, `${item.events.length} event${item.events.length === 1 ? "" : "s"}`)),
        chain);
    });
    $("timeline").replaceChildren(...list);
  }

  function renderTemplate(chart) {
    $("template-card").hidden = false;
    $("template-title").textContent = chart.title.text;
    SJChart.bars($("template-chart"), chart.xAxis.data, chart.series[0].data, { keys: chart.states });
    renderSeries(chart.businessId);
  }

  // keepTimeline: a template opened from the timeline shows under it.
  async function search(kind, value, keepTimeline) {
    if (!keepTimeline) {
      $("trace-kind").value = kind;
      $("trace-query").value = value;
    }
    const status = $("trace-status");
    status.className = "muted";
    status.textContent = "searching…";
    try {
      const data = await call(kind, value);
      if (kind === "messageTemplate") {
        if (!keepTimeline) $("timeline-card").hidden = true;
        renderTemplate(data);
        const total = data.series[0].data.reduce((a, b) => a + b, 0);
        status.textContent = `businessId ${data.businessId}: ${total.toLocaleString("en-US")} receivers counted`;
      } else {
        renderTimeline(data.items);
        status.textContent = data.items.length ? `${data.items.length} send${data.items.length === 1 ? "" : "s"} found`
          : `nothing in Redis for this ${FIELD[kind]} (user lists hold today's events; message lists 3 days)`;
      }
      status.setAttribute("data-done", kind);
      if (!keepTimeline) history.replaceState(null, "", `#${kind}=${encodeURIComponent(value)}`);
    } catch (e) {
      status.textContent = e.message;
      status.className = "error";
      status.setAttribute("data-done", "error");
    }
  }

  $("trace-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("trace-kind").value, $("trace-query").value.trim());
  });
  const m = /^#(user|message|messageTemplate)=(.+)$/.exec(location.hash);
  if (m) search(m[1], decodeURIComponent(m[2]));
})();
