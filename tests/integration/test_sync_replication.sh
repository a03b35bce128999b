#!/usr/bin/env bash
# Synchronous replication with the real npm client (DESIGN.md §10, issue 11):
# with replication.sync_replicas=1 every feed-changing write (publish,
# dist-tag, deprecate, unpublish, npm login/adduser, npm logout, tokens and
# users through the admin API) is in the replica's own database the moment
# it is acknowledged, without the npm-notice; sync_replicas larger than the
# followers refuses writes with a 503 that writes nothing (strict) or
# degrades (relaxed); a synchronous follower hung with SIGSTOP in a burst
# turns the acknowledgements into npm-notices (counted), and catches up on
# SIGCONT; a second synchronous follower carries the quorum alone; a client
# that hangs up while waiting leaves its write committed; bad setting values
# are refused with exit 2.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/sync_lib.sh"

NOTICE="not yet confirmed by a synchronous replica"

start_instance primary
start_instance r1
# pkg_url and make_publish_body use the instance started last: the primary.
REGISTRY_URL="${REGISTRY[primary]}"
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"

step "bad values of the replication settings are refused with exit 2, and change nothing"
for bad in replication.sync_replicas=-1 replication.sync_replicas=abc replication.sync_replicas=1.5 \
  replication.sync_mode=sometimes replication.sync_timeout=soon replication.sync_timeout=-2s \
  replication.follower_timeout=never; do
  key="${bad%%=*}"
  expect_exit 2 run_npme --root "$T/primary" settings set "$bad"
  assert_contains "$LAST_OUTPUT" "$key" "error message for $bad"
  expect_exit 2 run_npme --root "$T/primary" settings set "$bad" --json
  jq -e '.error.code | type == "string"' <<<"$LAST_STDOUT" >/dev/null ||
    fail "--json error for $bad is not {\"error\":{\"code\":...}}: $LAST_STDOUT"
done
expect_exit 2 run_npme --root "$T/primary" settings set replication.sync_mode=sometimes
assert_contains "$LAST_OUTPUT" "strict" "the sync_mode error names the allowed values"
assert_contains "$LAST_OUTPUT" "relaxed" "the sync_mode error names the allowed values"
expect_exit 2 run_npme --root "$T/primary" settings set replication.sync_replicas=2 replication.sync_mode=sometimes
assert_eq 0 "$("$NPME" --root "$T/primary" settings get replication.sync_replicas)" \
  "sync_replicas after a refused set (all or nothing)"
assert_eq strict "$("$NPME" --root "$T/primary" settings get replication.sync_mode)" "sync_mode (the default)"
code="$(curl -sS -o "$T/patch.body" -w '%{http_code}' -X PATCH -H "Authorization: Bearer $(admin_token primary)" \
  -H 'Content-Type: application/json' --data '{"replication.sync_replicas":"-1"}' "${ADMIN[primary]}/api/v1/settings")"
assert_eq 400 "$code" "PATCH /api/v1/settings with sync_replicas -1"
assert_contains "$(cat "$T/patch.body")" "replication.sync_replicas" "the API's error"

step "r1 follows the primary; sync_replicas=1 (strict, 10 s)"
make_replica r1 primary
wait_synced r1 primary
ID_R1="$(instance_id r1)"
set_settings primary replication.sync_replicas=1
assert_eq 1 "$("$NPME" --root "$T/primary" settings get replication.sync_replicas)" "sync_replicas"
wait_until 30 "the primary counts r1 as synchronous" is_synchronous primary "$ID_R1"
confirmed_0="$(sync_field primary confirmed)"

# npm_write WHAT DIR npm-args... — runs npm on the primary in DIR; it must
# succeed without the npm-notice of an unconfirmed write.
npm_write() {
  local what="$1" dir="$2"
  shift 2
  expect_exit 0 in_dir "$dir" npm_as primary "$TOKEN" -- "$@"
  assert_not_contains "$LAST_OUTPUT" "$NOTICE" "npm's output for $what"
}

step "npm publish: on r1 the moment npm returns"
make_package "$T/s-a1" sync-a 1.0.0
make_package "$T/s-a2" sync-a 1.1.0
npm_write "publish sync-a@1.0.0" "$T/s-a1" publish
assert_eq "$(stored_integrity primary sync-a 1.0.0)" "$(stored_integrity r1 sync-a 1.0.0)" "sync-a@1.0.0 on r1"
[[ -n "$(stored_integrity r1 sync-a 1.0.0)" ]] || fail "sync-a@1.0.0 is not on r1"
npm_write "publish sync-a@1.1.0" "$T/s-a2" publish
assert_eq "$(stored_integrity primary sync-a 1.1.0)" "$(stored_integrity r1 sync-a 1.1.0)" "sync-a@1.1.0 on r1"
[[ -f "$(tarball_path r1 sync-a 1.1.0)" ]] || fail "the tarball of sync-a@1.1.0 is not on r1"
assert_eq "$(stored_integrity primary sync-a 1.1.0)" "$(sri_sha512 "$(tarball_path r1 sync-a 1.1.0)")" \
  "the tarball of sync-a@1.1.0 on r1"

