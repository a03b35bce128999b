#!/usr/bin/env node
// Helpers of bench/uplink: the generated dependency tree, the latency passes
// and the publishes of the local reference instance.
//
// Usage:
//   uplink.js tree --out DIR [--packages N] [--roots R] [--sample S] [--seed X]
//   uplink.js latency --names FILE --a LABEL=URL [--b LABEL=URL] [--passes P]
//                     [--pause-ms MS] [--out FILE]
//   uplink.js publish-local --from URL --to URL --token T --names FILE [--concurrency C]
//
// `tree` writes DIR/publish.json (the body of the stand-in uplink's
// POST /-/control/publish-many: N packages with 2-4 versions 1.x.0, some a
// 2.0.0, every version with the same dependencies on later packages through
// ^ ranges and a module of random text so the tarballs weigh 1-30 KB),
// DIR/project/package.json (depends on the first R packages; every other
// package has a dependent with a smaller index, so the closure is all N),
// DIR/expected.txt (the name@version set npm must install: for every range,
// the highest version satisfying it), DIR/names.txt (all names) and
// DIR/sample.json + DIR/sample.txt (S packages drawn at random: the body and
// the names used for the latency passes).
//
// `latency` GETs the abbreviated packument of every name in FILE, one
// request at a time, over one keep-alive connection per server, and times
// each from the request to the last byte of the body. With --b, every name
// goes to both servers in turn, the order alternating from name to name.
// --passes repeats the list (each pass waits --pause-ms first). Prints JSON:
// {"LABEL":{"samples_ms":[...],"p50_ms","p99_ms","mean_ms","statuses":{..},
// "warnings":N,"errors":N}, ...}.
//
// `publish-local` copies every version of the names in FILE from the
// stand-in (its full packument and tarballs) to an npme instance with the
// PUT body `npm publish` sends, versions in order.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');

function fail(message) {
  process.stderr.write(`uplink.js: error: ${message}\n`);
  process.exit(1);
}

function parse_args(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) {
      if (i + 1 >= argv.length) fail(`option ${argv[i]}: missing value`);
      args[argv[i].slice(2)] = argv[++i];
    } else {
      args._.push(argv[i]);
    }
  }
  return args;
}

function required(args, key) {
  if (args[key] === undefined || args[key] === '') fail(`option --${key} is required`);
  return args[key];
}

// mulberry32: a small seeded generator, so every run builds the same tree.
function make_rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int(limit) {
      return Math.floor(next() * limit);
    },
    bytes(count) {
      const key = Buffer.alloc(32);
      for (let i = 0; i < 8; i++) key.writeUInt32LE(Math.floor(next() * 4294967296) >>> 0, i * 4);
      const cipher = crypto.createCipheriv('chacha20', key, Buffer.alloc(16));
      return Buffer.concat([cipher.update(Buffer.alloc(count)), cipher.final()]);
    },
  };
}

const k_words = ['acorn', 'basalt', 'cedar', 'dune', 'elm', 'flint', 'grove', 'heath', 'iris', 'jade', 'kite',
                 'lark', 'moss', 'nectar', 'oak', 'pine', 'quill', 'reed', 'sage', 'thorn', 'vale', 'wren'];
const k_kinds = ['util', 'core', 'parse', 'fmt', 'io', 'cfg', 'net', 'cache', 'log', 'path', 'time', 'color'];

function package_name(index) {
  return `up-${k_words[index % k_words.length]}-${k_kinds[Math.floor(index / k_words.length) % k_kinds.length]}-` +
         String(index).padStart(3, '0');
}

// ---------------------------------------------------------------- tree

