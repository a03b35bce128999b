// Checks of the kill -9 campaigns that would cost one process per package
// in bash (tests/chaos/kill9_lib.sh). One process, 8 requests at a time.
//
// usage:
//   node kill9_check.js files LIST
//       LIST: lines "FILE INTEGRITY". Prints "FILE: missing" or "FILE: sha512
//       ..., expected ..." for each file that does not match; exit 1 if any.
//   node kill9_check.js packuments BASE TOKEN NAMES
//       NAMES: one package name a line. Prints the content digest of each
//       (as tests/integration content_digest: dist-tags, then every version
//       with its integrity and deprecation; "<name> <status>" when not 200),
//       sorted.
//   node kill9_check.js acked BASE TOKEN LIST
//       LIST: lines "NAME VERSION INTEGRITY" of acknowledged publishes. Each
//       must be in the packument with that dist.integrity, and its tarball
//       (GET dist.tarball) must hash to it. Prints one line per problem;
//       exit 1 if any.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function lines(file) {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
}

function sri(buffer) {
  return 'sha512-' + crypto.createHash('sha512').update(buffer).digest('base64');
}

function get(url, token, accept) {
  return new Promise((resolve) => {
    const headers = { Accept: accept || 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const req = http.get(url, { agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      res.on('error', (e) => resolve({ status: 0, body: Buffer.from(String(e.message)) }));
    });
    req.setTimeout(30000, () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', (e) => resolve({ status: 0, body: Buffer.from(String(e.message)) }));
  });
}

async function pool(items, worker) {
  let next = 0;
  const run = async () => {
    while (next < items.length) await worker(items[next++]);
  };
  await Promise.all(Array.from({ length: 8 }, run));
}

function packumentUrl(base, name) {
  return `${base.replace(/\/$/, '')}/${name.replace('/', '%2f')}`;
}

async function files(list) {
  let bad = 0;
  for (const line of lines(list)) {
    const [file, integrity] = line.split(' ');
    let actual;
    try {
      actual = sri(fs.readFileSync(file));
    } catch (e) {
      actual = null;
    }
    if (actual === null) {
      console.log(`${file}: missing (expected ${integrity})`);
      bad++;
    } else if (actual !== integrity) {
      console.log(`${file}: ${actual.slice(0, 30)}..., expected ${String(integrity).slice(0, 30)}...`);
      bad++;
    }
  }
  return bad ? 1 : 0;
}

async function packuments(base, token, namesFile) {
  const out = [];
  await pool(lines(namesFile), async (name) => {
    const res = await get(packumentUrl(base, name), token);
    if (res.status !== 200) {
      out.push(`${name} ${res.status}`);
      return;
    }
    let doc;
    try {
      doc = JSON.parse(res.body.toString('utf8'));
    } catch (e) {
      out.push(`${name} unparsable`);
      return;
    }
    for (const [tag, version] of Object.entries(doc['dist-tags'] || {})) out.push(`${name} tag ${tag}=${version}`);
    for (const [version, v] of Object.entries(doc.versions || {})) {
      out.push(`${name} version ${version} ${(v.dist || {}).integrity} ${v.deprecated || '-'}`);
    }
  });
  out.sort();
  process.stdout.write(out.map((l) => l + '\n').join(''));
  return 0;
}

async function acked(base, token, list) {
  const byName = new Map();
  for (const line of lines(list)) {
    const [name, version, integrity] = line.split(' ');
    if (!byName.has(name)) byName.set(name, []);
    byName.get(name).push({ version, integrity });
  }
  const problems = [];
  const tarballs = [];
  await pool([...byName.keys()], async (name) => {
    const res = await get(packumentUrl(base, name), token);
    let doc = null;
    try {
      doc = res.status === 200 ? JSON.parse(res.body.toString('utf8')) : null;
    } catch (e) {
      doc = null;
    }
    for (const { version, integrity } of byName.get(name)) {
      const v = doc && doc.versions && doc.versions[version];
      if (!v) {
        problems.push(`${name}@${version}: acknowledged but not in the packument (GET answered ${res.status})`);
      } else if ((v.dist || {}).integrity !== integrity) {
        problems.push(`${name}@${version}: dist.integrity ${(v.dist || {}).integrity}, acknowledged ${integrity}`);
      } else {
        tarballs.push({ name, version, integrity, url: v.dist.tarball });
      }
    }
  });
  await pool(tarballs, async ({ name, version, integrity, url }) => {
    // dist.tarball names registry.url; ask the instance's own address.
    const path = new URL(url).pathname;
    const res = await get(`${base.replace(/\/$/, '')}${path}`, token, 'application/octet-stream');
    if (res.status !== 200) {
      problems.push(`${name}@${version}: tarball GET answered ${res.status}`);
    } else if (sri(res.body) !== integrity) {
      problems.push(`${name}@${version}: the served tarball does not match dist.integrity`);
    }
  });
  problems.sort();
  process.stdout.write(problems.map((l) => l + '\n').join(''));
  return problems.length ? 1 : 0;
}

(async () => {
  const [mode, ...args] = process.argv.slice(2);
  let rc;
  if (mode === 'files' && args.length === 1) rc = await files(args[0]);
  else if (mode === 'packuments' && args.length === 3) rc = await packuments(...args);
  else if (mode === 'acked' && args.length === 3) rc = await acked(...args);
  else {
    process.stderr.write('usage: kill9_check.js files LIST | packuments BASE TOKEN NAMES | acked BASE TOKEN LIST\n');
    rc = 2;
  }
  process.exit(rc);
})();
