#!/usr/bin/env bash
# Automatic failover on etcd (README, "Automatic failover with etcd"): three
# members and a real etcd, behind a real HAProxy running
# deploy/haproxy-etcd.cfg, which is never changed. The leader is killed with
# SIGKILL, frozen with SIGSTOP past its lease, and a lagging member must not
# lead; promote-to-primary refuses while failover is automatic; pause stops
# it; a switchover under a steady publisher loses nothing. A checker polls
# every member's /-/primary (role primary and publication not read-only)
# every 50 ms throughout: never two at once.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/failover_lib.sh"
source "$(dirname "$0")/sync_lib.sh"
source "$(dirname "$0")/ha_lib.sh"

command -v haproxy >/dev/null 2>&1 || fail "haproxy is not installed (scripts/deps)"
TTL=4
LOOP=1
TAKEOVER=$((TTL + 2 * LOOP)) # the bound: a replica leads within ha.ttl + 2 × ha.loop

start_etcd
for name in n1 n2 n3; do
  configure_member "$name" "ha.ttl=$TTL" "ha.loop=$LOOP"
done

step "the first member alone takes the lead; the others follow it"
start_member n1
leader="$(wait_leader 10)" || fail "no leader within 10 s"
assert_eq n1 "$leader" "the first member leads"
start_member n2
start_member n3
add_user n1 alice alice-password-1234
TOKEN="$(create_token n1 alice)"
wait_until 20 "n2 and n3 follow n1" \
  bash -c "[[ \$(curl -s '${ADMIN[n2]}/api/v1/status' -H 'Authorization: Bearer $(run_npme --root "$T/n2" settings get admin.token --reveal 2>/dev/null)' | jq -r .follower.state) == caught-up ]]"
out="$(run_npme --root "$T/n2" ha status --json)"
assert_eq 3 "$(jq '.members | length' <<<"$out")" "members in etcd"
assert_eq "$(cat "$T/n1/data/instance-id")" "$(jq -r .leader.instance <<<"$out")" "leader in ha status"
assert_eq "false" "$(takes_writes n2 && echo true || echo false)" "n2 takes writes"
assert_eq 503 "$(curl -s -o /dev/null -w '%{http_code}' "${REGISTRY[n2]}/-/primary")" "GET /-/primary on a replica"
assert_eq 200 "$(curl -s -o /dev/null -w '%{http_code}' "${REGISTRY[n2]}/-/replica")" "GET /-/replica on a replica"
assert_eq 401 "$(curl -s -o /dev/null -w '%{http_code}' "${REGISTRY[n2]}/-/ha")" "GET /-/ha without the secret"
run_npme --root "$T/n1" ha status

start_haproxy_etcd n1 n2 n3
start_checker n1 n2 n3

step "npm publishes and installs through HAProxy"
make_package "$T/pkg-a" ha-a 1.0.0
in_dir "$T/pkg-a" npm_as lb "$TOKEN" -- publish >/dev/null || fail "npm publish through HAProxy failed"
load_bodies 40 ha-gen
publish_next

step "promote-to-primary refuses while failover is automatic"
expect_exit 6 run_npme --root "$T/n2" --yes promote-to-primary
assert_contains "$LAST_OUTPUT" "ha switchover"

step "kill -9 of the leader: a replica leads within ha.ttl + 2 × ha.loop ($TAKEOVER s)"
killed_at="$(date +%s.%N)"
kill -KILL "${INSTANCE_PID[n1]}"
wait "${INSTANCE_PID[n1]}" 2>/dev/null || true
leader="$(wait_leader "$TAKEOVER" n1)" || fail "no new leader within $TAKEOVER s of the kill"
took="$(awk -v s="$killed_at" -v n="$(date +%s.%N)" 'BEGIN { printf "%.2f", n - s }')"
info "$leader leads $took s after the kill"
publish_next 20
info "a publish through HAProxy succeeded $TOOK s later (no configuration change)"
mkdir -p "$T/app1"
in_dir "$T/app1" npm_as lb "$TOKEN" -- install ha-a "${PUBLISHED[@]}" >/dev/null || fail "npm install through HAProxy failed"

