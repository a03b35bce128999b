#!/usr/bin/env node
// Publish load for bench/publish: PUTs pre-generated publish bodies to a
// registry and times every answer.
//
// Usage:
//   publish.js run --list FILE --first I --packages K --registry URL --token TOKEN
//                  [--concurrency C] [--out FILE] [--timeout MS]
//
// FILE holds "name version body-file" lines (tests/integration/fixtures/
// gen_packages.js writes them), the versions of a package one after the
// other. `run` takes the packages I .. I+K-1 of the list (in order of first
// appearance) and PUTs every version of them: C publishers, each over its own
// keep-alive connection, each taking the next package and publishing its
// versions one after the other (so a package's first version, a new package,
// and its later ones, new versions of an existing package, never race). All
// bodies are read into memory before the first request, so the clock only
// sees the registry. With C = 1 this is the sequential latency pass.
//
// A request's latency runs from just before its headers are written to the
// last byte of the answer. No retries: a status other than 201, or no answer
// (status 0), is counted and the publisher goes on. Prints one JSON document
// on stdout: count, statuses {code: n}, ok (201s), notices (answers carrying
// an `npm-notice` header, with the first one's text), seconds (first request
// to last answer), per_second (201s per second), and p50/p90/p99/max/mean in
// ms over the 201 answers. --out gets one JSON line per request: name,
// version, worker, start_ms (from the first request), ms, status, notice.
'use strict';

const fs = require('fs');
const http = require('http');
const { performance } = require('perf_hooks');

function parse_args(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith('--')) {
      if (i + 1 >= argv.length) {
        fail(`option ${arg}: missing value`);
      }
      args[arg.slice(2)] = argv[++i];
    } else {
      args._.push(arg);
    }
  }
  return args;
}

function fail(message) {
  process.stderr.write(`publish.js: error: ${message}\n`);
  process.exit(1);
}

function required(args, key) {
  if (args[key] === undefined || args[key] === '') {
    fail(`option --${key} is required`);
  }
  return args[key];
}

function count_option(args, key, fallback) {
  const text = args[key] === undefined ? String(fallback) : args[key];
  if (!/^[0-9]+$/.test(text)) {
    fail(`option --${key}: expected a non-negative integer, got '${text}'`);
  }
  return Number(text);
}

// The packages [first, first + count) of the list, each with its versions in
// list order.
function read_packages(file, first, count) {
  const packages = [];
  const by_name = new Map();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (line.trim() === '') {
      continue;
    }
    const [name, version, body] = line.split(' ');
    let entry = by_name.get(name);
    if (entry === undefined) {
      entry = { name, versions: [] };
      by_name.set(name, entry);
      packages.push(entry);
    }
    entry.versions.push({ version, body });
  }
  if (first + count > packages.length) {
    fail(`${file} holds ${packages.length} packages; asked for ${first} .. ${first + count - 1}`);
  }
  return packages.slice(first, first + count);
}

// Nearest-rank percentile of sorted `values` (p in 0..1).
function percentile(values, p) {
  if (values.length === 0) {
    return null;
  }
  const rank = Math.max(1, Math.ceil(p * values.length));
  return values[Math.min(values.length, rank) - 1];
}

function round(value) {
  return value === null ? null : Math.round(value * 1000) / 1000;
}

// put(agent, url, token, body, timeout) → {status, notice, end}; status 0
// with `error` when no answer came.
function put(agent, url, token, body, timeout) {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (result) => {
      if (!settled) {
        settled = true;
        resolve({ ...result, end: performance.now() });
      }
    };
    const request = http.request(
      url,
      {
        method: 'PUT',
        agent,
        timeout,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': body.length,
          Authorization: `Bearer ${token}`,
        },
      },
      (response) => {
        const notice = response.headers['npm-notice'];
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => {
          const result = { status: response.statusCode, notice: notice === undefined ? null : String(notice) };
          if (response.statusCode !== 201) {
            result.error = Buffer.concat(chunks).toString('utf8').slice(0, 300);
          }
          settle(result);
        });
        response.on('error', (error) => settle({ status: 0, notice: null, error: error.message }));
      }
    );
    request.on('timeout', () => request.destroy(new Error(`timed out after ${timeout} ms`)));
    request.on('error', (error) => settle({ status: 0, notice: null, error: error.message }));
    request.end(body);
  });
}

async function run(args) {
  const registry = required(args, 'registry').replace(/\/$/, '');
  const token = required(args, 'token');
  const packages = read_packages(
    required(args, 'list'),
    count_option(args, 'first', 0),
    count_option(args, 'packages', 0)
  );
  const concurrency = Math.max(1, count_option(args, 'concurrency', 1));
  const timeout = count_option(args, 'timeout', 30000);
  for (const entry of packages) {
    for (const version of entry.versions) {
      version.data = fs.readFileSync(version.body);
    }
  }
  const out = args.out ? fs.openSync(args.out, 'w') : null;
  const samples = [];
  const queue = packages.slice();
  const t0 = performance.now();

  async function publisher(worker) {
    // One socket per publisher: its PUTs reuse one keep-alive connection.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    while (queue.length > 0) {
      const entry = queue.shift();
      const url = `${registry}/${entry.name.replace('/', '%2f')}`;
      for (const version of entry.versions) {
        const start = performance.now();
        const answer = await put(agent, url, token, version.data, timeout);
        const sample = {
          name: entry.name,
          version: version.version,
          worker,
          start_ms: round(start - t0),
          ms: round(answer.end - start),
          status: answer.status,
          notice: answer.notice,
          end: answer.end,
        };
        if (answer.error !== undefined) {
          sample.error = answer.error;
        }
        samples.push(sample);
        if (out !== null) {
          const { end, ...line } = sample;
          fs.writeSync(out, JSON.stringify(line) + '\n');
        }
      }
    }
    agent.destroy();
  }
  await Promise.all(Array.from({ length: concurrency }, (_, worker) => publisher(worker)));
  if (out !== null) {
    fs.closeSync(out);
  }

  const last = samples.reduce((latest, sample) => Math.max(latest, sample.end), t0);
  const seconds = (last - t0) / 1000;
  const statuses = {};
  for (const sample of samples) {
    statuses[sample.status] = (statuses[sample.status] || 0) + 1;
  }
  const ok = samples.filter((sample) => sample.status === 201);
  const times = ok.map((sample) => sample.ms).sort((a, b) => a - b);
  const noticed = samples.filter((sample) => sample.notice !== null);
  const failed = samples.find((sample) => sample.status !== 201);
  const result = {
    count: samples.length,
    concurrency,
    statuses,
    ok: ok.length,
    notices: noticed.length,
    first_notice: noticed.length > 0 ? noticed[0].notice : null,
    first_failure: failed === undefined ? null : { status: failed.status, error: failed.error || null },
    seconds: round(seconds),
    per_second: seconds > 0 ? round(ok.length / seconds) : null,
    p50_ms: round(percentile(times, 0.5)),
    p90_ms: round(percentile(times, 0.9)),
    p99_ms: round(percentile(times, 0.99)),
    max_ms: round(times.length > 0 ? times[times.length - 1] : null),
    mean_ms: round(times.length > 0 ? times.reduce((a, b) => a + b, 0) / times.length : null),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

async function main() {
  const args = parse_args(process.argv.slice(2));
  if (args._[0] === 'run') {
    await run(args);
  } else {
    fail('usage: publish.js run --list FILE --first I --packages K --registry URL --token TOKEN [--concurrency C]');
  }
}

main().catch((error) => fail(error.stack || error.message));