step "npm dist-tag add: on r1 the moment npm returns"
npm_write "dist-tag add" "$T" dist-tag add sync-a@1.0.0 stable
assert_eq 1.0.0 "$(doc_body r1 sync-a | jq -r '."dist-tags".stable')" "dist-tag stable on r1"

step "npm deprecate: on r1 the moment npm returns"
npm_write "deprecate" "$T" deprecate sync-a@1.0.0 "use 1.1.0"
assert_eq "use 1.1.0" "$(doc_body r1 sync-a | jq -r '.versions["1.0.0"].deprecated')" "deprecation on r1"

step "npm unpublish of a version: gone from r1 the moment npm returns"
npm_write "unpublish sync-a@1.1.0" "$T" unpublish sync-a@1.1.0
assert_eq "" "$(stored_integrity r1 sync-a 1.1.0)" "sync-a@1.1.0 on r1"
assert_eq "$(stored_integrity primary sync-a 1.0.0)" "$(stored_integrity r1 sync-a 1.0.0)" "sync-a@1.0.0 stays on r1"

step "npm unpublish of a package: gone from r1 the moment npm returns"
make_package "$T/s-b" @corp/sync-b 1.0.0
npm_write "publish @corp/sync-b" "$T/s-b" publish
[[ -n "$(stored_integrity r1 @corp/sync-b 1.0.0)" ]] || fail "@corp/sync-b is not on r1"
npm_write "unpublish @corp/sync-b --force" "$T" unpublish @corp/sync-b --force
assert_eq "" "$(stored_integrity r1 @corp/sync-b 1.0.0)" "@corp/sync-b on r1"

step "npm login: its token works on r1 the moment npm returns"
RC="$T/npmrc-login"
expect_exit 0 npm_login_to primary "$RC" alice alice-password-1
assert_not_contains "$LAST_OUTPUT" "$NOTICE" "npm login's output"
HOSTPORT="${REGISTRY[primary]#http://}"
LOGIN_TOKEN="$(sed -n "s|^//$HOSTPORT/:_authToken=||p" "$RC")"
[[ -n "$LOGIN_TOKEN" ]] || fail "npm login stored no token: $(cat "$RC")"
assert_eq 200 "$(whoami_status r1 "$LOGIN_TOKEN")" "whoami on r1 with the login token"

step "npm adduser (an existing user: a login): its token works on r1 the moment npm returns"
RC_ADD="$T/npmrc-adduser"
expect_exit 0 npm_login_to primary "$RC_ADD" alice alice-password-1 adduser
assert_not_contains "$LAST_OUTPUT" "$NOTICE" "npm adduser's output"
ADD_TOKEN="$(sed -n "s|^//$HOSTPORT/:_authToken=||p" "$RC_ADD")"
[[ -n "$ADD_TOKEN" && "$ADD_TOKEN" != "$LOGIN_TOKEN" ]] || fail "npm adduser stored no new token: $(cat "$RC_ADD")"
assert_eq 200 "$(whoami_status r1 "$ADD_TOKEN")" "whoami on r1 with the adduser token"

step "npm logout: the token is revoked on r1 the moment npm returns"
expect_exit 0 npm_rc_on primary "$RC" logout
assert_not_contains "$LAST_OUTPUT" "$NOTICE" "npm logout's output"
assert_eq 401 "$(whoami_status r1 "$LOGIN_TOKEN")" "whoami on r1 with the logged-out token"

step "npme token create / revoke (admin API): on r1 the moment the CLI returns"
T2="$(create_token primary alice)"
assert_eq 200 "$(whoami_status r1 "$T2")" "whoami on r1 with the new token"
id2="$("$NPME" --root "$T/primary" token list --json |
  jq -r --arg p "${T2:0:9}" '.tokens[] | select(.token_prefix == $p) | .id')"
expect_exit 0 run_npme --root "$T/primary" token revoke "$id2"
assert_eq 401 "$(whoami_status r1 "$T2")" "whoami on r1 with the revoked token"

