// Follows /api/analytics over a WebSocket and survives every fault ?chaos= injects:
// cuts (drop, close) and deploys reconnect and resume with since=, so nothing is lost;
// a silent connection (stall, or a dead network) is abandoned after 30 s; garbage,
// duplicates and late samples after a swap are skipped; gaps are reported, to be filled
// from /api/analytics/history if the chart needs them.
function follow(url, onSample, onGap = () => {}) {
  let lastSeq = null, delay = 1000, watchdog = null;
  const connect = () => {
    const ws = new WebSocket(lastSeq === null ? url : `${url}&since=${lastSeq}`);
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ws.close(), 30000);
    };
    ws.onopen = alive;
    ws.onmessage = (e) => {
      alive();
      let s = null;
      try { s = JSON.parse(e.data); } catch { return; }           // garbage: not JSON
      if (s?.type === "welcome") { delay = 1000; return; }
      if (!(s?.active_users >= 0 && s.page_views >= 0 && Number.isInteger(s.seq))) return;
      if (lastSeq !== null && s.seq <= lastSeq) return;           // a duplicate, or late
      if (lastSeq !== null && s.seq > lastSeq + 1) onGap(lastSeq + 1, s.seq - 1);
      lastSeq = s.seq;
      onSample(s);
    };
    ws.onclose = (e) => {
      clearTimeout(watchdog);
      let after = null;
      try { after = JSON.parse(e.reason).reconnect_after_ms; } catch { /* no hint */ }
      setTimeout(connect, after ?? delay);
      delay = Math.min(delay * 2, 30000);
    };
  };
  connect();
}

// follow("ws://localhost:4000/api/analytics?seq=1&chaos=drop:30s,gap:0.1,garbage:0.05",
//   (s) => console.log(s.seq, s.active_users),
//   (from, to) => console.log(`missing ${from}..${to}`));