if have_tool nginx "deploy/nginx-etcd.conf"; then
  step "through nginx (deploy/nginx-etcd.conf, never changed): writes find the new leader, installs work"
  NGINX_TEMPLATE=nginx-etcd.conf start_nginx n1 n2 n3
  for ((i = 0; i < 3; i++)); do
    read -r name file <<<"${BODIES[$next_body]}"
    next_body=$((next_body + 1))
    code="$(curl -s -o "$T/nginx-publish.out" -w '%{http_code}' --max-time 30 -X PUT \
      -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
      --data-binary "@$file" "${REGISTRY[nginx]}/${name/\//%2f}")"
    assert_eq 201 "$code" "publish of $name through nginx (the dead member and the replicas passed over)"
    PUBLISHED+=("$name")
  done
  mkdir -p "$T/app-nginx"
  in_dir "$T/app-nginx" npm_as nginx "$TOKEN" -- install "${PUBLISHED[@]}" >/dev/null ||
    fail "npm install through nginx failed"
fi

step "the old leader comes back as a replica of the new one, without taking a write first"
start_member n1
assert_eq false "$(takes_writes n1 && echo true || echo false)" "the returning old leader takes writes"
wait_until 20 "n1 follows $leader and holds the publish made after the kill" \
  bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' '${REGISTRY[n1]}/${PUBLISHED[-1]}' >/dev/null"
assert_eq false "$(takes_writes n1 && echo true || echo false)" "the old leader takes writes"

step "SIGSTOP of the leader past its lease, then SIGCONT: it finds itself fenced and follows"
frozen="$leader"
kill -STOP "${INSTANCE_PID[$frozen]}"
leader="$(wait_leader "$TAKEOVER" "$frozen")" || fail "no new leader within $TAKEOVER s of SIGSTOP"
info "$leader leads while $frozen is frozen"
publish_next 20
sleep 1
kill -CONT "${INSTANCE_PID[$frozen]}"
wait_until 10 "$frozen answers /-/replica after SIGCONT" \
  bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 '${REGISTRY[$frozen]}/-/replica') == 200 ]]"
wait_until 20 "$frozen follows $leader" \
  bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' '${REGISTRY[$frozen]}/${PUBLISHED[-1]}' >/dev/null"
grep -q "fenced" "$T/$frozen.serve.log" || fail "$frozen did not log that it fenced itself"
check_no_split_brain

step "a member lagging more than ha.max_lag (0) is never elected"
others=()
for name in n1 n2 n3; do
  [[ "$name" == "$leader" ]] || others+=("$name")
done
lagging="${others[0]}"
insync="${others[1]}"
kill -STOP "${INSTANCE_PID[$lagging]}"
publish_next
publish_next
wait_until 10 "$insync holds the last publish" \
  bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' '${REGISTRY[$insync]}/${PUBLISHED[-1]}' >/dev/null"
sleep $((2 * LOOP + 1)) # the leader records its position (optime) every round
kill -KILL "${INSTANCE_PID[$leader]}" "${INSTANCE_PID[$insync]}"
wait "${INSTANCE_PID[$leader]}" "${INSTANCE_PID[$insync]}" 2>/dev/null || true
kill -CONT "${INSTANCE_PID[$lagging]}"
sleep $((TAKEOVER + 2))
assert_eq "" "$(leader_of)" "leader while only the lagging member is up"
out="$(run_npme --root "$T/$lagging" ha status --json)"
assert_contains "$(jq -r '.excluded | tostring' <<<"$out")" "lags"
run_npme --root "$T/$lagging" ha status || true
start_member "$insync"
leader="$(wait_leader 20)" || fail "the in-sync member did not lead after it came back"
assert_eq "$insync" "$leader" "the member that leads"
wait_until 20 "$lagging catches up with $insync" \
  bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' '${REGISTRY[$lagging]}/${PUBLISHED[-1]}' >/dev/null"
