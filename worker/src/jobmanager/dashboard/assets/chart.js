// Hand-rolled SVG charts for the streamjob pages (no library, nothing fetched).
// SJChart.line(container, points, options) draws a time series; SJChart.bars(container, labels,
// values, options) a bar chart. Both replace the container's content and size to its width.
"use strict";
const SJChart = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // A round upper bound and its tick step for values up to `max`.
  function niceScale(max, ticks) {
    if (!(max > 0)) return { top: 1, step: 0.25 };
    const raw = max / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
    return { top: Math.ceil(max / step) * step, step };
  }

  function fmt(v) {
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function frame(container, height) {
    const width = Math.max(280, Math.floor(container.clientWidth || 600));
    const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    container.replaceChildren(svg);
    return { svg, width, height };
  }

  function yAxis(svg, pad, width, height, scale) {
    for (let v = 0; v <= scale.top + 1e-9; v += scale.step) {
      const y = height - pad.bottom - (v / scale.top) * (height - pad.top - pad.bottom);
      svg.appendChild(node("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid-line" }));
      svg.appendChild(node("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" }, fmt(v)));
    }
  }

  // points: [{t: epoch ms, v: number}], oldest first. options: {windowMs, label}.
  function line(container, points, options) {
    const opts = Object.assign({ windowMs: 15 * 60 * 1000, height: 220 }, options);
    const { svg, width, height } = frame(container, opts.height);
    const pad = { left: 48, right: 12, top: 12, bottom: 26 };
    svg.setAttribute("data-points", String(points.length));
    const end = points.length ? points[points.length - 1].t : Date.now();
    const start = end - opts.windowMs;
    const scale = niceScale(Math.max(0, ...points.map((p) => p.v)), 4);
    yAxis(svg, pad, width, height, scale);
    const x = (t) => pad.left + ((t - start) / opts.windowMs) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / scale.top) * (height - pad.top - pad.bottom);
    for (let m = 0; m <= 15; m += 5) {
      const t = start + m * 60000;
      const label = new Date(t).toTimeString().slice(0, 5);
      svg.appendChild(node("text", { x: x(t), y: height - 8, "text-anchor": "middle" }, label));
    }
    if (points.length === 0) {
      svg.appendChild(node("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "waiting for samples…"));
      return svg;
    }
    const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    const first = points[0], last = points[points.length - 1];
    svg.appendChild(node("path", { d: `${path}L${x(last.t).toFixed(1)},${y(0)}L${x(first.t).toFixed(1)},${y(0)}Z`, class: "area" }));
    svg.appendChild(node("path", { d: path, class: "line" }));
    svg.appendChild(node("circle", { cx: x(last.t), cy: y(last.v), r: 3.5, fill: "currentColor", class: "last" }));
    return svg;
  }

  // Axis labels under bars `slot` px apart, laid out so that no two overlap: on one line when
  // they fit; else wrapped into at most MAX_LINES lines (state names like "夜间屏蔽(次日早上9点发送)"
  // are wider than a bar's slot at laptop widths, and ran into their neighbours); else, when a
  // slot is too narrow even for one word (60 minute labels on a phone), only every k-th label.
  // Returns {lines: [[line, …] per label], every: k}.
  const MAX_LINES = 3;
  const LINE_HEIGHT = 13;
  function layoutLabels(svg, labels, slot) {
    const probe = node("text", { class: "axis-label", visibility: "hidden" });
    svg.appendChild(probe);
    // Measured in the page's font; estimated when the chart is not rendered (a hidden card).
    const width = (s) => {
      probe.textContent = s;
      return probe.getComputedTextLength() || [...s].reduce((w, c) => w + (c.charCodeAt(0) > 0x2e80 ? 11 : 6.5), 0);
    };
    const room = slot - 6;
    try {
      if (labels.every((l) => width(l) <= room)) return { lines: labels.map((l) => [l]), every: 1 };
      const wrapped = labels.map((l) => wrap(l, room, width));
      if (wrapped.every((w) => w)) return { lines: wrapped, every: 1 };
      const widest = Math.max(...labels.map(width));
      return { lines: labels.map((l) => [l]), every: Math.ceil((widest + 6) / slot) };
    } finally {
      probe.remove();
    }
  }

  // Greedy line breaking between CJK characters and at spaces, never inside a run of Latin
  // letters or digits; the last line gets an ellipsis if MAX_LINES are not enough. `null`
  // when a single unbreakable piece is wider than `room`.
  function wrap(label, room, width) {
    const pieces = [];
    for (const p of label.match(/[A-Za-z0-9_.:%+-]+\s*|\s+|./gu) || [label]) {
      // A closing bracket or comma never starts a line, an opening bracket never ends one.
      if (pieces.length && (/^[)）,，。、：:]/u.test(p) || /[(（]$/u.test(pieces[pieces.length - 1]))) {
        pieces[pieces.length - 1] += p;
      } else {
        pieces.push(p);
      }
    }
    const lines = [];
    let line = "";
    for (const piece of pieces) {
      if (width(piece.trimEnd()) > room) return null;
      if (line && width((line + piece).trimEnd()) > room) {
        lines.push(line.trimEnd());
        line = piece.trimStart();
      } else {
        line += piece;
      }
    }
    if (line.trim()) lines.push(line.trimEnd());
    if (lines.length <= MAX_LINES) return lines;
    let last = lines[MAX_LINES - 1];
    while (last && width(last + "…") > room) last = last.slice(0, -1);
    return lines.slice(0, MAX_LINES - 1).concat([last + "…"]);
  }

  // labels[i] names bar i; values[i] its height. options: {keys: [] (data-state per bar),
  // classes: [] (extra class per bar), attrs: [] (extra attributes per bar), empty: text}.
  function bars(container, labels, values, options) {
    const opts = Object.assign({ height: 260, keys: [], classes: [], attrs: [], empty: "no counts for this template" }, options);
    const { svg, width, height } = frame(container, opts.height);
    const pad = { left: 48, right: 12, top: 22, bottom: 48 };
    svg.setAttribute("data-bars", String(values.length));
    if (values.length === 0) {
      svg.appendChild(node("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, opts.empty));
      return svg;
    }
    const scale = niceScale(Math.max(...values), 4);
    yAxis(svg, pad, width, height, scale);
    const slot = (width - pad.left - pad.right) / values.length;
    const barWidth = Math.max(6, Math.min(56, slot * 0.6));
    const axis = layoutLabels(svg, labels, slot);
    values.forEach((v, i) => {
      const h = (v / scale.top) * (height - pad.top - pad.bottom);
      const cx = pad.left + slot * (i + 0.5);
      const bar = node("rect", Object.assign({ x: cx - barWidth / 2, y: height - pad.bottom - h, width: barWidth, height: h,
        class: `bar ${opts.classes[i] || ""}`.trim() }, opts.attrs[i] || {}));
      bar.setAttribute("data-count", String(v));
      bar.setAttribute("data-label", labels[i]);
      if (opts.keys[i] !== undefined) bar.setAttribute("data-state", String(opts.keys[i]));
      bar.appendChild(node("title", {}, `${labels[i]}: ${v}`));
      svg.appendChild(bar);
      svg.appendChild(node("text", { x: cx, y: height - pad.bottom - h - 5, "text-anchor": "middle", class: "bar-label" }, fmt(v)));
      if (i % axis.every !== 0) return;
      const label = node("text", { x: cx, y: height - pad.bottom + 16, "text-anchor": "middle", class: "axis-label",
        "data-label": labels[i] });
      axis.lines[i].forEach((text, n) => label.appendChild(node("tspan", { x: cx, dy: n ? LINE_HEIGHT : 0 }, text)));
      svg.appendChild(label);
    });
    return svg;
  }

  return { line, bars, fmt };
})();
