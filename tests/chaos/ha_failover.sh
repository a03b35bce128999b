#!/usr/bin/env bash
# Chaos run of automatic failover on etcd (README, "Automatic failover with
# etcd"; tests/chaos/README.md): one etcd member, three npme members with
# replication.sync_replicas=1 (strict) behind HAProxy running
# deploy/haproxy-etcd.cfg, a steady publisher through HAProxy, and a checker
# polling every member's /-/primary every 50 ms. Then N failovers in a row,
# each with a fault picked at random (seeded): kill -9 of the leader, SIGSTOP
# of the leader past its lease (then SIGCONT), SIGTERM, or `npme ha
# switchover` to a random replica. After each: a new leader within the bound,
# the faulted member back, every member caught up. At the end every publish
# acknowledged with 201 and no npm-notice must be on the final leader.
#
# Not run by ctest: a tool for operators and developers. It builds nothing.
# Run it as `scripts/chaos ha [options]` (scripts/chaos dispatches here).
#
# usage: scripts/chaos ha [--failovers N] [--npme PATH] [--ttl S] [--loop S]
#                         [--seed S] [--keep] [--rate R] [--faults LIST]
#                         [--margin S]        (scripts/chaos ha --help)
#
# Exit 0 only when every failover completed, the checker saw no moment with
# two instances answering 200 on /-/primary, and no acknowledged publish is
# missing on the final leader; 1 otherwise (the temp directory is kept);
# 2 on a usage error.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

usage() {
  cat <<'EOF'
usage: scripts/chaos ha [options]
  --failovers N   failovers in a row (default 50)
  --npme PATH     the npme binary (default build/npme of this tree)
  --ttl S         ha.ttl of every member, seconds (default 4)
  --loop S        ha.loop of every member, seconds (default 1)
  --seed S        seed of the fault sequence (default: random, printed)
  --keep          keep the temp directory even when the run passes
  --rate R        publishes per second through HAProxy (default 10)
  --faults LIST   comma-separated fault kinds to draw from
                  (default kill9,stop,term,switchover)
  --margin S      seconds added to ha.ttl + 2 x ha.loop for the takeover
                  bound (default 2)
EOF
}

FAILOVERS=50
NPME_BIN="$repo/build/npme"
TTL=4
LOOP=1
SEED=""
KEEP=""
RATE=10
MARGIN=2
FAULTS="kill9,stop,term,switchover"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --failovers) FAILOVERS="${2:?--failovers needs a value}"; shift 2 ;;
    --npme) NPME_BIN="${2:?--npme needs a value}"; shift 2 ;;
    --ttl) TTL="${2:?--ttl needs a value}"; shift 2 ;;
    --loop) LOOP="${2:?--loop needs a value}"; shift 2 ;;
    --seed) SEED="${2:?--seed needs a value}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --rate) RATE="${2:?--rate needs a value}"; shift 2 ;;
    --margin) MARGIN="${2:?--margin needs a value}"; shift 2 ;;
    --faults) FAULTS="${2:?--faults needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "scripts/chaos: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$MARGIN" =~ ^[0-9]+$ ]] || { echo "scripts/chaos: --margin must be a whole number of seconds" >&2; exit 2; }
for value in "$FAILOVERS" "$TTL" "$LOOP" "$RATE"; do
  [[ "$value" =~ ^[0-9]+$ && "$value" -gt 0 ]] || { echo "scripts/chaos: '$value' is not a positive integer" >&2; exit 2; }
done
((TTL >= 2)) || { echo "scripts/chaos: --ttl must be at least 2 (ha.ttl)" >&2; exit 2; }
[[ -z "$SEED" ]] && SEED=$(( $(od -An -N2 -tu2 /dev/urandom) ))
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "scripts/chaos: --seed must be a number" >&2; exit 2; }
IFS=, read -r -a KINDS <<<"$FAULTS"
for kind in "${KINDS[@]}"; do
  case "$kind" in kill9 | stop | term | switchover) ;; *) echo "scripts/chaos: unknown fault '$kind'" >&2; exit 2 ;; esac
