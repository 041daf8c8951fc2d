// Live positions over ws/live/: the snapshot on connect, then "position" and "prices" events.
// Reconnects with backoff after a dropped socket and asks for a fresh snapshot (events missed meanwhile).
(function () {
  "use strict";
  var table = document.querySelector("[data-live-positions]");
  var execBody = document.querySelector("[data-live-executions]");
  if (!table || window.tradeflowLive) return;
  window.tradeflowLive = true;
  var body = table.querySelector("tbody");
  var status = document.querySelector("[data-testid=live-status]");
  var total = document.querySelector("[data-testid=unrealized]");
  var count = document.querySelector("[data-testid=open-count]");
  var closeUrl = table.getAttribute("data-close-url");
  var csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
  var delay = 1000, socket = null;

  function plain(x) { // "101.50000000" -> "101.5", like Decimal.normalize() in the template
    if (x === null || x === undefined) return "—";
    return x.indexOf(".") < 0 ? x : x.replace(/0+$/, "").replace(/\.$/, "");
  }
  function money(x) { return Number(x).toFixed(2); }
  function setStatus(state, text) {
    if (!status) return;
    status.setAttribute("data-state", state);
    status.textContent = "Live prices: " + text;
  }
  function cell(text, testid) {
    var td = document.createElement("td");
    td.textContent = text;
    if (testid) td.setAttribute("data-testid", testid);
    return td;
  }
  function closeForm(id) {
    var td = document.createElement("td"), form = document.createElement("form"), button = document.createElement("button");
    form.method = "post"; form.className = "inline"; form.action = closeUrl.replace(/0\/close\/$/, id + "/close/");
    if (csrf) form.appendChild(csrf.cloneNode());
    button.textContent = "Close"; button.setAttribute("data-testid", "position-close");
    form.appendChild(button); td.appendChild(form);
    return td;
  }
  function rowFor(p) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-position", p.id); tr.setAttribute("data-testid", "position-row");
    tr.setAttribute("data-currency", p.currency || "");
    [cell(p.account), cell(p.symbol, "position-symbol"), cell(p.side), cell(plain(p.qty), "position-qty"),
     cell(plain(p.avg_price)), cell("", "position-last"), cell("", "position-pnl"),
     cell(plain(p.stop_loss) + " / " + plain(p.take_profit)), closeForm(p.id)].forEach(function (td) { tr.appendChild(td); });
    return tr;
  }
  function mark(tr, p) {
    var last = tr.querySelector("[data-testid=position-last]"), pnl = tr.querySelector("[data-testid=position-pnl]");
    var currency = tr.getAttribute("data-currency") || (pnl.textContent.split(" ")[1] || "");
    tr.setAttribute("data-currency", currency);
    tr.setAttribute("data-pnl", p.unrealized_pnl);
    last.textContent = plain(p.last_price);
    pnl.textContent = money(p.unrealized_pnl) + (currency ? " " + currency : "");
    pnl.className = Number(p.unrealized_pnl) >= 0 ? "pos" : "neg";
    tr.classList.remove("tick"); void tr.offsetWidth; tr.classList.add("tick");
  }
  function rows() { return body.querySelectorAll("tr[data-position]"); }
  function find(id) { return body.querySelector('tr[data-position="' + id + '"]'); }
  function refreshTotals() {
    var all = rows(), sum = 0, empty = body.querySelector("[data-testid=positions-empty]");
    all.forEach(function (tr) { sum += Number(tr.getAttribute("data-pnl") || 0); });
    if (total) {
      // Only a single-currency total is summed here; mixed currencies keep the server's per-currency text.
      var currencies = {};
      all.forEach(function (tr) { currencies[tr.getAttribute("data-currency") || ""] = true; });
      var names = Object.keys(currencies);
      if (names.length <= 1) {
        var cur = names[0] || total.getAttribute("data-currency") || "";
        total.textContent = money(sum) + (cur ? " " + cur : "");
        total.className = sum >= 0 ? "pos" : "neg";
      }
    }
    if (count) count.textContent = all.length + " open position" + (all.length === 1 ? "" : "s");
    if (all.length && empty) empty.remove();
    if (!all.length && !empty) {
      var tr = document.createElement("tr"), td = cell("No open positions. Send an alert to your webhook URL to open one.");
      tr.setAttribute("data-testid", "positions-empty"); td.colSpan = 9; td.className = "muted";
      tr.appendChild(td); body.appendChild(tr);
    }
  }
  function upsert(p) {
    var tr = find(p.id);
    if (p.status && p.status !== "open") { if (tr) tr.remove(); return; }
    if (!tr) { tr = rowFor(p); body.insertBefore(tr, body.firstChild); }
    mark(tr, p);
  }
  var tz = document.body.getAttribute("data-tz") || undefined;
  function localTime(iso) {
    var d = iso ? new Date(iso) : new Date();
    try {
      return new Intl.DateTimeFormat("sv-SE", {timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"}).format(d);
    } catch (e) { return d.toISOString(); }
  }
  var STATUS = {pending: "Pending", running: "Running", filled: "Filled", placed: "Placed (open at broker)",
                rejected: "Rejected", failed: "Failed"};
  function stepDone(key) {  // the onboarding checklist follows along without a reload
    var li = document.querySelector('[data-testid=onboarding] li[data-step="' + key + '"]');
    if (!li || li.getAttribute("data-done") === "true") return;
    li.setAttribute("data-done", "true"); li.classList.add("done");
    var check = li.querySelector(".check"), link = li.querySelector("a");
    if (check) check.textContent = "\u2713";
    if (link) link.remove();
  }
  function execution(e) {
    stepDone("alert");
    if (e.status === "filled") stepDone("trade");
    if (!execBody) return;
    var tr = execBody.querySelector('tr[data-execution="' + e.id + '"]');
    var empty = execBody.querySelector("[data-testid=executions-empty]");
    if (empty) empty.remove();
    if (!tr) {
      tr = document.createElement("tr");
      tr.setAttribute("data-execution", e.id); tr.setAttribute("data-testid", "execution-row");
      [cell(localTime(e.created_at)), cell(e.account || ""), cell(e.symbol || ""), cell("", "execution-status"),
       cell(""), cell("")].forEach(function (td) { tr.appendChild(td); });
      execBody.insertBefore(tr, execBody.firstChild);
      while (execBody.children.length > 20) execBody.removeChild(execBody.lastChild);
    }
    var tds = tr.children;
    tds[3].textContent = STATUS[e.status] || e.status; tds[3].className = "status-" + e.status;
    tds[4].textContent = e.reason || "";
    tds[5].textContent = e.latency_ms ? e.latency_ms + " ms" : "";
    tr.classList.remove("tick"); void tr.offsetWidth; tr.classList.add("tick");
  }
  function onMessage(event) {
    var msg = JSON.parse(event.data);
    if (msg.kind === "execution") { execution(msg); return; }
    if (msg.kind === "snapshot") {
      var keep = {};
      msg.positions.forEach(function (p) { keep[p.id] = true; upsert(p); });
      rows().forEach(function (tr) { if (!keep[tr.getAttribute("data-position")]) tr.remove(); });
    } else if (msg.kind === "position") {
      upsert(msg);
    } else if (msg.kind === "prices") {
      msg.positions.forEach(function (p) { var tr = find(p.id); if (tr) mark(tr, p); });
    } else {
      return;
    }
    refreshTotals();
  }
  function connect() {
    setStatus("connecting", "connecting…");
    socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/live/");
    socket.onopen = function () { delay = 1000; setStatus("live", "live"); };
    socket.onmessage = onMessage;
    socket.onclose = function () {
      setStatus("offline", "reconnecting in " + Math.round(delay / 1000) + " s");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  window.addEventListener("online", function () { if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({action: "snapshot"})); });
  connect();
})();
