// The Node contenders of `make bench`, one proxy per MODE, each forwarding
// POST bodies to the payment simulator (BACKEND_URL) with the client's
// Authorization and Idempotency-Key, and answering with the backend's status,
// Content-Type and body:
//
//   node-floor           plain node:http, no idempotency (floor of node-idempotency)
//   node-idempotency     node:http + @node-idempotency/core with its memory adapter
//   express-floor        Express 4, no idempotency (floor of express-idempotency)
//   express-idempotency  Express 4 + express-idempotency, as its README shows
//
// Each floor differs from its contender only by the library, so the cost over
// the floor is the library's. All four forward through the same keep-alive
// agent. Listens on 127.0.0.1:PORT. Packages come from BENCH_NODE_DIR (the
// tools cache scripts/setup-bench.sh installs bench/node/package.json into).
'use strict';

const http = require('node:http');
const path = require('node:path');
const { createRequire } = require('node:module');

const { MODE, PORT, BACKEND_URL, BENCH_NODE_DIR } = process.env;
const peers = createRequire(path.join(BENCH_NODE_DIR, 'package.json'));
const backend = new URL(BACKEND_URL);
const agent = new http.Agent({ keepAlive: true });

/** POSTs `body` to the backend; resolves to { status, contentType, body }. */
function forward(headers, body) {
  const out = { 'content-type': headers['content-type'] || 'application/json' };
  for (const name of ['authorization', 'idempotency-key']) {
    if (headers[name] !== undefined) out[name] = headers[name];
  }
  out['content-length'] = Buffer.byteLength(body);
  return new Promise((resolve, reject) => {
    const req = http.request(backend, { method: 'POST', headers: out, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          contentType: res.headers['content-type'] || 'application/json',
          body: Buffer.concat(chunks),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res, status, contentType, body) {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function problem(res, status, detail) {
  send(res, status, 'application/problem+json', JSON.stringify({ status, detail }));
}

function nodeFloor() {
  return http.createServer(async (req, res) => {
    try {
      const answer = await forward(req.headers, await readBody(req));
      send(res, answer.status, answer.contentType, answer.body);
    } catch (e) {
      problem(res, 502, String(e));
    }
  });
}

// @node-idempotency/core has no HTTP glue of its own here (its express
// plugin is not in the registry): onRequest before the work, onResponse
// after, as its README's framework-agnostic example does.
function nodeIdempotency() {
  const { Idempotency, IdempotencyErrorCodes } = peers('@node-idempotency/core');
  const { MemoryStorageAdapter } = peers('@node-idempotency/storage-adapter-memory');
  const idempotency = new Idempotency(new MemoryStorageAdapter(), {
    cacheTTLMS: 24 * 3600 * 1000,
    inProgressStrategy: { wait: false },
  });
  const refusals = {
    [IdempotencyErrorCodes.REQUEST_IN_PROGRESS]: 409,
    [IdempotencyErrorCodes.IDEMPOTENCY_FINGERPRINT_MISSMATCH]: 422,
    [IdempotencyErrorCodes.IDEMPOTENCY_KEY_LEN_EXEEDED]: 400,
  };
  return http.createServer(async (req, res) => {
    try {
      const body = (await readBody(req)).toString('utf8');
      const request = { method: req.method, path: req.url, headers: req.headers, body };
      let cached;
      try {
        cached = await idempotency.onRequest(request);
      } catch (e) {
        if (e && refusals[e.code]) return problem(res, refusals[e.code], e.message);
        throw e;
      }
      if (cached) {
        return send(res, cached.additional.status, cached.additional.contentType, cached.body);
      }
      const answer = await forward(req.headers, body);
      const text = answer.body.toString('utf8');
      await idempotency.onResponse(request, {
        body: text,
        additional: { status: answer.status, contentType: answer.contentType },
      });
      send(res, answer.status, answer.contentType, text);
    } catch (e) {
      problem(res, 502, String(e));
    }
  });
}

function expressApp(withIdempotency) {
  const express = peers('express');
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(express.raw({ type: '*/*', limit: '1mb' }));
  let service;
  if (withIdempotency) {
    const lib = peers('express-idempotency');
    app.post('*', lib.idempotency());
    service = lib.getSharedIdempotencyService();
  }
  app.post('*', async (req, res) => {
    // The middleware answers a replay itself and still calls next().
    if (service && service.isHit(req)) return;
    try {
      const answer = await forward(req.headers, req.body);
      res.status(answer.status).type(answer.contentType).send(answer.body);
    } catch (e) {
      if (service) await service.reportError(req);
      res.status(502).type('application/problem+json').send(JSON.stringify({ status: 502, detail: String(e) }));
    }
  });
  // Its refusals (409 in flight, 417 misuse) arrive as errors with the status
  // already set; answer them as problems rather than Express's HTML page.
  app.use((err, req, res, _next) => {
    problem(res, res.statusCode >= 400 ? res.statusCode : 500, err.message);
  });
  return app;
}

const servers = {
  'node-floor': nodeFloor,
  'node-idempotency': nodeIdempotency,
  'express-floor': () => http.createServer(expressApp(false)),
  'express-idempotency': () => http.createServer(expressApp(true)),
};
if (!servers[MODE]) {
  console.error(`proxy.cjs: MODE must be one of ${Object.keys(servers).join(', ')}, not ${MODE}`);
  process.exit(2);
}
const server = servers[MODE]();
server.keepAliveTimeout = 60_000;
server.listen(Number(PORT), '127.0.0.1', () => console.log(`${MODE} listening on 127.0.0.1:${PORT}`));
