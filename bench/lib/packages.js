#!/usr/bin/env node
// Test data for bench/registry-reads and bench/install: generates a deterministic set of npm
// packages as .tgz files (built directly, not with `npm pack`, so a set of a
// few hundred versions takes a second instead of minutes) and publishes them
// to a registry with the same PUT body `npm publish` sends.
//
// Usage:
//   packages.js generate --out DIR --packages N --versions V [--seed S]
//   packages.js project --out DIR --packages N [--roots R] [--seed S]
//   packages.js publish --dir DIR --registry URL --token TOKEN [--concurrency C]
//
// `generate` writes DIR/tarballs/<name>-<version>.tgz and DIR/manifest.json
// ({"packages":[{"name","versions":[{"version","file","size","shasum","integrity"}]}]}).
// `project` writes the same files for a dependency graph (see project()) and
// DIR/project/package.json, a project whose closure is every package.
// `publish` PUTs every version, in version order per package, and exits
// non-zero with the registry's answer on the first failure.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

// Bumped whenever the generated content changes, so cached sets are rebuilt.
const k_generator_version = 2;

function parse_args(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith('--')) {
      const key = arg.slice(2);
      if (i + 1 >= argv.length) {
        fail(`option --${key}: missing value`);
      }
      args[key] = argv[++i];
    } else {
      args._.push(arg);
    }
  }
  return args;
}

function fail(message) {
  process.stderr.write(`packages.js: error: ${message}\n`);
  process.exit(1);
}

function required(args, key) {
  if (args[key] === undefined || args[key] === '') {
    fail(`option --${key} is required`);
  }
  return args[key];
}

// xorshift128+: a seeded generator, so every run benchmarks the same bytes.
function make_rng(seed) {
  let s0 = BigInt(seed) * 0x9e3779b97f4a7c15n & 0xffffffffffffffffn || 1n;
  let s1 = (s0 ^ 0x6a09e667f3bcc909n) & 0xffffffffffffffffn;
  const next = () => {
    let x = s0;
    const y = s1;
    s0 = y;
    x ^= (x << 23n) & 0xffffffffffffffffn;
    s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    return (s1 + y) & 0xffffffffffffffffn;
  };
  return {
    int(limit) {
      return Number(next() % BigInt(limit));
    },
    bytes(count) {
      // Seed a fast stream cipher from the generator instead of drawing every
      // byte through BigInt arithmetic.
      const key = Buffer.alloc(32);
      for (let i = 0; i < 4; i++) {
        key.writeBigUInt64LE(next(), i * 8);
      }
      const cipher = crypto.createCipheriv('chacha20', key, Buffer.alloc(16));
      return Buffer.concat([cipher.update(Buffer.alloc(count)), cipher.final()]);
    },
  };
}

const k_words = [
  'amber', 'birch', 'cobalt', 'delta', 'ember', 'fjord', 'granite', 'harbor',
  'indigo', 'juniper', 'kelvin', 'lumen', 'meadow', 'nimbus', 'onyx', 'prairie',
  'quartz', 'ridge', 'sierra', 'tundra', 'umber', 'vertex', 'willow', 'xenon',
  'yarrow', 'zephyr',
];
const k_suffixes = ['utils', 'core', 'parser', 'client', 'cli', 'config', 'stream', 'cache', 'log', 'schema'];

function package_name(index) {
  const word = k_words[index % k_words.length];
  const suffix = k_suffixes[Math.floor(index / k_words.length) % k_suffixes.length];
  return `bench-${word}-${suffix}-${String(index).padStart(3, '0')}`;
}

// One ustar header block for a regular file.
function tar_header(name, size, mtime) {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100, 'ascii');
  header.write('0000000\0', 108, 'ascii');
  header.write('0000000\0', 116, 'ascii');
  header.write(size.toString(8).padStart(11, '0') + '\0', 124, 'ascii');
  header.write(mtime.toString(8).padStart(11, '0') + '\0', 136, 'ascii');
  header.write('        ', 148, 'ascii');
  header.write('0', 156, 'ascii');
  header.write('ustar\0', 257, 'ascii');
  header.write('00', 263, 'ascii');
  let sum = 0;
  for (const byte of header) {
    sum += byte;
  }
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return header;
}

