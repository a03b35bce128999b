#!/usr/bin/env bash
# Follower faults: a wrong secret, an unreachable upstream, a tampered
# tarball, a malformed feed or document, an upstream dying mid-response, and
# kill -9 of a replica during an initial sync of 500 packages. Each gives a
# clear error in status, loses nothing and invents nothing.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

follower() { "$NPME" --root "$T/$1" status --json | jq -c .follower; }

# metric INSTANCE NAME — the value of an unlabelled metric on the admin port.
metric() {
  curl -sS "${ADMIN[$1]}/metrics" | awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print "missing" }'
}

# wait_follower INSTANCE JQ_CONDITION [SECONDS]
wait_follower() {
  local instance="$1" condition="$2" limit="${3:-30}" i f
  for ((i = 0; i < limit * 10; i++)); do
    f="$(follower "$instance")"
    if jq -e "$condition" <<<"$f" >/dev/null; then
      info "ok: $instance follower: $condition"
      return 0
    fi
    sleep 0.1
  done
  fail "$instance follower never satisfied $condition: $f"
}

start_instance primary
start_instance replica
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
make_package "$T/p1" faults-a 1.0.0
(cd "$T/p1" && npm_as primary "$TOKEN" -- publish) >/dev/null

step "a wrong secret: state error, the reason, and backoff instead of a hot loop"
before="$(curl -sS "${ADMIN[primary]}/metrics" | awk '/status="401"/ { n += $2 } END { print n + 0 }')"
run_npme --root "$T/replica" settings set "upstream.url=${REGISTRY[primary]}" \
  upstream.secret=this-is-not-the-secret-0000 upstream.policy=mirror >/dev/null
wait_follower replica '.state == "error" and (.last_error | contains("upstream refused the secret (401)"))'
sleep 10
after="$(curl -sS "${ADMIN[primary]}/metrics" | awk '/status="401"/ { n += $2 } END { print n + 0 }')"
requests=$((after - before))
info "requests refused in ~10 s: $requests"
((requests >= 2 && requests <= 12)) || fail "expected a few retries with backoff in 10 s, got $requests"
assert_eq 0 "$(db_query replica "select count(*) from docs where id not like '\_%' escape '\'")" \
  "packages on the replica"

step "the right secret: it recovers"
make_replica replica primary
wait_synced replica primary

step "an unreachable upstream: error, then recovery when it is back"
run_npme --root "$T/replica" settings set upstream.url=http://127.0.0.1:9 >/dev/null
wait_follower replica '.state == "error" and (.last_error | contains("cannot reach upstream"))'
run_npme --root "$T/replica" settings set "upstream.url=${REGISTRY[primary]}" >/dev/null
wait_synced replica primary

step "a tampered tarball: the replica refuses the version and does not advance"
make_package "$T/p2" faults-b 1.0.0
(cd "$T/p2" && npm_as primary "$TOKEN" -- publish) >/dev/null
good_seq="$(update_seq primary)"
# A resync from 0, re-checking everything, up to the primary's position.
expect_exit 0 "$NPME" --root "$T/replica" reset-follower --wait --timeout 60
assert_contains "$LAST_OUTPUT" "caught up" "reset-follower's report"
f="$(follower replica)"
assert_eq "caught-up $good_seq" "$(jq -r '"\(.state) \(.sequence)"' <<<"$f")" "follower after the reset"
assert_eq "$good_seq" "$(tr -d '\n' <"$T/replica/data/sequence")" "data/sequence after the reset"
assert_eq 0 "$(metric replica npme_follower_lag_changes)" "npme_follower_lag_changes when caught up"
assert_eq 1 "$(metric replica npme_follower_up)" "npme_follower_up when caught up"
tarball="$(tarball_path primary faults-c 1.0.0)"
make_package "$T/p3" faults-c 1.0.0
run_npme --root "$T/replica" settings set publication=read-only >/dev/null
# Stop the follower while the primary's tarball is corrupted, then let it see it.
curl -sS -X POST -H "Authorization: Bearer $(jq -r '."admin.token"' "$T/replica/settings.json")" \
  "${ADMIN[replica]}/api/v1/follower/stop" >/dev/null
(cd "$T/p3" && npm_as primary "$TOKEN" -- publish) >/dev/null
cp "$tarball" "$T/good.tgz"
printf '\x00' | dd of="$tarball" bs=1 seek=20 conv=notrunc status=none
bad_seq="$(update_seq primary)"
make_package "$T/p4" faults-d 1.0.0
(cd "$T/p4" && npm_as primary "$TOKEN" -- publish) >/dev/null
curl -sS -X POST -H "Authorization: Bearer $(jq -r '."admin.token"' "$T/replica/settings.json")" \
  "${ADMIN[replica]}/api/v1/follower/start" >/dev/null