function tree(args) {
  const out = required(args, 'out');
  const count = Number(args.packages || 330);
  const roots = Number(args.roots || 40);
  const sample_count = Number(args.sample || 200);
  const seed = Number(args.seed || 20261202);
  if (!(count > roots && roots > 0 && sample_count > 0 && sample_count <= count)) {
    fail('need --packages > --roots > 0 and 0 < --sample <= --packages');
  }
  const rng = make_rng(seed);
  const packages = [];
  for (let i = 0; i < count; i++) {
    const minors = 2 + rng.int(3); // 1.0.0 .. 1.(minors-1).0
    const versions = [];
    for (let m = 0; m < minors; m++) versions.push(`1.${m}.0`);
    if (rng.next() < 0.3) versions.push('2.0.0');
    packages.push({ name: package_name(i), versions, deps: new Map() });
  }
  // A range on package j: a ^1.m.0 of one of its minors, or ^2.0.0 when it has one.
  const range_of = (j) => {
    const p = packages[j];
    if (p.versions.includes('2.0.0') && rng.next() < 0.5) return '^2.0.0';
    const minors = p.versions.filter((v) => v.startsWith('1.')).length;
    return `^1.${rng.int(minors)}.0`;
  };
  for (let i = 0; i < count; i++) {
    const wanted = rng.int(5); // 0-4 dependencies on packages after this one
    for (let d = 0; d < wanted && i + 1 < count; d++) {
      const j = i + 1 + rng.int(Math.min(80, count - i - 1));
      if (!packages[i].deps.has(j)) packages[i].deps.set(j, range_of(j));
    }
  }
  // Every package past the roots gets a dependent with a smaller index: by
  // induction from the roots, the project's closure is every package.
  const has_parent = new Array(count).fill(false);
  for (const p of packages) for (const j of p.deps.keys()) has_parent[j] = true;
  for (let k = roots; k < count; k++) {
    if (!has_parent[k]) {
      const parent = Math.max(0, k - 40) + rng.int(Math.min(40, k));
      packages[parent].deps.set(k, range_of(k));
    }
  }

  const specs = [];
  let text_bytes = 0;
  for (const p of packages) {
    const dependencies = {};
    for (const [j, range] of [...p.deps.entries()].sort((a, b) => a[0] - b[0])) {
      dependencies[packages[j].name] = range;
    }
    p.dependencies = dependencies;
    for (const version of p.versions) {
      // Random bytes as base64 text: gzip keeps about 3/4 of it.
      const raw = Math.floor(1000 * Math.exp(rng.next() * Math.log(30)));
      const data = rng.bytes(raw).toString('base64');
      text_bytes += data.length;
      specs.push({
        name: p.name,
        version,
        dependencies,
        description: `Bench package ${p.name}, an uplink package for bench/uplink.`,
        files: {
          'lib/data.js': `'use strict';\nmodule.exports = '${data}';\n`,
          'README.md': `# ${p.name}\n\nGenerated by bench/lib/uplink.js (seed ${seed}).\n`,
        },
      });
    }
  }

  // What npm must install: for every range reached from the project, the
  // highest version of the package that satisfies it.
  const satisfies = (version, range) => {
    const [rmaj, rmin] = range.slice(1).split('.').map(Number);
    const [vmaj, vmin] = version.split('.').map(Number);
    return vmaj === rmaj && vmin >= rmin;
  };
  const index_of = new Map(packages.map((p, i) => [p.name, i]));
  const project_deps = {};
  for (let r = 0; r < roots; r++) {
    project_deps[packages[r].name] = packages[r].versions.includes('2.0.0') && rng.next() < 0.5 ? '^2.0.0' : '^1.0.0';
  }
  const chosen = new Set();
  const queue = Object.entries(project_deps);
  while (queue.length) {
    const [name, range] = queue.pop();
    const p = packages[index_of.get(name)];
    const best = p.versions.filter((v) => satisfies(v, range)).pop();
    if (!best) fail(`no version of ${name} satisfies ${range}`);
    const key = `${name}@${best}`;
    if (chosen.has(key)) continue;
    chosen.add(key);
    queue.push(...Object.entries(p.dependencies));
  }
  const closure_names = new Set([...chosen].map((k) => k.slice(0, k.lastIndexOf('@'))));

  // The sample for the latency passes, drawn without replacement.
  const order = packages.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const sample = new Set(order.slice(0, sample_count).map((i) => packages[i].name));

  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(path.join(out, 'project'), { recursive: true });
  fs.writeFileSync(path.join(out, 'publish.json'), JSON.stringify({ packages: specs }));
  fs.writeFileSync(path.join(out, 'sample.json'), JSON.stringify({ packages: specs.filter((s) => sample.has(s.name)) }));
  fs.writeFileSync(path.join(out, 'sample.txt'), [...sample].join('\n') + '\n');
  fs.writeFileSync(path.join(out, 'names.txt'), packages.map((p) => p.name).join('\n') + '\n');
  fs.writeFileSync(path.join(out, 'expected.txt'), [...chosen].sort().join('\n') + '\n');
  fs.writeFileSync(path.join(out, 'project', 'package.json'), JSON.stringify({
    name: 'npme-bench-uplink-project',
    version: '1.0.0',
    private: true,
    description: 'bench/uplink: a project whose dependency closure covers every generated package',
    license: 'UNLICENSED',
    dependencies: project_deps,
  }, null, 2) + '\n');
  const summary = {
    seed,
    packages: count,
    versions: specs.length,
    roots,
    edges: packages.reduce((n, p) => n + p.deps.size, 0),
    closure_packages: closure_names.size,
    closure_versions: chosen.size,
    sample: sample.size,
    mean_text_kib: Number((text_bytes / specs.length / 1024).toFixed(1)),
  };
  fs.writeFileSync(path.join(out, 'summary.json'), JSON.stringify(summary) + '\n');
  process.stdout.write(JSON.stringify(summary) + '\n');
}

