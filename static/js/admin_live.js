// Staff live page over ws/live/ (the admins' stream): every customer's executions, per-bot counters, and the
// total open P&L kept from position and price events. Reconnects with backoff like live.js.
(function () {
  "use strict";
  var body = document.querySelector("[data-admin-executions]");
  if (!body) return;
  var status = document.querySelector("[data-testid=live-status]");
  var total = document.querySelector("[data-testid=admin-open-pnl]");
  var count = document.querySelector("[data-testid=admin-open-count]");
  var positions = JSON.parse(document.getElementById("admin-positions").textContent);  // id -> [pnl, currency]
  var seen = {};  // execution id -> counted status, so a repeated event is not counted twice
  var signals = {};  // bot alerts already counted
  var initial = {};  // executions already on the page when it loaded: already in the counters
  var owners = {};  // account id -> customer e-mail, from the rows rendered by the server (events carry ids only)
  body.querySelectorAll("tr[data-execution]").forEach(function (tr) {
    initial[tr.getAttribute("data-execution")] = true;
    owners[tr.getAttribute("data-account")] = tr.getAttribute("data-owner");
  });
  var tz = document.body.getAttribute("data-tz") || undefined;
  var delay = 1000;
  var STATUS = {pending: "Pending", running: "Running", filled: "Filled", placed: "Placed (open at broker)",
                rejected: "Rejected", failed: "Failed"};

  function td(text) { var el = document.createElement("td"); el.textContent = text || ""; return el; }
  function when(iso) {
    try {
      return new Intl.DateTimeFormat("sv-SE", {timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"}).format(iso ? new Date(iso) : new Date());
    } catch (e) { return iso || ""; }
  }
  function renderTotal() {
    var sums = {}, n = 0;
    Object.keys(positions).forEach(function (id) {
      var p = positions[id]; n += 1; sums[p[1]] = (sums[p[1]] || 0) + Number(p[0]);
    });
    total.textContent = "";
    Object.keys(sums).sort().forEach(function (cur, i) {
      if (i) total.appendChild(document.createTextNode(" · "));
      var span = document.createElement("span");
      span.className = sums[cur] >= 0 ? "pos" : "neg"; span.textContent = sums[cur].toFixed(2) + " " + cur;
      total.appendChild(span);
    });
    if (!n) total.textContent = "0.00";
    count.textContent = n;
  }
  function bump(botId, key) {
    var cell = document.querySelector('tr[data-bot="' + botId + '"] [data-counter="' + key + '"]');
    if (cell) cell.textContent = Number(cell.textContent) + 1;
  }
  function execution(e) {
    var empty = body.querySelector("[data-testid=admin-executions-empty]");
    if (empty) empty.remove();
    var tr = body.querySelector('tr[data-execution="' + e.id + '"]');
    if (!tr) {
      tr = document.createElement("tr"); tr.setAttribute("data-execution", e.id);
      [td(when(e.created_at)), td(owners[e.account_id] || e.owner || "account #" + e.account_id), td(e.account), td(e.symbol), td(""), td(""), td("")]
        .forEach(function (cell) { tr.appendChild(cell); });
      body.insertBefore(tr, body.firstChild);
      while (body.children.length > 100) body.removeChild(body.lastChild);
    }
    var cells = tr.children;
    cells[4].textContent = STATUS[e.status] || e.status; cells[4].className = "status-" + e.status;
    cells[5].textContent = e.reason || ""; cells[6].textContent = e.latency_ms ? e.latency_ms + " ms" : "";
    tr.classList.remove("tick"); void tr.offsetWidth; tr.classList.add("tick");
    var key = e.status === "filled" ? "filled" : (e.status === "rejected" || e.status === "failed") ? "refused" : null;
    if (e.bot_id && key && seen[e.id] !== key) { seen[e.id] = key; bump(e.bot_id, key); }
    // An alert is counted with its first subscriber's execution (an alert nobody follows shows on reload).
    if (e.bot_id && e.signal_id && !signals[e.signal_id] && !initial[e.id]) { signals[e.signal_id] = true; bump(e.bot_id, "alerts"); }
  }
  function onMessage(event) {
    var msg = JSON.parse(event.data);
    if (msg.kind === "execution") {
      execution(msg);
    } else if (msg.kind === "position") {
      if (msg.status === "open") { positions[msg.id] = [msg.unrealized_pnl || "0", msg.currency]; } else { delete positions[msg.id]; }
      renderTotal();
    } else if (msg.kind === "prices") {
      msg.positions.forEach(function (p) { if (positions[p.id]) positions[p.id][0] = p.unrealized_pnl || "0"; });
      renderTotal();
    }
  }
  function connect() {
    var socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/live/");
    socket.onopen = function () { delay = 1000; status.setAttribute("data-state", "live"); status.textContent = "Live stream: live"; };
    socket.onmessage = onMessage;
    socket.onclose = function () {
      status.setAttribute("data-state", "offline");
      status.textContent = "Live stream: reconnecting in " + Math.round(delay / 1000) + " s";
      setTimeout(connect, delay); delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
})();
