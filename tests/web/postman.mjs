// Imports the served /openapi.json as Postman does (openapi-to-postmanv2, request parameters
// and bodies from the document's examples, every optional parameter enabled) and sends
// every generated request exactly as generated: each must get a 2xx, but an event sent to a
// server in sim mode, which must get its documented 409. The analytics request is sent a
// second time with `Accept: text/event-stream`, the documented way to get the SSE variant.
//
//   node postman.mjs http://127.0.0.1:4000
import converter from "openapi-to-postmanv2";

const base = process.argv[2];
if (!base) throw new Error("usage: node postman.mjs BASE_URL");
const doc = await (await fetch(`${base}/openapi.json`)).text();
const mode = (await (await fetch(`${base}/`)).json()).mode;

const convert = (fn, options) =>
  new Promise((resolve, reject) =>
    converter[fn]({ type: "string", data: doc }, options, (err, res) =>
      err ? reject(err) : res.result ? resolve(res.output[0].data) : reject(new Error(res.reason)),
    ),
  );

// Both of the converter's module versions, as Postman's importer may use either.
const collections = {
  v1: await convert("convert", { requestParametersResolution: "Example" }),
  v2: await convert("convertV2", { parametersResolution: "Example" }),
};

const failures = [];
let sent = 0;
for (const [version, collection] of Object.entries(collections)) {
  const vars = Object.fromEntries((collection.variable || []).map((v) => [v.key, v.value]));
  const fill = (text) => String(text).replace(/\{\{(\w+)\}\}/g, (_, k) => vars[k] ?? `{{${k}}}`);
  const requests = (items) => items.flatMap((i) => (i.item ? requests(i.item) : [i]));
  for (const item of requests(collection.item)) {
    const { method, url, header = [] } = item.request;
    const query = (url.query || []).filter((q) => !q.disabled).map((q) => `${q.key}=${fill(q.value ?? "")}`);
    const target = `${fill(url.host.join("."))}/${(url.path || []).join("/")}${query.length ? `?${query.join("&")}` : ""}`;
    const headers = Object.fromEntries(header.filter((h) => !h.disabled).map((h) => [h.key, fill(h.value)]));
    const variants = [headers];
    if (url.path?.join("/") === "api/analytics") variants.push({ ...headers, Accept: "text/event-stream" });
    for (const h of variants) {
      const abort = new AbortController();
      const body = item.request.body?.raw ? fill(item.request.body.raw) : undefined;
      const res = await fetch(target, { method, headers: h, body, redirect: "manual", signal: abort.signal });
      const type = res.headers.get("content-type");
      abort.abort(); // an event stream never ends; its head is the answer
      sent++;
      const line = `${version} ${method} ${target} [${Object.entries(h).map(([k, v]) => `${k}: ${v}`).join("; ")}] -> ${res.status} ${type}`;
      console.log(line);
      const simEvent = mode === "sim" && method === "POST" && url.path?.join("/") === "api/event";
      if (simEvent ? res.status !== 409 : res.status < 200 || res.status > 299) failures.push(line);
      if (h.Accept === "text/event-stream" && !type?.startsWith("text/event-stream")) failures.push(`${line}: not an event stream`);
    }
  }
}
if (sent < 20) failures.push(`only ${sent} requests generated`);
if (failures.length) {
  console.error(`Postman import check failed:\n${failures.join("\n")}`);
  process.exit(1);
}
console.log(`Postman import check (${mode} mode): ${sent} generated requests, every one answered as documented`);
