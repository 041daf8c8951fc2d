// The dashboard's equity curve: cumulative realized P&L (json_script "equity-data": [[unix_s, "pnl"], ...]),
// drawn with the vendored uPlot (static/vendor/uplot). Redrawn to the card's width on resize.
(function () {
  "use strict";
  var el = document.getElementById("equity-chart"), data = document.getElementById("equity-data");
  if (!el || !data || !window.uPlot) return;
  var points = JSON.parse(data.textContent);
  if (points.length < 2) points.push([Math.floor(Date.now() / 1000), points.length ? points[0][1] : "0"]);
  var xs = points.map(function (p) { return p[0]; }), ys = points.map(function (p) { return Number(p[1]); });
  var last = ys[ys.length - 1], color = last >= 0 ? "#0a7d36" : "#c62828";
  function width() { return Math.max(200, el.clientWidth || 300); }
  var chart = new window.uPlot({
    width: width(), height: 160, legend: {show: false}, cursor: {y: false},
    scales: {x: {time: true}},
    axes: [{stroke: "#5b6470", grid: {show: false}}, {stroke: "#5b6470", size: 60, grid: {stroke: "#eef1f5"}}],
    series: [{}, {stroke: color, width: 2, fill: last >= 0 ? "rgba(10,125,54,.08)" : "rgba(198,40,40,.08)"}],
  }, [xs, ys], el);
  el.setAttribute("data-ready", "true");
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () { chart.setSize({width: width(), height: 160}); }, 100);
  });
})();