for name in n1 n2 n3; do
  if [[ -z "${INSTANCE_PID[$name]:-}" ]] || ! kill -0 "${INSTANCE_PID[$name]}" 2>/dev/null; then
    start_member "$name"
  fi
done

step "ha pause: no automatic failover; ha resume: failover again"
run_npme --root "$T/$leader" ha pause
assert_eq true "$(run_npme --root "$T/$lagging" ha status --json | jq -r .paused)" "paused in ha status"
# Each member reads the pause key in its next round.
wait_until $((2 * LOOP + 1)) "npme status on $lagging shows failover PAUSED" \
  bash -c "'$NPME' --root '$T/$lagging' status | grep -q PAUSED"
paused_leader="$leader"
kill -KILL "${INSTANCE_PID[$paused_leader]}"
wait "${INSTANCE_PID[$paused_leader]}" 2>/dev/null || true
sleep $((TAKEOVER + 1))
for name in n1 n2 n3; do
  [[ "$name" == "$paused_leader" ]] && continue
  assert_eq false "$(takes_writes "$name" && echo true || echo false)" "$name takes writes while paused"
done
run_npme --root "$T/$lagging" ha resume
leader="$(wait_leader "$TAKEOVER" "$paused_leader")" || fail "no leader within $TAKEOVER s of ha resume"
start_member "$paused_leader"
publish_next

step "ha switchover under a steady publisher: no publish lost, none failed but with 503"
target=""
for name in n1 n2 n3; do
  [[ "$name" != "$leader" ]] && target="$name"
done
wait_until 20 "$target holds the last publish" \
  bash -c "curl -sf -H 'Authorization: Bearer $TOKEN' '${REGISTRY[$target]}/${PUBLISHED[-1]}' >/dev/null"
# 10 publishes a second through HAProxy while the lead changes hands.
printf '%s\n' "${BODIES[@]:$next_body:20}" >"$T/switch.list"
node -e '
const http = require("http"); const fs = require("fs");
const [lb, token, list, out] = process.argv.slice(1);
const items = fs.readFileSync(list, "utf8").trim().split("\n").map((l) => l.split(" "));
let i = 0;
const timer = setInterval(() => {
  if (i >= items.length) { clearInterval(timer); return; }
  const [name, file] = items[i++];
  const body = fs.readFileSync(file);
  const req = http.request(lb + "/" + name.replace("/", "%2f"), { method: "PUT", headers: {
    "content-type": "application/json", authorization: "Bearer " + token, "content-length": body.length } }, (res) => {
    res.resume(); res.on("end", () => fs.appendFileSync(out, name + " " + res.statusCode + "\n"));
  });
  req.on("error", (e) => fs.appendFileSync(out, name + " error " + e.code + "\n"));
  req.end(body);
}, 100);
' "${REGISTRY[lb]}" "$TOKEN" "$T/switch.list" "$T/switch.results" &
publisher=$!
STARTED_PIDS+=("$publisher")
sleep 0.5
target_id="$(cat "$T/$target/data/instance-id")"
out="$(run_npme --root "$T/$leader" --json ha switchover --to "$target_id" --timeout 30)"
assert_eq "$target_id" "$(jq -r .to <<<"$out")" "switchover target"
wait "$publisher"
next_body=$((next_body + 20))
assert_eq "$target" "$(member_named "$(leader_of)")" "the member leading after the switchover"
info "switchover: $(jq -c . <<<"$out"); answers: $(awk '{ print $2 }' "$T/switch.results" | sort | uniq -c | tr '\n' ' ')"
assert_eq 20 "$(wc -l <"$T/switch.results")" "answers to the publisher"
bad="$(awk '$2 != 201 && $2 != 503' "$T/switch.results")"
assert_eq "" "$bad" "publishes that failed otherwise than with 503"
while read -r name code; do
  [[ "$code" == 201 ]] || continue
  curl -sf -H "Authorization: Bearer $TOKEN" "${REGISTRY[$target]}/$name" >/dev/null ||
    fail "$name was acknowledged (201) before the switchover but is not on the new leader"
done <"$T/switch.results"

check_no_split_brain
