// The pages bench/widget.mjs loads, served from a thread of its own so that
// the harness's work on the main thread (Playwright's protocol traffic
// during a load) can never hold a response back. (The figures came out the
// same either way here: what they measure is the browser's own loading.)
//
// workerData: { pages: { path: HTML }, files: { name: bytes under /pkg/ },
// types: { ext: MIME } }.
// Posts the port it listens on; answers a stub POST /v1/orders.

import { createServer } from "node:http";
import { parentPort, workerData } from "node:worker_threads";

const { pages, files, types } = workerData;

const server = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/v1/orders") {
    // Answered once the body is in, as a real backend would.
    req.resume().on("end", () => {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end('{"id":"pi_bench","status":"succeeded"}');
    });
    return;
  }
  if (req.method === "GET" && Object.hasOwn(pages, req.url)) {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    return res.end(pages[req.url]);
  }
  const name = req.url.startsWith("/pkg/") ? req.url.slice("/pkg/".length) : "";
  if (req.method === "GET" && Object.hasOwn(files, name)) {
    // application/wasm matters: without it wasm-bindgen falls back from
    // instantiateStreaming to a slower buffered compile.
    res.writeHead(200, { "Content-Type": types[name.slice(name.lastIndexOf("."))] });
    return res.end(files[name]);
  }
  res.writeHead(404).end();
});

server.listen(0, "127.0.0.1", () => parentPort.postMessage(server.address().port));
parentPort.on("message", (message) => {
  if (message === "close") {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  }
});
