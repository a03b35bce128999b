# Helpers for the automatic-failover tests (sourced after lib.sh and
# failover_lib.sh): a real etcd (Debian's etcd-server) on free loopback
# ports, cluster members on fixed ports (so that HAProxy's configuration,
# deploy/haproxy-etcd.cfg, never changes), and a checker that proves there
# are never two instances taking writes.

ETCD_PID=""
ETCD_URL=""
declare -A MEMBER_REG_PORT=()
declare -A MEMBER_ADMIN_PORT=()
HA_SECRET="ha-cluster-shared-secret-0123456789"
CHECKER_PID=""

command -v etcd >/dev/null 2>&1 || fail "etcd not found: scripts/deps installs etcd-server"

# start_etcd — one etcd member under $T/etcd on two free ports; sets
# ETCD_URL and ETCD_PID.
start_etcd() {
  local client peer i
  client="$(free_port)"
  peer="$(free_port)"
  ETCD_URL="http://127.0.0.1:$client"
  step "start etcd on $ETCD_URL"
  etcd --name default --data-dir "$T/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" >>"$T/etcd.log" 2>&1 &
  ETCD_PID=$!
  STARTED_PIDS+=("$ETCD_PID")
  for ((i = 0; i < 100; i++)); do
    if curl -sf --max-time 1 "$ETCD_URL/health" | grep -q true; then
      info "etcd pid $ETCD_PID"
      return 0
    fi
    sleep 0.1
  done
  fail "etcd did not become healthy within 10 s"
}

# etcd_get KEY — the value of KEY (a JSON document), or nothing.
etcd_get() {
  local key
  key="$(printf '%s' "$1" | base64 -w0)"
  curl -sS --max-time 2 -X POST "$ETCD_URL/v3/kv/range" -d "{\"key\":\"$key\"}" |
    jq -r '.kvs[0].value // empty' | { base64 -d 2>/dev/null || true; }
}

# configure_member NAME [settings...] — an embedded instance under $T/NAME
# in cluster "it" of etcd, with the cluster's shared secret.
configure_member() {
  local name="$1"
  shift
  mkdir -p "$T/$name"
  MEMBER_REG_PORT[$name]="$(free_port)"
  MEMBER_ADMIN_PORT[$name]="$(free_port)"
  run_npme --root "$T/$name" settings set --offline "ha.etcd=$ETCD_URL" ha.cluster=it "secret=$HA_SECRET" \
    "registry.listen=127.0.0.1:${MEMBER_REG_PORT[$name]}" "admin.listen=127.0.0.1:${MEMBER_ADMIN_PORT[$name]}" \
    "$@" >/dev/null || fail "cannot configure member $name"
}

# start_member NAME — `npme serve` on the member's fixed ports.
start_member() {
  local name="$1"
  start_instance "$name" --registry-listen "127.0.0.1:${MEMBER_REG_PORT[$name]}" \
    --admin-listen "127.0.0.1:${MEMBER_ADMIN_PORT[$name]}"
  REGISTRY[$name]="http://127.0.0.1:${MEMBER_REG_PORT[$name]}"
  ADMIN[$name]="http://127.0.0.1:${MEMBER_ADMIN_PORT[$name]}"
}

# takes_writes NAME — true when the member's /-/primary answers 200.
takes_writes() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${REGISTRY[$1]}/-/primary")" == 200 ]]
}

# leader_of — the instance id in the cluster's leader key (empty: none).
leader_of() {
  etcd_get /npme/it/leader | jq -r '.instance // empty' 2>/dev/null || true
}

# member_named ID — which of our member names has instance id ID.
member_named() {
  local name
  for name in "${!MEMBER_REG_PORT[@]}"; do
    if [[ "$(cat "$T/$name/data/instance-id" 2>/dev/null)" == "$1" ]]; then
      printf '%s\n' "$name"
      return 0
    fi
  done
  return 1
}

# wait_leader SECONDS [EXCEPT] — waits until some member other than EXCEPT
# leads (holds the key and answers /-/primary 200); prints its name.
wait_leader() {
  local seconds="$1" except="${2:-}" i id name
  for ((i = 0; i < seconds * 20; i++)); do
    id="$(leader_of)"
    if [[ -n "$id" ]] && name="$(member_named "$id")" && [[ "$name" != "$except" ]] && takes_writes "$name"; then
      printf '%s\n' "$name"
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# start_checker NAMES... — polls every member's /-/primary (200 only when
# its role is primary and its publication is not read-only, by its own
# lease) every 50 ms, all at once, and logs each poll where more than one
# answered 200 to $T/checker.violations. Each change of who answers 200 is
# logged to $T/checker.writers: "<ISO time> <ms since the epoch> <URLs>" (the
# time the poll was sent; "-" when none answered 200).
start_checker() {
  local urls=() name
  for name in "$@"; do
    urls+=("${REGISTRY[$name]}")
  done
  cat >"$T/checker.js" <<'JS'
'use strict';
const http = require('http');
const fs = require('fs');
const [out, ...urls] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: false });
let polls = 0;
let violations = 0;
let lastWriters = null;
function probe(url) {
  return new Promise((resolve) => {
    const req = http.get(url + '/-/primary', { agent, timeout: 40 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 ? url : null);
    });
    req.on('timeout', () => { req.destroy(); resolve(null); });
    req.on('error', () => resolve(null));
  });
}
async function loop() {
  for (;;) {
    const started = Date.now();
    const writers = (await Promise.all(urls.map(probe))).filter(Boolean);
    polls += 1;
    const key = writers.join(' ') || '-';
    if (key !== lastWriters) {
      lastWriters = key;
      fs.appendFileSync(out + '.writers', new Date(started).toISOString() + ' ' + started + ' ' + key + '\n');
    }
    if (writers.length > 1) {
      violations += 1;
      fs.appendFileSync(out + '.violations', new Date().toISOString() + ' ' + writers.join(' ') + '\n');
    }
    // Written aside and renamed: a reader never sees a truncated (empty) file.
    fs.writeFileSync(out + '.polls.tmp', String(polls));
    fs.renameSync(out + '.polls.tmp', out + '.polls');
    await new Promise((r) => setTimeout(r, Math.max(0, 50 - (Date.now() - started))));
  }
}
fs.writeFileSync(out + '.violations', '');
fs.writeFileSync(out + '.writers', '');
loop();
JS
  node "$T/checker.js" "$T/checker" "${urls[@]}" &
  CHECKER_PID=$!
  STARTED_PIDS+=("$CHECKER_PID")
  info "split-brain checker pid $CHECKER_PID on ${urls[*]}"
}

