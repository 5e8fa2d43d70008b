// The dashboard in a real browser: Debian's chromium, driven by playwright-core.
//
// Starts the release binary on a free port, opens `/` as a browser would (it must land on
// /dashboard), and checks that the page shows live values, receives samples, draws the
// chart, and survives a server restart: it reconnects by itself and resumes without a gap
// in sequence numbers; that the profile and scenario pickers switch the stream; that at
// 1280 and 390 px nothing overflows or wraps (screenshots in out/dashboard-WIDTH.png); that
// ?live=0 and the README's headless screenshot command finish; that under
// ?chaos=drop:5s,gap:0.1,latency:300ms it resumes and ends with a gap-free chart. Then serves
// examples/browser.html (the README's browser example) from another origin and checks that
// its WebSocket and EventSource both receive samples across origins, and that
// examples/follow.js (the chaos cookbook's reconnect loop) survives every stream fault at once.
//
// Usage: node dashboard.mjs PATH_TO_BINARY [OUT_DIR]
import { spawn } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { chromium } from "playwright-core";

const [binary, outDir = "out"] = process.argv.slice(2);
if (!binary) {
  console.error("usage: node dashboard.mjs PATH_TO_BINARY [OUT_DIR]");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT_MS = 30000;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

// Starts the server and resolves once its startup line says it is listening.
function startServer(port) {
  const child = spawn(binary, [], {
    env: { ...process.env, HOST: "127.0.0.1", PORT: String(port), INTERVAL_MS: "500", LOG_LEVEL: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), WAIT_MS);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("listening on")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
  });
}

function stopServer(child) {
  return new Promise((resolve) => {
    child.removeAllListeners("exit");
    child.on("exit", (code, signal) => resolve(code ?? signal));
    child.kill("SIGTERM");
  });
}

