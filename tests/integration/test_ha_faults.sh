#!/usr/bin/env bash
# Automatic failover on etcd under faults of etcd itself (README, "Automatic
# failover with etcd"): a three-member etcd on 127.0.0.1, three npme members
# behind a real HAProxy (deploy/haproxy-etcd.cfg, never changed), and the
# 50 ms split-brain checker throughout.
#   - A network partition between the leader and etcd: the leader reaches
#     etcd only through a TCP proxy, which is frozen (SIGSTOP: packets go
#     nowhere, as on a cut link). The leader turns read-only within its TTL
#     and keeps serving reads; a replica takes over; when the link returns
#     the old leader follows the new one.
#   - Losing etcd (all three members stopped): the leader turns read-only
#     after its TTL, every member keeps serving reads; when etcd returns, a
#     leader takes writes again.
#   - A member whose secret differs from the cluster's: `ha status` reports
#     it, and it never takes the lead, even when it is the only one left.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/failover_lib.sh"
source "$(dirname "$0")/sync_lib.sh"
source "$(dirname "$0")/ha_lib.sh"

command -v haproxy >/dev/null 2>&1 || fail "haproxy is not installed (scripts/deps)"
TTL=4
LOOP=1
TAKEOVER=$((TTL + 2 * LOOP))

# --- a three-member etcd, and a proxy in front of its first member ---------

declare -a ETCD_CLIENT=() ETCD_PEER=() ETCD_PIDS=()

# start_etcd_member I — (re)starts member I of the three (data kept in $T/etcd-I).
start_etcd_member() {
  local i="$1" cluster="" j
  for j in 0 1 2; do
    cluster+="${cluster:+,}e$j=http://127.0.0.1:${ETCD_PEER[$j]}"
  done
  etcd --name "e$i" --data-dir "$T/etcd-$i" --initial-cluster-token it --initial-cluster-state new \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-cluster "$cluster" >>"$T/etcd-$i.log" 2>&1 &
  ETCD_PIDS[$i]=$!
  STARTED_PIDS+=("${ETCD_PIDS[$i]}")
}

# wait_etcd_healthy — until every member answers /health with true.
wait_etcd_healthy() {
  local i
  for i in 0 1 2; do
    wait_until 30 "etcd member e$i healthy" \
      bash -c "curl -sf --max-time 1 http://127.0.0.1:${ETCD_CLIENT[$i]}/health | grep -q true"
  done
}

step "start a three-member etcd"
for i in 0 1 2; do
  ETCD_CLIENT[$i]="$(free_port)"
  ETCD_PEER[$i]="$(free_port)"
done
for i in 0 1 2; do
  start_etcd_member "$i"
done
wait_etcd_healthy
ETCD_URL="http://127.0.0.1:${ETCD_CLIENT[1]}" # what etcd_get (ha_lib.sh) reads

# The link between n1 and etcd: a TCP proxy to etcd member e0.
PROXY_PORT="$(free_port)"
cat >"$T/proxy.js" <<'JS'
'use strict';
const net = require('net');
const [port, target] = process.argv.slice(2).map(Number);
net.createServer((client) => {
  const upstream = net.connect(target, '127.0.0.1');
  client.pipe(upstream).pipe(client);
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
}).listen(port, '127.0.0.1');
JS
node "$T/proxy.js" "$PROXY_PORT" "${ETCD_CLIENT[0]}" &
PROXY_PID=$!
STARTED_PIDS+=("$PROXY_PID")
wait_until 10 "the proxy to etcd listens" \
  bash -c "curl -sf --max-time 1 http://127.0.0.1:$PROXY_PORT/health | grep -q true"

# configure_member points every member at all of etcd; n1 only through the proxy.
configure_member n1 "ha.ttl=$TTL" "ha.loop=$LOOP"
configure_member n2 "ha.ttl=$TTL" "ha.loop=$LOOP"
configure_member n3 "ha.ttl=$TTL" "ha.loop=$LOOP"
run_npme --root "$T/n1" settings set --offline "ha.etcd=http://127.0.0.1:$PROXY_PORT" >/dev/null
run_npme --root "$T/n2" settings set --offline \
  "ha.etcd=http://127.0.0.1:${ETCD_CLIENT[1]},http://127.0.0.1:${ETCD_CLIENT[2]},http://127.0.0.1:${ETCD_CLIENT[0]}" >/dev/null
run_npme --root "$T/n3" settings set --offline \
  "ha.etcd=http://127.0.0.1:${ETCD_CLIENT[2]},http://127.0.0.1:${ETCD_CLIENT[1]},http://127.0.0.1:${ETCD_CLIENT[0]}" >/dev/null

step "n1 leads; n2 and n3 follow"
start_member n1
leader="$(wait_leader 10)" || fail "no leader within 10 s"
assert_eq n1 "$leader" "the first member leads"
start_member n2
start_member n3
add_user n1 alice alice-password-1234
TOKEN="$(create_token n1 alice)"
start_haproxy_etcd n1 n2 n3
start_checker n1 n2 n3

load_bodies 20 faults-gen
# read_only NAME — the member's /-/primary does not answer 200.
read_only() {
  ! takes_writes "$1"
}
# holds NAME PACKAGE — the member serves the package (a read).
holds() {
  curl -sf --max-time 2 -H "Authorization: Bearer $TOKEN" "${REGISTRY[$1]}/$2" >/dev/null
}
publish_next
for name in n2 n3; do
  wait_until 20 "$name holds ${PUBLISHED[-1]}" holds "$name" "${PUBLISHED[-1]}"
