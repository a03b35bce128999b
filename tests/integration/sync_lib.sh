# Helpers for the tests of the primary's view of its replicas and of
# synchronous replication (DESIGN.md §10; sourced after lib.sh and
# replication_lib.sh).

# admin_token INSTANCE — the instance's admin token, from its settings file.
admin_token() {
  jq -r '."admin.token"' "$T/$1/settings.json"
}

# instance_id INSTANCE — the instance id its status reports.
instance_id() {
  "$NPME" --root "$T/$1" status --json | jq -r .instance
}

# own_url INSTANCE — the registry.url the instance reports (what its
# follower sends its upstream).
own_url() {
  "$NPME" --root "$T/$1" status --json | jq -r .registry_url
}

# set_settings INSTANCE KEY=VALUE... — `npme settings set`, which must succeed.
set_settings() {
  local instance="$1"
  shift
  run_npme --root "$T/$instance" settings set "$@" >/dev/null || fail "npme settings set $* on $instance failed"
}

# replicas_api INSTANCE — GET /api/v1/replicas on the instance's admin API;
# prints the document (fails the test unless it is a 200 with a JSON object
# holding `replicas` and `sync`).
replicas_api() {
  local out="$T/replicas-api.$1.json" code
  code="$(curl -sS --max-time 10 -o "$out" -w '%{http_code}' -H "Authorization: Bearer $(admin_token "$1")" \
    "${ADMIN[$1]}/api/v1/replicas")" || fail "GET ${ADMIN[$1]}/api/v1/replicas: no response"
  [[ "$code" == 200 ]] || fail "GET /api/v1/replicas on $1 answered $code: $(head -c 300 "$out")"
  jq -e 'type == "object" and (.replicas | type == "array") and (.sync | type == "object")' "$out" >/dev/null ||
    fail "GET /api/v1/replicas on $1 is not {\"replicas\":[...],\"sync\":{...}}: $(head -c 300 "$out")"
  cat "$out"
}

# replica_entry INSTANCE ID — the row of follower ID in INSTANCE's table
# ("null" when it is not there).
replica_entry() {
  replicas_api "$1" | jq -c --arg i "$2" '[.replicas[] | select(.instance == $i)][0]'
}

# replica_field INSTANCE ID FIELD — one field of that row ("null" when absent).
replica_field() {
  replicas_api "$1" | jq -r --arg i "$2" --arg f "$3" '[.replicas[] | select(.instance == $i)][0] | .[$f]'
}

# replica_state_is INSTANCE ID STATE — true when follower ID is shown in STATE.
replica_state_is() {
  [[ "$(replica_field "$1" "$2" state)" == "$3" ]]
}

# replica_absent INSTANCE ID — true when follower ID is not in the table.
replica_absent() {
  [[ "$(replica_entry "$1" "$2")" == null ]]
}

# synchronous_count INSTANCE — followers the instance counts as synchronous.
synchronous_count() {
  replicas_api "$1" | jq '[.replicas[] | select(.synchronous == true)] | length'
}

# synchronous_at_least INSTANCE N — true when at least N count as synchronous.
synchronous_at_least() {
  (($(synchronous_count "$1") >= $2))
}

# is_synchronous INSTANCE ID — true when INSTANCE counts follower ID as synchronous.
is_synchronous() {
  [[ "$(replica_field "$1" "$2" synchronous)" == true ]]
}

# not_synchronous INSTANCE ID — the opposite (absent counts as not synchronous).
not_synchronous() {
  [[ "$(replica_field "$1" "$2" synchronous)" != true ]]
}

# wait_until SECONDS DESCRIPTION cmd... — runs `cmd` every 0.2 s until it
# succeeds; fails the test after SECONDS.
wait_until() {
  local limit="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < deadline)) || fail "$what: not within $limit s"
    sleep 0.2
  done
  info "ok: $what"
}

# sync_field INSTANCE FIELD — a field of the `sync` object of the instance's
# status (`npme status --json`).
sync_field() {
  "$NPME" --root "$T/$1" status --json | jq -r --arg f "$2" '.sync[$f]'
}