step "npme user add / remove (admin API): on r1 the moment the CLI returns"
add_user primary bob bob-password-12
[[ -n "$(doc_body r1 _user:bob)" ]] || fail "user bob is not in r1's database"
info "ok: bob is on r1"
expect_exit 0 run_npme --root "$T/primary" user remove bob
assert_eq "" "$(doc_body r1 _user:bob)" "bob on r1 after the removal"

step "every write above was confirmed, none unconfirmed or refused"
confirmed_1="$(sync_field primary confirmed)"
((confirmed_1 - confirmed_0 >= 14)) || fail "sync.confirmed rose by $((confirmed_1 - confirmed_0)) for 14 writes or more"
info "ok: sync.confirmed rose by $((confirmed_1 - confirmed_0))"
assert_eq 0 "$(sync_field primary unconfirmed)" "sync.unconfirmed"
assert_eq 0 "$(sync_field primary refused)" "sync.refused"
assert_num "$confirmed_1" "$(metric_or_zero primary 'npme_sync_writes_total{result="confirmed"}')" \
  'npme_sync_writes_total{result="confirmed"}'

step "sync_replicas=2 with one replica, strict: npm publish gets a 503 and nothing is written"
set_settings primary replication.sync_replicas=2
SEQ0="$(update_seq primary)"
LISTING0="$(packages_listing primary)"
make_package "$T/s-c" sync-c 1.0.0
expect_exit 1 in_dir "$T/s-c" npm_as primary "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "503" "npm's error"
assert_contains "$LAST_OUTPUT" "synchronous replication" "npm's error"
assert_contains "$LAST_OUTPUT" "nothing was written" "npm's error"
grep -Eq '(^|[^0-9])1[^0-9]{0,40}missing|missing[^0-9]{0,40}1([^0-9]|$)' <<<"$LAST_OUTPUT" ||
  fail "npm's error does not say that 1 synchronous replica is missing"
info "ok: the error says 1 is missing"
assert_eq "$SEQ0" "$(update_seq primary)" "the primary's update_seq"
assert_eq "$SEQ0" "$(db_seq primary)" "the primary's change log"
assert_eq "" "$(doc_body primary sync-c)" "sync-c in the primary's database"
assert_eq "$LISTING0" "$(packages_listing primary)" "the primary's packages/ directory"
make_publish_body "$T/raw-c" sync-c 1.0.0 "$T/raw-c.json"
raw_put "$(pkg_url sync-c)" "$T/raw-c.json" "$TOKEN"
assert_eq 503 "$RAW_STATUS" "raw publish"
jq -e '.error | type == "string"' <<<"$RAW_BODY" >/dev/null || fail "the 503 body is not {\"error\":\"...\"}: $RAW_BODY"
assert_contains "$RAW_BODY" "nothing was written" "the 503 body"
tokens_before="$("$NPME" --root "$T/primary" token list --json | jq '.tokens | length')"
expect_exit "1|6" run_npme --root "$T/primary" token create --user alice
assert_contains "$LAST_OUTPUT" "synchronous replication" "npme token create's error"
assert_eq "$tokens_before" "$("$NPME" --root "$T/primary" token list --json | jq '.tokens | length')" \
  "tokens after the refused token create"
expect_exit 1 npm_as primary "$TOKEN" -- dist-tag add sync-a@1.0.0 refused
assert_contains "$LAST_OUTPUT" "nothing was written" "npm dist-tag's error"
assert_eq "$SEQ0" "$(update_seq primary)" "the primary's update_seq after 4 refused writes"
refused="$(sync_field primary refused)"
((refused >= 4)) || fail "sync.refused is $refused after 4 refused writes"
info "ok: sync.refused = $refused"
assert_num "$refused" "$(metric_or_zero primary 'npme_sync_writes_total{result="refused"}')" \
  'npme_sync_writes_total{result="refused"}'
assert_num 1 "$(metric primary npme_sync_replicas_connected)" "npme_sync_replicas_connected"
assert_num 2 "$(metric primary npme_sync_replicas_required)" "npme_sync_replicas_required"