function make_tgz(files) {
  // npm pack uses this fixed mtime (1985-10-26) for reproducible tarballs.
  const mtime = 499162500;
  const blocks = [];
  for (const [name, content] of files) {
    const data = Buffer.isBuffer(content) ? content : Buffer.from(content, 'utf8');
    blocks.push(tar_header(`package/${name}`, data.length, mtime), data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) {
      blocks.push(Buffer.alloc(pad));
    }
  }
  blocks.push(Buffer.alloc(1024));
  return zlib.gzipSync(Buffer.concat(blocks), { level: 9 });
}

// The package.json of a generated version: the fields real packages carry.
function package_json_of(name, version, description, index, dependencies) {
  return {
    name,
    version,
    description,
    main: 'index.js',
    types: 'index.d.ts',
    files: ['index.js', 'index.d.ts', 'lib/'],
    scripts: { test: 'node --test' },
    keywords: ['bench', k_words[index % k_words.length], k_suffixes[index % k_suffixes.length]],
    author: 'npme bench <bench@example.com>',
    license: 'MIT',
    repository: { type: 'git', url: `git+https://git.example.com/bench/${name}.git` },
    homepage: `https://git.example.com/bench/${name}#readme`,
    bugs: { url: `https://git.example.com/bench/${name}/issues` },
    engines: { node: '>=18' },
    dependencies,
    devDependencies: { typescript: '^5.4.0' },
  };
}

// Writes the tarball of `pkg` (with `payload` as its module's text) into
// `tarball_dir` and adds the version to `entry`; returns the tarball's size.
function add_version(tarball_dir, entry, pkg, payload) {
  const files = [
    ['package.json', JSON.stringify(pkg, null, 2) + '\n'],
    ['README.md', `# ${pkg.name}\n\n${pkg.description}\n\n\`\`\`js\nconst lib = require('${pkg.name}');\n\`\`\`\n`],
    ['LICENSE', 'MIT License\n\nCopyright (c) npme bench\n'],
    ['index.js', `'use strict';\nmodule.exports = require('./lib/data.js');\n`],
    ['index.d.ts', 'declare const data: string;\nexport = data;\n'],
    ['lib/data.js', `'use strict';\nmodule.exports = '${payload}';\n`],
  ];
  const tgz = make_tgz(files);
  const file = `${pkg.name}-${pkg.version}.tgz`;
  fs.writeFileSync(path.join(tarball_dir, file), tgz);
  entry.versions.push({
    version: pkg.version,
    file,
    size: tgz.length,
    shasum: crypto.createHash('sha1').update(tgz).digest('hex'),
    integrity: 'sha512-' + crypto.createHash('sha512').update(tgz).digest('base64'),
    package_json: pkg,
  });
  return tgz.length;
}

// True when DIR/manifest.json was written by this generator with `key`.
function reusable(out, key) {
  const manifest_path = path.join(out, 'manifest.json');
  if (!fs.existsSync(manifest_path)) {
    return false;
  }
  const existing = JSON.parse(fs.readFileSync(manifest_path, 'utf8'));
  return existing.generator_version === k_generator_version && JSON.stringify(existing.key) === JSON.stringify(key);
}

function fresh_dir(out) {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(path.join(out, 'tarballs'), { recursive: true });
  return path.join(out, 'tarballs');
}

function generate(args) {
  const out = required(args, 'out');
  const package_count = Number(required(args, 'packages'));
  const version_count = Number(required(args, 'versions'));
  const seed = Number(args.seed || 42);
  if (!(package_count > 0) || !(version_count > 0)) {
    fail('--packages and --versions must be positive numbers');
  }
  const key = { kind: 'flat', seed, package_count, version_count };
  if (reusable(out, key)) {
    process.stdout.write(`${out}: reusing ${package_count} packages x ${version_count} versions\n`);
    return;
  }
  const tarball_dir = fresh_dir(out);
  const rng = make_rng(seed);
  const manifest = { generator_version: k_generator_version, key, packages: [] };
  let total_bytes = 0;
  for (let p = 0; p < package_count; p++) {
    const name = package_name(p);
    const entry = { name, versions: [] };
    // A few dependencies on packages generated earlier, as real trees have.
    const dependencies = {};
    const dependency_count = p === 0 ? 0 : 1 + rng.int(Math.min(4, p));
    for (let d = 0; d < dependency_count; d++) {
      dependencies[package_name(rng.int(p))] = `^1.${rng.int(version_count)}.0`;
    }
    for (let v = 0; v < version_count; v++) {
      const version = `1.${v}.0`;
      // Random bytes, base64-encoded into a JS module: gzip gets them back to
      // about their raw size, so the tarballs land between ~5 and ~50 KB.
      const payload_bytes = 4000 + rng.int(45000);
      const payload = rng.bytes(payload_bytes).toString('base64');
      const description = `Benchmark package ${name}: ${k_words[(p + v) % k_words.length]} helpers for ${k_suffixes[p % k_suffixes.length]} code.`;
      total_bytes += add_version(tarball_dir, entry, package_json_of(name, version, description, p, dependencies), payload);
    }
    manifest.packages.push(entry);
  }
  fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(manifest));
  const versions = package_count * version_count;
  process.stdout.write(`${out}: generated ${package_count} packages x ${version_count} versions, ` +
                       `${(total_bytes / 1024).toFixed(0)} KiB of tarballs (mean ${(total_bytes / versions / 1024).toFixed(1)} KiB)\n`);
}

