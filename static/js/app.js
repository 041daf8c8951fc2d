// Small page behaviours shared by every page: copy buttons and the "send test alert" button.
(function () {
  "use strict";
  function csrf() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http on a LAN address is not a secure context: the old selection-based copy still works there.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text; area.setAttribute("readonly", ""); area.style.position = "fixed"; area.style.opacity = "0";
      document.body.appendChild(area); area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }
  function flash(button, text) {
    var before = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", before);
    button.textContent = text;
    setTimeout(function () { button.textContent = before; }, 2000);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    event.preventDefault();
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    copyText(source.textContent.trim()).then(function () {
      flash(button, "Copied");
      var done = function () { button.setAttribute("data-copied", "true"); };
      var record = button.getAttribute("data-copied-url");  // the onboarding checklist's "copy webhook" step
      if (!record) { done(); return; }
      // keepalive: the customer may leave the page right after copying; the request still goes out.
      fetch(record, {method: "POST", headers: {"X-CSRFToken": csrf()}, credentials: "same-origin", keepalive: true})
        .then(done, done);
    }, function () { flash(button, "Select and copy by hand"); });
  });
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-test-alert]");
    if (!button) return;
    event.preventDefault();
    var from = document.getElementById(button.getAttribute("data-url-from"));
    var url = (from.value !== undefined ? from.value : from.textContent).trim();
    var body = document.getElementById(button.getAttribute("data-body-from")).textContent.trim();
    var out = document.getElementById(button.getAttribute("data-result"));
    if (!/^https?:\/\//.test(url)) {
      out.className = "flash flash-error"; out.textContent = "Paste your webhook URL (with its key) first.";
      return;
    }
    button.disabled = true;
    // Exactly what TradingView sends: a POST of the alert message as text/plain to the webhook URL.
    fetch(url, {method: "POST", headers: {"Content-Type": "text/plain"}, body: body, credentials: "omit"})
      .then(function (response) { return response.json().then(function (json) { return [response.status, json]; }); })
      .then(function (result) {
        var ok = result[0] < 300;
        out.className = "flash " + (ok ? "flash-success" : "flash-error");
        out.textContent = ok ? "Test alert accepted (HTTP " + result[0] + "). Watch it fill on the dashboard."
          : "Refused (HTTP " + result[0] + "): " + ((result[1].error || {}).message || "see the webhook log");
      }, function () { out.className = "flash flash-error"; out.textContent = "The request did not go through."; })
      .finally(function () { button.disabled = false; });
  });
  document.documentElement.setAttribute("data-app-ready", "true");  // the buttons above work from here on
})();
