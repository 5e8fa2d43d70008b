// Site trackers in a real browser: Debian's chromium, driven by playwright-core.
//
// Starts the release binary in live mode for two sites and serves a test site from
// another origin: one part with the README's <script> line for our /tracker.js, one with
// Plausible's official npm tracker (@plausible-analytics/tracker) pointed at our
// /api/event. On each, a visit (load, an in-page link, a link to a second page, a
// history.pushState, and back) must arrive as one active visitor and four page views, and the dashboard
// (waiting, with a site picker, until the first event) and the stream must show them:
// what a site owner would see.
//
// Usage: node tracker.mjs PATH_TO_BINARY
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import http from "node:http";
import { chromium } from "playwright-core";

const [binary] = process.argv.slice(2);
if (!binary) {
  console.error("usage: node tracker.mjs PATH_TO_BINARY");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// Our tracker reports to the first site, Plausible's to the second.
const OURS = "ours.test";
const NPM = "npm.test";
const NPM_TRACKER = new URL(
  "node_modules/@plausible-analytics/tracker/plausible.js",
  import.meta.url,
);

function startServer() {
  const child = spawn(binary, [], {
    env: { ...process.env, HOST: "127.0.0.1", PORT: "0", INTERVAL_MS: "500", MODE: "live", SITES: `${OURS},${NPM}` },
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

// The test site: under /ours/ two pages that include our tracker as the README says;
// under /npm/ the same two pages with Plausible's tracker, set up as its README says
// (`init` with `endpoint`). That tracker stays silent on a 127.0.0.1 page and under
// automation unless told otherwise: `captureOnLocalhost` and `window.__plausible` do.
function startSite(api) {
  const trackers = {
    ours: `<script defer data-domain="${OURS}" src="${api}/tracker.js"></script>`,
    npm:
      `<script type="module">import { init } from "/plausible.js"; window.__plausible = true;` +
      ` init({ domain: "${NPM}", endpoint: "${api}/api/event", captureOnLocalhost: true });` +
      `</script>`,
  };
  const site = http.createServer(async (req, res) => {
    if (req.url === "/plausible.js") {
      res.writeHead(200, { "Content-Type": "text/javascript" });
      res.end(await readFile(NPM_TRACKER));
      return;
    }
    const part = req.url.split("/")[1];
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end(
      `<!doctype html><title>${req.url}</title><h1>${req.url}</h1>` +
        `<a id="docs" href="/${part}/docs">docs</a> <a id="end" href="#end">end</a>` +
        (trackers[part] || ""),
    );
  });
  return new Promise((resolve) => site.listen(0, "127.0.0.1", () => resolve(site)));
}

// The first sample a WebSocket client of `site` receives after its welcome, as a
// dashboard's page would.
function streamed(page, api, site) {
  return page.evaluate(
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
    `${api.replace("http", "ws")}/api/analytics?site=${site}`,
  );
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
  if (picker.site !== OURS || !picker.profile) throw new Error(`pickers: ${JSON.stringify(picker)}`);
  console.log("ok - the dashboard waits for the first event, with a site picker");
  for (const [part, domain, name] of [
    ["ours", OURS, "/tracker.js"],
    ["npm", NPM, "@plausible-analytics/tracker"],
  ]) {
    await page.goto(`${origin}/${part}/`);
    // An in-page link is the same page: no view.
    await Promise.all([page.waitForURL(`${origin}/${part}/#end`), page.click("#end")]);
    await Promise.all([page.waitForURL(`${origin}/${part}/docs`), page.click("#docs")]);
    await page.evaluate((path) => history.pushState({}, "", path), `/${part}/pricing`);
    await page.goBack();
    // Views are counted per interval: their sum over the last minute is every view sent,
    // and so is the sum of the intervals' top pages.
    const samples = await until(`${name}: four page views`, async () => {
      const r = await fetch(`${api}/api/analytics/history?last=1m&fields=all&site=${domain}`);
      const { samples } = await r.json();
      return samples.reduce((n, s) => n + s.page_views, 0) >= 4 ? samples : null;
    });
    const pages = {};
    for (const s of samples)
      for (const [path, n] of Object.entries(s.top_pages)) pages[path] = (pages[path] || 0) + n;
    const expected = { [`/${part}/`]: 1, [`/${part}/docs`]: 2, [`/${part}/pricing`]: 1 };
    const sorted = (o) => JSON.stringify(Object.entries(o).sort());
    if (sorted(pages) !== sorted(expected))
      throw new Error(`${name}: page views by path ${JSON.stringify(pages)}, not ${JSON.stringify(expected)}`);
    console.log(`ok - ${name}: load, #end, a link, pushState and popstate: 4 page views on 3 paths`);
    await until(`${name}: one active visitor`, async () => {
      const r = await fetch(`${api}/api/analytics?site=${domain}`);
      return (await r.json()).active_users === 1;
    });
    console.log(`ok - ${name}: one active visitor`);
    // The dashboard stops waiting, and the stream shows the visitor.
    await dash.goto(`${api}/dashboard?site=${domain}`);
    await dash.waitForSelector("#waiting[hidden]", { state: "attached", timeout: 10000 });
    if ((await dash.inputValue("#site")) !== domain) throw new Error(`${name}: the dashboard's site`);
    console.log(`ok - ${name}: the dashboard shows the visit`);
    const received = await streamed(dash, api, domain);
    if (received.active_users !== 1) throw new Error(`${name}: stream: ${JSON.stringify(received)}`);
    console.log(`ok - ${name}: the stream shows the visitor`);
  }
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