// ---------------------------------------------------------------- latency

function get(agent, base, name, headers, timeout_ms) {
  const url = new URL(`${base}/${name.replace('/', '%2f')}`);
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const req = http.request({ agent, host: url.hostname, port: url.port, path: url.pathname, method: 'GET', headers },
                             (res) => {
                               let bytes = 0;
                               res.on('data', (chunk) => { bytes += chunk.length; });
                               res.on('end', () => {
                                 resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, status: res.statusCode,
                                           warning: res.headers.warning || null, bytes });
                               });
                               res.on('error', (error) => resolve({ error: error.message }));
                             });
    req.setTimeout(timeout_ms, () => req.destroy(new Error(`no answer within ${timeout_ms} ms`)));
    req.on('error', (error) => resolve({ error: error.message }));
    req.end();
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(sorted.length, rank) - 1];
}

async function latency(args) {
  const names = fs.readFileSync(required(args, 'names'), 'utf8').split('\n').filter(Boolean);
  const passes = Number(args.passes || 1);
  const pause_ms = Number(args['pause-ms'] || 0);
  const timeout_ms = Number(args['timeout-ms'] || 15000);
  const targets = [];
  for (const key of ['a', 'b']) {
    if (args[key] === undefined) continue;
    const at = args[key].indexOf('=');
    if (at <= 0) fail(`--${key} wants LABEL=URL`);
    targets.push({
      label: args[key].slice(0, at),
      base: args[key].slice(at + 1).replace(/\/+$/, ''),
      agent: new http.Agent({ keepAlive: true, maxSockets: 1 }),
      samples: [],
      statuses: {},
      warnings: 0,
      errors: 0,
      first_error: null,
      first_warning: null,
    });
  }
  if (!targets.length) fail('--a LABEL=URL is required');
  const headers = { accept: 'application/vnd.npm.install-v1+json', 'user-agent': 'npme-bench-uplink' };
  for (let pass = 0; pass < passes; pass++) {
    if (pause_ms > 0) await new Promise((resolve) => setTimeout(resolve, pause_ms));
    for (let i = 0; i < names.length; i++) {
      const order = i % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const r = await get(t.agent, t.base, names[i], headers, timeout_ms);
        if (r.error) {
          t.errors++;
          t.first_error = t.first_error || `${names[i]}: ${r.error}`;
          continue;
        }
        t.samples.push(r.ms);
        t.statuses[r.status] = (t.statuses[r.status] || 0) + 1;
        if (r.status !== 200) t.first_error = t.first_error || `${names[i]}: HTTP ${r.status}`;
        if (r.warning) {
          t.warnings++;
          t.first_warning = t.first_warning || r.warning;
        }
      }
    }
  }
  const result = {};
  for (const t of targets) {
    t.agent.destroy();
    const sorted = [...t.samples].sort((a, b) => a - b);
    const round3 = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
    result[t.label] = {
      url: t.base,
      requests: t.samples.length + t.errors,
      p50_ms: round3(percentile(sorted, 50)),
      p90_ms: round3(percentile(sorted, 90)),
      p99_ms: round3(percentile(sorted, 99)),
      max_ms: round3(sorted.length ? sorted[sorted.length - 1] : null),
      mean_ms: round3(sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null),
      statuses: t.statuses,
      warnings: t.warnings,
      first_warning: t.first_warning,
      errors: t.errors,
      first_error: t.first_error,
      samples_ms: t.samples.map(round3),
    };
  }
  const text = JSON.stringify(result) + '\n';
  if (args.out) fs.writeFileSync(args.out, text);
  else process.stdout.write(text);
}