step "sync_replicas=2, relaxed: npm publish succeeds, the instance is degraded"
set_settings primary replication.sync_mode=relaxed replication.sync_timeout=2s
expect_exit 0 in_dir "$T/s-c" npm_as primary "$TOKEN" -- publish
[[ -n "$(stored_integrity primary sync-c 1.0.0)" ]] || fail "sync-c is not on the primary"
status="$("$NPME" --root "$T/primary" status --json)"
jq -c .sync <<<"$status" | sed 's/^/    | /'
assert_eq true "$(jq -r .sync.degraded <<<"$status")" "status sync.degraded"
assert_eq relaxed "$(jq -r .sync.mode <<<"$status")" "status sync.mode"
assert_num 1 "$(metric primary npme_sync_degraded)" "npme_sync_degraded"
wait_synced r1 primary
assert_eq "$(stored_integrity primary sync-c 1.0.0)" "$(stored_integrity r1 sync-c 1.0.0)" "sync-c on r1 (asynchronously)"
set_settings primary replication.sync_replicas=1 replication.sync_mode=strict
not_degraded() { [[ "$(sync_field primary degraded)" == false ]] && num_eq 0 "$(metric primary npme_sync_degraded)"; }
wait_until 15 "no longer degraded with sync_replicas=1 and r1 synchronous" not_degraded

step "SIGSTOP of the only synchronous follower in a burst (sync_timeout=2s): npm-notices, not errors"
wait_until 30 "r1 counts as synchronous" is_synchronous primary "$ID_R1"
for i in 1 2; do
  make_package "$T/burst-$i" sync-burst "1.0.$i"
  npm_write "publish sync-burst@1.0.$i" "$T/burst-$i" publish
  [[ -n "$(stored_integrity r1 sync-burst "1.0.$i")" ]] || fail "sync-burst@1.0.$i is not on r1"
done
unconfirmed_0="$(sync_field primary unconfirmed)"
for i in 4 5 6 7; do
  make_publish_body "$T/burst-$i" sync-burst-raw "1.0.$i" "$T/burst-$i.json"
done
make_package "$T/burst-3" sync-burst 1.0.3
# The raw part of the burst goes out the moment npm's publish has committed,
# so that it all falls within the 2 s that r1 still counts as caught up.
start_burst_after primary "$(update_seq primary)" "$TOKEN" "$T/burst.results" \
  "$(pkg_url sync-burst-raw)=$T/burst-4.json" "$(pkg_url sync-burst-raw)=$T/burst-5.json" \
  "$(pkg_url sync-burst-raw)=$T/burst-6.json" "$(pkg_url sync-burst-raw)=$T/burst-7.json"
wait_until 30 "the burst's watcher runs" test -s "$T/burst.results.ready"
stop_process r1
(cd "$T/burst-3" && npm_as primary "$TOKEN" -- publish >"$T/burst-3.out" 2>&1; echo $? >"$T/burst-3.rc") &
NPM_PID=$!
STARTED_PIDS+=("$NPM_PID")
wait "$NPM_PID" || true
wait "$BURST_PID" || fail "the burst's PUTs did not run (exit $?)"
sed 's/^/    | /' "$T/burst-3.out" | tail -n 20
assert_eq 0 "$(cat "$T/burst-3.rc")" "npm publish's exit code with r1 hung"
assert_contains "$(cat "$T/burst-3.out")" "npm notice" "npm's output"
assert_contains "$(cat "$T/burst-3.out")" "$NOTICE" "npm's output"
assert_not_contains "$(cat "$T/burst-3.out")" "npm error" "npm's output"
sed 's/^/    | /' "$T/burst.results"
assert_eq 4 "$(jq -s '[.[] | select(.status == 201)] | length' "$T/burst.results")" \
  "raw publishes answered 201 with r1 hung"
assert_eq 4 "$(jq -s --arg n "$NOTICE" '[.[] | select(.notice | contains($n))] | length' "$T/burst.results")" \
  "raw publishes answered with the npm-notice"
for i in 4 5 6 7; do
  [[ -n "$(stored_integrity primary sync-burst-raw "1.0.$i")" ]] || fail "sync-burst-raw@1.0.$i is not on the primary"
done
[[ -n "$(stored_integrity primary sync-burst 1.0.3)" ]] || fail "sync-burst@1.0.3 is not on the primary"
assert_eq $((unconfirmed_0 + 5)) "$(sync_field primary unconfirmed)" "status sync.unconfirmed"
assert_num $((unconfirmed_0 + 5)) "$(metric_or_zero primary 'npme_sync_writes_total{result="unconfirmed"}')" \
  'npme_sync_writes_total{result="unconfirmed"}'

step "r1 still hung, its oldest change older than sync_timeout: strict refuses the next write"
wait_until 20 "r1 no longer counts as synchronous" not_synchronous primary "$ID_R1"
SEQ1="$(update_seq primary)"
make_publish_body "$T/burst-8" sync-burst-raw 1.0.8 "$T/burst-8.json"
raw_put "$(pkg_url sync-burst-raw)" "$T/burst-8.json" "$TOKEN"
assert_eq 503 "$RAW_STATUS" "publish with r1 hung and behind"
assert_contains "$RAW_BODY" "missing" "the 503 body"
assert_eq "$SEQ1" "$(update_seq primary)" "the primary's update_seq"

