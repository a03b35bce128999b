#!/usr/bin/env node
// Test data for bench/registry-reads, bench/install and bench/big-package:
// generates a deterministic set of npm packages as .tgz files (built
// directly, not with `npm pack`, so a set of a few hundred versions takes a
// second instead of minutes) and publishes them to a registry with the same
// PUT body `npm publish` sends.
//
// Usage:
//   packages.js generate --out DIR --packages N --versions V|mix [--seed S]
//                        [--first-version F] [--payload-bytes MIN:MAX]
//                        [--manifests plain|rich] [--dev-dependencies D]
//   packages.js project --out DIR --packages N [--roots R] [--seed S]
//   packages.js publish --dir DIR --registry URL --token TOKEN [--concurrency C]
//                       [--timings FILE]
//   packages.js bodies --dir DIR --registry URL --out DIR
//
// `generate` writes DIR/tarballs/<name>-<version>.tgz and DIR/manifest.json
// ({"packages":[{"name","versions":[{"version","file","size","shasum","integrity"}]}]}).
// Versions are 1.F.0 .. 1.(F+V-1).0 (F = --first-version, default 0).
// `--versions mix` gives each package the version count, and plain manifests
// the devDependencies count, of a package of a real install (k_real_mix). The
// tarballs carry a module of base64 text from MIN to MAX random bytes
// (default 4000:48999, tarballs of ~5-50 KB). `--manifests rich` gives every
// version the package.json of a large TypeScript project (D devDependencies,
// default 30, whose ranges move from version to version; 13 scripts, a
// gitHead, bin, exports, directories, funding, ...): ~3.4 KB as JSON, ~4 KB
// per version in a full packument, as @types/node or typescript carry. The defaults make the
// sets bench/registry-reads always used (and keep their cache key).
// `project` writes the same files for a dependency graph (see project()) and
// DIR/project/package.json, a project whose closure is every package.
// `publish` PUTs every version, in version order per package, and exits
// non-zero with the registry's answer on the first failure; --timings FILE
// gets one line "version ms" per publish (request to the end of the answer).
// `bodies` writes the PUT body of every version of DIR, as `publish` sends
// it to URL, into OUT/<name>-<version>.json and lists them in OUT/list.txt
// ("name version body-file" lines, the list lib/publish.js reads).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

// Bumped whenever the generated content changes, so cached sets are rebuilt.
const k_generator_version = 3;

// The 66 packages of `npm install express@5` as the public registry had them
// on 2026-12-04, sorted by version count: [versions, devDependencies of the
// latest version]. Median 11 versions (quartiles 5 and 34) and 11
// devDependencies. Their abbreviated packuments, fetched without
// compression, shrink 7.4x in total under gzip -6 (the median one 5.4x).
const k_real_mix = [
  [1, 17], [2, 15], [2, 16], [2, 17], [2, 16], [2, 13], [2, 19], [2, 14], [3, 9], [3, 17], [3, 21],
  [3, 18], [3, 13], [4, 1], [4, 11], [4, 21], [5, 2], [5, 13], [5, 13], [5, 16], [6, 2], [6, 9], [6, 16],
  [7, 2], [7, 1], [7, 12], [7, 1], [7, 2], [8, 2], [8, 15], [9, 9], [9, 0], [11, 7], [11, 11], [12, 6], [12, 4],
  [13, 2], [13, 11], [14, 7], [15, 12], [17, 13], [17, 18], [18, 4], [19, 4], [25, 9], [25, 5], [28, 12],
  [28, 12], [32, 6], [34, 8], [34, 10], [34, 3], [35, 27], [36, 10], [41, 5], [53, 17], [54, 11],
  [57, 9], [63, 13], [66, 10], [68, 11], [70, 9], [77, 11], [87, 5], [145, 32], [290, 16],
];

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
function package_json_of(name, version, description, index, dependencies, devDependencies = { typescript: '^5.4.0' }) {
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
    devDependencies,
  };
}

// Dev tools of a large TypeScript project (names only: nothing installs them).
const k_dev_tools = [
  '@types/node', '@types/jest', '@typescript-eslint/eslint-plugin', '@typescript-eslint/parser', 'eslint',
  'eslint-config-prettier', 'eslint-plugin-import', 'prettier', 'jest', 'ts-jest', 'typescript', 'rimraf',
  'rollup', '@rollup/plugin-node-resolve', '@rollup/plugin-commonjs', '@rollup/plugin-typescript', 'esbuild',
  'tsx', 'mocha', 'chai', 'sinon', 'nyc', 'c8', 'husky', 'lint-staged', 'typedoc', 'semantic-release',
  'cross-env', 'npm-run-all', 'chokidar-cli', 'glob', 'fast-check', 'benchmark', 'source-map-support',
  'del-cli', '@microsoft/api-extractor', 'dprint', 'knip', 'publint', 'playwright',
];