# metric INSTANCE SAMPLE — the value of one sample (name with its labels,
# exactly as exposed) of the instance's /metrics; "absent" when missing.
metric() {
  local text
  text="$(curl -sS --max-time 10 "${ADMIN[$1]}/metrics")" || fail "GET ${ADMIN[$1]}/metrics: no response"
  awk -v w="$2" '$1 == w { print $2; found = 1; exit } END { if (!found) print "absent" }' <<<"$text"
}

# metric_or_zero INSTANCE SAMPLE — like metric, 0 when absent (counters of
# label sets not seen yet).
metric_or_zero() {
  local value
  value="$(metric "$1" "$2")"
  [[ "$value" == absent ]] && value=0
  printf '%s\n' "$value"
}

# num_eq A B — numeric equality (metrics may print 1 as "1" or "1.000000").
num_eq() {
  awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^[-+0-9.eE]+$/ && b ~ /^[-+0-9.eE]+$/ && a + 0 == b + 0) }'
}

# assert_num EXPECTED ACTUAL WHAT — numeric assert_eq.
assert_num() {
  num_eq "$1" "$2" || fail "$3: expected $1, got '$2'"
  info "ok: $3 = $2"
}

# is_number VALUE — a plain decimal number.
is_number() {
  [[ "$1" =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]
}

# header_value FILE NAME — the value of the last header NAME in a curl -D dump.
header_value() {
  grep -i "^$2:" "$1" 2>/dev/null | tail -n 1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//' || true
}

# raw_put URL BODY_FILE TOKEN [curl args...] — one PUT that may fail in any
# way (unlike lib.sh's http): sets RAW_STATUS ("000" without an answer),
# RAW_NOTICE (its npm-notice header, empty when none), RAW_BODY, RAW_RC
# (curl's exit code).
RAW_STATUS=""
RAW_NOTICE=""
RAW_BODY=""
RAW_RC=0
raw_put() {
  local url="$1" file="$2" token="$3"
  shift 3
  RAW_RC=0
  : >"$T/raw.headers"
  : >"$T/raw.body"
  RAW_STATUS="$(curl -sS -D "$T/raw.headers" -o "$T/raw.body" -w '%{http_code}' --max-time 60 -X PUT \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $token" --data-binary "@$file" \
    "$@" "$url" 2>"$T/raw.stderr")" || RAW_RC=$?
  [[ -n "$RAW_STATUS" ]] || RAW_STATUS=000
  RAW_NOTICE="$(header_value "$T/raw.headers" npm-notice)"
  RAW_BODY="$(cat "$T/raw.body")"
  info "PUT ${url#"$REGISTRY_URL"} -> $RAW_STATUS (curl $RAW_RC)${RAW_NOTICE:+ npm-notice: $RAW_NOTICE} ${RAW_BODY:0:200}"
}

# doc_body INSTANCE ID — the stored document (JSON) from the instance's own
# database, empty when it has none. Reads the store, not the registry: a
# replica's registry may fetch a name it misses from its upstream.
doc_body() {
  db_query "$1" "$PACKUMENTS select body from packuments where id = '${2//\'/\'\'}'"
}

# stored_integrity INSTANCE NAME VERSION — dist.integrity of a version in the
# instance's own database ("" when the version is not there).
stored_integrity() {
  local body
  body="$(doc_body "$1" "$2")"
  [[ -n "$body" ]] || return 0
  jq -r --arg v "$3" '.versions[$v].dist.integrity // empty' <<<"$body"
}

# body_integrity BODY_FILE — dist.integrity of the (single) version of a
# publish body.
body_integrity() {
  jq -r '.versions | to_entries[0].value.dist.integrity' "$1"
}

# whoami_status INSTANCE TOKEN — the HTTP status of GET /-/whoami.
whoami_status() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $2" "${REGISTRY[$1]}/-/whoami"
}