done
[[ "$NPME_BIN" == /* ]] || NPME_BIN="$PWD/$NPME_BIN"
command -v haproxy >/dev/null 2>&1 || { echo "scripts/chaos: haproxy is not installed (scripts/deps)" >&2; exit 1; }

# The integration tests' helpers: temp directory $T, instances, etcd,
# members on fixed ports, HAProxy with deploy/haproxy-etcd.cfg, the
# split-brain checker, wait_leader.
export NPME="$NPME_BIN" NPME_SOURCE_DIR="$repo"
source "$repo/tests/integration/lib.sh"
source "$repo/tests/integration/replication_lib.sh"
source "$repo/tests/integration/failover_lib.sh"
source "$repo/tests/integration/sync_lib.sh"
source "$repo/tests/integration/ha_lib.sh"

# lib.sh made $T as npme-it.*, like every integration test's: a chaos run
# gets a name of its own.
chaos_dir="$(mktemp -d "${TMPDIR:-/tmp}/npme-chaos.XXXXXX")"
shopt -s dotglob
mv "$T"/* "$chaos_dir"/
shopt -u dotglob
rmdir "$T"
T="$chaos_dir"
export HOME="$T/home"

# The helpers' own output (step/info lines, npme CLI) goes to chaos.log;
# progress lines and the summary go to the terminal (fd 3) and the log, and
# so does the reason when the run stops (lib.sh's fail, on fd 4).
exec 3>&1 4>&2 1>>"$T/chaos.log" 2>&1
say() {
  printf '%s\n' "$*" >&3
  printf '%s\n' "$*"
}
say "scripts/chaos: temp directory $T (log: $T/chaos.log)"

PUBLISHER_PID=""
RUN_STARTED=""
SUMMARY_DONE=""
TAKEOVER=$((TTL + 2 * LOOP + MARGIN)) # ha.ttl + 2 × ha.loop (README), and a margin for a loaded machine
RECOVER=60                       # the faulted member back and everyone caught up

# ---------------------------------------------------------------- cleanup

# stop_pid PID [SECONDS] — SIGCONT (it may be frozen), SIGTERM, then SIGKILL
# after SECONDS; reaps it.
stop_pid() {
  local pid="$1" limit="${2:-10}" i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < limit * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# Every process this script started, by the pid it keeps for it (never the
# pids of processes that already ended: those may have been reused).
chaos_exit() {
  local rc=$?
  set +e
  trap - HUP INT TERM
  stop_pid "$PUBLISHER_PID" 150
  stop_pid "$CHECKER_PID"
  failover_cleanup
  stop_pid "$HAPROXY_PID"
  local name
  for name in "${!INSTANCE_PID[@]}"; do
    stop_pid "${INSTANCE_PID[$name]}" 30
  done
  stop_pid "$ETCD_PID"
  [[ $rc -eq 0 ]] || grep -h '^FAIL:' "$T/chaos.log" | tail -n 3 >&4
  if [[ $rc -ne 0 && -n "$RUN_STARTED" && -z "$SUMMARY_DONE" ]]; then
    say "aborted after $(wc -l <"$T/failovers" 2>/dev/null || echo 0) failovers; see $T/chaos.log"
  fi
  if [[ $rc -ne 0 || -n "$KEEP" ]]; then
    say "kept temp directory $T"
  else
    rm -rf "$T"
  fi
  exit "$rc"
}
trap chaos_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

now() { printf '%s\n' "$EPOCHREALTIME"; }
since() { awk -v s="$1" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", n - s }'; }
stamp() { date -u +%H:%M:%S.%3N; }

# ---------------------------------------------------------------- cluster

# caught_up LEADER — every member but LEADER follows LEADER, is caught up,
# and has applied at least what LEADER had when called; LEADER still leads;
# etcd lists 3 members.
caught_up() {
  local leader="$1" leader_id target name status
  leader_id="$(cat "$T/$leader/data/instance-id")"
  target="$(update_seq "$leader")" || return 1
  [[ "$target" =~ ^[0-9]+$ ]] || return 1
  for name in n1 n2 n3; do
    [[ "$name" == "$leader" ]] && continue
    status="$("$NPME" --root "$T/$name" status --json 2>/dev/null)" || return 1
    jq -e --arg l "$leader_id" --argjson t "$target" \
      '.follower.state == "caught-up" and .follower.upstream_instance == $l and .follower.sequence >= $t' \
      <<<"$status" >/dev/null || return 1
  done
  [[ "$(leader_of)" == "$leader_id" ]] || return 1
  [[ "$("$NPME" --root "$T/$leader" ha status --json 2>/dev/null | jq '.members | length')" == 3 ]]
}

# wait_caught_up LEADER SECONDS — caught_up, retried every 0.2 s.
wait_caught_up() {
  local leader="$1" deadline=$((SECONDS + $2))
  until caught_up "$leader"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ha_snapshot WHY — `npme ha status` from every running member, into the log.
ha_snapshot() {
  local name
  printf '\n---- %s: %s ----\n' "$(stamp)" "$1"
  for name in n1 n2 n3; do
    [[ -n "${INSTANCE_PID[$name]:-}" ]] || continue
    printf '[%s]\n' "$name"
    timeout 5 "$NPME" --root "$T/$name" ha status 2>&1 || true
  done
}

# ---------------------------------------------------------------- publisher

# One node process: a publish through HAProxy every 1/RATE s (each its own
# connection, several in flight when answers are slow), bodies generated by
# fixtures/gen_packages.js in batches of 200 ahead of need. One line per
# answer in RESULTS: name version status notice(0|1) start_ms duration_ms
# (status "timeout" or "error:<code>" without an answer); the text of each
# npm-notice header in RESULTS.notices. SIGTERM: no new publish; exits when
# every one in flight has its answer (DIR/starved: ticks with no body ready).
write_publisher() {
  cat >"$T/publisher.js" <<'JS'
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const { execFile } = require('child_process');
const [lb, token, gen, dir, rateText, results] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
const queue = [];
let batch = 0;
let generating = null;
let genChild = null;
let inflight = 0;
let stopping = false;
let starved = 0;

function generate() {
  const b = batch++;
  const out = path.join(dir, `b${b}`);
  return new Promise((resolve, reject) => {
    genChild = execFile(process.execPath, [gen, out, '200', '1', `chaos-b${b}`, '1', '2'], (err) => {
      genChild = null;
      if (err) { reject(err); return; }
      for (const line of fs.readFileSync(path.join(out, 'list'), 'utf8').trim().split('\n')) {
        const [name, version, file] = line.split(' ');
        queue.push({ name, version, file });
      }
      resolve();
    });
  });
}

function record(item, started, status, notice) {
  inflight -= 1;
  fs.appendFileSync(results, `${item.name} ${item.version} ${status} ${notice ? 1 : 0} ${started} ${Date.now() - started}\n`);
  if (notice) fs.appendFileSync(`${results}.notices`, `${item.name} ${item.version} ${status} npm-notice: ${notice}\n`);
  if (stopping && inflight === 0) finish();
}

function publish(item) {
  const body = fs.readFileSync(item.file);
  const started = Date.now();
  let done = false;
  const once = (status, notice) => { if (!done) { done = true; record(item, started, status, notice); } };
  inflight += 1;
  const req = http.request(`${lb}/${item.name.replace('/', '%2f')}`, {
    method: 'PUT', agent,
    headers: { 'Content-Type': 'application/json', 'Content-Length': body.length, Authorization: `Bearer ${token}` },
  }, (res) => {
    res.resume();
    res.on('end', () => once(res.statusCode, res.headers['npm-notice'] || ''));
    res.on('error', (e) => once(`error:${e.code || 'response'}`, ''));
  });
  req.setTimeout(120000, () => { once('timeout', ''); req.destroy(); });
  req.on('error', (e) => once(`error:${e.code || e.message}`, ''));
  req.end(body);
}

function finish() {
  if (genChild) genChild.kill('SIGTERM');
  fs.writeFileSync(path.join(dir, 'starved'), `${starved}\n`);
  process.exit(0);
}

function tick() {
  if (stopping) return;
  if (queue.length < 100 && !generating) {
    generating = generate().catch((e) => process.stderr.write(`gen_packages.js: ${e}\n`))
      .finally(() => { generating = null; });
  }
  const item = queue.shift();
  if (!item) { starved += 1; return; }
  publish(item);
}

process.on('SIGTERM', () => {
  stopping = true;
  if (inflight === 0) finish();
});
generate().then(() => {
  fs.writeFileSync(path.join(dir, 'ready'), '');
  setInterval(tick, Math.max(1, Math.round(1000 / Number(rateText))));
}).catch((e) => { process.stderr.write(`gen_packages.js: ${e}\n`); process.exit(1); });
JS
}

start_publisher() {
  write_publisher
  mkdir -p "$T/pub"
  : >"$T/publishes"
  node "$T/publisher.js" "${REGISTRY[lb]}" "$TOKEN" "$FIXTURES/gen_packages.js" "$T/pub" "$RATE" \
    "$T/publishes" 2>>"$T/publisher.log" &
  PUBLISHER_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do
    [[ -e "$T/pub/ready" ]] && break
    kill -0 "$PUBLISHER_PID" 2>/dev/null || fail "the publisher exited: $(cat "$T/publisher.log")"
    sleep 0.1
  done
  [[ -e "$T/pub/ready" ]] || fail "the publisher did not start within 30 s"
  info "publisher pid $PUBLISHER_PID, $RATE/s through ${REGISTRY[lb]}"
}

stop_publisher() {
  local i
  kill -TERM "$PUBLISHER_PID" 2>/dev/null || true
  for ((i = 0; i < 1300; i++)); do
    kill -0 "$PUBLISHER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$PUBLISHER_PID" 2>/dev/null && fail "the publisher did not finish within 130 s of SIGTERM"
  wait "$PUBLISHER_PID" || fail "the publisher failed: $(cat "$T/publisher.log")"
  PUBLISHER_PID=""
}

# publish_counts — "sent N, 201 A, notice B, 503 C, other D" so far.
publish_counts() {
  awk '{ n++; if ($3 == 201 && $4 == 0) a++; else if ($3 == 201) b++; else if ($3 == 503) c++; else d++ }
       END { printf "sent %d, 201 %d, 201+notice %d, 503 %d, other %d\n", n, a, b, c, d }' "$T/publishes"
}

# verify_on URL OUT [NOTICE] — every publish acknowledged with 201 and no
# npm-notice (with NOTICE=1: those with one) is in URL's packument (GET, 8
# at a time); the missing ones go to OUT. Prints "checked missing".
verify_on() {
  node - "$1" "$TOKEN" "$T/publishes" "$2" "${3:-0}" <<'JS'
'use strict';
const http = require('http');
const fs = require('fs');
const [base, token, results, out, notice] = process.argv.slice(2);
const acked = fs.readFileSync(results, 'utf8').split('\n').filter(Boolean).map((l) => l.split(' '))
  .filter((f) => f[2] === '201' && f[3] === notice);
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
const missing = [];
function check([name, version]) {
  return new Promise((resolve) => {
    const req = http.get(`${base}/${name.replace('/', '%2f')}`, { agent, headers: {
      Authorization: `Bearer ${token}`, Accept: 'application/json' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        let ok = false;
        try { ok = res.statusCode === 200 && Boolean(JSON.parse(body).versions[version]); } catch (e) { ok = false; }
        if (!ok) missing.push(`${name} ${version} ${res.statusCode}`);
        resolve();
      });
    });
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => { missing.push(`${name} ${version} ${e.message}`); resolve(); });
  });
}
(async () => {
  let next = 0;
  const worker = async () => { while (next < acked.length) await check(acked[next++]); };
  await Promise.all(Array.from({ length: 8 }, worker));
  fs.writeFileSync(out, missing.map((m) => m + '\n').join(''));
  process.stdout.write(`${acked.length} ${missing.length}\n`);
})();
JS
}

# ---------------------------------------------------------------- faults

# ms EPOCHREALTIME — milliseconds since the epoch.
ms() {
  local sec="${1%.*}" frac="${1#*.}000"
  printf '%d\n' "$((sec * 1000 + 10#${frac:0:3}))"
}

# checker_took START NAME — seconds from START (an EPOCHREALTIME) to the
# first checker poll after it where NAME answered /-/primary 200 (from
# $T/checker.writers); fails when the checker has not seen it within 2 s.
checker_took() {
  local start url i at
  start="$(ms "$1")"
  url="${REGISTRY[$2]}"
  for ((i = 0; i < 40; i++)); do
    at="$(awk -v s="$start" -v u="$url" '$2 >= s { for (f = 3; f <= NF; f++) if ($f == u) { print $2; exit } }' \
      "$T/checker.writers")"
    if [[ -n "$at" ]]; then
      awk -v s="$start" -v t="$at" 'BEGIN { printf "%.2f\n", (t - s) / 1000 }'
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# fault KIND LEADER — one failover; appends "index kind from to seconds ok
# note" to $T/failovers. The faulted member is back (or continued) and every
# member caught up before it returns (else the run stops).
FAILED=0
fault() {
  local kind="$1" leader="$2" index="$3"
  local pid="${INSTANCE_PID[$leader]}" started new took seen ok=1 note="" target="" target_id="" out rc
  local others=() name
  for name in n1 n2 n3; do
    [[ "$name" == "$leader" ]] || others+=("$name")
  done
  printf '\n==== %s failover %d: %s of the leader %s (pid %s) ====\n' "$(stamp)" "$index" "$kind" "$leader" "$pid"
  started="$(now)"
  case "$kind" in
    kill9)
      kill -KILL "$pid"
      wait "$pid" 2>/dev/null || true
      unset "INSTANCE_PID[$leader]"
      ;;
    stop)
      kill -STOP "$pid"
      ;;
    term)
      kill -TERM "$pid"
      ;;
    switchover)
      target="${others[$((RANDOM % 2))]}"
      target_id="$(cat "$T/$target/data/instance-id")"
      rc=0
      out="$("$NPME" --root "$T/$leader" --json ha switchover --to "$target_id" --timeout 30 2>&1)" || rc=$?
      printf 'switchover to %s (%s): exit %d %s\n' "$target" "$target_id" "$rc" "$out"
      if [[ $rc -ne 0 ]]; then
        ok=0
        note="switchover-exit-$rc"
      fi
      ;;
  esac
  if [[ "$kind" == switchover && $rc -ne 0 ]]; then
    # A switchover that gave up: the old leader keeps leading (README).
    took="$(since "$started")"
    ha_snapshot "switchover to $target failed (exit $rc)"
    new="$(wait_leader 20)" || new=""
  elif new="$(wait_leader "$TAKEOVER" "$leader")"; then
    seen="$(since "$started")"
    # When the checker first saw it answer 200 (50 ms polls), else when
    # wait_leader saw it (slower: a few processes a round).
    took="$(checker_took "$started" "$new")" || took="$seen"
    if [[ -n "$target" && "$new" != "$target" ]]; then
      ok=0
      note="switchover-to-$target-but-$new-leads"
    fi
  else
    took="$(since "$started")"
    ok=0
    new=""
    note="no-leader-within-${TAKEOVER}s"
    ha_snapshot "no new leader within $TAKEOVER s of the $kind of $leader"
  fi
  info "$(stamp) new leader: ${new:-none}: first answered /-/primary 200 after $took s (wait_leader: ${seen:-$took} s)"

  # The faulted member back: the cluster is 3 again.
  case "$kind" in
    kill9)
      start_member "$leader"
      ;;
    stop)
      sleep 1
      kill -CONT "$pid"
      info "$(stamp) SIGCONT to $leader (pid $pid)"
      ;;
    term)
      local i exit_rc=0
      for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        ok=0
        note="$note,no-exit-30s-after-SIGTERM"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      wait "$pid" 2>/dev/null || exit_rc=$?
      if [[ $exit_rc -ne 0 ]]; then
        ok=0
        note="$note,exit-$exit_rc-after-SIGTERM"
      fi
      unset "INSTANCE_PID[$leader]"
      start_member "$leader"
      ;;
  esac
  if [[ -z "$new" ]]; then
    # Does the cluster recover at all, the faulted member back? The run goes
    # on if it does.
    new="$(wait_leader 60)" || new=""
    [[ -n "$new" ]] && note="$note,$new-leads-after-$(since "$started")s"
  fi
  [[ -n "$new" ]] || { record_failover "$index" "$kind" "$leader" "-" "$took" 0 "$note"; fail "no leader at all within 60 s of the $kind of $leader (failover $index)"; }
  if ! wait_caught_up "$new" "$RECOVER"; then
    ha_snapshot "not caught up within $RECOVER s after failover $index"
    record_failover "$index" "$kind" "$leader" "$new" "$took" 0 "$note,not-caught-up-${RECOVER}s"
    fail "the members did not all follow $new and catch up within $RECOVER s of failover $index ($kind of $leader)"
  fi
  record_failover "$index" "$kind" "$leader" "$new" "$took" "$ok" "$note"
  CURRENT_LEADER="$new"
}

record_failover() {
  local index="$1" kind="$2" from="$3" to="$4" took="$5" ok="$6" note="${7#,}"
  note="${note:--}"
  printf '%s %s %s %s %s %s %s\n' "$index" "$kind" "$from" "$to" "$took" "$ok" "$note" >>"$T/failovers"
  [[ "$ok" == 1 ]] || FAILED=$((FAILED + 1))
  say "$(printf '[%s] %3d/%d %-10s %s -> %-4s takeover %6.2f s  %s  publishes: %s%s' "$(stamp)" "$index" "$FAILOVERS" \
    "$kind" "$from" "$to" "$took" "$([[ "$ok" == 1 ]] && echo ok || echo FAILED)" "$(publish_counts)" \
    "$([[ "$note" == - ]] || echo "  ($note)")")"
}

# ---------------------------------------------------------------- summary

# checker_polls — the checker's poll count (it rewrites the file every poll:
# a read may find it empty).
checker_polls() {
  local polls="" i
  for ((i = 0; i < 20; i++)); do
    polls="$(cat "$T/checker.polls" 2>/dev/null || true)"
    [[ -n "$polls" ]] && break
    sleep 0.01
  done
  printf '%s\n' "${polls:-0}"
}

# percentile P — the nearest-rank P-th percentile of the numbers on stdin.
percentile() {
  sort -n | awk -v p="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print "-"; exit }
    i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; printf "%.2f\n", v[i] }'
}

summary() {
  local split polls sent acked notice refused other other_kinds lost="$1" checked="$2" missing_replicas="$3" kind
  local notice_missing="$4"
  polls="$(checker_polls)"
  split="$(wc -l <"$T/checker.violations")"
  read -r sent acked notice refused other < <(awk '{ n++; if ($3 == 201 && $4 == 0) a++; else if ($3 == 201) b++;
    else if ($3 == 503) c++; else d++ } END { print n + 0, a + 0, b + 0, c + 0, d + 0 }' "$T/publishes")
  other_kinds="$(awk '$3 != 201 && $3 != 503 { k[$3]++ } END { for (s in k) printf "%s%s x%d", (n++ ? ", " : ""), s, k[s] }' "$T/publishes")"
  local completed failed
  completed="$(wc -l <"$T/failovers")"
  failed="$(awk '$6 != 1' "$T/failovers" | wc -l)"
  {
    printf '\n'
    printf 'chaos summary: seed %s, ha.ttl %s s, ha.loop %s s, bound %s s, sync_replicas 1 (strict), %s publishes/s\n' \
      "$SEED" "$TTL" "$LOOP" "$TAKEOVER" "$RATE"
    printf '  %-34s %s\n' "failovers done" "$completed of $FAILOVERS ($failed failed)"
    printf '  %-34s %5s %8s %8s %8s\n' "takeover (s)" count p50 p90 max
    for kind in kill9 stop term switchover; do
      printf '  %-34s %5s %8s %8s %8s\n' "  $kind" "$(awk -v k="$kind" '$2 == k' "$T/failovers" | wc -l)" \
        "$(awk -v k="$kind" '$2 == k { print $5 }' "$T/failovers" | percentile 50)" \
        "$(awk -v k="$kind" '$2 == k { print $5 }' "$T/failovers" | percentile 90)" \
        "$(awk -v k="$kind" '$2 == k { print $5 }' "$T/failovers" | percentile 100)"
    done
    printf '  %-34s %5s %8s %8s %8s\n' "  all" "$completed" "$(awk '{ print $5 }' "$T/failovers" | percentile 50)" \
      "$(awk '{ print $5 }' "$T/failovers" | percentile 90)" "$(awk '{ print $5 }' "$T/failovers" | percentile 100)"
    printf '  %-34s %s\n' "split-brain moments" "$split (in $polls polls of every member, 50 ms apart)"
    printf '  %-34s %s\n' "publishes sent" "$sent"
    printf '  %-34s %s\n' "acknowledged (201, no npm-notice)" "$acked (checked on the final leader: $checked)"
    printf '  %-34s %s\n' "lost (acknowledged, not on leader)" "$lost"
    printf '  %-34s %s\n' "missing on caught-up replicas" "$missing_replicas"
    printf '  %-34s %s\n' "201 with npm-notice (may be lost)" "$notice ($notice_missing of them not on the final leader)"
    printf '  %-34s %s\n' "refused with 503" "$refused"
    printf '  %-34s %s\n' "other failures" "$other${other_kinds:+ ($other_kinds)}"
    if [[ "$(cat "$T/pub/starved" 2>/dev/null || echo 0)" != 0 ]]; then
      printf '  %-34s %s\n' "publisher ticks without a body" "$(cat "$T/pub/starved") (gen_packages.js fell behind)"
    fi
  } >"$T/summary"
  cat "$T/summary" >&3
  cat "$T/summary"
  SUMMARY_DONE=1
  RESULT_OK=1
  [[ "$split" == 0 && "$lost" == 0 && "$completed" == "$FAILOVERS" && "$failed" == 0 ]] || RESULT_OK=0
  ((missing_replicas == 0)) || say "  WARNING: acknowledged publishes missing on a caught-up replica: $T/missing.*"
  say "  $(printf '%-34s %s' result "$([[ $RESULT_OK == 1 ]] && echo PASS || echo FAIL)")"
}

# ---------------------------------------------------------------- the run

say "npme $NPME ($("$NPME" --version 2>/dev/null | head -n 1)), seed $SEED, $FAILOVERS failovers of: ${KINDS[*]}"
RANDOM=$SEED

start_etcd
for name in n1 n2 n3; do
  configure_member "$name" "ha.ttl=$TTL" "ha.loop=$LOOP" replication.sync_replicas=1
done
start_member n1
CURRENT_LEADER="$(wait_leader 20)" || fail "no leader within 20 s of the first member's start"
start_member n2
start_member n3
add_user n1 chaos chaos-password-1234
TOKEN="$(create_token n1 chaos)"
wait_caught_up "$CURRENT_LEADER" 60 || fail "n2 and n3 did not follow n1 within 60 s"
start_haproxy_etcd n1 n2 n3
start_checker n1 n2 n3
start_publisher
say "cluster up: etcd $ETCD_URL, n1 ${REGISTRY[n1]}, n2 ${REGISTRY[n2]}, n3 ${REGISTRY[n3]}, HAProxy ${REGISTRY[lb]}"
say "leader $CURRENT_LEADER; takeover bound ha.ttl + 2 × ha.loop + $MARGIN = $TAKEOVER s"

: >"$T/failovers"
RUN_STARTED=1
sleep 2
for ((index = 1; index <= FAILOVERS; index++)); do
  kind="${KINDS[$((RANDOM % ${#KINDS[@]}))]}"
  fault "$kind" "$CURRENT_LEADER" "$index"
  sleep 1 # a second of steady publishing on the full cluster between faults
done

say "stopping the publisher (waits for every answer)"
stop_publisher
wait_caught_up "$CURRENT_LEADER" "$RECOVER" || fail "the members did not catch up with $CURRENT_LEADER after the publisher stopped"
read -r checked lost < <(verify_on "${REGISTRY[$CURRENT_LEADER]}" "$T/lost")
read -r _ notice_missing < <(verify_on "${REGISTRY[$CURRENT_LEADER]}" "$T/notice-missing" 1)
missing_replicas=0
for name in n1 n2 n3; do
  [[ "$name" == "$CURRENT_LEADER" ]] && continue
  read -r _ missing < <(verify_on "${REGISTRY[$name]}" "$T/missing.$name")
  missing_replicas=$((missing_replicas + missing))
done
[[ -s "$T/lost" ]] && { say "lost publishes (first 20; all in $T/lost):"; head -n 20 "$T/lost" | sed 's/^/    /' >&3; }
[[ -s "$T/checker.violations" ]] && { say "split-brain moments (first 20; all in $T/checker.violations):"; head -n 20 "$T/checker.violations" | sed 's/^/    /' >&3; }
summary "$lost" "$checked" "$missing_replicas" "$notice_missing"
[[ "$RESULT_OK" == 1 ]] || exit 1
exit 0
