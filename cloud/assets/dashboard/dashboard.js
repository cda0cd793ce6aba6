// Empathic Credit System dashboard. No libraries and no external resources: the charts are SVG
// drawn here. The token is kept in this tab's sessionStorage only and sent as a bearer header;
// an operator token shows the population view, a person's token their own view.
"use strict";

(function () {
  const POLL_MS = 5000;
  const TOKEN_KEY = "ecs-dashboard-token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = { valence: "#2e9e6b", stress: "#d64545", arousal: "#e59f1c", bar: "#3559e0",
    barSoft: "#9db0f2", p95: "#8e44ad", suppressed: "#c9ced8" };
  const REASONS = {
    probability_of_default_too_high: "Risk too high",
    no_income_history: "No income history",
    irregular_income: "Irregular income (limit halved)",
    vulnerability_cap: "Signs of distress (limit halved)",
    emotional_data_not_used: "Emotional data not used",
    limit_below_minimum: "Limit below the minimum",
    limit_capped_at_maximum: "Limit capped at the maximum",
    rate_capped_at_maximum: "Rate capped at the maximum",
    long_term_eligible: "Long-term line",
  };
  const STAGES = { assessed: "Assessed", approved: "Approved", accepted: "Accepted",
    applied: "Applied", notified: "Phone notified" };

  let timer = null;
  let busy = false;
  let patterns = 0;

  const byId = (id) => document.getElementById(id);
  const chart = (name) => document.querySelector('[data-chart="' + name + '"]');

  class AuthError extends Error {}

  // ---- formatting -------------------------------------------------------------------------

  const brl = new Intl.NumberFormat("pt-BR", { style: "currency", currency: "BRL",
    maximumFractionDigits: 0 });
  const money = (cents) => brl.format(cents / 100);
  const compactMoney = (cents) => {
    const reais = cents / 100;
    return reais >= 1000 ? "R$ " + (reais / 1000).toLocaleString("en", { maximumFractionDigits: 1 }) + "k"
      : "R$ " + reais.toFixed(0);
  };
  const pct = (bps) => (bps / 100).toLocaleString("en", { maximumFractionDigits: 1 }) + " %";
  const two = (n) => String(n).padStart(2, "0");
  const hourLabel = (d) => two(d.getHours()) + ":00";
  const minuteLabel = (d) => two(d.getHours()) + ":" + two(d.getMinutes());
  const dateTime = (d) => d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  const reasonText = (code) => REASONS[code] || code.replace(/_/g, " ");
  const num = (n) => n.toLocaleString("en");
  const duration = (ms) => {
    const short = (n) => n.toLocaleString("en", { maximumFractionDigits: 1 });
    if (ms >= 3600000) return short(ms / 3600000) + " h";
    if (ms >= 60000) return short(ms / 60000) + " min";
    if (ms >= 1000) return short(ms / 1000) + " s";
    return Math.round(ms) + " ms";
  };

  // ---- DOM helpers ------------------------------------------------------------------------

  function html(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /// The chart's width in CSS pixels, so that its text keeps one size whatever the card's width.
  function widthOf(container, fallback) {
    return Math.max(320, Math.round(container.clientWidth || fallback));
  }

  function canvas(width, height) {
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img" });
    const id = "hatch-" + (++patterns);
    const defs = svg("defs");
    const pattern = svg("pattern", { id: id, width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" });
    pattern.appendChild(svg("rect", { width: 2, height: 6, fill: COLORS.suppressed }));
    defs.appendChild(pattern);
    root.appendChild(defs);
    return { root: root, hatch: "url(#" + id + ")" };
  }

  /// Replaces a chart's content and records how many data points it shows (for tests, too).
  function mount(container, nodes, points) {
    container.replaceChildren(...nodes);
    container.dataset.points = String(points);
    container.dataset.state = "ready";
  }

  function legend(items) {
    const box = html("div", { class: "legend" });
    for (const item of items) {
      const entry = html("span");
      const swatch = html("i", item.hatched ? { class: "hatched" } : {});
      if (item.color) swatch.style.background = item.color;
      entry.append(swatch, document.createTextNode(item.label));
      box.appendChild(entry);
    }
    return box;
  }

  function emptyMessage(root, width, height, text) {
    root.appendChild(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
      class: "empty" }, text));
  }

  /// Round bounds and about `count` ticks covering [lo, hi].
  function niceScale(lo, hi, count) {
    if (lo === hi) { lo -= 1; hi += 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const min = Math.floor(lo / step) * step;
    const max = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let t = min; t <= max + step / 2; t += step) ticks.push(Math.round(t * 1000) / 1000);
    return { min: min, max: max, ticks: ticks };
  }

  // ---- charts -----------------------------------------------------------------------------

  /// A time series: `xs` are Dates, each series has one value (or null) per x; `hidden[i]`
  /// marks buckets withheld for having fewer than k people (drawn hatched).
  function lineChart(container, o) {
    const W = widthOf(container, 720), H = 230, L = 58, R = 14, T = 12, B = 28;
    const { root, hatch } = canvas(W, H);
    const values = o.series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
    const n = o.xs.length;
    const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
    const lo = Math.min(o.floor !== undefined ? o.floor : Infinity, ...values);
    const hi = Math.max(o.ceiling !== undefined ? o.ceiling : -Infinity, ...values);
    const scale = niceScale(values.length ? lo : 0, values.length ? hi : 1, 4);
    const y = (v) => T + ((scale.max - v) * (H - T - B)) / (scale.max - scale.min);
    const axis = svg("g", { class: "axis" });
    for (const t of scale.ticks) {
      axis.appendChild(svg("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid-line" }));
      axis.appendChild(svg("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" },
        o.yFormat ? o.yFormat(t) : String(t)));
    }
    const every = Math.max(1, Math.ceil(n / 8));
    o.xs.forEach((d, i) => {
      if ((n - 1 - i) % every === 0) {
        const anchor = i === n - 1 && n > 1 ? "end" : "middle";
        axis.appendChild(svg("text", { x: x(i), y: H - 8, "text-anchor": anchor }, o.xLabel(d)));
      }
    });
    root.appendChild(axis);
    const slot = n > 1 ? (W - L - R) / (n - 1) : W - L - R;
    (o.hidden || []).forEach((hidden, i) => {
      if (!hidden) return;
      const band = svg("rect", { x: x(i) - slot / 2, y: T, width: slot, height: H - T - B,
        fill: hatch, opacity: 0.5 });
      band.appendChild(svg("title", {}, o.xLabel(o.xs[i]) + ": fewer than k people, hidden"));
      root.appendChild(band);
    });
    for (const s of o.series) {
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
        pen = true;
      });
      if (d) root.appendChild(svg("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2,
        "stroke-linejoin": "round", "stroke-linecap": "round" }));
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const dot = svg("circle", { cx: x(i), cy: y(v), r: n > 60 ? 1.5 : 2.6, fill: s.color });
        dot.appendChild(svg("title", {}, s.name + " at " + o.xLabel(o.xs[i]) + ": " +
          (o.yFormat ? o.yFormat(v) : v)));
        root.appendChild(dot);
      });
    }
    if (!values.length) emptyMessage(root, W, H, o.empty || "No data yet");
    const items = o.series.map((s) => ({ label: s.name, color: s.color }));
    if ((o.hidden || []).some(Boolean)) items.push({ label: "fewer than k people (hidden)", hatched: true });
    mount(container, [root, legend(items)], values.length);
  }

  /// Vertical bars, one per band; a withheld band is a short hatched bar marked "< k".
  function barChart(container, o) {
    const W = widthOf(container, 520), H = 230, L = 40, R = 10, T = 16, B = 40;
    const { root, hatch } = canvas(W, H);
    const shown = o.bars.filter((b) => b.value !== null && b.value !== undefined);
    const scale = niceScale(0, Math.max(1, ...shown.map((b) => b.value)), 4);
    const y = (v) => T + ((scale.max - v) * (H - T - B)) / (scale.max - scale.min);
    const slot = (W - L - R) / Math.max(1, o.bars.length);
    const axis = svg("g", { class: "axis" });
    for (const t of scale.ticks) {
      axis.appendChild(svg("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid-line" }));
      axis.appendChild(svg("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, num(t)));
    }
    root.appendChild(axis);
    o.bars.forEach((b, i) => {
      const x0 = L + i * slot + slot * 0.15;
      const w = slot * 0.7;
      root.appendChild(svg("text", { x: x0 + w / 2, y: H - B + 14, "text-anchor": "middle",
        class: "label" }, b.label));
      if (b.value === null || b.value === undefined) {
        const bar = svg("rect", { x: x0, y: H - B - 10, width: w, height: 10, fill: hatch });
        bar.appendChild(svg("title", {}, b.title + ": fewer than k people, hidden"));
        root.appendChild(bar);
        root.appendChild(svg("text", { x: x0 + w / 2, y: H - B - 14, "text-anchor": "middle",
          class: "label" }, "< k"));
        return;
      }
      const bar = svg("rect", { x: x0, y: y(b.value), width: w, height: H - B - y(b.value), rx: 3,
        fill: o.color || COLORS.bar });
      bar.appendChild(svg("title", {}, b.title + ": " + num(b.value) + " people"));
      root.appendChild(bar);
      root.appendChild(svg("text", { x: x0 + w / 2, y: y(b.value) - 4, "text-anchor": "middle",
        class: "value" }, num(b.value)));
    });
    if (o.axisTitle) {
      root.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle",
        class: "label" }, o.axisTitle));
    }
    if (!shown.length) emptyMessage(root, W, H - B, o.empty || "No band has k people yet");
    mount(container, [root], shown.length);
  }

  /// Horizontal bars with a label on the left and the value (and a note) on the right.
  function hbarChart(container, o) {
    const rowH = 26, W = widthOf(container, 520), T = 4;
    const L = Math.min(230, Math.round(W * 0.42)), R = 120;
    const rows = o.rows;
    const H = Math.max(rowH * rows.length + T * 2, 60);
    const { root, hatch } = canvas(W, H);
    const shown = rows.filter((r) => r.value !== null && r.value !== undefined);
    const max = Math.max(1, ...shown.map((r) => r.value));
    rows.forEach((r, i) => {
      const y0 = T + i * rowH;
      root.appendChild(svg("text", { x: L - 8, y: y0 + rowH / 2 + 4, "text-anchor": "end",
        class: "label" }, r.label));
      if (r.value === null || r.value === undefined) {
        const bar = svg("rect", { x: L, y: y0 + 6, width: 24, height: rowH - 12, fill: hatch });
        bar.appendChild(svg("title", {}, r.label + ": fewer than k people, hidden"));
        root.appendChild(bar);
        root.appendChild(svg("text", { x: L + 30, y: y0 + rowH / 2 + 4, class: "label" }, "< k people"));
        return;
      }
      const w = Math.max(2, (r.value * (W - L - R)) / max);
      const bar = svg("rect", { x: L, y: y0 + 5, width: w, height: rowH - 10, rx: 3,
        fill: r.color || COLORS.bar });
      bar.appendChild(svg("title", {}, r.label + ": " + num(r.value) + (o.unit ? " " + o.unit : "")));
      root.appendChild(bar);
      root.appendChild(svg("text", { x: L + w + 6, y: y0 + rowH / 2 + 4, class: "value" },
        num(r.value) + (o.unit ? " " + o.unit : "") + (r.note ? " · " + r.note : "")));
    });
    if (!rows.length) emptyMessage(root, W, H, o.empty || "No data yet");
    mount(container, [root], shown.length);
  }

  // ---- the operator's view ----------------------------------------------------------------

  function drawMood(m) {
    const xs = m.buckets.map((b) => new Date(b.hour));
    lineChart(chart("mood"), {
      xs: xs, xLabel: hourLabel, floor: 0, ceiling: 0,
      hidden: m.buckets.map((b) => b.suppressed),
      series: [
        { name: "valence (−100…100)", color: COLORS.valence, values: m.buckets.map((b) => b.valence) },
        { name: "stress (0…100)", color: COLORS.stress, values: m.buckets.map((b) => b.stress) },
        { name: "arousal (0…100)", color: COLORS.arousal, values: m.buckets.map((b) => b.arousal) },
      ],
      empty: "No hour with readings of at least " + m.min_group_size + " people",
    });
    const people = m.buckets.filter((b) => !b.suppressed).map((b) => b.people);
    byId("mood-sub").textContent = "last " + m.window_hours + " h · mean of each person's mean" +
      (people.length ? " · up to " + Math.max(...people) + " people an hour" : "");
  }

  function drawDistribution(name, d, label, title) {
    barChart(chart(name), {
      bars: d.bands.map((b) => ({ label: label(b), title: title(b), value: b.people })),
      axisTitle: "people per band",
      empty: "No band has " + d.min_group_size + " people yet",
    });
    return d.median;
  }

  function drawDecisions(d) {
    byId("approval-rate").textContent =
      d.approval_rate === null ? "hidden" : (d.approval_rate * 100).toFixed(1) + " %";
    byId("assessed").textContent = d.people === null ? "< " + d.min_group_size : num(d.people);
    byId("decisions-sub").textContent = "offers of the last " + d.window_days + " days";
    const rows = (list, color) => {
      const shown = list.filter((r) => !r.suppressed)
        .map((r) => ({ label: reasonText(r.code), value: r.people, color: color,
          note: num(r.offers) + (r.offers === 1 ? " offer" : " offers") }));
      const hidden = list.length - shown.length;
      if (hidden) shown.push({ label: hidden + " other reasons", value: null });
      return shown;
    };
    hbarChart(chart("reasons"), { rows: rows(d.declined_reasons, COLORS.stress), unit: "people" });
    hbarChart(chart("approved-reasons"), { rows: rows(d.approved_reasons, COLORS.valence),
      unit: "people" });
  }

  function drawFunnel(f) {
    let previous = null;
    const rows = f.stages.map((s) => {
      let note = "";
      if (s.offers !== null && previous) note = Math.round((100 * s.offers) / previous) + " %";
      if (s.offers !== null) previous = s.offers;
      return { label: STAGES[s.stage] || s.stage, value: s.offers, note: note, color: COLORS.bar };
    });
    hbarChart(chart("funnel"), { rows: rows, unit: "offers" });
    byId("funnel-sub").textContent = "offers of the last " + f.window_days + " days · % of the stage before";
  }

  function drawIngest(v) {
    const xs = v.series.map((m) => new Date(m.minute));
    const hidden = v.series.map((m) => m.suppressed);
    lineChart(chart("ingest"), {
      xs: xs, xLabel: minuteLabel, floor: 0, hidden: hidden,
      series: [{ name: "readings stored / s", color: COLORS.bar,
        values: v.series.map((m) => m.readings_per_second) }],
      empty: "No minute with readings of " + v.min_group_size + " people",
    });
    lineChart(chart("lag"), {
      xs: xs, xLabel: minuteLabel, floor: 0, hidden: hidden,
      yFormat: duration,
      series: [
        { name: "p50", color: COLORS.bar, values: v.series.map((m) => m.lag_p50_ms) },
        { name: "p95", color: COLORS.p95, values: v.series.map((m) => m.lag_p95_ms) },
      ],
      empty: "No minute with readings of " + v.min_group_size + " people",
    });
    const c = v.connected;
    const connected = chart("connected");
    byId("connected").textContent = c.phones === null ? "< k people" : num(c.phones);
    connected.dataset.points = c.phones === null ? "0" : "1";
    connected.dataset.state = "ready";
    // The newest minute with figures (the current one is still filling).
    const latest = v.series.slice(0, -1).reverse().find((m) => m.readings_per_second !== null);
    byId("rate-now").textContent = latest ? num(latest.readings_per_second) : "–";
    byId("ingest-sub").textContent = "last " + v.window_minutes + " min · connected = seen in " +
      c.seen_within_secs + " s";
  }

  async function refreshOperator() {
    const calls = [
      ["/v1/analytics/emotions/hourly?hours=24", drawMood],
      ["/v1/analytics/credit-limits", (d) => {
        const median = drawDistribution("limits", d, (b) => compactMoney(b.from) + (b.to ? "" : "+"),
          (b) => money(b.from) + (b.to ? " – " + money(b.to) : " and more"));
        byId("limits-sub").textContent = median === null ? "current lines" : "median " + money(median);
        byId("k-note").textContent = "Population figures are shown only for groups of at least " +
          d.min_group_size + " people; hatched buckets have fewer (possibly none).";
      }],
      ["/v1/analytics/interest-rates", (d) => {
        const median = drawDistribution("rates", d, (b) => pct(b.from) + (b.to ? "" : "+"),
          (b) => pct(b.from) + (b.to ? " – " + pct(b.to) : " and more"));
        byId("rates-sub").textContent = median === null ? "current lines, a year" : "median " + pct(median) + " a year";
      }],
      ["/v1/analytics/decisions?days=30", drawDecisions],
      ["/v1/analytics/funnel?days=30", drawFunnel],
      ["/v1/analytics/ingest?minutes=30", drawIngest],
    ];
    const results = await Promise.allSettled(calls.map(([path]) => api(path)));
    const failures = [];
    results.forEach((r, i) => {
      if (r.status === "fulfilled") calls[i][1](r.value);
      else failures.push(r.reason);
    });
    if (failures.some((e) => e instanceof AuthError)) throw new AuthError();
    if (failures.length) throw failures[0];
  }

  // ---- a person's own view ----------------------------------------------------------------

  function drawPerson(p) {
    const xs = p.mood.map((h) => new Date(h.hour));
    const val = (f) => p.mood.map((h) => (h.readings ? h[f] : null));
    lineChart(chart("my-mood"), {
      xs: xs, xLabel: hourLabel, floor: 0, ceiling: 0,
      series: [
        { name: "valence (−100…100)", color: COLORS.valence, values: val("valence") },
        { name: "stress (0…100)", color: COLORS.stress, values: val("stress") },
        { name: "arousal (0…100)", color: COLORS.arousal, values: val("arousal") },
      ],
      empty: "No readings from your phone in the last " + p.window_hours + " hours",
    });
    const readings = p.mood.reduce((n, h) => n + h.readings, 0);
    byId("my-mood-sub").textContent = "last " + p.window_hours + " h · " + num(readings) + " readings";

    const line = chart("my-credit");
    const c = p.credit_line;
    if (c) {
      const dl = html("dl");
      for (const [k, v] of [["Rate", pct(c.interest_rate_bps) + " a year"],
        ["Type", c.credit_type.replace("_", " ")], ["Since", dateTime(new Date(c.updated_at))]]) {
        dl.append(html("dt", {}, k), html("dd", {}, v));
      }
      mount(line, [html("div", { class: "big" }, money(c.credit_limit_cents)), dl], 1);
    } else {
      mount(line, [html("p", { class: "muted" }, "No credit line yet: accept an approved offer and it appears here once applied.")], 0);
    }

    const table = html("table", { class: "offers" });
    const head = html("tr");
    for (const h of ["When", "Decision", "Limit", "Rate", "Term", "Risk of default", "Reasons"]) head.appendChild(html("th", {}, h));
    table.appendChild(head);
    for (const o of p.offers) {
      const tr = html("tr");
      const decision = html("td");
      decision.appendChild(html("span", { class: "pill " + (o.approved ? "approved" : "declined") },
        o.approved ? "approved" : "declined"));
      decision.appendChild(html("div", { class: "muted" }, o.status));
      if (o.origin === "proactive" && o.proactive_signal) {
        const sig = o.proactive_signal;
        decision.appendChild(html("div", { class: "muted", title: "The cloud offered this by itself: your stream has been calm and stable" },
          "offered by us: calm since " + dateTime(new Date(sig.observed_since)) +
          ", stress " + (sig.stress_share * 100).toFixed(0) + " % of the time"));
      }
      const reasons = html("td");
      if (!o.reason_codes.length) reasons.appendChild(html("span", { class: "muted" }, "none"));
      for (const code of o.reason_codes) reasons.appendChild(html("span", { class: "pill", title: code }, reasonText(code)));
      tr.append(
        html("td", {}, dateTime(new Date(o.created_at))), decision,
        html("td", {}, o.approved ? money(o.credit_limit_cents) : "–"),
        html("td", {}, o.approved ? pct(o.interest_rate_bps) : "–"),
        html("td", {}, o.approved ? o.term_months + " months, " + o.credit_type.replace("_", " ") : "–"),
        html("td", {}, (o.probability_of_default * 100).toFixed(1) + " % · model " + o.model_name + ", version " + o.model_version),
        reasons);
      table.appendChild(tr);
    }
    const offers = chart("my-offers");
    if (p.offers.length) mount(offers, [table], p.offers.length);
    else mount(offers, [html("p", { class: "muted" }, "No offers yet.")], 0);
  }

  // ---- session and polling ----------------------------------------------------------------

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError("no token");
    const res = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (res.status === 401) throw new AuthError("the token was refused");
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.message || "HTTP " + res.status);
    }
    return res.json();
  }

  function setStatus(text, error) {
    const s = byId("status");
    s.textContent = text;
    s.classList.toggle("error", Boolean(error));
  }

  function show(view) {
    for (const id of ["login", "operator", "person"]) byId(id).hidden = id !== view;
    byId("sign-out").hidden = view === "login";
    document.body.dataset.view = view;
  }

  function signOut(message) {
    if (timer) clearInterval(timer);
    timer = null;
    sessionStorage.removeItem(TOKEN_KEY);
    show("login");
    setStatus("");
    byId("login-error").textContent = message || "";
  }

  async function start() {
    let me;
    try {
      me = await api("/v1/me");
    } catch (e) {
      signOut(e instanceof AuthError ? "That token was not accepted." : "Cannot reach the cloud: " + e.message);
      return;
    }
    const refresh = me.role === "admin"
      ? refreshOperator
      : async () => drawPerson(await api("/v1/users/" + me.user_id + "/analytics?hours=24"));
    show(me.role === "admin" ? "operator" : "person");
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        await refresh();
        setStatus((me.role === "admin" ? "Operator view" : "Your view") + " · updated " +
          new Date().toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s");
      } catch (e) {
        if (e instanceof AuthError) { signOut("The token is no longer accepted."); return; }
        setStatus("Update failed: " + e.message + " (retrying)", true);
      } finally {
        busy = false;
      }
    };
    await tick();
    if (timer) clearInterval(timer);
    timer = setInterval(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = byId("token").value.trim();
      if (!token) return;
      byId("token").value = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    byId("sign-out").addEventListener("click", () => signOut());
    // A token can also come in the fragment (#token=...), which is never sent to the server:
    // handy for kiosks and for the browser test. It is moved into the tab's storage at once.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
      history.replaceState(null, "", location.pathname);
    }
    if (sessionStorage.getItem(TOKEN_KEY)) start();
    else show("login");
  });
})();