# npm_login_to INSTANCE RCFILE USER PASSWORD [COMMAND] — `npm login` (or
# COMMAND, e.g. adduser) with --auth-type=legacy against INSTANCE, writing
# its token into RCFILE (prompts answered by fixtures/npm_login.js).
npm_login_to() {
  local instance="$1" rc_file="$2" user="$3" password="$4" command="${5:-login}"
  local url="${REGISTRY[$instance]}"
  printf 'registry=%s/\n' "$url" >"$rc_file"
  info "\$ npm $command --auth-type=legacy (as $user on $instance)" >&2
  node "$FIXTURES/npm_login.js" "$user" "$password" "$user@example.com" -- \
    "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$url/" --no-update-notifier \
    --fetch-retries=0 "$command" --auth-type=legacy
}

# npm_rc_on INSTANCE RCFILE args... — npm with a user config written by login.
npm_rc_on() {
  local instance="$1" rc_file="$2"
  shift 2
  info "\$ npm $* (with $rc_file on $instance)" >&2
  "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "${REGISTRY[$instance]}/" --no-update-notifier \
    --no-audit --no-fund --fetch-retries=0 --prefer-online "$@"
}

# stop_process NAME / cont_process NAME — SIGSTOP / SIGCONT an instance (a
# hung replica). lib.sh's exit handler SIGKILLs stopped processes too.
stop_process() {
  local pid="${INSTANCE_PID[$1]:?unknown instance $1}"
  step "SIGSTOP instance '$1' (pid $pid)"
  kill -STOP "$pid"
}
cont_process() {
  local pid="${INSTANCE_PID[$1]:?unknown instance $1}"
  step "SIGCONT instance '$1' (pid $pid)"
  kill -CONT "$pid"
}

# The script behind long_polls: N concurrent long polls of /_changes (each
# its own connection), optionally a PUT some time after they were sent.
# Prints one JSON document: {"polls":[{"status","ms","after_put_ms","ids"}],
# "put":{"status","notice"}}.
write_longpoll_script() {
  cat >"$T/longpolls.js" <<'EOF'
'use strict';
const http = require('http');
const fs = require('fs');
const [base, secret, since, count, timeout, putUrl, bodyFile, token, delayMs] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
let putStart = null;

function poll() {
  return new Promise((resolve) => {
    const started = Date.now();
    const url = `${base}/_changes?since=${since}&feed=longpoll&timeout=${timeout}`;
    const done = (result) => {
      const end = Date.now();
      resolve({ ...result, ms: end - started, after_put_ms: putStart === null ? null : end - putStart });
    };
    const req = http.get(url, { agent, headers: { Authorization: `Bearer ${secret}` } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => {
        let ids = null;
        try {
          ids = JSON.parse(body).results.map((r) => r.id);
        } catch (e) {
          ids = null;
        }
        done({ status: res.statusCode, ids, body: ids === null ? body.slice(0, 200) : undefined });
      });
    });
    req.on('error', (e) => done({ status: 0, error: e.message }));
    req.setTimeout(120000, () => req.destroy(new Error('no answer within 120 s')));
  });
}

function put() {
  return new Promise((resolve) => {
    const data = fs.readFileSync(bodyFile);
    putStart = Date.now();
    const req = http.request(putUrl, {
      method: 'PUT', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': data.length,
                 Authorization: `Bearer ${token}` },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, notice: res.headers['npm-notice'] || '',
                                    ms: Date.now() - putStart }));
    });
    req.on('error', (e) => resolve({ status: 0, error: e.message }));
    req.end(data);
  });
}

(async () => {
  const polls = [];
  for (let i = 0; i < Number(count); i++) polls.push(poll());
  let putResult = null;
  if (putUrl) {
    await new Promise((r) => setTimeout(r, Number(delayMs)));
    putResult = await put();
  }
  const results = await Promise.all(polls);
  process.stdout.write(JSON.stringify({ polls: results, put: putResult }) + '\n');
})();
EOF
}