// `project`: N packages whose versions form a realistic graph, and a project
// that depends on the first R of them. Package i depends on 0-5 packages
// after it (so the graph is acyclic and has depth): half of the picks land
// near i (chains), half lean towards the last packages (small utilities that
// many share). A quarter of the packages have a second major and some a
// third; a dependent asks for the newest major mostly, an older one
// otherwise, so some names are installed at two versions (nested). Every
// package past the roots gets a dependent with a smaller index, so the
// project's closure holds every name.
function project(args) {
  const out = required(args, 'out');
  const count = Number(required(args, 'packages'));
  const roots = Number(args.roots || Math.max(1, Math.round(count / 16)));
  const seed = Number(args.seed || 14);
  if (!(count > roots && roots > 0)) {
    fail('need --packages > --roots > 0');
  }
  const key = { kind: 'project', seed, count, roots };
  if (reusable(out, key)) {
    process.stdout.write(`${out}: reusing a project over ${count} packages\n`);
    return;
  }
  const tarball_dir = fresh_dir(out);
  const rng = make_rng(seed);
  const packages = [];
  for (let i = 0; i < count; i++) {
    const roll = rng.int(100);
    const majors = roll < 8 ? 3 : roll < 25 ? 2 : 1;
    // Per major, 1-4 minors; a minor has 0-1 patch releases, the newest 0-2.
    const versions = [];
    const minors_of = [];
    for (let major = 1; major <= majors; major++) {
      const minors = 1 + rng.int(4);
      minors_of.push(minors);
      for (let minor = 0; minor < minors; minor++) {
        const patches = minor === minors - 1 ? rng.int(3) : rng.int(2);
        for (let patch = 0; patch <= patches; patch++) {
          versions.push(`${major}.${minor}.${patch}`);
        }
      }
    }
    packages.push({ name: package_name(i), versions, minors_of, deps: new Map() });
  }
  const range_of = (j) => {
    const p = packages[j];
    const newest = p.minors_of.length;
    const major = newest === 1 || rng.int(4) > 0 ? newest : 1 + rng.int(newest - 1);
    const minor = rng.int(p.minors_of[major - 1]);
    return `${rng.int(10) === 0 ? '~' : '^'}${major}.${minor}.0`;
  };
  const leaves = Math.floor(count * 0.8);
  for (let i = 0; i < leaves; i++) {
    const wanted = rng.int(6);
    for (let d = 0; d < wanted; d++) {
      const after = count - i - 1;
      const j = rng.int(2) === 0 ? i + 1 + rng.int(Math.min(60, after))
                                 : i + 1 + Math.floor(after * Math.sqrt(rng.int(1000000) / 1000000));
      if (!packages[i].deps.has(j)) {
        packages[i].deps.set(j, range_of(j));
      }
    }
  }
  const has_dependent = new Array(count).fill(false);
  for (const p of packages) {
    for (const j of p.deps.keys()) {
      has_dependent[j] = true;
    }
  }
  for (let k = roots; k < count; k++) {
    if (!has_dependent[k]) {
      packages[Math.max(0, k - 40) + rng.int(Math.min(40, k))].deps.set(k, range_of(k));
    }
  }

  const manifest = { generator_version: k_generator_version, key, packages: [] };
  let total_bytes = 0;
  let version_count = 0;
  for (let i = 0; i < count; i++) {
    const p = packages[i];
    const dependencies = {};
    for (const [j, range] of [...p.deps.entries()].sort((a, b) => a[0] - b[0])) {
      dependencies[packages[j].name] = range;
    }
    const entry = { name: p.name, versions: [] };
    for (const version of p.versions) {
      // A few KB of random text: tarballs of ~1-8 KB, as most packages are.
      const payload = rng.bytes(Math.floor(400 * Math.exp(rng.int(1000) / 1000 * Math.log(15)))).toString('base64');
      const description = `Benchmark package ${p.name}: ${k_words[(i + version.length) % k_words.length]} helpers for ${k_suffixes[i % k_suffixes.length]} code.`;
      total_bytes += add_version(tarball_dir, entry, package_json_of(p.name, version, description, i, dependencies), payload);
      version_count++;
    }
    manifest.packages.push(entry);
  }
  const project_json = {
    name: 'npme-bench-install-project',
    version: '1.0.0',
    private: true,
    description: 'bench/install: a project whose dependency closure holds every generated package',
    license: 'UNLICENSED',
    dependencies: Object.fromEntries(packages.slice(0, roots).map((p) => [p.name, `^${p.minors_of.length}.0.0`])),
  };
  fs.mkdirSync(path.join(out, 'project'), { recursive: true });
  fs.writeFileSync(path.join(out, 'project', 'package.json'), JSON.stringify(project_json, null, 2) + '\n');
  fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(manifest));
  const summary = {
    packages: count,
    versions: version_count,
    roots,
    edges: packages.reduce((n, p) => n + p.deps.size, 0),
    tarball_kib_mean: Number((total_bytes / version_count / 1024).toFixed(1)),
  };
  process.stdout.write(`${out}: generated ${JSON.stringify(summary)}\n`);
}