let passed = 0;
function check(condition, what) {
  if (!condition) throw new Error(`FAILED: ${what}`);
  passed += 1;
  console.log(`ok - ${what}`);
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
let server = await startServer(port);
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
  ],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // While the server restarts, the browser itself logs the failed EventSource request.
    if (m.type() === "error" && !/ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });
  const state = () => page.evaluate(() => ({ ...window.dashboard, samples: window.dashboard.samples.map((s) => s.seq) }));
  const waitFor = (what, predicate) =>
    page.waitForFunction(predicate, null, { timeout: WAIT_MS, polling: 100 }).catch(async () => {
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify(await state())}`);
    });

  const response = await page.goto(`${base}/`);
  check(page.url() === `${base}/dashboard`, `a browser asking for / lands on /dashboard (${page.url()})`);
  check(response.headers()["content-type"].startsWith("text/html"), "the page is HTML");

  await waitFor("live", () => window.dashboard.status === "live");
  check(true, "connection state shows live");
  let s = await state();
  check(s.samples.length > 100, `history filled the chart on load (${s.samples.length} samples)`);

  await waitFor("two samples", () => window.dashboard.received >= 2);
  s = await state();
  check(s.received >= 2, `received ${s.received} streamed samples`);
  check(Number((await page.textContent("#active_users")).trim()) >= 0, "current active users shown");
  check(/^\d+\.\d$/.test((await page.textContent("#avg_session_duration")).trim()), "average session shown");
  // Each chart is drawn, on its own axis.
  const painted = await page.evaluate(() =>
    ["users_chart", "views_chart"].map((id) => {
      const c = document.getElementById(id);
      const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
      return n / (c.width * c.height);
    }));
  check(painted.every((p) => p > 0.005), `both charts drawn (${painted.map((p) => `${(p * 100).toFixed(1)}%`).join(", ")} of pixels)`);
  check(/per 0\.5 s/.test(await page.textContent(".cards")), "page views are labelled per interval (INTERVAL_MS=500 here)");
  check((await page.textContent("#tz")).trim().length > 0, `the time zone is shown (${await page.textContent("#tz")})`);

  // Restart the server under the page.
  const before = await state();
  const exit = await stopServer(server);
  check(exit === 0, `server stopped gracefully (exit ${exit})`);
  await waitFor("the page to notice", () => window.dashboard.status !== "live");
  check(true, `the page shows ${(await state()).status} while the server is down`);
  server = await startServer(port);
  await waitFor("reconnection", () => window.dashboard.status === "live" && window.dashboard.connects >= 2);
  await page.waitForFunction((n) => window.dashboard.received >= n + 2, before.received, { timeout: WAIT_MS });
  s = await state();
  check(s.connects >= 2, `reconnected by itself after the restart (${s.connects} connections)`);
  const gaps = s.samples.filter((seq, i) => i > 0 && seq !== s.samples[i - 1] + 1);
  check(gaps.length === 0, `resumed without a gap: ${s.samples.length} consecutive samples`);

  // Pickers: another profile and scenario, passed on to history and the stream.
  await page.selectOption("#profile", "news");
  await page.selectOption("#scenario", "spike");
  await waitFor("the picked series", () => window.dashboard.status === "live"
    && window.dashboard.welcome?.profile === "news" && window.dashboard.welcome?.scenario === "spike");
  s = await state();
  check(/profile=news/.test(s.url) && /scenario=spike/.test(s.url), `the pickers set the stream's options (${s.url})`);
  check(/profile=news&scenario=spike/.test(page.url()), `and the page's URL, so it can be shared (${page.url()})`);
  check(s.samples.length > 100, `history of the picked series filled the charts (${s.samples.length} samples)`);
  const received = s.received;
  await page.waitForFunction((n) => window.dashboard.received >= n + 1, received, { timeout: WAIT_MS });
  check(true, "samples of the picked series stream in");

  // Layout at desktop and phone widths: nothing overflows, no label or value wraps.
  await mkdir(outDir, { recursive: true });
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => resolve())));
    const layout = await page.evaluate(() => {
      const wrapped = [...document.querySelectorAll("h1, label, #state, .card span, .card b")]
        .filter((el) => {
          const line = parseFloat(getComputedStyle(el).lineHeight);
          return el.getBoundingClientRect().height > line * 1.5 || el.scrollWidth > el.clientWidth + 1;
        })
        .map((el) => `${el.id || el.tagName}: ${el.textContent.trim()}`);
      return { overflow: document.documentElement.scrollWidth - window.innerWidth, wrapped };
    });
    check(layout.overflow <= 0, `${width} px: no horizontal overflow (${layout.overflow} px)`);
    check(layout.wrapped.length === 0, `${width} px: no label or value wraps${layout.wrapped.length ? `: ${layout.wrapped.join("; ")}` : ""}`);
    await page.screenshot({ path: `${outDir}/dashboard-${width}.png`, fullPage: true });
    check(true, `screenshot saved to ${outDir}/dashboard-${width}.png`);
  }
  check(problems.length === 0, `no page or console errors${problems.length ? `: ${problems.join("; ")}` : ""}`);

  // Under chaos (cut every 2.5-7.5 s, a tenth of samples missing, each 300 ms late) the
  // page shows the badge, resumes after each cut, and repairs every hole from history.
  const chaotic = await browser.newPage();
  chaotic.on("pageerror", (e) => problems.push(`chaos page error: ${e.message}`));
  await chaotic.goto(`${base}/dashboard?chaos=drop:5s,gap:0.1,latency:300ms`);
  const chaosState = () => chaotic.evaluate(() => ({ ...window.dashboard, samples: window.dashboard.samples.map((s) => s.seq) }));
  await chaotic.waitForFunction(() => {
    const d = window.dashboard, seqs = d.samples.map((s) => s.seq);
    return d.status === "live" && d.connects >= 2 && d.filled >= 1 && d.received >= 10
      && seqs.every((seq, i) => i === 0 || seq === seqs[i - 1] + 1);
  }, null, { timeout: 2 * WAIT_MS, polling: 100 }).catch(async () => {
    const d = await chaosState();
    throw new Error(`timed out waiting for a repaired chart under chaos: ${JSON.stringify({ ...d, samples: d.samples.slice(-30) })}`);
  });
  const c = await chaosState();
  check(/^chaos: drop:5s,latency:300ms,gap:0\.1$/.test(await chaotic.textContent("#chaos")),
    `the chaos badge names the faults (${await chaotic.textContent("#chaos")})`);
  check(c.connects >= 2, `under chaos the page resumed after a drop (${c.connects} connections)`);
  check(c.filled >= 1, `and filled ${c.filled} missing samples from history: ${c.samples.length} consecutive samples`);
  check(problems.length === 0, `no page errors under chaos${problems.length ? `: ${problems.join("; ")}` : ""}`);
  await chaotic.close();

  // ?live=0 draws history only and opens no stream (for headless screenshots).
  const still = await browser.newPage();
  await still.goto(`${base}/dashboard?live=0`);
  await still.waitForFunction(() => window.dashboard.status === "paused" && window.dashboard.drawn > 100, null, { timeout: WAIT_MS });
  check((await still.evaluate(() => window.dashboard.url)) === null, "?live=0 draws history and opens no stream");
  await still.close();

  // The README's screenshot command, as written (with --no-sandbox when run as root), ends.
  const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
  const command = readme.split("<!-- screenshot -->")[1]?.match(/```bash\n(chromium [^\n]*)\n```/)?.[1];
  check(Boolean(command), "the README has the screenshot command");
  const args = command.split(" ").slice(1)
    .map((a) => a.replace("http://localhost:4000", base).replace("dashboard.png", `${outDir}/readme-screenshot.png`))
    .concat(process.getuid?.() === 0 ? ["--no-sandbox"] : []);
  const shot = spawn(CHROMIUM, args.map((a) => a.replace(/^'|'$/g, "")), { stdio: "ignore" });
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => { shot.kill(); resolve("timeout"); }, WAIT_MS);
    shot.on("exit", (c) => { clearTimeout(timer); resolve(c); });
  });
  const png = await readFile(`${outDir}/readme-screenshot.png`).catch(() => Buffer.alloc(0));
  check(code === 0 && png.length > 10000, `the README's screenshot command ends and writes the page (exit ${code}, ${png.length} bytes)`);

  // The browser example the README links (examples/browser.html), as written, served from
  // another origin.
  const block = await readFile(new URL("../../examples/browser.html", import.meta.url), "utf8");
  const html = block.replaceAll("localhost:4000", `127.0.0.1:${port}`);
  // And examples/follow.js, the chaos cookbook's reconnect loop, under every stream fault at once.
  const followJs = await readFile(new URL("../../examples/follow.js", import.meta.url), "utf8");
  const chaos = "drop:3s,stall:1s/4s,gap:0.2,dup:0.2,reorder:0.2,garbage:0.2,latency:100ms..300ms";
  const followPage = `<!doctype html><script>
    window.seen = { seqs: [], gaps: 0, opens: 0, frames: 0 };
    const Native = WebSocket;
    window.WebSocket = class extends Native {
      constructor(url) { super(url); window.seen.opens += 1; this.addEventListener("message", () => { window.seen.frames += 1; }); }
    };
  </script><script>${followJs}</script><script>
    follow("ws://127.0.0.1:${port}/api/analytics?seq=1&chaos=${chaos}",
      (s) => window.seen.seqs.push(s.seq), () => { window.seen.gaps += 1; });
  </script>`;
  const origin = http.createServer((req, res) => res.writeHead(200, { "content-type": "text/html" })
    .end(req.url === "/follow" ? followPage : html));
  const originPort = await new Promise((resolve) => origin.listen(0, "127.0.0.1", () => resolve(origin.address().port)));
  try {
    const example = await browser.newPage();
    example.on("pageerror", (e) => problems.push(`example page error: ${e.message}`));
    await example.goto(`http://127.0.0.1:${originPort}/`);
    await example.waitForFunction(
      () => /^ws {2}\S+ \d+ users$/m.test(document.getElementById("out").textContent)
        && /^sse \S+ \d+ users \(seq \d+\)$/m.test(document.getElementById("out").textContent),
      null,
      { timeout: WAIT_MS },
    );
    check(true, "the browser example receives WebSocket and SSE samples from another origin");
    const follower = await browser.newPage();
    follower.on("pageerror", (e) => problems.push(`follow.js page error: ${e.message}`));
    await follower.goto(`http://127.0.0.1:${originPort}/follow`);
    await follower.waitForFunction(() => window.seen.opens >= 3 && window.seen.seqs.length >= 15 && window.seen.gaps >= 1,
      null, { timeout: 2 * WAIT_MS }).catch(async () => {
      throw new Error(`timed out waiting for follow.js under chaos: ${JSON.stringify(await follower.evaluate(() => window.seen))}`);
    });
    const seen = await follower.evaluate(() => window.seen);
    check(seen.seqs.every((seq, i) => i === 0 || seq > seen.seqs[i - 1]),
      `examples/follow.js under ${chaos}: ${seen.seqs.length} samples in order, no duplicate or garbage (of ${seen.frames} frames), across ${seen.opens} connections, ${seen.gaps} gaps reported`);
    await follower.close();
    check(problems.length === 0, `no errors in the example${problems.length ? `: ${problems.join("; ")}` : ""}`);
  } finally {
    origin.close();
  }
} finally {
  await browser.close();
  await stopServer(server);
}
console.log(`dashboard: ${passed} checks passed`);