// The range of dev tool `i` at version index `v`: majors, minors and patches
// move at different paces per tool, so neighbouring versions share most of
// their ranges (as real packuments do, which is what gzip sees).
function dev_range(i, v) {
  const major = 1 + (i % 7) + Math.floor(v / (400 + 37 * i));
  const minor = Math.floor(v / (20 + i)) % 30;
  const patch = Math.floor(v / (3 + (i % 5))) % 12;
  return `${i % 4 === 0 ? '~' : '^'}${major}.${minor}.${patch}`;
}

// `count` dev tools with their ranges at version index `v`.
function dev_dependencies_of(count, v) {
  const devDependencies = {};
  for (let i = 0; i < count; i++) {
    devDependencies[i < k_dev_tools.length ? k_dev_tools[i] : `@bench-dev/tool-${String(i).padStart(3, '0')}`] = dev_range(i, v);
  }
  return devDependencies;
}

// The package.json of version index `v` of a large TypeScript project:
// package_json_of()'s fields and what such projects add, ~3.4 KB as JSON.
function rich_package_json_of(name, version, description, index, v, dev_count, rng) {
  const pkg = package_json_of(name, version, description, index, {
    tslib: `^2.${Math.floor(v / 150) % 9}.${v % 4}`,
    'undici-types': `~${5 + Math.floor(v / 700)}.${Math.floor(v / 40) % 25}.${v % 3}`,
  });
  const short = name.replace(/^bench-/, '');
  const site = `https://git.example.com/bench/${name}`;
  const devDependencies = dev_dependencies_of(dev_count, v);
  return {
    ...pkg,
    description: `${description} Typed APIs, streaming parsers and a command line for ${short}; ships ESM and CommonJS builds with declarations.`,
    main: './dist/index.cjs',
    module: './dist/index.mjs',
    types: './dist/index.d.ts',
    bin: { [short]: './bin/cli.js', [`${short}-server`]: './bin/server.js' },
    exports: {
      '.': { types: './dist/index.d.ts', import: './dist/index.mjs', require: './dist/index.cjs' },
      './cli': { types: './dist/cli.d.ts', import: './dist/cli.mjs', require: './dist/cli.cjs' },
      './package.json': './package.json',
    },
    files: ['dist/', 'bin/', 'README.md', 'LICENSE', 'CHANGELOG.md', '!dist/**/*.map'],
    sideEffects: false,
    scripts: {
      build: 'npm run clean && npm run build:types && npm run build:esm && npm run build:cjs',
      'build:types': 'tsc -p tsconfig.types.json --emitDeclarationOnly --declarationMap',
      'build:esm': 'esbuild src/index.ts --bundle --format=esm --outfile=dist/index.mjs --target=node18',
      'build:cjs': 'esbuild src/index.ts --bundle --format=cjs --outfile=dist/index.cjs --target=node18',
      clean: 'rimraf dist coverage .tsbuildinfo',
      test: 'jest --config jest.config.js --coverage',
      'test:ci': 'jest --config jest.config.js --ci --runInBand --reporters=default --reporters=jest-junit',
      lint: 'eslint "src/**/*.ts" "test/**/*.ts" --max-warnings 0',
      format: 'prettier --write "src/**/*.{ts,json,md}" "test/**/*.ts"',
      typecheck: 'tsc --noEmit -p tsconfig.json',
      docs: 'typedoc --out docs/api --excludePrivate src/index.ts',
      prepare: 'husky install',
      prepublishOnly: 'npm run lint && npm run typecheck && npm run test && npm run build',
      release: 'semantic-release --branches main --branches next',
    },
    keywords: ['bench', k_words[index % k_words.length], k_suffixes[index % k_suffixes.length], 'typescript',
               'parser', 'streaming', 'cli', 'esm', 'types', 'registry'],
    author: { name: 'npme bench', email: 'bench@example.com', url: 'https://example.com/bench' },
    contributors: [
      { name: 'Ada Example', email: 'ada@example.com' },
      { name: 'Grace Example', email: 'grace@example.com' },
    ],
    repository: { type: 'git', url: `git+${site}.git`, directory: `packages/${short}` },
    homepage: `${site}#readme`,
    bugs: { url: `${site}/issues`, email: 'bugs@example.com' },
    engines: { node: '>=18.0.0', npm: '>=9' },
    directories: { lib: 'dist', bin: 'bin', doc: 'docs', test: 'test', example: 'examples' },
    funding: [
      { type: 'github', url: 'https://github.com/sponsors/npme-bench' },
      { type: 'opencollective', url: 'https://opencollective.com/npme-bench' },
    ],
    publishConfig: { access: 'public', provenance: true },
    packageManager: 'npm@10.8.2',
    devDependencies,
    gitHead: rng.bytes(20).toString('hex'),
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

// "MIN:MAX" of --payload-bytes, or null for the default.
function payload_range(text) {
  if (text === undefined) {
    return null;
  }
  const match = /^([0-9]+):([0-9]+)$/.exec(text);
  if (!match || Number(match[1]) > Number(match[2])) {
    fail(`option --payload-bytes: expected MIN:MAX with MIN <= MAX, got '${text}'`);
  }
  return [Number(match[1]), Number(match[2])];
}

function generate(args) {
  const out = required(args, 'out');
  const package_count = Number(required(args, 'packages'));
  const mix = required(args, 'versions') === 'mix';
  const version_count = mix ? 0 : Number(required(args, 'versions'));
  const seed = Number(args.seed || 42);
  const first_version = Number(args['first-version'] || 0);
  const payload = payload_range(args['payload-bytes']);
  const manifests = args.manifests || 'plain';
  const dev_count = Number(args['dev-dependencies'] || 30);
  if (!(package_count > 0) || !(mix || version_count > 0)) {
    fail('--packages and --versions must be positive numbers');
  }
  if (!(Number.isInteger(first_version) && first_version >= 0) || !(Number.isInteger(dev_count) && dev_count >= 0)) {
    fail('--first-version and --dev-dependencies must be non-negative integers');
  }
  if (manifests !== 'plain' && manifests !== 'rich') {
    fail(`option --manifests: expected plain or rich, got '${manifests}'`);
  }
  // The options only enter the key when set, so the sets cached before they
  // existed stay valid.
  const key = { kind: 'flat', seed, package_count, version_count: mix ? 'mix' : version_count };
  if (first_version !== 0) {
    key.first_version = first_version;
  }
  if (payload !== null) {
    key.payload_bytes = payload;
  }
  if (manifests === 'rich') {
    key.manifests = manifests;
    key.dev_dependencies = dev_count;
  }
  const versions_label = mix ? 'mixed (k_real_mix)' : version_count;
  if (reusable(out, key)) {
    process.stdout.write(`${out}: reusing ${package_count} packages x ${versions_label} versions\n`);
    return;
  }
  const tarball_dir = fresh_dir(out);
  // A set that continues another (--first-version) draws other bytes.
  const rng = make_rng(seed + first_version * 7919);
  // Per package: [versions, devDependencies]. A mix takes evenly spaced
  // quantiles of k_real_mix and shuffles them, so that neither the packages
  // depended on nor the ones depending on them are all small.
  const shapes = [];
  for (let p = 0; p < package_count; p++) {
    shapes.push(mix ? k_real_mix[Math.floor((p + 0.5) * k_real_mix.length / package_count)] : [version_count, null]);
  }
  if (mix) {
    for (let p = package_count - 1; p > 0; p--) {
      const q = rng.int(p + 1);
      [shapes[p], shapes[q]] = [shapes[q], shapes[p]];
    }
  }
  let version_total = 0;
  const manifest = { generator_version: k_generator_version, key, packages: [] };
  let total_bytes = 0;
  let json_bytes = 0;
  for (let p = 0; p < package_count; p++) {
    const name = package_name(p);
    const entry = { name, versions: [] };
    // A few dependencies on packages generated earlier, as real trees have.
    const dependencies = {};
    const dependency_count = p === 0 ? 0 : 1 + rng.int(Math.min(4, p));
    for (let d = 0; d < dependency_count; d++) {
      const target = rng.int(p);
      dependencies[package_name(target)] = `^1.${rng.int(shapes[target][0])}.0`;
    }
    const [package_versions, dev_of_plain] = shapes[p];
    version_total += package_versions;
    for (let v = first_version; v < first_version + package_versions; v++) {
      const version = `1.${v}.0`;
      // Random bytes, base64-encoded into a JS module: gzip gets them back to
      // about their raw size, so by default the tarballs land between ~5 and
      // ~50 KB.
      const payload_bytes = payload === null ? 4000 + rng.int(45000) : payload[0] + rng.int(payload[1] - payload[0] + 1);
      const text = rng.bytes(payload_bytes).toString('base64');
      const description = `Benchmark package ${name}: ${k_words[(p + v) % k_words.length]} helpers for ${k_suffixes[p % k_suffixes.length]} code.`;
      const pkg = manifests === 'rich'
        ? rich_package_json_of(name, version, description, p, v, dev_count, rng)
        : dev_of_plain === null
          ? package_json_of(name, version, description, p, dependencies)
          : package_json_of(name, version, description, p, dependencies, dev_dependencies_of(dev_of_plain, v));
      json_bytes += JSON.stringify(pkg).length;
      total_bytes += add_version(tarball_dir, entry, pkg, text);
    }
    manifest.packages.push(entry);
  }
  fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(manifest));
  const versions = version_total;
  process.stdout.write(`${out}: generated ${package_count} packages x ${versions_label} versions (${versions} in all), ` +
                       `${(total_bytes / 1024).toFixed(0)} KiB of tarballs (mean ${(total_bytes / versions / 1024).toFixed(1)} KiB), ` +
                       `package.json mean ${(json_bytes / versions / 1024).toFixed(1)} KiB\n`);
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

// DIR/manifest.json with the path of every version's tarball.
function read_manifest(dir) {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  for (const entry of manifest.packages) {
    for (const version of entry.versions) {
      version.tarball_path = path.join(dir, 'tarballs', version.file);
    }
  }
  return manifest;
}

// `bodies`: the PUT bodies `publish` would send, as files for lib/publish.js.
function bodies(args) {
  const dir = required(args, 'dir');
  const registry = required(args, 'registry').replace(/\/+$/, '');
  const out = required(args, 'out');
  const manifest = read_manifest(dir);
  fs.mkdirSync(out, { recursive: true });
  const lines = [];
  for (const entry of manifest.packages) {
    for (const version of entry.versions) {
      const file = path.join(out, version.file.replace(/\.tgz$/, '.json'));
      fs.writeFileSync(file, publish_body(registry, entry, version));
      lines.push(`${entry.name} ${version.version} ${file}\n`);
    }
  }
  fs.writeFileSync(path.join(out, 'list.txt'), lines.join(''));
}

async function publish(args) {
  const dir = required(args, 'dir');
  const registry = required(args, 'registry').replace(/\/+$/, '');
  const token = required(args, 'token');
  const concurrency = Number(args.concurrency || 4);
  const manifest = read_manifest(dir);
  const timings = args.timings ? fs.openSync(args.timings, 'w') : null;
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
        const body = publish_body(registry, entry, version);
        const sent = process.hrtime.bigint();
        let response;
        try {
          response = await fetch(url, {
            method: 'PUT',
            headers: {
              'content-type': 'application/json',
              authorization: `Bearer ${token}`,
              'npm-command': 'publish',
            },
            body,
            signal: AbortSignal.timeout(30000),
          });
        } catch (error) {
          fail(`publish ${entry.name}@${version.version} to ${registry}: ${error.cause ? error.cause.message : error.message}`);
        }
        const text = await response.text();
        if (!response.ok) {
          fail(`publish ${entry.name}@${version.version} to ${registry}: HTTP ${response.status} ${text.slice(0, 300)}`);
        }
        if (timings !== null) {
          fs.writeSync(timings, `${version.version} ${(Number(process.hrtime.bigint() - sent) / 1e6).toFixed(2)}\n`);
        }
        published++;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  if (timings !== null) {
    fs.closeSync(timings);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(`${registry}: published ${published} versions in ${seconds.toFixed(1)} s\n`);
}

const args = parse_args(process.argv.slice(2));
const command = args._[0];
if (command === 'generate') {
  generate(args);
} else if (command === 'project') {
  project(args);
} else if (command === 'bodies') {
  bodies(args);
} else if (command === 'publish') {
  publish(args).catch((error) => fail(error.message));
} else {
  fail('usage: packages.js generate|project|publish|bodies [options] (see the header of this file)');
}