// ---------------------------------------------------------------- publish-local

async function fetch_ok(url, options, what) {
  let response;
  try {
    response = await fetch(url, { ...options, signal: AbortSignal.timeout(30000) });
  } catch (error) {
    fail(`${what}: ${error.cause ? error.cause.message : error.message}`);
  }
  if (!response.ok) fail(`${what}: HTTP ${response.status} ${(await response.text()).slice(0, 300)}`);
  return response;
}

async function publish_local(args) {
  const from = required(args, 'from').replace(/\/+$/, '');
  const to = required(args, 'to').replace(/\/+$/, '');
  const token = required(args, 'token');
  const names = fs.readFileSync(required(args, 'names'), 'utf8').split('\n').filter(Boolean);
  const concurrency = Number(args.concurrency || 4);
  let next = 0;
  let published = 0;
  const started = process.hrtime.bigint();
  async function worker() {
    while (next < names.length) {
      const name = names[next++];
      const doc = await (await fetch_ok(`${from}/${name}`, { headers: { accept: 'application/json' } },
                                        `GET ${from}/${name}`)).json();
      for (const [version, manifest] of Object.entries(doc.versions)) {
        const file = path.basename(new URL(manifest.dist.tarball).pathname);
        const data = Buffer.from(await (await fetch_ok(manifest.dist.tarball, {}, `GET ${manifest.dist.tarball}`)).arrayBuffer());
        const body = {
          _id: name,
          name,
          description: manifest.description,
          'dist-tags': { latest: version },
          versions: {
            [version]: {
              name,
              version,
              description: manifest.description,
              main: manifest.main,
              dependencies: manifest.dependencies,
              _id: `${name}@${version}`,
              _npmVersion: '10.8.2',
              _nodeVersion: process.versions.node,
              dist: { integrity: manifest.dist.integrity, shasum: manifest.dist.shasum, tarball: `${to}/${name}/-/${file}` },
            },
          },
          access: null,
          _attachments: { [file]: { content_type: 'application/octet-stream', data: data.toString('base64'), length: data.length } },
        };
        await fetch_ok(`${to}/${encodeURIComponent(name)}`, {
          method: 'PUT',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, 'npm-command': 'publish' },
          body: JSON.stringify(body),
        }, `publish ${name}@${version} to ${to}`);
        published++;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(`${to}: published ${published} versions of ${names.length} packages in ${seconds.toFixed(1)} s\n`);
}

const args = parse_args(process.argv.slice(2));
const command = args._[0];
const run = { tree, latency, 'publish-local': publish_local }[command];
if (!run) fail('usage: uplink.js tree|latency|publish-local [options] (see the header of this file)');
Promise.resolve(run(args)).catch((error) => fail(error.stack || error.message));