done

step "partition: the link between the leader (n1) and etcd goes dead"
kill -STOP "$PROXY_PID"
cut_at=$SECONDS
wait_until $((TTL + 1)) "n1 stops taking writes within its TTL ($TTL s)" read_only n1
info "n1 read-only $((SECONDS - cut_at)) s after the cut"
leader="$(wait_leader $((TAKEOVER + 2)) n1)" || fail "no replica took over within $((TAKEOVER + 2)) s of the cut"
info "$leader leads $((SECONDS - cut_at)) s after the cut"
publish_next 20
info "a publish through HAProxy succeeded $TOOK s later"
holds n1 "${PUBLISHED[0]}" || fail "n1, cut off from etcd, does not serve reads"
assert_eq false "$(takes_writes n1 && echo true || echo false)" "n1 takes writes while cut off from etcd"
out="$(run_npme --root "$T/n1" status --json)"
info "n1 while cut off: $(jq -c .ha <<<"$out")"

step "the link returns: n1 finds the key held by $leader and follows it"
kill -CONT "$PROXY_PID"
wait_until 20 "n1 follows $leader and holds ${PUBLISHED[-1]}" holds n1 "${PUBLISHED[-1]}"
assert_eq false "$(takes_writes n1 && echo true || echo false)" "n1 takes writes after the partition"
assert_eq "$leader" "$(member_named "$(leader_of)")" "the leader after the partition"
check_no_split_brain

step "losing etcd: all three members stopped"
publish_next
for name in n1 n2 n3; do
  wait_until 20 "$name holds ${PUBLISHED[-1]}" holds "$name" "${PUBLISHED[-1]}"
done
lost_at=$SECONDS
for i in 0 1 2; do
  kill -TERM "${ETCD_PIDS[$i]}"
done
for i in 0 1 2; do
  wait "${ETCD_PIDS[$i]}" 2>/dev/null || true
done
wait_until $((TTL + 1)) "$leader stops taking writes within its TTL of losing etcd" read_only "$leader"
info "$leader read-only $((SECONDS - lost_at)) s after etcd went away"
# By its own clock, at the end of its lease, not on an answer of an etcd
# that was shutting down. Writes stop by the clock; the log line comes when
# the loop's round (a request to an etcd that is gone, up to its timeout)
# returns, so it may follow a moment later.
fenced_by_lease() {
  grep "fenced" "$T/$1.serve.log" | tail -n 1 | grep -q "cannot renew its lease"
}
wait_until 10 "$leader logs that it fenced itself at its lease's end (not on an answer of etcd)" \
  fenced_by_lease "$leader"
sleep "$LOOP"
for name in n1 n2 n3; do
  assert_eq false "$(takes_writes "$name" && echo true || echo false)" "$name takes writes without etcd"
  holds "$name" "${PUBLISHED[-1]}" || fail "$name does not serve reads without etcd"
done
code="$(publish_via_lb "$TOKEN" "$(awk -v n="$next_body" 'NR == n + 1 { print $3 }' "$T/gen/list")" \
  "$(awk -v n="$next_body" 'NR == n + 1 { print $1 }' "$T/gen/list")")"
assert_eq 503 "$code" "a publish through HAProxy without etcd"
mkdir -p "$T/app"
in_dir "$T/app" npm_as lb "$TOKEN" -- install "${PUBLISHED[@]}" >/dev/null || fail "npm install through HAProxy without etcd failed"
out="$(run_npme --root "$T/$leader" status)"
assert_contains "$out" "failover error"

step "etcd returns: a leader takes writes again"
for i in 0 1 2; do
  start_etcd_member "$i"
done
wait_etcd_healthy
back_at=$SECONDS
new_leader="$(wait_leader 30)" || fail "no leader within 30 s of etcd's return"
info "$new_leader leads $((SECONDS - back_at)) s after etcd returned (it led before: $leader)"
publish_next 20
for name in n1 n2 n3; do
  wait_until 20 "$name holds ${PUBLISHED[-1]}" holds "$name" "${PUBLISHED[-1]}"
done
leader="$new_leader"
check_no_split_brain

step "a member with another secret is reported, and never leads"
configure_member n4 "ha.ttl=$TTL" "ha.loop=$LOOP" "secret=not-the-cluster-secret-0123456789"
run_npme --root "$T/n4" settings set --offline "ha.etcd=http://127.0.0.1:${ETCD_CLIENT[1]}" >/dev/null
start_member n4
n4_id="$(cat "$T/n4/data/instance-id")"
wait_until 20 "ha status reports n4's secret as refused" \
  bash -c "'$NPME' --root '$T/n2' ha status --json | jq -e --arg id '$n4_id' '.members[] | select(.instance == \$id) | .secret_ok == false' >/dev/null"
out="$(run_npme --root "$T/n2" ha status)"
assert_contains "$out" "REFUSED"
out="$(run_npme --root "$T/n2" ha status --json)"
assert_contains "$(jq -r --arg id "$n4_id" '.excluded[$id] // ""' <<<"$out")" "secret"
for name in n1 n2 n3; do
  kill -KILL "${INSTANCE_PID[$name]}"
done
for name in n1 n2 n3; do
  wait "${INSTANCE_PID[$name]}" 2>/dev/null || true
done
sleep $((TAKEOVER + 2))
assert_eq "" "$(leader_of)" "the leader once only n4 (another secret) is left"
assert_eq false "$(takes_writes n4 && echo true || echo false)" "n4 takes writes"
check_no_split_brain
