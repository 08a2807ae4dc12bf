// Minimal time-series line chart on a <canvas>: our own ~200 lines instead of a charting
// library, so the dashboard needs no CDN and no build step.
//
//   const chart = new LineChart(canvas, {title, series: [{label, color}], format, minTop});
//   chart.setData(timesMs, [valuesOfSeries0, valuesOfSeries1, ...]);  // null = gap
//
// The canvas gets `data-points` (most non-null points in any series) so tests and tools can
// see from the DOM that the chart has drawn real data.
"use strict";

(function (global) {
  function niceStep(rough) {
    const exp = Math.pow(10, Math.floor(Math.log10(rough)));
    const f = rough / exp;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nice * exp;
  }

  function defaultFormat(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  class LineChart {
    constructor(canvas, opts) {
      this.canvas = canvas;
      this.title = opts.title || "";
      this.series = opts.series || [];
      this.format = opts.format || defaultFormat;
      this.minTop = opts.minTop || 0; // y axis reaches at least this far (e.g. 100 for percent)
      this.maxTop = opts.maxTop || null; // and at most this far (a ratio never exceeds 100%)
      this.minSpanMs = opts.minSpanMs || 10000;
      this.times = [];
      this.values = this.series.map(() => []);
      this.canvas.dataset.points = "0";
    }

    setData(times, values) {
      this.times = times;
      this.values = values;
      let points = 0;
      for (const vs of values) {
        points = Math.max(points, vs.filter((v) => v !== null && isFinite(v)).length);
      }
      this.canvas.dataset.points = String(points);
      this.draw();
    }

    draw() {
      const c = this.canvas;
      const dpr = global.devicePixelRatio || 1;
      const w = c.clientWidth || 400;
      const h = c.clientHeight || 220;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      ctx.font = "12px system-ui, sans-serif";

      const m = { left: 56, right: 14, top: 46, bottom: 24 };
      const pw = w - m.left - m.right;
      const ph = h - m.top - m.bottom;

      ctx.fillStyle = "#1f2933";
      ctx.font = "bold 13px system-ui, sans-serif";
      ctx.fillText(this.title, m.left, 17);
      ctx.font = "12px system-ui, sans-serif";

      const n = this.times.length;
      if (n === 0) {
        ctx.fillStyle = "#7b8794";
        ctx.fillText("waiting for data…", m.left + pw / 2 - 50, m.top + ph / 2);
        return;
      }

      // x: the last `minSpanMs` at least, so early points do not stretch across the plot
      const tMax = this.times[n - 1];
      const tMin = Math.min(this.times[0], tMax - this.minSpanMs);
      let top = this.minTop;
      for (const vs of this.values) for (const v of vs) if (v !== null && isFinite(v)) top = Math.max(top, v);
      if (this.maxTop !== null) top = Math.min(top, this.maxTop);
      if (top <= 0) top = 1;
      const step = niceStep(top / 4);
      top = Math.ceil(top / step) * step;

      const xOf = (t) => m.left + ((t - tMin) / Math.max(1, tMax - tMin)) * pw;
      const yOf = (v) => m.top + ph - (Math.min(v, top) / top) * ph;

      // grid and y labels
      ctx.strokeStyle = "#e4e7eb";
      ctx.fillStyle = "#616e7c";
      ctx.lineWidth = 1;
      ctx.textAlign = "right";
      for (let v = 0; v <= top + step / 2; v += step) {
        const y = Math.round(yOf(v)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(m.left, y);
        ctx.lineTo(m.left + pw, y);
        ctx.stroke();
        ctx.fillText(this.format(v), m.left - 6, y + 4);
      }
      // x labels: seconds before the newest point
      ctx.textAlign = "center";
      const spanS = (tMax - tMin) / 1000;
      const xStep = niceStep(Math.max(1, spanS / 5));
      for (let s = 0; s <= spanS + 1e-9; s += xStep) {
        const x = xOf(tMax - s * 1000);
        ctx.fillText(s === 0 ? "now" : "-" + Math.round(s) + "s", x, h - 6);
      }
      ctx.textAlign = "left";

      // series: lines broken at nulls; isolated points get a dot so they stay visible
      this.series.forEach((s, i) => {
        const vs = this.values[i] || [];
        ctx.strokeStyle = s.color;
        ctx.fillStyle = s.color;
        ctx.lineWidth = 2;
        ctx.beginPath();
        let pen = false;
        for (let k = 0; k < n; k++) {
          const v = vs[k];
          if (v === null || v === undefined || !isFinite(v)) {
            pen = false;
            continue;
          }
          const x = xOf(this.times[k]);
          const y = yOf(v);
          if (pen) ctx.lineTo(x, y);
          else ctx.moveTo(x, y);
          const prev = k > 0 ? vs[k - 1] : null;
          const next = k + 1 < n ? vs[k + 1] : null;
          if ((prev === null || prev === undefined) && (next === null || next === undefined)) {
            ctx.fillRect(x - 2, y - 2, 4, 4);
          }
          pen = true;
        }
        ctx.stroke();
      });

      // legend with the latest value of each series, on its own row under the title
      let x = m.left;
      ctx.textAlign = "left";
      this.series.forEach((s, i) => {
        const vs = this.values[i] || [];
        let last = null;
        for (let k = vs.length - 1; k >= 0; k--) if (vs[k] !== null && isFinite(vs[k])) { last = vs[k]; break; }
        const text = s.label + " " + this.format(last);
        ctx.fillStyle = s.color;
        ctx.fillRect(x, 26, 10, 10);
        ctx.fillStyle = "#323f4b";
        ctx.fillText(text, x + 14, 35);
        x += 14 + ctx.measureText(text).width + 16;
      });
      ctx.textAlign = "left";
    }
  }

  global.LineChart = LineChart;
})(window);
