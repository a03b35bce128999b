#!/usr/bin/env bash
# npme promote-to-primary: its refusals (not a replica, no confirmation, a
# writable old primary, lag), fencing, catch-up within --wait-timeout, the
# epoch, --repoint with --upstream-url, a follower that refuses a stale
# primary, an old primary rejoining as a replica, and --force past a
# writable, more advanced old primary.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

admin_token() { jq -r '."admin.token"' "$T/$1/settings.json"; }
epoch() { "$NPME" --root "$T/$1" status --json | jq -r .epoch; }
# root_requests INSTANCE — "GET /" the instance answered (a promotion probes
# its old primary with it, once, then on every round of its wait).
root_requests() {
  curl -sS "${ADMIN[$1]}/metrics" | awk '/^npme_http_requests_total\{route="root"/ { n += $2 } END { print n + 0 }'
}

start_instance primary
start_instance r1
start_instance r2
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
# One admin token for the replicas, so that --repoint can reach them all.
SHARED="shared-admin-token-$(openssl rand -hex 12)"
for r in r1 r2; do run_npme --root "$T/$r" settings set "admin.token=$SHARED" >/dev/null; done
printf '%s\n' "$SHARED" >"$T/replicas.token"
admin_token primary >"$T/primary.token"
make_replica r1 primary
make_replica r2 primary
make_package "$T/p1" promo-a 1.0.0
(cd "$T/p1" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced r1 primary
wait_synced r2 primary
assert_eq 1 "$(epoch primary)" "epoch of a new primary"

step "refusals: a primary, no confirmation without a terminal, a writable old primary"
expect_exit 6 "$NPME" --root "$T/primary" promote-to-primary --yes
assert_contains "$LAST_OUTPUT" "not a replica" "message on a primary"
expect_exit 6 "$NPME" --root "$T/r1" promote-to-primary </dev/null
assert_contains "$LAST_OUTPUT" "--yes" "message without confirmation"
expect_exit 6 "$NPME" --root "$T/r1" promote-to-primary --yes
assert_contains "$LAST_OUTPUT" "fence" "message with a writable old primary"
assert_eq replica "$("$NPME" --root "$T/r1" status --json | jq -r .role)" "r1 is still a replica"

step "a lagging replica is refused after --wait-timeout"
curl -sS -X POST -H "Authorization: Bearer $SHARED" "${ADMIN[r1]}/api/v1/follower/stop" >/dev/null
make_package "$T/p2" promo-b 1.0.0
(cd "$T/p2" && npm_as primary "$TOKEN" -- publish) >/dev/null
expect_exit 6 "$NPME" --root "$T/r1" promote-to-primary --yes --fence "${ADMIN[primary]}" \
  --fence-token-file "$T/primary.token" --wait-timeout 1
assert_contains "$LAST_OUTPUT" "lags" "message when lagging"
assert_eq read-only "$("$NPME" --root "$T/primary" settings get publication)" "the old primary was fenced"
assert_eq replica "$("$NPME" --root "$T/r1" status --json | jq -r .role)" "r1 is still a replica"

step "catch-up within --wait-timeout: r1 is promoted once it has everything; r2 repointed to --upstream-url"
# r1 is still behind when the promotion starts; its follower starts only once
# the promotion is seen waiting (probing the old primary again).
UPSTREAM_URL="http://localhost:${REGISTRY[r1]##*:}" # another name of r1's address
probes="$(root_requests primary)"
"$NPME" --root "$T/r1" --json promote-to-primary --yes --fence "${ADMIN[primary]}" \
  --fence-token-file "$T/primary.token" --wait-timeout 120 --repoint "${ADMIN[r2]}" \
  --repoint-token-file "$T/replicas.token" --upstream-url "$UPSTREAM_URL" >"$T/promote.out" 2>"$T/promote.err" &
PROMOTE_PID=$!
STARTED_PIDS+=("$PROMOTE_PID")
for ((i = 0; i < 600; i++)); do
  (($(root_requests primary) >= probes + 2)) && break
  kill -0 "$PROMOTE_PID" 2>/dev/null || break
  sleep 0.1
done
(($(root_requests primary) >= probes + 2)) || fail "the promotion is not waiting for r1: $(cat "$T/promote.err")"
assert_eq replica "$("$NPME" --root "$T/r1" status --json | jq -r .role)" "r1 while the promotion waits"
curl -sS -X POST -H "Authorization: Bearer $SHARED" "${ADMIN[r1]}/api/v1/follower/start" >/dev/null
rc=0
wait "$PROMOTE_PID" || rc=$?
cat "$T/promote.err"
assert_eq 0 "$rc" "exit status of the waiting promotion"
out="$(cat "$T/promote.out")"
assert_eq "$(update_seq primary)" "$(jq -r .promoted.sequence <<<"$out")" "r1's position at the promotion"
assert_eq "$(update_seq primary)" "$(jq -r .promoted.old_primary_seq <<<"$out")" "the old primary's position"
assert_eq 2 "$(jq -r .promoted.epoch <<<"$out")" "epoch after the promotion"
assert_eq true "$(jq -r '.repointed[0].ok' <<<"$out")" "r2 repointed"
assert_eq "$UPSTREAM_URL" "$(jq -r .upstream_url <<<"$out")" "the upstream URL given to r2"
status="$("$NPME" --root "$T/r1" status --json)"
assert_eq primary "$(jq -r .role <<<"$status")" "role of r1"
assert_eq all "$(jq -r .publication <<<"$status")" "publication of r1"
assert_eq 2 "$(jq -r .epoch <<<"$status")" "status epoch of r1"
secret_r1="$("$NPME" --root "$T/r1" settings get secret --reveal)"
assert_eq 2 "$(curl -sS -H "Authorization: Bearer $secret_r1" "${REGISTRY[r1]}/" | jq -r .epoch)" "epoch in GET /"
assert_eq "$UPSTREAM_URL" "$("$NPME" --root "$T/r2" settings get upstream.url)" "r2's upstream"
http GET "${REGISTRY[r1]}/promo-b" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "what the old primary acknowledged is on the new one"

step "publishes go to the new primary and reach r2"
make_package "$T/p3" promo-c 1.0.0
(cd "$T/p3" && npm_as r1 "$TOKEN" -- publish) >/dev/null
wait_synced r2 r1
http GET "${REGISTRY[r2]}/promo-c" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "package published on the new primary (through --upstream-url), read from r2"
expect_exit 6 "$NPME" --root "$T/r1" promote-to-primary --yes
assert_contains "$LAST_OUTPUT" "not a replica" "a second promotion"

step "a follower refuses a stale primary (lower epoch) until reset"
run_npme --root "$T/r2" settings set "upstream.url=${REGISTRY[primary]}" \
  "upstream.secret=$("$NPME" --root "$T/primary" settings get secret --reveal)" >/dev/null
for _ in $(seq 100); do
  f="$("$NPME" --root "$T/r2" status --json | jq -c .follower)"
  [[ "$(jq -r .state <<<"$f")" == error ]] && break
  sleep 0.1
done
assert_contains "$(jq -r .last_error <<<"$f")" "stale primary" "r2's error"

step "the old primary rejoins as a replica of the new one and converges"
# Something only the old primary has (published after the failover, when it
# was not fenced) must go: the new primary is the truth.
run_npme --root "$T/primary" settings set publication=all >/dev/null
make_package "$T/p4" promo-orphan 1.0.0
(cd "$T/p4" && npm_as primary "$TOKEN" -- publish) >/dev/null
run_npme --root "$T/primary" settings set "upstream.url=${REGISTRY[r1]}" "upstream.secret=$secret_r1" \
  upstream.policy=mirror publication=read-only >/dev/null
expect_exit 0 "$NPME" --root "$T/primary" reset-follower --wait --timeout 60
NAMES=(promo-a promo-b promo-c promo-orphan)
assert_eq "$(content_digest r1 "$TOKEN" "${NAMES[@]}")" "$(content_digest primary "$TOKEN" "${NAMES[@]}")" \
  "content of the rejoined old primary"
assert_file_missing "$(tarball_path primary promo-orphan 1.0.0)"
assert_eq replica "$("$NPME" --root "$T/primary" status --json | jq -r .role)" "role of the old primary"

step "--force promotes past an upstream that takes writes and is ahead"
curl -sS -X POST -H "Authorization: Bearer $(admin_token primary)" "${ADMIN[primary]}/api/v1/follower/stop" >/dev/null
make_package "$T/p5" promo-late 1.0.0
(cd "$T/p5" && npm_as r1 "$TOKEN" -- publish) >/dev/null
expect_exit 6 "$NPME" --root "$T/primary" promote-to-primary --yes --wait-timeout 0
assert_contains "$LAST_OUTPUT" "--force" "the refusal names --force"
assert_eq replica "$("$NPME" --root "$T/primary" status --json | jq -r .role)" "role after the refusal"
expect_exit 0 "$NPME" --root "$T/primary" --json promote-to-primary --yes --force --wait-timeout 0
assert_eq 3 "$(jq -r .promoted.epoch <<<"$LAST_STDOUT")" "epoch after the forced promotion (above r1's 2)"
assert_eq true "$(jq -r .promoted.old_primary_reachable <<<"$LAST_STDOUT")" "the old primary answered"
(($(jq -r .promoted.sequence <<<"$LAST_STDOUT") < $(jq -r .promoted.old_primary_seq <<<"$LAST_STDOUT"))) ||
  fail "a forced promotion of a lagging replica should report its lag: $LAST_STDOUT"
info "ok: promoted at $(jq -r .promoted.sequence <<<"$LAST_STDOUT") of $(jq -r .promoted.old_primary_seq <<<"$LAST_STDOUT") (forced)"
status="$("$NPME" --root "$T/primary" status --json)"
assert_eq "primary all" "$(jq -r '"\(.role) \(.publication)"' <<<"$status")" "role and publication after --force"
assert_eq "" "$("$NPME" --root "$T/primary" settings get upstream.url)" "upstream after --force"
http GET "${REGISTRY[primary]}/promo-late" -H "Authorization: Bearer $TOKEN"
assert_eq 404 "$HTTP_STATUS" "what it lacked stays lacking (the operator's choice)"

stop_instance r2
stop_instance r1
stop_instance primary
echo "PASS: $TEST_NAME"
