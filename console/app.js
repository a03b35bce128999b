// The npme admin console: a page over the admin API the CLI uses (same
// validation, same errors). Signed in by a session cookie (HttpOnly) made
// from the admin token; every call that changes something repeats the
// session's CSRF token in X-NPME-CSRF. No framework, no build step.

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const nav = document.getElementById('nav');
let csrf = '';
let refreshTimer = 0;
let status = null;
// The dashboard polls faster while a snapshot is being created.
let snapshotPoll = 0;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---- small DOM helpers ----
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'onclick' || name === 'onsubmit' || name === 'onchange' || name === 'oninput') {
      node.addEventListener(name.slice(2), value);
    } else if (name === 'text') {
      node.textContent = value;
    } else if (value === true) {
      node.setAttribute(name, '');
    } else if (value !== false && value !== null && value !== undefined) {
      node.setAttribute(name, value);
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}
function show(...nodes) {
  main.replaceChildren(...nodes);
}
function say(message, kind = 'error') {
  banner.textContent = message;
  banner.className = kind === 'info' ? 'info' : '';
  banner.hidden = !message;
}
function definitions(pairs) {
  return el('dl', {}, pairs.flatMap(([term, value]) => [el('dt', { text: term }), el('dd', {}, value)]));
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return '-';
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- the admin API ----
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-NPME-CSRF'] = csrf;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'The instance cannot be reached: is npme serve running, and is this its admin address?');
  }
  let doc = null;
  try { doc = await response.json(); } catch (e) { doc = null; }
  if (response.ok) return doc ?? {};
  const error = doc && doc.error && typeof doc.error === 'object' ? doc.error : {};
  const message = error.message || (typeof doc?.error === 'string' ? doc.error : `the admin API answered ${response.status}`);
  if (response.status === 401 && path !== '/api/v1/session') {
    signedOut('Your session has ended (signed out elsewhere, expired, or the instance restarted): sign in again.');
  }
  throw new ApiError(response.status, error.code || 'failed', message);
}
// Runs `work`, showing what went wrong in the banner instead of a blank page.
async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError) {
      if (e.status !== 401) say(e.message);
    } else {
      say(`Something went wrong in the console: ${e.message}`);
    }
    return undefined;
  }
}

