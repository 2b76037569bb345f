// The vehicle page's chart: AC drawn and DC delivered per hour (bars, kWh) and efficiency (line, %).
// The numbers come from the page itself (the JSON block the server rendered), never from another request.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const canvas = document.getElementById("energy-chart");
  if (!canvas || typeof Chart === "undefined") return;
  const labels = data.hours.map((h) => h.slice(11, 16));
  const percent = data.efficiency.map((e) => (e === null ? null : Math.round(e * 1000) / 10));
  new Chart(canvas, {
    data: {
      labels,
      datasets: [
        { type: "bar", label: "AC consumed (kWh)", data: data.ac, backgroundColor: "#9db7d5", yAxisID: "kwh" },
        { type: "bar", label: "DC delivered (kWh)", data: data.dc, backgroundColor: "#2f6da3", yAxisID: "kwh" },
        {
          type: "line", label: "Efficiency (%)", data: percent, borderColor: "#c2571a", backgroundColor: "#c2571a",
          yAxisID: "pct", spanGaps: false, pointRadius: 2,
        },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        kwh: { position: "left", beginAtZero: true, title: { display: true, text: "kWh" } },
        pct: { position: "right", min: 0, max: 100, grid: { drawOnChartArea: false }, title: { display: true, text: "%" } },
      },
      plugins: {
        tooltip: {
          callbacks: { title: (items) => (items.length ? data.hours[items[0].dataIndex] : "") },
        },
      },
    },
  });
})();