wait_follower replica '.state == "error" and (.last_error | contains("faults-c")) and (.last_error | contains("integrity"))'
f="$(follower replica)"
(($(jq -r .sequence <<<"$f") < bad_seq)) || fail "sequence advanced past the bad change: $f"
(($(jq -r .sequence <<<"$f") >= good_seq)) || fail "sequence fell behind the good changes: $f"
assert_eq "$(($(jq -r .sequence <<<"$f")))" "$(tr -d '\n' <"$T/replica/data/sequence")" "data/sequence"
# Stuck before the bad change: faults-c and faults-d are not applied, and
# the lag says so (the primary's update_seq less the applied position).
lag="$(metric replica npme_follower_lag_changes)"
assert_eq "$(($(update_seq primary) - $(jq -r .sequence <<<"$f")))" "$lag" "npme_follower_lag_changes while stuck"
((lag >= 2)) || fail "npme_follower_lag_changes is $lag while two changes are not applied"
assert_eq "$lag" "$(jq -r .lag_changes <<<"$f")" "lag_changes in npme status"
assert_eq 0 "$(metric replica npme_follower_up)" "npme_follower_up while in error"
assert_file_missing "$(tarball_path replica faults-c 1.0.0)"
assert_eq 0 "$(db_query replica "select count(*) from docs where id = 'faults-c'")" "refused package on the replica"
assert_eq 0 "$(db_query replica "select count(*) from docs where id = 'faults-d'")" \
  "a later change is not applied past the refused one"
# A read of the name on the replica asks the primary for it (a replica's
# miss goes upstream by name), but the bad tarball is never stored or sent.
code="$(curl -sS -o "$T/bad.body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  "${REGISTRY[replica]}/faults-c/-/faults-c-1.0.0.tgz")"
assert_eq 502 "$code" "the damaged tarball read through the replica"
assert_contains "$(cat "$T/bad.body")" "integrity" "the 502 says why"
assert_file_missing "$(tarball_path replica faults-c 1.0.0)"

step "the tarball repaired on the primary (and the primary restarted): the replica converges"
# The primary keeps tarballs it served in memory: a file repaired on disk is
# served after a restart.
cp "$T/good.tgz" "$tarball"
stop_instance primary
start_instance primary
run_npme --root "$T/replica" settings set "upstream.url=${REGISTRY[primary]}" >/dev/null
wait_synced replica primary 60
assert_eq "$(content_digest primary "$TOKEN" faults-a faults-b faults-c faults-d)" \
  "$(content_digest replica "$TOKEN" faults-a faults-b faults-c faults-d)" "content after the repair"
assert_eq 0 "$(metric replica npme_follower_lag_changes)" "npme_follower_lag_changes after the repair"
assert_eq "$(update_seq primary)" "$(metric replica npme_follower_sequence)" "npme_follower_sequence after the repair"

for mode in feed doc cut; do
  step "a hostile upstream ($mode): error in status, existing data intact"
  node "$FIXTURES/fake_upstream.js" "$mode" >"$T/fake-$mode.port" &
  STARTED_PIDS+=($!)
  fake_pid=$!
  for _ in $(seq 50); do [[ -s "$T/fake-$mode.port" ]] && break; sleep 0.1; done
  port="$(cat "$T/fake-$mode.port")"
  seq_before="$(db_seq replica)"
  digest_before="$(content_digest replica "$TOKEN" faults-a faults-b faults-c faults-d)"
  run_npme --root "$T/replica" settings set "upstream.url=http://127.0.0.1:$port" >/dev/null
  case "$mode" in
    feed) wait_follower replica '.state == "error" and (.last_error | contains("malformed changes feed"))' ;;
    doc) wait_follower replica '.state == "error" and (.last_error | contains("malformed document"))' ;;
    cut) wait_follower replica '.state == "error" and (.last_error | contains("victim"))' ;;
  esac
  assert_eq "$seq_before" "$(db_seq replica)" "database sequence of the replica"
  assert_eq "$digest_before" "$(content_digest replica "$TOKEN" faults-a faults-b faults-c faults-d)" \
    "content of the replica"
  http GET "${REGISTRY[replica]}/victim" -H "Authorization: Bearer $TOKEN"
  assert_eq 404 "$HTTP_STATUS" "nothing invented"
  kill "$fake_pid"
  wait "$fake_pid" 2>/dev/null || true
done

step "kill -9 of a replica during an initial sync of 500 packages"
node "$FIXTURES/gen_packages.js" "$T/gen" 500 1 bulk 2 6
bulk_publish primary "$TOKEN" "$T/gen/list"
mapfile -t NAMES < <(awk '{ print $1 }' "$T/gen/list")
NAMES+=(faults-a faults-b faults-c faults-d)
start_instance bulk
make_replica bulk primary
# The follower commits in windows and writes data/sequence after each: kill
# right after the first one lands.
for _ in $(seq 3000); do
  [[ "$(cat "$T/bulk/data/sequence" 2>/dev/null || true)" =~ ^[1-9] ]] && break
  sleep 0.02
done
kill9_instance bulk
partial="$(tr -d '\n' <"$T/bulk/data/sequence" 2>/dev/null || true)"
info "sequence at the kill: ${partial:-0} of $(update_seq primary)"
(( ${partial:-0} < $(update_seq primary) )) || fail "the sync had finished before the kill"
start_instance bulk
wait_synced bulk primary 180
assert_eq "$(content_digest primary "$TOKEN" "${NAMES[@]}")" "$(content_digest bulk "$TOKEN" "${NAMES[@]}")" \
  "content digest of the primary and the restarted replica"
verify_tarballs bulk "$TOKEN" "${NAMES[@]}"

stop_instance bulk
stop_instance replica
stop_instance primary
echo "PASS: $TEST_NAME"