// ---- sign in and out ----
function signedOut(message) {
  csrf = '';
  clearInterval(refreshTimer);
  nav.hidden = true;
  showSignIn(message);
}
function showSignIn(message = '') {
  const token = el('input', { type: 'password', id: 'token', autocomplete: 'off', required: true });
  const error = el('p', { class: 'bad', id: 'signin-error', text: message });
  const form = el('form', { class: 'card signin', id: 'signin' },
    el('h2', { text: 'Sign in' }),
    el('p', { class: 'muted', text: 'Paste the admin token (npme settings get admin.token --reveal). It is exchanged for a session; the page never keeps it.' }),
    el('label', { for: 'token', text: 'Admin token' }), token, error,
    el('div', { class: 'actions' }, el('button', { class: 'primary', type: 'submit', text: 'Sign in' })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const answer = await api('POST', '/api/v1/session', { token: token.value });
      csrf = answer.csrf;
      token.value = '';
      say('');
      start();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  show(form);
  token.focus();
}
document.getElementById('signout').addEventListener('click', () => guarded(async () => {
  await api('DELETE', '/api/v1/session');
  signedOut('Signed out.');
}));

// ---- confirmations ----
// Asks, and for destructive actions has the operator type the instance's
// name; `fields`: more inputs the action takes (read once confirmed).
function confirmAction(title, text, typed, fields = []) {
  return new Promise((resolve) => {
    const input = typed ? el('input', { type: 'text', id: 'confirm-input', autocomplete: 'off' }) : null;
    const ok = el('button', { class: 'primary', id: 'confirm-ok', type: 'button', text: 'Confirm', disabled: !!typed });
    const dialog = el('dialog', { id: 'confirm' },
      el('h2', { text: title }), el('p', { text }), fields,
      typed ? el('label', { for: 'confirm-input', text: `Type the instance's name, ${typed}, to confirm` }) : null,
      input,
      el('div', { class: 'actions' },
        el('button', { type: 'button', id: 'confirm-cancel', text: 'Cancel', onclick: () => { dialog.close(); resolve(false); } }),
        ok));
    if (input) input.addEventListener('input', () => { ok.disabled = input.value !== typed; });
    ok.addEventListener('click', () => { dialog.close(); resolve(true); });
    dialog.addEventListener('cancel', () => resolve(false));
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    (input || ok).focus();
  });
}

// ---- dashboard ----
// The follower's lag over the last hour, as the instance recorded it
// (GET /api/v1/follower/lag: one point per 10 s, its peak).
function lagChart(history) {
  const points = history?.points || [];
  if (points.length < 2) return el('p', { class: 'muted', id: 'lag-chart', text: 'The lag chart fills in as the instance runs (a point every 10 s, the last hour).' });
  // The hour, or what the instance has recorded of it since it started.
  const end = points[points.length - 1].time;
  const start = Math.max(end - (history.span_seconds || 3600), points[0].time);
  const span = Math.max(1, end - start);
  const max = Math.max(1, ...points.map((p) => p.changes));
  const xy = points.map((p) => `${((p.time - start) / span * 300).toFixed(1)},${(58 - p.changes / max * 56).toFixed(1)}`).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('id', 'lag-chart');
  svg.setAttribute('viewBox', '0 0 300 60');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `follower lag over the last hour, at most ${max} changes`);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', xy);
  svg.append(line);
  const peakSeconds = Math.max(...points.map((p) => p.seconds));
  return el('div', {}, svg, el('div', { class: 'axis muted' }, el('span', { text: `${ago(span)} ago` }), el('span', { text: 'now' })),
    el('p', { class: 'muted', text: `last hour: peak ${max} changes, ${ago(peakSeconds)} behind` }));
}

function followerCard(s, history) {
  const f = s.follower || {};
  const upstream = s.upstream?.url;
  if (!upstream) {
    return el('section', { class: 'card', id: 'follower' }, el('h2', { text: 'Follower' }),
      el('p', { class: 'muted', text: 'No upstream: this instance is a primary (upstream.url is empty).' }));
  }
  const position = f.upstream_seq === null || f.upstream_seq === undefined ? `${f.sequence} of ?` : `${f.sequence} of ${f.upstream_seq}`;
  const stateClass = f.state === 'caught-up' ? 'ok' : f.state === 'following' ? '' : 'warn';
  const reset = el('button', { class: 'danger', id: 'reset-follower', type: 'button', text: 'Reset follower…', onclick: () => guarded(async () => {
    if (!(await confirmAction('Reset the follower', 'It empties the sequence and resyncs from the upstream\'s beginning.', s.instance))) return;
    await api('POST', '/api/v1/follower/reset');
    say('Follower reset: it resyncs from the upstream.', 'info');
    refresh();
  }) });
  const stopped = f.state === 'stopped';
  const toggle = el('button', { type: 'button', id: stopped ? 'start-follower' : 'stop-follower', text: stopped ? 'Start follower' : 'Stop follower', onclick: () => guarded(async () => {
    if (!(await confirmAction(stopped ? 'Start the follower' : 'Stop the follower', stopped ? 'It follows the upstream again.' : 'It stops applying the upstream\'s changes until started again.'))) return;
    await api('POST', stopped ? '/api/v1/follower/start' : '/api/v1/follower/stop');
    refresh();
  }) });
  const promote = el('button', { class: 'danger', type: 'button', id: 'promote', text: 'Promote to primary…', onclick: () => guarded(async () => {
    // npme promote-to-primary's options: --fence (this instance sets the old
    // primary read-only first), --force, --wait-timeout.
    const fenceUrl = el('input', { type: 'url', id: 'promote-fence-url', placeholder: 'http://old-primary:8800' });
    const fenceToken = el('input', { type: 'password', id: 'promote-fence-token', autocomplete: 'off' });
    const force = el('input', { type: 'checkbox', id: 'promote-force' });
    const wait = el('input', { type: 'number', id: 'promote-wait', min: '0', value: '30' });
    const fields = el('div', {},
      el('label', { for: 'promote-fence-url', text: "Fence: the old primary's admin URL (optional)" }), fenceUrl,
      el('label', { for: 'promote-fence-token', text: "its admin token" }), fenceToken,
      el('label', { for: 'promote-wait', text: 'Seconds to wait for catch-up with a reachable old primary' }), wait,
      el('label', {}, force, ' force: promote even if the old primary still takes writes or is ahead'));
    if (!(await confirmAction('Promote to primary', 'This replica stops following and takes writes.', s.instance, [fields]))) return;
    const body = { force: force.checked, wait_timeout_seconds: Math.max(0, parseInt(wait.value || '30', 10) || 0) };
    if (fenceUrl.value.trim()) { body.fence_url = fenceUrl.value.trim(); body.fence_token = fenceToken.value; }
    const answer = await api('POST', '/api/v1/promote', body);
    const fenced = answer.fenced ? ` Fenced ${answer.fenced}.` : body.fence_url ? ' The old primary was unreachable: not fenced.' : '';
    say(`Promoted: epoch ${answer.epoch}.${fenced}`, 'info');
    refresh();
  }) });
  return el('section', { class: 'card', id: 'follower' }, el('h2', { text: 'Follower' }),
    definitions([
      ['upstream', upstream],
      ['state', el('span', { class: stateClass, id: 'follower-state', text: f.state })],
      ['position', position],
      ['lag', `${f.lag_changes} changes, ${ago(f.lag_seconds)}`],
      ['last error', f.last_error ? el('span', { class: 'bad', text: `${f.last_error_time}: ${f.last_error}` }) : 'none'],
    ]), lagChart(history), el('div', { class: 'actions' }, reset, toggle, promote));
}

async function whitelistCard(s) {
  const uplink = s.uplink || {};
  // Packages come from an uplink this instance calls itself, or from an
  // upstream replicated with the white-list policy.
  const fromUplink = !!uplink.url;
  const takesPackages = fromUplink || (s.upstream?.url && s.upstream?.policy === 'white-list');
  if (!takesPackages) return null;
  const names = (await api('GET', '/api/v1/whitelist')).packages || [];
  const input = el('input', { type: 'text', id: 'whitelist-name', placeholder: 'package name' });
  const add = el('button', { type: 'button', id: 'whitelist-add', text: 'Add package', onclick: () => guarded(async () => {
    await api('POST', '/api/v1/whitelist', { name: input.value.trim() });
    say(`Added ${input.value.trim()}.`, 'info');
    refresh();
  }) });
  return el('section', { class: 'card', id: 'whitelist' }, el('h2', { text: 'White-listed packages' }),
    el('p', { class: 'muted', text: `${names.length} package(s) taken from the ${fromUplink ? 'uplink' : 'upstream'}` }),
    el('div', { class: 'scroll' }, el('table', {}, names.slice(0, 200).map((name) => el('tr', {},
      el('td', { text: name }),
      el('td', {}, el('button', { type: 'button', class: 'danger', text: 'Remove', onclick: () => guarded(async () => {
        if (!(await confirmAction('Remove a package', `${name} is no longer updated from the ${fromUplink ? 'uplink' : 'upstream'}.`))) return;
        await api('DELETE', `/api/v1/whitelist/${encodeURIComponent(name)}`);
        refresh();
      }) })))))),
    el('div', { class: 'row' }, input, add));
}

// Snapshots in snapshot.dir, and the create under way with its progress.
function snapshotsCard(s, listing) {
  const card = el('section', { class: 'card', id: 'snapshots' }, el('h2', { text: 'Snapshots' }));
  if (!listing.dir) {
    card.append(el('p', { class: 'muted', text: 'No snapshot directory: name one in Settings (snapshot.dir) to create and list snapshots here. npme snapshot create --dir does the same from cron.' }));
    return card;
  }
  const job = listing.job;
  const running = job && job.state === 'running';
  card.append(el('p', { class: 'muted', text: `in ${listing.dir}` }));
  if (job) {
    const percent = job.total_bytes ? Math.floor(job.done_bytes / job.total_bytes * 100) : (job.state === 'done' ? 100 : 0);
    const line = running ? `Creating a snapshot: ${percent}% (${bytes(job.done_bytes)} of ${bytes(job.total_bytes)} of tarballs)`
      : job.state === 'done' ? `Last snapshot created: ${job.file.split('/').pop()} (${bytes(job.bytes)}), verified.`
        : `The last snapshot failed: ${job.error?.message || job.state}`;
    card.append(el('div', { id: 'snapshot-job', 'data-state': job.state },
      running ? el('progress', { id: 'snapshot-progress', max: '100', value: String(percent) }) : null,
      el('p', { class: job.state === 'done' || running ? '' : 'bad', text: line })));
  }
  // Newest first: when, how big, and the file name (npme restore FILE).
  const items = listing.snapshots.slice(0, 20).map((x) => el('li', {},
    el('span', { text: x.created ? `${x.created.replace('T', ' ').slice(0, 16)} · ${bytes(x.bytes)} · ${x.counts.packages} packages` : `unreadable: ${x.problem}` }),
    el('span', { class: 'file muted', text: x.file.split('/').pop() })));
  card.append(listing.snapshots.length
    ? el('ul', { id: 'snapshot-list', class: 'snapshots' }, items)
    : el('p', { class: 'muted', text: 'No snapshots there yet.' }));
  card.append(el('div', { class: 'actions' }, el('button', { type: 'button', id: 'snapshot-create', disabled: running, text: 'Create snapshot…', onclick: () => guarded(async () => {
    if (!(await confirmAction('Create a snapshot', `A consistent copy of ${s.instance} (metadata and tarballs) goes to ${listing.dir}, verified before it gets its name.`))) return;
    await api('POST', '/api/v1/snapshots');
    refresh();
  }) })));
  return card;
}

async function renderDashboard() {
  const s = await api('GET', '/api/v1/status');
  status = s;
  document.getElementById('instance-name').textContent = s.instance;
  const [history, listing] = await Promise.all([
    s.upstream?.url ? api('GET', '/api/v1/follower/lag') : null,
    api('GET', '/api/v1/snapshots')]);
  const counts = s.counts || {};
  const cards = [
    el('section', { class: 'card', id: 'overview' }, el('h2', { text: 'Instance' }), definitions([
      ['instance', s.instance], ['role', el('strong', { id: 'role', text: s.role })],
      ['publication', el('span', { id: 'publication', text: s.publication })], ['version', s.version],
      ['uptime', ago(s.uptime_seconds)], ['health', el('span', { class: s.health === 'ok' ? 'ok' : 'warn', text: s.health })],
      ['packages', String(counts.packages ?? '-')], ['versions', String(counts.versions ?? '-')],
      ['tarballs', `${counts.tarballs ?? '-'} (${bytes(counts.tarball_bytes || 0)})`], ['registry url', s.registry_url]])),
    followerCard(s, history),
  ];
  if (s.replicas && (s.replicas.connected || s.replicas.gone)) {
    const table = await api('GET', '/api/v1/replicas');
    const rows = (table.replicas || []).map((r) => el('tr', {},
      el('td', { text: r.instance || r.id || '' }), el('td', { text: r.state || '' }),
      el('td', { text: String(r.lag_changes ?? '') }), el('td', { text: ago(r.lag_seconds) })));
    cards.push(el('section', { class: 'card', id: 'replicas' }, el('h2', { text: 'Replicas' }),
      el('div', { class: 'scroll' }, el('table', {}, el('tr', {}, ['replica', 'state', 'lag (changes)', 'lag (time)'].map((h) => el('th', { text: h }))), rows))));
  }
  if (s.uplink?.url) {
    cards.push(el('section', { class: 'card', id: 'uplink' }, el('h2', { text: 'Public packages (uplink)' }), definitions([
      ['uplink', s.uplink.url], ['policy', s.uplink.policy], ['state', s.uplink.state], ['names', String(s.uplink.names ?? 0)],
      ['last error', s.uplink.last_error ? `${s.uplink.last_error_time} ${s.uplink.last_error}` : 'none']])));
  }
  const whitelist = await whitelistCard(s);
  if (whitelist) cards.push(whitelist);
  cards.push(snapshotsCard(s, listing));
  // While a snapshot is being created its progress updates every second.
  clearTimeout(snapshotPoll);
  if (listing.job?.state === 'running') snapshotPoll = setTimeout(() => { if (page() === 'dashboard' && !document.querySelector('dialog[open]')) refresh(); }, 1000);
  const warnings = s.warnings || [];
  if (warnings.length) {
    cards.unshift(el('section', { class: 'card', id: 'warnings' }, el('h2', { class: 'warn', text: 'Warnings' }),
      el('ul', {}, warnings.map((w) => el('li', { text: w })))));
  }
  show(el('div', { class: 'grid' }, cards));
}

// ---- settings ----
const SECTIONS = [
  ['General', ['registry.url', 'registry.listen', 'secret', 'network.http_proxy', 'network.ca_file', 'registry.max_body', 'registry.trusted_proxies', 'registry.max_connections_per_client', 'registry.tls_cert', 'registry.tls_key']],
  ['Storage', ['storage.']],
  ['Upstream registry', ['upstream.']],
  ['Public packages', ['uplink.']],
  ['Auth', ['auth.']],
  ['Publication settings', ['publication']],
  ['Admin', ['admin.']],
  ['Replication', ['replication.']],
  ['Automatic failover', ['ha.']],
  ['Audit log', ['audit.']],
  ['Snapshots and checks', ['snapshot.', 'scrub.']],
];
function sectionOf(key) {
  for (const [name, prefixes] of SECTIONS) {
    if (prefixes.some((p) => (p.endsWith('.') ? key.startsWith(p) : key === p))) return name;
  }
  return 'Other';
}

async function renderSettings() {
  const list = (await api('GET', '/api/v1/settings')).settings;
  const inputs = new Map();
  const original = new Map();
  const groups = new Map();
  for (const s of list) {
    const id = `setting-${s.key.replaceAll('.', '-')}`;
    const readonly = s.key.startsWith('storage.');
    let input;
    if (s.allowed && s.allowed.length) {
      input = el('select', { id, name: s.key, disabled: readonly }, s.allowed.map((v) => el('option', { value: v, text: v, selected: v === s.value })));
    } else {
      input = el('input', { id, name: s.key, type: s.secret ? 'password' : 'text', value: s.value, readonly, autocomplete: 'off' });
    }
    inputs.set(s.key, input);
    original.set(s.key, s.value);
    const reveal = s.secret ? el('button', { type: 'button', text: 'Reveal', onclick: () => guarded(async () => {
      const answer = await api('GET', `/api/v1/settings/${encodeURIComponent(s.key)}?reveal=1`);
      input.type = 'text';
      input.value = answer.value;
      original.set(s.key, answer.value);
    }) }) : null;
    const names = s.aliases && s.aliases.length ? ` (npmE: ${s.aliases.join(', ')})` : '';
    const notes = [s.help];
    if (s.allowed && s.allowed.length) notes.push(`allowed: ${s.allowed.join(', ')}`);
    if (s.effect === 'restart_instance') notes.push('needs a restart');
    if (s.effect === 'restart_follower') notes.push('restarts the follower');
    if (readonly) notes.push('read-only here: change it with the instance stopped (npme settings set --offline)');
    const field = el('div', { class: 'field', id: `field-${s.key.replaceAll('.', '-')}` },
      el('label', { for: id }, s.key, el('span', { class: 'muted', text: names })),
      reveal ? el('div', { class: 'row' }, input, reveal) : input,
      el('div', { class: 'help', text: notes.join(' · ') }),
      el('div', { class: 'error', role: 'alert' }));
    const section = sectionOf(s.key);
    if (!groups.has(section)) groups.set(section, []);
    groups.get(section).push(field);
  }
  const order = [...SECTIONS.map(([n]) => n), 'Other'].filter((n) => groups.has(n));
  const save = el('button', { class: 'primary', type: 'submit', id: 'settings-save', text: 'Save' });
  const form = el('form', { id: 'settings-form' }, order.map((name) => el('fieldset', {}, el('legend', { text: name }), groups.get(name))),
    el('div', { class: 'actions' }, save));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    for (const node of form.querySelectorAll('.field')) { node.classList.remove('invalid'); node.querySelector('.error').textContent = ''; }
    const patch = {};
    for (const [key, input] of inputs) {
      if (input.readOnly || input.disabled) continue;
      if (input.value !== original.get(key) && !(input.type === 'password' && input.value === '********')) patch[key] = input.value;
    }
    if (!Object.keys(patch).length) { say('Nothing changed.', 'info'); return; }
    guarded(async () => {
      try {
        const answer = await api('PATCH', '/api/v1/settings', patch);
        say(`Saved: ${answer.changed.join(', ') || 'nothing changed'}.${answer.restart_required ? ' Some changes apply after a restart of npme serve.' : ''}`, 'info');
        renderSettings();
      } catch (e) {
        // The API names the offending key: its message goes next to that field.
        const key = Object.keys(patch).find((k) => e.message.includes(` ${k}:`) || e.message.includes(` ${k} `) || e.message.endsWith(` ${k}`)) || Object.keys(patch)[0];
        const field = document.getElementById(`field-${key.replaceAll('.', '-')}`);
        if (field) { field.classList.add('invalid'); field.querySelector('.error').textContent = e.message; field.scrollIntoView({ block: 'center' }); }
        say('Nothing was saved: fix the field marked below.');
      }
    });
  });
  show(el('h2', { text: 'Settings' }), el('p', { class: 'muted', text: 'One save changes everything or nothing, with the same checks as npme settings set.' }), form);
}

