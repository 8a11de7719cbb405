// The device chart: min/avg/max per step, the rule's thresholds as lines, alerts as points (uPlot).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const el = document.getElementById("chart");
  if (!data.t.length) { el.textContent = "no readings in this range"; return; }
  // Alerts sit on the nearest step of the time axis, as a fourth series of points.
  const alerts = data.t.map(() => null);
  let j = 0;
  for (const [ts, value] of data.alerts) {
    while (j + 1 < data.t.length && Math.abs(data.t[j + 1] - ts) <= Math.abs(data.t[j] - ts)) j++;
    alerts[j] = alerts[j] === null ? value : Math.max(alerts[j], value);
  }
  const colors = { critical: "#b3261e", warning: "#d4a017" };
  const thresholdLines = (u) => {
    const ctx = u.ctx;
    for (const line of data.thresholds) {
      const y = u.valToPos(line.value, "y", true);
      if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) continue;
      ctx.save();
      ctx.strokeStyle = colors[line.severity] || "#888";
      ctx.setLineDash([6, 4]);
      ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
      ctx.restore();
    }
  };
  const values = data.avg.concat(data.min, data.max, data.thresholds.map((l) => l.value)).filter((v) => v !== null);
  const low = Math.min(...values), high = Math.max(...values), pad = Math.max(1, (high - low) * 0.05);
  const opts = {
    width: Math.max(400, el.clientWidth - 20), height: 320,
    scales: { y: { range: [low - pad, high + pad] } },
    series: [
      {},
      { label: "min", stroke: "#9db4d8" },
      { label: "avg °C", stroke: "#1f5fbf", width: 2 },
      { label: "max", stroke: "#9db4d8" },
      { label: "alerts", stroke: "#b3261e", paths: () => null, points: { show: true, size: 8, fill: "#b3261e" } },
    ],
    hooks: { draw: [thresholdLines] },
  };
  window.thermoflowChart = new uPlot(opts, [data.t, data.min, data.avg, data.max, alerts], el);
})();