# check_no_split_brain — fails when the checker saw two writers at once.
check_no_split_brain() {
  local polls violations
  polls="$(cat "$T/checker.polls" 2>/dev/null || echo 0)"
  violations="$(wc -l <"$T/checker.violations")"
  info "checker: $polls polls of every member, $violations with two instances taking writes"
  ((polls > 0)) || fail "the split-brain checker never polled"
  [[ "$violations" == 0 ]] || fail "two instances took writes at once: $(head -n 3 "$T/checker.violations")"
}

# render_haproxy_etcd NAMES... — deploy/haproxy-etcd.cfg for the members.
render_haproxy_etcd() {
  sed -e "s|@LISTEN@|127.0.0.1:$HAPROXY_PORT|g" -e "s|@NODE1@|127.0.0.1:${MEMBER_REG_PORT[$1]}|g" \
    -e "s|@NODE2@|127.0.0.1:${MEMBER_REG_PORT[$2]}|g" -e "s|@NODE3@|127.0.0.1:${MEMBER_REG_PORT[$3]}|g" \
    "$DEPLOY/haproxy-etcd.cfg" >"$T/haproxy.cfg"
  if grep -n '@[A-Z0-9]*@' "$T/haproxy.cfg" >&2; then
    fail "deploy/haproxy-etcd.cfg has placeholders the README does not name"
  fi
  env "${HAPROXY_ENV[@]}" haproxy -c -q -f "$T/haproxy.cfg" || fail "haproxy -c rejects deploy/haproxy-etcd.cfg"
}

# start_haproxy_etcd NAMES... — HAProxy with deploy/haproxy-etcd.cfg.
start_haproxy_etcd() {
  step "start HAProxy with deploy/haproxy-etcd.cfg (never changed afterwards)"
  HAPROXY_PORT="$(free_port)"
  render_haproxy_etcd "$@"
  env "${HAPROXY_ENV[@]}" haproxy -W -db -f "$T/haproxy.cfg" -p "$T/haproxy.pid" >>"$T/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  STARTED_PIDS+=("$HAPROXY_PID")
  REGISTRY[lb]="http://127.0.0.1:$HAPROXY_PORT"
  wait_lb_ping "${REGISTRY[lb]}"
  info "HAProxy master pid $HAPROXY_PID on ${REGISTRY[lb]}"
}

# publish_via_lb TOKEN BODY NAME — PUTs a gen_packages.js body through
# HAProxy; prints the status.
publish_via_lb() {
  local token="$1" body="$2" name="$3"
  curl -s -o "$T/last-publish.out" -w '%{http_code}' --max-time 30 -X PUT \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
    --data-binary "@$body" "${REGISTRY[lb]}/${name/\//%2f}"
}

# publish_until_201 TOKEN BODY NAME SECONDS — retries a publish through
# HAProxy (503 only: nothing was written) until 201; prints the seconds it took.
publish_until_201() {
  local token="$1" body="$2" name="$3" seconds="$4" start code
  start="$(date +%s.%N)"
  while :; do
    code="$(publish_via_lb "$token" "$body" "$name")"
    [[ "$code" == 201 ]] && break
    [[ "$code" == 503 || "$code" == 000 ]] || fail "publish of $name through HAProxy: $code $(cat "$T/last-publish.out")"
    if awk -v s="$start" -v n="$(date +%s.%N)" -v m="$seconds" 'BEGIN { exit !(n - s > m) }'; then
      fail "publish of $name through HAProxy: no 201 within $seconds s (last $code $(cat "$T/last-publish.out"))"
    fi
    sleep 0.1
  done
  awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", n - s }'
}

# load_bodies COUNT PREFIX — generates COUNT packages of 1–2 KiB
# (fixtures/gen_packages.js) for publish_next: BODIES holds "name file" lines.
load_bodies() {
  node "$FIXTURES/gen_packages.js" "$T/gen" "$1" 1 "$2" 1 2 >/dev/null
  mapfile -t BODIES < <(awk '{ print $1 " " $3 }' "$T/gen/list")
  next_body=0
  PUBLISHED=()
}

# publish_next [SECONDS] — publishes the next of BODIES through HAProxy,
# retried on 503 until 201 (publish_until_201); appends its name to
# PUBLISHED and sets TOOK to the seconds it took. Not in a subshell: it
# keeps its place in BODIES.
publish_next() {
  local name file
  read -r name file <<<"${BODIES[$next_body]}"
  next_body=$((next_body + 1))
  PUBLISHED+=("$name")
  TOOK="$(publish_until_201 "$TOKEN" "$file" "$name" "${1:-30}")"
}
