#!/usr/bin/env node
// Load generator and lag meter for bench/replication.
//
// Usage:
//   replication.js publish --list FILE --registry URL --token TOKEN [--concurrency C]
//   replication.js lag --list FILE --primary URL --token TOKEN --replica URL
//                      --replica-secret SECRET --rate R --duration S [--settle S]
//
// FILE holds "name version body-file" lines (tests/integration/fixtures/
// gen_packages.js writes them). `publish` PUTs every body, the versions of a
// package one after the other in list order and C packages at a time, over
// keep-alive connections; it exits non-zero on the first answer other than
// 201. `lag` PUTs the first R × S bodies to the primary on a fixed schedule
// (one every 1/R s, whether or not earlier ones have been answered), and for
// each measures the time from the primary's 201 until the replica serves a
// packument that holds that version. It learns of new versions from the
// replica's own changes feed (long poll with the replica's secret) and
// confirms each with a packument GET; a sweep re-checks any version still
// missing 1 s after its 201, in case a change were not in the feed. It prints
// one JSON document with the percentiles on stdout.
'use strict';

const fs = require('fs');
const http = require('http');
const { performance } = require('perf_hooks');

// Re-reads of a packument after a change in the feed that did not show the
// version yet (see confirm()).
const k_confirm_retries = 10;
const k_confirm_retry_ms = 2;

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
  process.stderr.write(`replication.js: error: ${message}\n`);
  process.exit(1);
}

function required(args, key) {
  if (args[key] === undefined || args[key] === '') {
    fail(`option --${key} is required`);
  }
  return args[key];
}

function read_list(file) {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [name, version, body] = line.split(' ');
      return { name, version, body };
    });
}

function package_path(name) {
  return '/' + name.replace('/', '%2f');
}

