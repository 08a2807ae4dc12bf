// inferd live dashboard: polls the server's Prometheus /metrics, derives per-interval figures
// (histogram _sum/_count and bucket deltas, counter rates, gauges) and charts them.
//
// Query parameters: ?interval=MS (poll period, default 1000), ?metrics=URL (default: /metrics
// next to this page), ?window=N (points kept, default 300).
// When every chart holds at least two points the page sets <html data-ready="true"> and
// window.__dashboardReady = true; <html data-polls> counts successful polls.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const ROOT = document.body.dataset.root || "";
  const METRICS_URL = params.get("metrics") || ROOT + "/metrics";
  const INTERVAL = Math.max(100, Number(params.get("interval")) || 1000);
  const WINDOW = Math.max(10, Number(params.get("window")) || 300);
  const ALL = "__all__";

  // ---- Prometheus text format -------------------------------------------------------------
  const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function parseValue(s) {
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    return parseFloat(s);
  }

  function parsePrometheus(text) {
    const out = new Map(); // name -> [{labels, value}]
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = LINE.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const lm of m[2].matchAll(LABEL)) labels[lm[1]] = lm[2].replace(/\\(.)/g, "$1");
      }
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value: parseValue(m[3]) });
    }
    return out;
  }

  function samples(snap, name, model) {
    const all = snap.get(name) || [];
    return model === ALL ? all : all.filter((s) => s.labels.model === model);
  }

  function total(snap, name, model) {
    const ss = samples(snap, name, model);
    if (!ss.length) return null;
    return ss.reduce((a, s) => a + s.value, 0);
  }

  function mean(snap, name, model) {
    const ss = samples(snap, name, model);
    if (!ss.length) return null;
    return ss.reduce((a, s) => a + s.value, 0) / ss.length;
  }

  function histogram(snap, base, model) {
    const sum = total(snap, base + "_sum", model);
    const count = total(snap, base + "_count", model);
    if (sum === null || count === null) return null;
    const byLe = new Map();
    for (const s of samples(snap, base + "_bucket", model)) {
      const le = parseValue(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + s.value);
    }
    const buckets = [...byLe.entries()].sort((a, b) => a[0] - b[0]);
    return { sum, count, buckets };
  }

  // Same interpolation as PromQL histogram_quantile, on cumulative bucket counts.
  function quantile(buckets, q) {
    if (!buckets.length) return null;
    const totalCount = buckets[buckets.length - 1][1];
    if (!(totalCount > 0)) return null;
    const rank = q * totalCount;
    let prevLe = 0;
    let prevCum = 0;
    for (const [le, cum] of buckets) {
      if (cum >= rank) {
        if (!isFinite(le)) return prevLe;
        if (cum === prevCum) return le;
        return prevLe + (le - prevLe) * ((rank - prevCum) / (cum - prevCum));
      }
      prevLe = le;
      prevCum = cum;
    }
    return prevLe;
  }

  // Histogram figures over the last interval; null when nothing was observed (a gap, not 0).
  function intervalHistogram(prev, cur, base, model, scale) {
    const a = histogram(prev, base, model);
    const b = histogram(cur, base, model);
    if (!a || !b) return { mean: null, p50: null, p90: null };
    const dCount = b.count - a.count;
    if (!(dCount > 0)) return { mean: null, p50: null, p90: null }; // idle, or counter reset
    const prevBy = new Map(a.buckets);
    const delta = b.buckets.map(([le, c]) => [le, c - (prevBy.get(le) || 0)]);
    const q = (p) => {
      const v = quantile(delta, p);
      return v === null ? null : v * scale;
    };
    return { mean: ((b.sum - a.sum) / dCount) * scale, p50: q(0.5), p90: q(0.9) };
  }

  function rate(prev, cur, name, model, dt) {
    const a = total(prev, name, model);
    const b = total(cur, name, model);
    if (a === null || b === null || b < a || !(dt > 0)) return null;
    return (b - a) / dt;
  }

  // ---- charts ----------------------------------------------------------------------------
  const ms = (v) => (v === null || !isFinite(v) ? "-" : v >= 100 ? v.toFixed(0) + " ms" : v.toFixed(1) + " ms");
  const pct = (v) => (v === null || !isFinite(v) ? "-" : v.toFixed(0) + "%");
  const CHARTS = [
    { id: "ttft", title: "Time to first token (ms)", format: ms,
      series: [["mean", "#e4572e"], ["p50", "#17bebb"], ["p90", "#76b041"]] },
    { id: "itl", title: "Inter-token latency (ms)", format: ms,
      series: [["mean", "#e4572e"], ["p50", "#17bebb"], ["p90", "#76b041"]] },
    { id: "tps", title: "Tokens per second",
      series: [["generation", "#2e86de"], ["prompt", "#a55eea"]] },
    { id: "requests", title: "Requests",
      series: [["running", "#2e86de"], ["waiting", "#f39c12"]] },
    { id: "kv", title: "KV cache (%)", format: pct, minTop: 100, maxTop: 100,
      series: [["usage", "#8e44ad"], ["prefix hit rate", "#27ae60"]] },
    { id: "e2e", title: "End-to-end latency (ms)", format: ms,
      series: [["mean", "#e4572e"], ["p90", "#76b041"]] },
  ];

  const charts = {};
  const grid = document.getElementById("charts");
  for (const spec of CHARTS) {
    const card = document.createElement("section");
    card.className = "card";
    const canvas = document.createElement("canvas");
    canvas.id = "chart-" + spec.id;
    canvas.className = "chart";
    card.appendChild(canvas);
    grid.appendChild(card);
    charts[spec.id] = new LineChart(canvas, {
      title: spec.title,
      format: spec.format,
      minTop: spec.minTop,
      maxTop: spec.maxTop,
      series: spec.series.map(([label, color]) => ({ label, color })),
    });
  }

  const history = { t: [], data: Object.fromEntries(CHARTS.map((c) => [c.id, c.series.map(() => [])])) };

  function push(id, values) {
    history.data[id].forEach((arr, i) => {
      arr.push(values[i] === undefined ? null : values[i]);
      if (arr.length > WINDOW) arr.shift();
    });
  }

  // ---- polling -----------------------------------------------------------------------------
  const statusEl = document.getElementById("status");
  const modelEl = document.getElementById("model");
  let prev = null;
  let prevT = 0;
  let polls = 0;

  function updateModels(snap) {
    const models = new Set();
    for (const list of snap.values()) for (const s of list) if (s.labels.model) models.add(s.labels.model);
    const have = new Set([...modelEl.options].map((o) => o.value));
    for (const m of [...models].sort()) {
      if (have.has(m)) continue;
      const opt = document.createElement("option");
      opt.value = m;
      opt.textContent = m;
      modelEl.appendChild(opt);
    }
  }

  function setTile(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function record(cur, t) {
    const model = modelEl.value || ALL;
    const dt = prev ? (t - prevT) / 1000 : 0;
    const gauge = (name) => total(cur, name, model);
    const running = gauge("inferd_num_requests_running");
    const waiting = gauge("inferd_num_requests_waiting");
    const kv = mean(cur, "inferd_kv_cache_usage_ratio", model);
    const hit = mean(cur, "inferd_prefix_cache_hit_rate", model);

    let ttft = { mean: null, p50: null, p90: null };
    let itl = ttft;
    let e2e = ttft;
    let gen = null;
    let prompt = null;
    let finished = null;
    if (prev) {
      ttft = intervalHistogram(prev, cur, "inferd_time_to_first_token_seconds", model, 1000);
      itl = intervalHistogram(prev, cur, "inferd_inter_token_latency_seconds", model, 1000);
      e2e = intervalHistogram(prev, cur, "inferd_e2e_request_latency_seconds", model, 1000);
      gen = rate(prev, cur, "inferd_generation_tokens_total", model, dt);
      prompt = rate(prev, cur, "inferd_prompt_tokens_total", model, dt);
      finished = rate(prev, cur, "inferd_requests_total", model, dt);
    }
    history.t.push(t);
    if (history.t.length > WINDOW) history.t.shift();
    push("ttft", [ttft.mean, ttft.p50, ttft.p90]);
    push("itl", [itl.mean, itl.p50, itl.p90]);
    push("tps", [gen, prompt]);
    push("requests", [running, waiting]);
    push("kv", [kv === null ? null : kv * 100, hit === null ? null : hit * 100]);
    push("e2e", [e2e.mean, e2e.p90]);

    const fmt = (v, d) => (v === null || !isFinite(v) ? "-" : v.toFixed(d));
    setTile("tile-gen", fmt(gen, 1));
    setTile("tile-running", fmt(running, 0));
    setTile("tile-waiting", fmt(waiting, 0));
    setTile("tile-kv", kv === null ? "-" : (kv * 100).toFixed(0) + "%");
    setTile("tile-finished", fmt(finished, 2));
    setTile("tile-preempt", fmt(total(cur, "inferd_num_preemptions_total", model), 0));
    setTile("tile-ttft", ms(ttft.mean));
  }

  function render() {
    let ready = true;
    for (const spec of CHARTS) {
      charts[spec.id].setData(history.t, history.data[spec.id]);
      if (Number(charts[spec.id].canvas.dataset.points) < 2) ready = false;
    }
    document.documentElement.dataset.polls = String(polls);
    if (ready) {
      document.documentElement.dataset.ready = "true";
      window.__dashboardReady = true;
    }
  }

  async function poll() {
    try {
      const resp = await fetch(METRICS_URL, { cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const snap = parsePrometheus(await resp.text());
      const t = Date.now();
      updateModels(snap);
      record(snap, t);
      prev = snap;
      prevT = t;
      polls += 1;
      render();
      statusEl.textContent = "live: " + METRICS_URL + " every " + INTERVAL / 1000 + " s, last update " +
        new Date(t).toLocaleTimeString();
      statusEl.className = "ok";
    } catch (err) {
      statusEl.textContent = "cannot read " + METRICS_URL + ": " + err.message;
      statusEl.className = "error";
    } finally {
      setTimeout(poll, INTERVAL);
    }
  }

  modelEl.addEventListener("change", () => {
    // Deltas across a model switch would mix two models: start the series afresh.
    prev = null;
    history.t.length = 0;
    for (const id in history.data) for (const arr of history.data[id]) arr.length = 0;
    delete document.documentElement.dataset.ready;
    render();
  });
  window.addEventListener("resize", () => {
    for (const id in charts) charts[id].draw();
  });

  // exposed for debugging from the browser console
  window.inferdDashboard = { parsePrometheus, quantile, history };
  render();
  poll();
})();
