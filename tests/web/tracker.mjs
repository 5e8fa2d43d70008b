// The site tracker in a real browser: Debian's chromium, driven by playwright-core.
//
// Starts the release binary in live mode for one site, serves a two-page test site from
// another origin with the README's <script> line, and checks that a visit (load, a
// history.pushState, and back) arrives as one active visitor and three page views, and
// that the dashboard (waiting, with a site picker, until the first event) and the stream
// show them: what a site owner would see.
//
// Usage: node tracker.mjs PATH_TO_BINARY
import { spawn } from "node:child_process";
import http from "node:http";
import { chromium } from "playwright-core";

const [binary] = process.argv.slice(2);
if (!binary) {
  console.error("usage: node tracker.mjs PATH_TO_BINARY");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SITE = "site.test";

function startServer() {
  const child = spawn(binary, [], {
    env: { ...process.env, HOST: "127.0.0.1", PORT: "0", INTERVAL_MS: "500", MODE: "live", SITES: SITE },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 30000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
  });
}

// The test site: two pages that include the tracker as the README says.
function startSite(api) {
  const page = (title) =>
    `<!doctype html><title>${title}</title><h1>${title}</h1>` +
    `<script defer data-domain="${SITE}" src="${api}/tracker.js"></script>`;
  const site = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end(page(req.url));
  });
  return new Promise((resolve) => site.listen(0, "127.0.0.1", () => resolve(site)));
}

async function sample(api) {
  const r = await fetch(`${api}/api/analytics?fields=all`);
  return r.json();
}

async function until(what, check, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const { child, url: api } = await startServer();
const site = await startSite(api);
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
let failed = false;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const origin = `http://127.0.0.1:${site.address().port}`;
  // Before any visit, the dashboard says it is waiting, with the site picker in place of
  // the simulator's.
  const dash = await context.newPage();
  await dash.goto(`${api}/dashboard`);
  await dash.waitForSelector("#waiting:not([hidden])", { timeout: 10000 });
  const picker = await dash.evaluate(() => ({
    site: document.querySelector("#site-picker").hidden ? null : document.querySelector("#site").value,
    profile: document.querySelector("#profile").closest("label").hidden,
  }));
  if (picker.site !== SITE || !picker.profile) throw new Error(`pickers: ${JSON.stringify(picker)}`);
  console.log("ok - the dashboard waits for the first event, with a site picker");
  await page.goto(`${origin}/`);
  await page.evaluate(() => history.pushState({}, "", "/pricing"));
  await page.goBack();
  // Views are counted per interval: their sum over the last minute is every view sent.
  const views = await until("three page views", async () => {
    const h = await (await fetch(`${api}/api/analytics/history?last=1m`)).json();
    const sum = h.samples.reduce((n, s) => n + s.page_views, 0);
    return sum >= 3 ? sum : 0;
  });
  if (views !== 3) throw new Error(`${views} page views, not 3`);
  console.log("ok - load, pushState and popstate: 3 page views");
  const s = await until("one active visitor", async () => {
    const s = await sample(api);
    return s.active_users === 1 ? s : null;
  });
  if (!s.top_pages["/pricing"]) throw new Error(`no /pricing in ${JSON.stringify(s.top_pages)}`);
  console.log("ok - one active visitor, /pricing among top pages");
  // The dashboard stops waiting, and the stream shows the visitor.
  await dash.waitForSelector("#waiting[hidden]", { state: "attached", timeout: 10000 });
  console.log("ok - the dashboard shows the visit");
  const received = await dash.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.onmessage = (m) => {
          const v = JSON.parse(m.data);
          if (v.type === "welcome") return;
          ws.close();
          resolve(v);
        };
        setTimeout(() => reject(new Error("no sample")), 10000);
      }),
    `${api.replace("http", "ws")}/api/analytics`,
  );
  if (received.active_users !== 1) throw new Error(`stream: ${JSON.stringify(received)}`);
  console.log("ok - the stream shows the visitor");
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log("ok - no page errors");
} catch (e) {
  console.error(`not ok - ${e.message}`);
  failed = true;
} finally {
  await browser.close();
  site.close();
  child.kill("SIGTERM");
}
process.exit(failed ? 1 : 0);
