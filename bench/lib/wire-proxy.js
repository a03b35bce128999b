#!/usr/bin/env node
// A byte-counting HTTP proxy for bench/install: the bytes a registry sends
// and receives during one install, with and without compression.
//
// Usage:
//   wire-proxy.js --upstream URL --port-file FILE --out FILE [--strip-accept-encoding yes]
//
// Listens on a free 127.0.0.1 port (written to --port-file once listening)
// and forwards every request to --upstream over keep-alive connections, the
// headers as the client sent them (Host rewritten), or without
// Accept-Encoding with --strip-accept-encoding yes, so that the server
// answers uncompressed. Counts what crosses the sockets to the upstream:
// request bytes written and response bytes read, headers included. On
// SIGTERM it writes {"requests","request_bytes","response_bytes",
// "encodings":{"gzip":N,...},"statuses":{"200":N,...},"accept_encoding":
// ["gzip, deflate", ...],"not_ok":[the first 5 answers >= 400]} to --out
// and exits.
'use strict';

const fs = require('fs');
const http = require('http');

function fail(message) {
  process.stderr.write(`wire-proxy.js: error: ${message}\n`);
  process.exit(1);
}

const args = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
    fail(`bad argument '${argv[i]}' (see the header of this file)`);
  }
  args[argv[i].slice(2)] = argv[i + 1];
}
for (const key of ['upstream', 'port-file', 'out']) {
  if (!args[key]) {
    fail(`option --${key} is required`);
  }
}
const upstream = new URL(args.upstream);
const strip = args['strip-accept-encoding'] === 'yes';

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const sockets = new Set();
const counters = { requests: 0, encodings: {}, statuses: {}, accept_encoding: new Set(), not_ok: [] };

const hop_by_hop = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te']);

const server = http.createServer((request, response) => {
  counters.requests++;
  const headers = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (!hop_by_hop.has(name)) {
      headers[name] = value;
    }
  }
  headers.host = upstream.host;
  if (headers['accept-encoding'] !== undefined) {
    counters.accept_encoding.add(headers['accept-encoding']);
  }
  if (strip) {
    delete headers['accept-encoding'];
  }
  const forward = http.request({
    host: upstream.hostname,
    port: upstream.port,
    method: request.method,
    path: request.url,
    headers,
    agent,
  }, (answer) => {
    const encoding = answer.headers['content-encoding'] || 'identity';
    counters.encodings[encoding] = (counters.encodings[encoding] || 0) + 1;
    counters.statuses[answer.statusCode] = (counters.statuses[answer.statusCode] || 0) + 1;
    if (answer.statusCode >= 400 && counters.not_ok.length < 5) {
      counters.not_ok.push(`${request.method} ${request.url} ${answer.statusCode}`);
    }
    const out_headers = { ...answer.headers };
    for (const name of hop_by_hop) {
      delete out_headers[name];
    }
    response.writeHead(answer.statusCode, out_headers);
    answer.pipe(response);
  });
  forward.on('socket', (socket) => sockets.add(socket));
  forward.on('error', (error) => {
    if (!response.headersSent) {
      response.writeHead(502, { 'content-type': 'application/json' });
    }
    response.end(JSON.stringify({ error: `wire-proxy: ${error.message}` }));
  });
  request.pipe(forward);
});

server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(args['port-file'], `${server.address().port}\n`);
});

process.on('SIGTERM', () => {
  let request_bytes = 0;
  let response_bytes = 0;
  for (const socket of sockets) {
    request_bytes += socket.bytesWritten;
    response_bytes += socket.bytesRead;
  }
  fs.writeFileSync(args.out, JSON.stringify({
    requests: counters.requests,
    request_bytes,
    response_bytes,
    encodings: counters.encodings,
    statuses: counters.statuses,
    accept_encoding: [...counters.accept_encoding],
    not_ok: counters.not_ok,
  }) + '\n');
  process.exit(0);
});
