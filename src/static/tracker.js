// realtime-analytics-backend tracker: a page view on load and on every history change
// to another path (a #fragment is the same page), sent to this server's /api/event. It stores nothing on the visitor's browser. Usage:
// <script defer data-domain="example.com" src="https://YOUR-SERVER/tracker.js"></script>
(function () {
  var s = document.currentScript, api = new URL("/api/event", s.src).href,
    domain = s.getAttribute("data-domain") || location.hostname, last;
  function view() {
    if (last === location.pathname) return;
    last = location.pathname;
    var body = JSON.stringify({ n: "pageview", u: location.href, d: domain, r: document.referrer || null, w: innerWidth });
    if (!(navigator.sendBeacon && navigator.sendBeacon(api, body)))
      fetch(api, { method: "POST", body: body, keepalive: true });
  }
  var push = history.pushState;
  history.pushState = function () { push.apply(this, arguments); view(); };
  addEventListener("popstate", view);
  view();
})();
