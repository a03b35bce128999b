#!/usr/bin/env bash
# The primary's view of its followers (DESIGN.md §10, issue 11): followers
# name themselves (instance id, registry.url); `npme replicas` (human and
# --json), GET /api/v1/replicas, the short form in `npme status --json` and
# the /metrics families show them with applied seq, lag, last_seen, state and
# whether they count as synchronous; a daisy chain is visible hop by hop; a
# stopped replica is shown gone, then dropped; a fake follower that lies
# about its position (a big `since`, made-up headers) acknowledges nothing
# it was not sent; 100 concurrent long polls of a caught-up primary wait
# their timeout without a busy loop, and one publish wakes them all.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/sync_lib.sh"

ISO8601='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}'

start_instance primary
start_instance a
start_instance c
start_instance b
# pkg_url and make_publish_body use the instance started last: the primary.
REGISTRY_URL="${REGISTRY[primary]}"
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
SECRET="$("$NPME" --root "$T/primary" settings get secret --reveal)"

step "a and c follow the primary; b follows a (a daisy chain)"
make_replica a primary
make_replica c primary
make_replica b a
make_package "$T/pkg-1" replicas-one 1.0.0
make_package "$T/pkg-2" @corp/replicas-two 1.0.0
(cd "$T/pkg-1" && npm_as primary "$TOKEN" -- publish) >/dev/null
(cd "$T/pkg-2" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced a primary
wait_synced c primary
wait_synced b a
ID_A="$(instance_id a)"
ID_B="$(instance_id b)"
ID_C="$(instance_id c)"
ID_P="$(instance_id primary)"
info "instances: primary $ID_P, a $ID_A, b $ID_B, c $ID_C"
[[ -n "$ID_A" && "$ID_A" != "$ID_B" && "$ID_A" != "$ID_C" ]] || fail "instance ids are not distinct"

step "followers count as synchronous once the primary asks for one (sync_replicas=1)"
# Short timeouts so that gone and dropped followers show within the test.
set_settings primary replication.sync_replicas=1 replication.follower_timeout=2s replication.sync_timeout=2s
wait_until 30 "the primary counts a and c as synchronous" synchronous_at_least primary 2

step "GET /api/v1/replicas on the primary: a and c with every field"
SEQ="$(update_seq primary)"
doc="$(replicas_api primary)"
jq . <<<"$doc" | sed 's/^/    | /'
assert_eq "$SEQ" "$(jq -r .update_seq <<<"$doc")" "update_seq in the replicas document"
assert_eq 1 "$(jq -r .sync.required <<<"$doc")" "sync.required"
assert_eq strict "$(jq -r .sync.mode <<<"$doc")" "sync.mode (the default)"
assert_num 2 "$(jq -r .sync.timeout_seconds <<<"$doc")" "sync.timeout_seconds"
assert_eq 2 "$(jq -r .sync.connected <<<"$doc")" "sync.connected"
assert_eq false "$(jq -r .sync.degraded <<<"$doc")" "sync.degraded"
for field in waiting confirmed unconfirmed refused; do
  is_number "$(jq -r ".sync.$field" <<<"$doc")" || fail "sync.$field is not a number: $(jq -c .sync <<<"$doc")"
done
BOTH="$(printf '%s\n' "$ID_A" "$ID_C" | LC_ALL=C sort | paste -sd' ')"
assert_eq "$BOTH" "$(jq -r '[.replicas[].instance] | sort | join(" ")' <<<"$doc")" \
  "followers of the primary (b follows a, not the primary)"
for name in a c; do
  id="$(instance_id "$name")"
  row="$(jq -c --arg i "$id" '.replicas[] | select(.instance == $i)' <<<"$doc")"
  assert_eq "$(own_url "$name")" "$(jq -r .url <<<"$row")" "url of $name (its registry.url)"
  assert_eq 127.0.0.1 "$(jq -r .address <<<"$row")" "address of $name"
  assert_eq "$SEQ" "$(jq -r .applied_seq <<<"$row")" "applied_seq of $name"
  assert_eq 0 "$(jq -r .lag_changes <<<"$row")" "lag_changes of $name"
  is_number "$(jq -r .lag_seconds <<<"$row")" || fail "lag_seconds of $name is not a number: $row"
  [[ "$(jq -r .last_seen <<<"$row")" =~ $ISO8601 ]] || fail "last_seen of $name is not ISO 8601: $row"
  assert_eq streaming "$(jq -r .state <<<"$row")" "state of $name"
  assert_eq true "$(jq -r .synchronous <<<"$row")" "synchronous of $name"
done

step "npme replicas --json prints the API document; npme replicas prints the table"
expect_exit 0 "$NPME" --root "$T/primary" replicas --json
assert_eq "$(jq -c '[.replicas[] | {instance, url, state, synchronous, applied_seq}] | sort_by(.instance)' <<<"$doc")" \
  "$(jq -c '[.replicas[] | {instance, url, state, synchronous, applied_seq}] | sort_by(.instance)' <<<"$LAST_STDOUT")" \
  "replicas in npme replicas --json"
assert_eq 1 "$(jq -r .sync.required <<<"$LAST_STDOUT")" "sync.required in npme replicas --json"
expect_exit 0 "$NPME" --root "$T/primary" replicas
for word in INSTANCE URL STATE SYNC APPLIED LAG "$ID_A" "$ID_C" "$(own_url a)" "$(own_url c)" streaming; do
  assert_contains "$LAST_STDOUT" "$word" "npme replicas"
done
assert_not_contains "$LAST_STDOUT" "$ID_B" "npme replicas on the primary (b is a's follower)"
for id in "$ID_A" "$ID_C"; do
  line="$(grep -F "$id" <<<"$LAST_STDOUT")"
  [[ "$line" == *streaming* && "$line" =~ [[:space:]]sync[[:space:]] ]] ||
    fail "npme replicas: the row of $id does not say streaming and sync: '$line'"
done
info "ok: both rows say streaming, sync"
expect_exit 0 "$NPME" --admin-url "${ADMIN[primary]}" --admin-token-file <(admin_token primary) replicas --json
assert_eq "$BOTH" "$(jq -r '[.replicas[].instance] | sort | join(" ")' <<<"$LAST_STDOUT")" \
  "npme replicas --admin-url"

step "hop by hop: b is on a's table, a has no follower but b, b has none"
wait_until 30 "a shows b streaming" replica_state_is a "$ID_B" streaming
row="$(replica_entry a "$ID_B")"
assert_eq "$(update_seq a)" "$(jq -r .applied_seq <<<"$row")" "b's applied_seq on a (a's own sequence)"
assert_eq "$(own_url b)" "$(jq -r .url <<<"$row")" "b's url on a"
assert_eq "$ID_B" "$(replicas_api a | jq -r '[.replicas[].instance] | join(" ")')" "followers of a"
assert_eq 0 "$(replicas_api b | jq '.replicas | length')" "followers of b"
expect_exit 0 "$NPME" --root "$T/a" replicas
assert_contains "$LAST_STDOUT" "$ID_B" "npme replicas on a"
assert_not_contains "$LAST_STDOUT" "$ID_A" "npme replicas on a"
assert_num 0 "$(metric a "npme_replica_lag_changes{instance=\"$ID_B\"}")" "npme_replica_lag_changes of b on a"
assert_eq absent "$(metric primary "npme_replica_lag_changes{instance=\"$ID_B\"}")" \
  "npme_replica_lag_changes of b on the primary"

step "npme status --json: the short form on the primary, follower.synchronous on a"
status="$("$NPME" --root "$T/primary" status --json)"
jq -c '{replicas, sync}' <<<"$status" | sed 's/^/    | /'
assert_eq 2 "$(jq -r .replicas.connected <<<"$status")" "status replicas.connected"
assert_eq 2 "$(jq -r .replicas.synchronous <<<"$status")" "status replicas.synchronous"
assert_eq 0 "$(jq -r .replicas.gone <<<"$status")" "status replicas.gone"
assert_eq 0 "$(jq -r .replicas.max_lag_changes <<<"$status")" "status replicas.max_lag_changes"
is_number "$(jq -r .replicas.max_lag_seconds <<<"$status")" ||
  fail "replicas.max_lag_seconds: $(jq -c .replicas <<<"$status")"
assert_eq "$(jq -c '.sync | {required, mode, timeout_seconds, connected, degraded}' <<<"$doc")" \
  "$(jq -c '.sync | {required, mode, timeout_seconds, connected, degraded}' <<<"$status")" "status sync object"

step "/metrics on the primary"
assert_num 0 "$(metric primary "npme_replica_lag_changes{instance=\"$ID_A\"}")" "npme_replica_lag_changes of a"
assert_num 0 "$(metric primary "npme_replica_lag_changes{instance=\"$ID_C\"}")" "npme_replica_lag_changes of c"
value="$(metric primary "npme_replica_lag_seconds{instance=\"$ID_A\"}")"
is_number "$value" || fail "npme_replica_lag_seconds{instance=\"$ID_A\"} is '$value'"
info "ok: npme_replica_lag_seconds of a = $value"
assert_num 2 "$(metric primary npme_sync_replicas_connected)" "npme_sync_replicas_connected"
assert_num 1 "$(metric primary npme_sync_replicas_required)" "npme_sync_replicas_required"
assert_num 0 "$(metric primary npme_sync_degraded)" "npme_sync_degraded"
curl -sS "${ADMIN[primary]}/metrics" >"$T/metrics.txt"
for family in npme_replica_lag_changes npme_replica_lag_seconds npme_sync_replicas_connected \
  npme_sync_replicas_required npme_sync_degraded npme_sync_writes_total; do
  grep -q "^# TYPE $family " "$T/metrics.txt" || fail "/metrics has no TYPE line for $family"
done
info "ok: every family has its TYPE line"

step "a's status says its upstream counts it synchronous (after the next feed answer)"
make_publish_body "$T/pkg-3" replicas-three 1.0.0 "$T/pkg-3.json"
raw_put "$(pkg_url replicas-three)" "$T/pkg-3.json" "$TOKEN"
assert_eq 201 "$RAW_STATUS" "publish of replicas-three"
assert_eq "" "$RAW_NOTICE" "its npm-notice"
follower_synchronous() { [[ "$("$NPME" --root "$T/$1" status --json | jq -r .follower.synchronous)" == "$2" ]]; }
wait_until 40 "a's follower.synchronous is true" follower_synchronous a true
wait_synced c primary

step "an idle follower in a long poll stays streaming (3 x follower_timeout)"
for ((i = 0; i < 12; i++)); do
  doc="$(replicas_api primary)"
  for id in "$ID_A" "$ID_C"; do
    state="$(jq -r --arg i "$id" '.replicas[] | select(.instance == $i) | .state' <<<"$doc")"
    [[ "$state" == streaming ]] ||
      fail "idle live follower $id shown '$state' after $((i / 2)) s: $(jq -c .replicas <<<"$doc")"
  done
  sleep 0.5
done
info "ok: a and c stayed streaming for 6 s of silence"

step "lag: a's follower stops, the primary takes 3 publishes (c confirms them)"
curl -sS -X POST -H "Authorization: Bearer $(admin_token a)" "${ADMIN[a]}/api/v1/follower/stop" >/dev/null
applied_before="$(replica_field primary "$ID_A" applied_seq)"
for i in 1 2 3; do
  make_publish_body "$T/lag-$i" "replicas-lag-$i" 1.0.0 "$T/lag-$i.json"
  raw_put "$(pkg_url "replicas-lag-$i")" "$T/lag-$i.json" "$TOKEN"
  assert_eq 201 "$RAW_STATUS" "publish $i while a is stopped"
  assert_eq "" "$RAW_NOTICE" "npm-notice of publish $i (c is synchronous)"
done
row="$(replica_entry primary "$ID_A")"
assert_eq "$applied_before" "$(jq -r .applied_seq <<<"$row")" "a's applied_seq (unchanged)"
assert_eq 3 "$(jq -r .lag_changes <<<"$row")" "a's lag_changes"
assert_num 3 "$(metric primary "npme_replica_lag_changes{instance=\"$ID_A\"}")" "npme_replica_lag_changes of a"
lag_seconds_positive() { awk -v v="$(replica_field primary "$ID_A" lag_seconds)" 'BEGIN { exit !(v + 0 > 0) }'; }
wait_until 10 "a's lag_seconds grows above 0" lag_seconds_positive
wait_until 10 "a no longer counts as synchronous while it lags" not_synchronous primary "$ID_A"
curl -sS -X POST -H "Authorization: Bearer $(admin_token a)" "${ADMIN[a]}/api/v1/follower/start" >/dev/null
wait_synced a primary
a_caught_up() {
  local r
  r="$(replica_entry primary "$ID_A")"
  [[ "$(jq -r '"\(.state) \(.lag_changes) \(.synchronous)"' <<<"$r")" == "streaming 0 true" ]] &&
    [[ "$(jq -r .applied_seq <<<"$r")" == "$(update_seq primary)" ]]
}
wait_until 30 "a streams again, lag 0, synchronous" a_caught_up

step "a stopped replica is shown gone, then dropped (follower_timeout=2s)"
stopped_at=$SECONDS
stop_instance c
# Within follower_timeout after its last request ended; a request still open
# when c stopped (a long poll, 25 s) may count as a sighting until it ends.
wait_until 40 "c shown gone" replica_state_is primary "$ID_C" gone
gone_at=$SECONDS
info "c was shown gone $((gone_at - stopped_at)) s after it stopped"
assert_eq false "$(replica_field primary "$ID_C" synchronous)" "c synchronous while gone"
status="$("$NPME" --root "$T/primary" status --json)"
assert_eq 1 "$(jq -r .replicas.gone <<<"$status")" "status replicas.gone"
assert_eq 1 "$(jq -r .replicas.connected <<<"$status")" "status replicas.connected"
assert_num 1 "$(metric primary npme_sync_replicas_connected)" "npme_sync_replicas_connected"
expect_exit 0 "$NPME" --root "$T/primary" replicas
assert_contains "$LAST_STDOUT" "gone" "npme replicas with c stopped"
wait_until 60 "c dropped from the table" replica_absent primary "$ID_C"
((SECONDS - gone_at >= 10)) ||
  fail "c was dropped $((SECONDS - gone_at)) s after it was shown gone (expected 10 x follower_timeout after it was last seen)"
info "ok: dropped $((SECONDS - gone_at)) s after it was shown gone"
assert_eq absent "$(metric primary "npme_replica_lag_changes{instance=\"$ID_C\"}")" "c's lag metric after the drop"

step "a fake follower that lies about its position acknowledges nothing it was not sent"
# a's follower stops, so the fake is the only candidate for the quorum.
curl -sS -X POST -H "Authorization: Bearer $(admin_token a)" "${ADMIN[a]}/api/v1/follower/stop" >/dev/null
# (Its long poll, cut by the stop, may count as a sighting until it ends.)
wait_until 40 "a no longer counts as synchronous" not_synchronous primary "$ID_A"
FAKE=fake-follower-0123456789
S="$(update_seq primary)"
fake_get() {
  curl -sS -o "$T/fake.body" -D "$T/fake.headers" -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $SECRET" \
    -H "Npme-Instance: $FAKE" -H "Npme-Instance-Url: http://127.0.0.1:9/" "$@"
}
# It fetches everything honestly, then acknowledges S (all it was sent).
code="$(fake_get "${REGISTRY[primary]}/_changes?since=0&limit=10000")"
assert_eq 200 "$code" "the fake's first feed request"
assert_eq "$S" "$(jq -r '[.results[].seq] | max' "$T/fake.body")" "highest seq sent to the fake"
sync_header="$(header_value "$T/fake.headers" Npme-Sync)"
[[ "$sync_header" == sync || "$sync_header" == async ]] || fail "Npme-Sync header of the fake's /_changes: '$sync_header'"
info "ok: Npme-Sync: $sync_header (a follower that has not acknowledged anything yet)"
code="$(fake_get "${REGISTRY[primary]}/_changes?since=$S")"
assert_eq 200 "$code" "the fake acknowledges $S"
assert_eq sync "$(header_value "$T/fake.headers" Npme-Sync)" "Npme-Sync of the answer to the fake, caught up"
# From now on it claims to be far ahead, with headers that say so, without
# ever fetching the next change (and asks often enough to stay connected).
start_liar primary "$FAKE" 999999 $((S + 1)) $((S + 5))
fake_at_s() { [[ "$(replica_field primary "$FAKE" applied_seq)" == "$S" ]]; }
wait_until 10 "the primary shows the fake at $S, not beyond" fake_at_s
wait_until 10 "the primary counts the fake as synchronous (connected, nothing unapplied)" is_synchronous primary "$FAKE"
confirmed_before="$(sync_field primary confirmed)"
unconfirmed_before="$(sync_field primary unconfirmed)"
make_publish_body "$T/lie" replicas-lie 1.0.0 "$T/lie.json"
raw_put "$(pkg_url replicas-lie)" "$T/lie.json" "$TOKEN"
assert_eq 201 "$RAW_STATUS" "publish with only the lying fake as a synchronous candidate"
assert_contains "$RAW_NOTICE" "not yet confirmed by a synchronous replica" "npm-notice of that publish"
row="$(replica_entry primary "$FAKE")"
info "the fake's row: $row"
assert_eq "$S" "$(jq -r .applied_seq <<<"$row")" "the fake's applied_seq (what it was sent, not what it claims)"
assert_eq "$confirmed_before" "$(sync_field primary confirmed)" "sync.confirmed after the lie"
assert_eq $((unconfirmed_before + 1)) "$(sync_field primary unconfirmed)" "sync.unconfirmed after the lie"
assert_eq 1 "$(jq -r .lag_changes <<<"$row")" "the fake's lag_changes"
status="$("$NPME" --root "$T/primary" status --json)"
assert_eq 1 "$(jq -r .replicas.max_lag_changes <<<"$status")" "status replicas.max_lag_changes (the fake, connected)"
awk -v v="$(jq -r .replicas.max_lag_seconds <<<"$status")" 'BEGIN { exit !(v + 0 > 0) }' ||
  fail "status replicas.max_lag_seconds is not above 0: $(jq -c .replicas <<<"$status")"
info "ok: status replicas.max_lag_seconds = $(jq -r .replicas.max_lag_seconds <<<"$status")"
wait_until 10 "the fake, behind by a change older than sync_timeout, no longer counts as synchronous" \
  not_synchronous primary "$FAKE"
SEQ_LIE="$(update_seq primary)"
make_publish_body "$T/lie2" replicas-lie 1.0.1 "$T/lie2.json"
raw_put "$(pkg_url replicas-lie)" "$T/lie2.json" "$TOKEN"
assert_eq 503 "$RAW_STATUS" "the next publish (strict, no synchronous follower)"
assert_eq "$SEQ_LIE" "$(update_seq primary)" "the primary's update_seq after the refusal"
stop_liar
curl -sS -X POST -H "Authorization: Bearer $(admin_token a)" "${ADMIN[a]}/api/v1/follower/start" >/dev/null
wait_synced a primary
wait_until 30 "a counts as synchronous again" is_synchronous primary "$ID_A"

step "100 concurrent long polls of a caught-up primary: no busy loop"
write_longpoll_script
changes_requests() {
  curl -sS --max-time 10 "${ADMIN[primary]}/metrics" |
    awk '/^npme_http_requests_total\{route="changes"/ { n += $2 } END { print n + 0 }'
}
S="$(update_seq primary)"
before="$(changes_requests)"
start_s=$SECONDS
node "$T/longpolls.js" "${REGISTRY[primary]}" "$SECRET" "$S" 100 10000 >"$T/polls.json" ||
  fail "the long poll script failed"
elapsed=$((SECONDS - start_s))
after="$(changes_requests)"
jq -c '[.polls[] | .status] | group_by(.) | map({status: .[0], n: length})' "$T/polls.json" | sed 's/^/    | /'
assert_eq 100 "$(jq '[.polls[] | select(.status == 200 and .ids == [])] | length' "$T/polls.json")" \
  "long polls answered 200 with no change"
early="$(jq '[.polls[] | select(.ms < 9000)] | length' "$T/polls.json")"
assert_eq 0 "$early" \
  "long polls answered before 9 s of their 10 s timeout (min $(jq '[.polls[].ms] | min' "$T/polls.json") ms)"
info "slowest answer after $(jq '[.polls[].ms] | max' "$T/polls.json") ms; the round took $elapsed s"
served=$((after - before))
info "/_changes requests served during the round: $served (100 long polls + the real follower's)"
((served >= 100)) || fail "the primary counted $served /_changes requests for 100 long polls"
((served <= 110)) || fail "the primary served $served /_changes requests in $elapsed s: a busy loop"
assert_eq streaming "$(replica_field primary "$ID_A" state)" "a after the round"

step "100 waiting long polls, then one publish wakes them all at once (and a still confirms it)"
S="$(update_seq primary)"
make_publish_body "$T/wake" replicas-wake 1.0.0 "$T/wake.json"
node "$T/longpolls.js" "${REGISTRY[primary]}" "$SECRET" "$S" 100 30000 \
  "$(pkg_url replicas-wake)" "$T/wake.json" "$TOKEN" 2000 >"$T/wake-polls.json" ||
  fail "the long poll script failed"
jq -c '.put' "$T/wake-polls.json" | sed 's/^/    | /'
assert_eq 201 "$(jq -r .put.status "$T/wake-polls.json")" "the publish during 100 long polls"
assert_eq "" "$(jq -r .put.notice "$T/wake-polls.json")" "its npm-notice (a confirmed it; no worker was held by the polls)"
assert_eq 100 "$(jq '[.polls[] | select(.status == 200 and (.ids | index("replicas-wake")))] | length' \
  "$T/wake-polls.json")" "long polls answered with the published package"
slowest="$(jq '[.polls[].after_put_ms] | max' "$T/wake-polls.json")"
info "the last long poll answered $slowest ms after the publish was sent"
((slowest < 10000)) || fail "a long poll answered $slowest ms after the publish (its timeout was 30 s): not woken"

step "stop the chain"
stop_instance b
stop_instance a
stop_instance primary
echo "PASS: $TEST_NAME"
