// The dashboard in a real browser: Debian's chromium, driven by playwright-core.
//
// Starts the release binary on a free port, opens `/` as a browser would (it must land on
// /dashboard), and checks that the page shows live values, receives samples, draws the
// chart, and survives a server restart: it reconnects by itself and resumes without a gap
// in sequence numbers. Saves a screenshot to out/dashboard.png. Then serves
// examples/browser.html (the README's browser example) from another origin and checks that
// its WebSocket and EventSource both receive samples across origins.
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
  const painted = await page.evaluate(() => {
    const c = document.getElementById("chart");
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
    return { drawn: window.dashboard.drawn, painted: n / (c.width * c.height) };
  });
  check(painted.drawn >= 2 && painted.painted > 0.005, `chart drawn (${painted.drawn} points, ${(painted.painted * 100).toFixed(1)}% of pixels)`);

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

  await mkdir(outDir, { recursive: true });
  await page.screenshot({ path: `${outDir}/dashboard.png` });
  check(true, `screenshot saved to ${outDir}/dashboard.png`);
  check(problems.length === 0, `no page or console errors${problems.length ? `: ${problems.join("; ")}` : ""}`);

  // The browser example the README links (examples/browser.html), as written, served from
  // another origin.
  const block = await readFile(new URL("../../examples/browser.html", import.meta.url), "utf8");
  const html = block.replaceAll("localhost:4000", `127.0.0.1:${port}`);
  const origin = http.createServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end(html));
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
    check(problems.length === 0, `no errors in the example${problems.length ? `: ${problems.join("; ")}` : ""}`);
  } finally {
    origin.close();
  }
} finally {
  await browser.close();
  await stopServer(server);
}
console.log(`dashboard: ${passed} checks passed`);