// request(agent, url, options, body) → {status, body (string), done (ms)}.
function request(agent, url, { method = 'GET', headers = {}, timeout = 60000 } = {}, body = null) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent, timeout }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8'), done: performance.now() })
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: timed out after ${timeout} ms`)));
    req.on('error', reject);
    if (body !== null) {
      req.end(body);
    } else {
      req.end();
    }
  });
}

function put_body(agent, registry, token, entry, body) {
  return request(
    agent,
    registry + package_path(entry.name),
    {
      method: 'PUT',
      headers: {
        'Content-Type': 'application/json',
        'Content-Length': body.length,
        Authorization: `Bearer ${token}`,
      },
    },
    body
  );
}

async function publish(args) {
  const list = read_list(required(args, 'list'));
  const registry = required(args, 'registry').replace(/\/$/, '');
  const token = required(args, 'token');
  const concurrency = Number(args.concurrency || 4);
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const by_package = new Map();
  for (const entry of list) {
    if (!by_package.has(entry.name)) {
      by_package.set(entry.name, []);
    }
    by_package.get(entry.name).push(entry);
  }
  const queue = [...by_package.values()];
  let published = 0;
  let next_report = Date.now() + 10000;
  const started = performance.now();
  async function worker() {
    while (queue.length > 0) {
      const entries = queue.shift();
      for (const entry of entries) {
        const response = await put_body(agent, registry, token, entry, fs.readFileSync(entry.body));
        if (response.status !== 201) {
          fail(`PUT ${entry.name}@${entry.version}: ${response.status} ${response.body.slice(0, 300)}`);
        }
        published++;
        if (Date.now() >= next_report) {
          next_report = Date.now() + 10000;
          process.stderr.write(`replication.js: published ${published} of ${list.length}\n`);
        }
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  agent.destroy();
  const seconds = (performance.now() - started) / 1000;
  process.stderr.write(
    `replication.js: published ${published} versions in ${seconds.toFixed(1)} s (${(published / seconds).toFixed(0)}/s)\n`
  );
}

// Nearest-rank percentile of sorted `values`.
function percentile(values, p) {
  if (values.length === 0) {
    return null;
  }
  const rank = Math.max(1, Math.ceil(p * values.length));
  return values[Math.min(values.length, rank) - 1];
}

async function lag(args) {
  const primary = required(args, 'primary').replace(/\/$/, '');
  const token = required(args, 'token');
  const replica = required(args, 'replica').replace(/\/$/, '');
  const secret = required(args, 'replica-secret');
  const rate = Number(required(args, 'rate'));
  const duration = Number(required(args, 'duration'));
  const settle_ms = Number(args.settle || 30) * 1000;
  const count = Math.round(rate * duration);
  const list = read_list(required(args, 'list'));
  if (list.length < count) {
    fail(`need ${count} bodies, the list has ${list.length}`);
  }
  const entries = list.slice(0, count).map((entry) => ({
    ...entry,
    payload: fs.readFileSync(entry.body),
    due: 0,
    sent: null,
    acked: null, // time of the primary's 201
    status: null,
    seen: null, // time the replica served a packument with the version
    seen_by: null, // 'feed' or 'sweep'
  }));
  // name → entries not yet seen on the replica.
  const pending = new Map();
  const auth = { Authorization: `Bearer ${secret}` };
  const publish_agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const watch_agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

  const root = await request(watch_agent, replica + '/', { headers: auth });
  if (root.status !== 200) {
    fail(`GET ${replica}/ with the replica's secret: ${root.status} ${root.body.slice(0, 200)}`);
  }
  let since = JSON.parse(root.body).update_seq;
  let stop_watch = false;
  let feed_changes = 0;
  let confirm_gets = 0;
  let sweep_gets = 0;

  // GETs the packument of `name` from the replica and marks every pending
  // version it holds as seen at the time the answer arrived.
  const in_flight = new Map(); // name → a confirm is running; value: another is wanted after it
  async function confirm(name, by) {
    if (in_flight.has(name)) {
      in_flight.set(name, by);
      return;
    }
    in_flight.set(name, null);
    let retries = 0;
    try {
      for (;;) {
        const response = await request(watch_agent, replica + package_path(name), { headers: auth });
        if (by === 'sweep') {
          sweep_gets++;
        } else {
          confirm_gets++;
        }
        let still = [];
        if (response.status === 200) {
          const versions = JSON.parse(response.body).versions || {};
          const waiting = pending.get(name) || [];
          for (const entry of waiting) {
            if (versions[entry.version] !== undefined) {
              entry.seen = response.done;
              entry.seen_by = retries > 0 ? 'retry' : by;
            } else {
              still.push(entry);
            }
          }
          if (still.length > 0) {
            pending.set(name, still);
          } else {
            pending.delete(name);
          }
        }
        const again = in_flight.get(name);
        if (again === null) {
          // The feed named a change of this package, yet a version the
          // primary has acknowledged is missing: either the change was an
          // earlier one, or the packument came from a cache entry not yet
          // invalidated. A few quick re-reads tell the two apart.
          if (by === 'feed' && retries < k_confirm_retries && still.some((entry) => entry.acked !== null)) {
            retries++;
            await new Promise((resolve) => setTimeout(resolve, k_confirm_retry_ms));
            continue;
          }
          break;
        }
        retries = 0;
        by = again;
        in_flight.set(name, null);
      }
    } finally {
      in_flight.delete(name);
    }
  }

  async function watch() {
    while (!stop_watch) {
      let response;
      try {
        response = await request(
          watch_agent,
          `${replica}/_changes?since=${since}&feed=longpoll&timeout=1000&limit=1000`,
          { headers: auth, timeout: 10000 }
        );
      } catch (error) {
        if (stop_watch) {
          break;
        }
        throw error;
      }
      if (response.status !== 200) {
        fail(`replica changes feed: ${response.status} ${response.body.slice(0, 200)}`);
      }
      const feed = JSON.parse(response.body);
      for (const change of feed.results) {
        feed_changes++;
        if (pending.has(change.id)) {
          confirm(change.id, 'feed').catch((error) => fail(`confirm ${change.id}: ${error.message}`));
        }
      }
      since = feed.last_seq;
    }
  }

  // Versions still missing 1 s after their 201 get a GET of their own every
  // 100 ms: an upper bound on their lag even if the feed did not list them.
  const sweeper = setInterval(() => {
    const now = performance.now();
    for (const [name, waiting] of pending) {
      if (waiting.some((entry) => entry.acked !== null && now - entry.acked > 1000)) {
        confirm(name, 'sweep').catch((error) => fail(`sweep ${name}: ${error.message}`));
      }
    }
  }, 100);

  const watching = watch().catch((error) => fail(`watching the replica: ${error.message}`));

  // Publishes on a fixed schedule: each PUT starts at its due time whether or
  // not the earlier ones have been answered (an open-loop load).
  const interval = 1000 / rate;
  const start = performance.now() + 200;
  const publishes = [];
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    entry.due = start + i * interval;
    const wait = entry.due - performance.now();
    if (wait > 0) {
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    if (!pending.has(entry.name)) {
      pending.set(entry.name, []);
    }
    pending.get(entry.name).push(entry);
    entry.sent = performance.now();
    publishes.push(
      put_body(publish_agent, primary, token, entry, entry.payload).then(
        (response) => {
          entry.status = response.status;
          entry.acked = response.done;
          if (response.status !== 201) {
            process.stderr.write(
              `replication.js: PUT ${entry.name}@${entry.version}: ${response.status} ${response.body.slice(0, 200)}\n`
            );
          }
        },
        (error) => {
          entry.status = 0;
          process.stderr.write(`replication.js: PUT ${entry.name}@${entry.version}: ${error.message}\n`);
        }
      )
    );
  }
  const last_sent = performance.now();
  await Promise.all(publishes);
  const settle_deadline = performance.now() + settle_ms;
  while (performance.now() < settle_deadline) {
    const missing = entries.filter((entry) => entry.status === 201 && entry.seen === null);
    if (missing.length === 0) {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  stop_watch = true;
  clearInterval(sweeper);
  watch_agent.destroy();
  publish_agent.destroy();
  await watching;

  const ok = entries.filter((entry) => entry.status === 201);
  const seen = ok.filter((entry) => entry.seen !== null);
  const lags = seen.map((entry) => Math.max(0, entry.seen - entry.acked)).sort((a, b) => a - b);
  const acks = ok.map((entry) => entry.acked - entry.sent).sort((a, b) => a - b);
  const lateness = entries.map((entry) => entry.sent - entry.due).sort((a, b) => a - b);
  const round = (x) => (x === null ? null : Math.round(x * 10) / 10);
  const result = {
    publishes: entries.length,
    rate_target: rate,
    rate_achieved: round((entries.length - 1) / ((last_sent - entries[0].sent) / 1000)),
    send_late_p99_ms: round(percentile(lateness, 0.99)),
    created: ok.length,
    failed: entries.length - ok.length,
    seen: seen.length,
    never_seen: ok.length - seen.length,
    seen_by_sweep: seen.filter((entry) => entry.seen_by === 'sweep').length,
    seen_on_retry: seen.filter((entry) => entry.seen_by === 'retry').length,
    lag_ms: {
      p50: round(percentile(lags, 0.5)),
      p90: round(percentile(lags, 0.9)),
      p99: round(percentile(lags, 0.99)),
      max: round(lags.length ? lags[lags.length - 1] : null),
      mean: round(lags.length ? lags.reduce((a, b) => a + b, 0) / lags.length : null),
    },
    publish_ms: { p50: round(percentile(acks, 0.5)), p99: round(percentile(acks, 0.99)) },
    replica_feed_changes: feed_changes,
    confirm_gets: confirm_gets,
    sweep_gets: sweep_gets,
    samples: seen.map((entry) => ({
      id: `${entry.name}@${entry.version}`,
      sent_ms: round(entry.sent - start),
      publish_ms: round(entry.acked - entry.sent),
      lag_ms: round(Math.max(0, entry.seen - entry.acked)),
      by: entry.seen_by,
    })),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

async function main() {
  const args = parse_args(process.argv.slice(2));
  const command = args._[0];
  if (command === 'publish') {
    await publish(args);
  } else if (command === 'lag') {
    await lag(args);
  } else {
    fail('usage: replication.js publish|lag --list FILE ... (see the header of this file)');
  }
}

main().catch((error) => fail(error.stack || error.message));