// ---- users and tokens ----
async function renderUsers() {
  const [users, tokens] = await Promise.all([api('GET', '/api/v1/users'), api('GET', '/api/v1/tokens')]);
  const name = el('input', { type: 'text', id: 'user-name', required: true });
  const email = el('input', { type: 'email', id: 'user-email' });
  const password = el('input', { type: 'password', id: 'user-password', required: true, autocomplete: 'new-password' });
  const addUser = el('form', { id: 'user-add' }, el('h2', { text: 'Add a user' }),
    el('label', { for: 'user-name', text: 'Name' }), name, el('label', { for: 'user-email', text: 'Email' }), email,
    el('label', { for: 'user-password', text: 'Password' }), password,
    el('div', { class: 'actions' }, el('button', { class: 'primary', type: 'submit', text: 'Add user' })));
  addUser.addEventListener('submit', (event) => { event.preventDefault(); guarded(async () => {
    await api('POST', '/api/v1/users', { name: name.value, email: email.value, password: password.value });
    say(`Added user ${name.value}.`, 'info');
    renderUsers();
  }); });
  const tokenUser = el('select', { id: 'token-user' }, users.users.map((u) => el('option', { value: u.name, text: u.name })));
  const readOnly = el('input', { type: 'checkbox', id: 'token-read-only' });
  const expires = el('input', { type: 'text', id: 'token-expires', placeholder: '90d, or empty for never' });
  const cidr = el('input', { type: 'text', id: 'token-cidr', placeholder: '10.0.0.0/8, or empty for anywhere' });
  const created = el('div', { id: 'token-created' });
  const createToken = el('form', { id: 'token-create' }, el('h2', { text: 'Create a token' }),
    el('label', { for: 'token-user', text: 'User' }), tokenUser,
    el('label', { for: 'token-expires', text: 'Expires after' }), expires,
    el('label', { for: 'token-cidr', text: 'Client address ranges' }), cidr,
    el('label', {}, readOnly, ' read-only (installs, no publishes)'),
    el('div', { class: 'actions' }, el('button', { class: 'primary', type: 'submit', text: 'Create token' })), created);
  createToken.addEventListener('submit', (event) => { event.preventDefault(); guarded(async () => {
    const body = { user: tokenUser.value, read_only: readOnly.checked };
    if (expires.value.trim()) body.expires = expires.value.trim();
    if (cidr.value.trim()) body.cidr = cidr.value.trim();
    const answer = await api('POST', '/api/v1/tokens', body);
    const value = el('div', { class: 'secret-once', id: 'token-value', text: answer.token });
    const copy = el('button', { type: 'button', text: 'Copy', onclick: async () => {
      try { await navigator.clipboard.writeText(answer.token); copy.textContent = 'Copied'; } catch (e) { copy.textContent = 'Select and copy it'; }
    } });
    await renderUsers(false);
    document.getElementById('token-created').replaceChildren(
      el('p', { text: `Token ${answer.id} for ${answer.user}: shown once, copy it now.` }), value, el('div', { class: 'actions' }, copy));
  }); });
  const userRows = users.users.map((u) => el('tr', {}, el('td', { text: u.name }), el('td', { text: u.email }), el('td', { text: u.created }),
    el('td', {}, el('button', { type: 'button', class: 'danger', text: 'Remove', onclick: () => guarded(async () => {
      if (!(await confirmAction('Remove a user', `${u.name} can no longer log in; their tokens stop working.`, status?.instance))) return;
      await api('DELETE', `/api/v1/users/${encodeURIComponent(u.name)}`);
      renderUsers();
    }) }))));
  const tokenRows = tokens.tokens.map((t) => el('tr', { 'data-token-id': t.id }, el('td', { text: t.id }), el('td', { text: t.user }), el('td', { text: `${t.token_prefix}…` }),
    el('td', { text: t.read_only ? 'read-only' : 'read-write' }), el('td', { text: t.expires || 'never' }), el('td', { text: (t.cidr || []).join(', ') || 'anywhere' }),
    el('td', {}, el('button', { type: 'button', class: 'danger', text: 'Revoke', onclick: () => guarded(async () => {
      if (!(await confirmAction('Revoke a token', `Token ${t.id} of ${t.user} stops working at once.`))) return;
      await api('DELETE', `/api/v1/tokens/${encodeURIComponent(t.id)}`);
      say(`Revoked token ${t.id}.`, 'info');
      renderUsers();
    }) }))));
  show(el('div', { class: 'grid' },
    el('section', { class: 'card', id: 'users' }, el('h2', { text: 'Users' }),
      el('div', { class: 'scroll' }, el('table', {}, el('tr', {}, ['name', 'email', 'created', ''].map((h) => el('th', { text: h }))), userRows))),
    el('section', { class: 'card' }, addUser),
    el('section', { class: 'card', id: 'tokens' }, el('h2', { text: 'Tokens' }),
      el('div', { class: 'scroll' }, el('table', {}, el('tr', {}, ['id', 'user', 'token', 'access', 'expires', 'from', ''].map((h) => el('th', { text: h }))), tokenRows))),
    el('section', { class: 'card' }, createToken)));
}

// ---- navigation ----
function page() {
  return (location.hash || '#dashboard').slice(1);
}
async function refresh() {
  if (!csrf) return;
  for (const link of nav.querySelectorAll('a')) link.classList.toggle('active', link.getAttribute('href') === `#${page()}`);
  await guarded(async () => {
    if (page() === 'settings') await renderSettings();
    else if (page() === 'users') await renderUsers();
    else await renderDashboard();
  });
}
function start() {
  nav.hidden = false;
  clearInterval(refreshTimer);
  // The dashboard refreshes itself; forms are left alone while being edited.
  refreshTimer = setInterval(() => { if (page() === 'dashboard' && !document.querySelector('dialog[open]')) refresh(); }, 5000);
  refresh();
}
window.addEventListener('hashchange', () => { say(''); refresh(); });

(async () => {
  try {
    const session = await api('GET', '/api/v1/session');
    csrf = session.csrf;
    start();
  } catch (e) {
    if (e.status === 401) showSignIn();
    else { say(e.message); showSignIn(); }
  }
})();