function publish_body(registry, entry, version) {
  const data = fs.readFileSync(version.tarball_path);
  const doc = {
    ...version.package_json,
    _id: `${entry.name}@${version.version}`,
    _npmVersion: '10.8.2',
    _nodeVersion: process.versions.node,
    dist: {
      integrity: version.integrity,
      shasum: version.shasum,
      tarball: `${registry}/${entry.name}/-/${version.file}`,
    },
  };
  return JSON.stringify({
    _id: entry.name,
    name: entry.name,
    description: version.package_json.description,
    'dist-tags': { latest: version.version },
    versions: { [version.version]: doc },
    access: null,
    _attachments: {
      [version.file]: { content_type: 'application/octet-stream', data: data.toString('base64'), length: data.length },
    },
  });
}

async function publish(args) {
  const dir = required(args, 'dir');
  const registry = required(args, 'registry').replace(/\/+$/, '');
  const token = required(args, 'token');
  const concurrency = Number(args.concurrency || 4);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  for (const entry of manifest.packages) {
    for (const version of entry.versions) {
      version.tarball_path = path.join(dir, 'tarballs', version.file);
    }
  }
  const started = process.hrtime.bigint();
  let published = 0;
  let next_package = 0;
  // Versions of one package go in order (each PUT adds to the packument);
  // different packages go in parallel, as a CI fleet would publish them.
  async function worker() {
    while (next_package < manifest.packages.length) {
      const entry = manifest.packages[next_package++];
      for (const version of entry.versions) {
        const url = `${registry}/${encodeURIComponent(entry.name)}`;
        let response;
        try {
          response = await fetch(url, {
            method: 'PUT',
            headers: {
              'content-type': 'application/json',
              authorization: `Bearer ${token}`,
              'npm-command': 'publish',
            },
            body: publish_body(registry, entry, version),
            signal: AbortSignal.timeout(30000),
          });
        } catch (error) {
          fail(`publish ${entry.name}@${version.version} to ${registry}: ${error.cause ? error.cause.message : error.message}`);
        }
        const text = await response.text();
        if (!response.ok) {
          fail(`publish ${entry.name}@${version.version} to ${registry}: HTTP ${response.status} ${text.slice(0, 300)}`);
        }
        published++;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(`${registry}: published ${published} versions in ${seconds.toFixed(1)} s\n`);
}

const args = parse_args(process.argv.slice(2));
const command = args._[0];
if (command === 'generate') {
  generate(args);
} else if (command === 'project') {
  project(args);
} else if (command === 'publish') {
  publish(args).catch((error) => fail(error.message));
} else {
  fail('usage: packages.js generate|publish [options] (see the header of this file)');
}