# start_burst_after INSTANCE SEQ TOKEN OUT URL=BODY_FILE... — in the
# background (pid in BURST_PID), one node process that watches INSTANCE's
# update_seq (GET / with its secret, every 20 ms) and, as soon as it passes
# SEQ, PUTs every BODY_FILE to its URL at once. Writes one JSON line per PUT
# to OUT: {"url","status","notice","body"} (status 0 without an answer), and
# OUT.ready once it watches. It reacts within milliseconds, however loaded
# the machine is.
BURST_PID=""
start_burst_after() {
  local instance="$1" seq="$2" token="$3" out="$4"
  shift 4
  cat >"$T/burst.js" <<'EOF'
'use strict';
const http = require('http');
const fs = require('fs');
const [base, secret, seq, token, out, ...items] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

function put(item) {
  const at = item.indexOf('=');
  const url = item.slice(0, at);
  const data = fs.readFileSync(item.slice(at + 1));
  return new Promise((resolve) => {
    const req = http.request(url, {
      method: 'PUT', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': data.length, Authorization: `Bearer ${token}` },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ url, status: res.statusCode, notice: res.headers['npm-notice'] || '',
                                    body: body.slice(0, 300) }));
    });
    req.on('error', (e) => resolve({ url, status: 0, notice: '', body: e.message }));
    req.setTimeout(60000, () => req.destroy(new Error('no answer within 60 s')));
    req.end(data);
  });
}

function watch() {
  http.get(`${base}/`, { agent, headers: { Authorization: `Bearer ${secret}` } }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (chunk) => (body += chunk));
    res.on('end', async () => {
      let current = -1;
      try { current = JSON.parse(body).update_seq; } catch (e) { current = -1; }
      if (!fs.existsSync(out + '.ready')) fs.writeFileSync(out + '.ready', `${current}\n`);
      if (current > Number(seq)) {
        const results = await Promise.all(items.map(put));
        fs.writeFileSync(out, results.map((r) => JSON.stringify(r)).join('\n') + '\n');
        process.exit(0);
      }
      setTimeout(watch, 20);
    });
  }).on('error', () => setTimeout(watch, 20));
}
watch();
EOF
  local secret
  secret="$("$NPME" --root "$T/$instance" settings get secret --reveal)"
  node "$T/burst.js" "${REGISTRY[$instance]}" "$secret" "$seq" "$token" "$out" "$@" &
  BURST_PID=$!
  STARTED_PIDS+=("$BURST_PID")
  info "burst of $# PUTs (pid $BURST_PID) waits for $instance's update_seq to pass $seq"
}

# start_liar INSTANCE ID SINCE... — a fake follower (one node process, its
# pid in LIAR_PID) that asks INSTANCE's /_changes with the secret every
# 100 ms, cycling through the given `since` values, naming itself ID, with
# headers that claim it is far ahead. It never fetches anything past them.
LIAR_PID=""
start_liar() {
  local instance="$1" id="$2"
  shift 2
  cat >"$T/liar.js" <<'EOF'
'use strict';
const http = require('http');
const [base, secret, id, ...sinces] = process.argv.slice(2);
const headers = {
  Authorization: `Bearer ${secret}`, 'Npme-Instance': id, 'Npme-Instance-Url': 'http://127.0.0.1:9/',
  'Npme-Sync': 'sync', 'Npme-Applied-Seq': '999999', 'Npme-Sequence': '999999', 'Last-Event-ID': '999999',
};
let i = 0;
function next() {
  const since = sinces[i++ % sinces.length];
  const req = http.get(`${base}/_changes?since=${since}&limit=1`, { headers }, (res) => {
    res.resume();
    res.on('end', () => setTimeout(next, 100));
  });
  req.on('error', () => setTimeout(next, 100));
  req.setTimeout(5000, () => req.destroy());
}
next();
EOF
  local secret
  secret="$("$NPME" --root "$T/$instance" settings get secret --reveal)"
  node "$T/liar.js" "${REGISTRY[$instance]}" "$secret" "$id" "$@" &
  LIAR_PID=$!
  STARTED_PIDS+=("$LIAR_PID")
  info "fake follower $id (pid $LIAR_PID) claims since=$*"
}

# stop_liar — ends the fake follower started last.
stop_liar() {
  kill "$LIAR_PID" 2>/dev/null || true
  wait "$LIAR_PID" 2>/dev/null || true
}