step "SIGCONT: r1 catches up with every write of the burst, and confirms again"
cont_process r1
wait_synced r1 primary
assert_eq "$(stored_integrity primary sync-burst 1.0.3)" "$(stored_integrity r1 sync-burst 1.0.3)" "sync-burst@1.0.3 on r1"
for i in 4 5 6 7; do
  assert_eq "$(body_integrity "$T/burst-$i.json")" "$(stored_integrity r1 sync-burst-raw "1.0.$i")" \
    "sync-burst-raw@1.0.$i on r1"
done
wait_until 30 "r1 counts as synchronous again" is_synchronous primary "$ID_R1"
make_package "$T/burst-9" sync-burst 1.0.9
npm_write "publish sync-burst@1.0.9 after SIGCONT" "$T/burst-9" publish
[[ -n "$(stored_integrity r1 sync-burst 1.0.9)" ]] || fail "sync-burst@1.0.9 is not on r1"

step "two replicas, sync_replicas=1: with r2 hung, r1 carries the quorum alone"
start_instance r2
REGISTRY_URL="${REGISTRY[primary]}"
make_replica r2 primary
wait_synced r2 primary
ID_R2="$(instance_id r2)"
wait_until 30 "the primary counts r1 and r2 as synchronous" synchronous_at_least primary 2
unconfirmed_1="$(sync_field primary unconfirmed)"
stop_process r2
for i in 1 2 3; do
  make_package "$T/quorum-$i" sync-quorum "1.0.$i"
  npm_write "publish sync-quorum@1.0.$i with r2 hung" "$T/quorum-$i" publish
  assert_eq "$(stored_integrity primary sync-quorum "1.0.$i")" "$(stored_integrity r1 sync-quorum "1.0.$i")" \
    "sync-quorum@1.0.$i on r1"
done
npm_write "dist-tag add with r2 hung" "$T" dist-tag add sync-quorum@1.0.1 first
assert_eq 1.0.1 "$(doc_body r1 sync-quorum | jq -r '."dist-tags".first')" "dist-tag on r1"
assert_eq "$unconfirmed_1" "$(sync_field primary unconfirmed)" "sync.unconfirmed (r1 confirmed everything)"
wait_until 20 "r2 is not synchronous while hung" not_synchronous primary "$ID_R2"
cont_process r2
wait_synced r2 primary
assert_eq "$(content_digest primary "$TOKEN" sync-quorum)" "$(content_digest r2 "$TOKEN" sync-quorum)" \
  "r2 after SIGCONT"

step "a client that hangs up while its write waits: the write stays committed"
set_settings primary replication.sync_timeout=30s
wait_until 30 "the primary counts r1 and r2 as synchronous" synchronous_at_least primary 2
stop_process r1
stop_process r2
make_publish_body "$T/hangup" sync-hangup 1.0.0 "$T/hangup.json"
raw_put "$(pkg_url sync-hangup)" "$T/hangup.json" "$TOKEN" --max-time 1
assert_eq 28 "$RAW_RC" "curl's exit code (timed out after 1 s, before any answer)"
http GET "$(pkg_url sync-hangup)" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json'
assert_eq 200 "$HTTP_STATUS" "GET of the package right after the client hung up"
assert_eq "$(body_integrity "$T/hangup.json")" "$(jq -r '.versions["1.0.0"].dist.integrity' <<<"$HTTP_BODY")" \
  "integrity of the committed version"
http GET "${REGISTRY[primary]}/-/ping"
assert_eq 200 "$HTTP_STATUS" "the primary still answers"
cont_process r1
cont_process r2
wait_synced r1 primary
wait_synced r2 primary
assert_eq "$(body_integrity "$T/hangup.json")" "$(stored_integrity r1 sync-hangup 1.0.0)" "sync-hangup on r1"
no_waiting() { [[ "$(sync_field primary waiting)" == 0 ]]; }
wait_until 40 "no write waits any more" no_waiting
kill -0 "${INSTANCE_PID[primary]}" || fail "the primary died"
make_package "$T/after" sync-after 1.0.0
set_settings primary replication.sync_timeout=10s
wait_until 30 "r1 counts as synchronous" is_synchronous primary "$ID_R1"
npm_write "publish after the hang-up" "$T/after" publish
[[ -n "$(stored_integrity r1 sync-after 1.0.0)" ]] || fail "sync-after is not on r1"

stop_instance r2
stop_instance r1
stop_instance primary
echo "PASS: $TEST_NAME"
