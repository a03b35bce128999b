#!/usr/bin/env bash
# The audit log (data/audit.log, 0600; GET /api/v1/audit; npme audit): one
# JSON line with time, actor, address, action, target and result for each
# login (ok, failed, throttled), token create and revoke, user add and
# remove, settings change (old -> new; secrets only "changed"), refused
# admin token, follower reset, promotion, snapshot create and restore. No
# secret, token or password ever appears in it. Rotation by size keeps
# audit.keep files; a restore carries the log on.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$NPME_SOURCE_DIR/tests/integration/replication_lib.sh"

start_instance main
LOG="$T/main/data/audit.log"
# Every secret this test makes, to check that none reaches the log.
SECRETS=()

events() { # events [npme audit args...] — the JSON events of main, one a line
  "$NPME" --root "$T/main" audit --json "$@" | jq -c '.events[]'
}
expect_event() { # expect_event JQ-FILTER DESCRIPTION — some event matches the filter
  local found
  found="$(events | jq -c "select($1)" | head -n 1)"
  [[ -n "$found" ]] || {
    events >&"$DIAG_FD"
    fail "no audit event for $2 (filter: $1)"
  }
  info "ok: $2: $found"
}

step "user add and token create/revoke by the admin token"
add_user main alice 'correct horse battery'
SECRETS+=('correct horse battery')
TOKEN_JSON="$("$NPME" token create --user alice --expires 30d --cidr 127.0.0.0/8 --root "$T/main" --json)"
TOKEN="$(jq -r .token <<<"$TOKEN_JSON")"
TOKEN_ID="$(jq -r .id <<<"$TOKEN_JSON")"
SECRETS+=("$TOKEN")
expect_event '.action == "user.add" and .target == "alice" and .result == "ok" and .actor == "admin token" and .address == "127.0.0.1"' "user.add"
expect_event ".action == \"token.create\" and .target == \"$TOKEN_ID\" and .detail.user == \"alice\" and .detail.cidr == [\"127.0.0.0/8\"]" "token.create with its limits"
expect_exit 0 run_npme token revoke "$TOKEN_ID" --root "$T/main"
expect_event ".action == \"token.revoke\" and .target == \"$TOKEN_ID\" and .result == \"ok\"" "token.revoke"
expect_exit 1 run_npme user add alice --password-stdin --root "$T/main" <<<'another password'
expect_event '.action == "user.add" and .target == "alice" and .result == "failed" and (.detail.error | test("exists"))' "a refused user.add, with the reason"
SECRETS+=('another password')

step "logins: ok, failed and throttled, with the client address"
login() {
  curl -sS -o /dev/null -w '%{http_code}' -X PUT "$REGISTRY_URL/-/user/org.couchdb.user:$1" \
    -H 'Content-Type: application/json' --data "$(jq -cn --arg n "$1" --arg p "$2" '{name: $n, password: $p}')"
}
assert_eq 201 "$(login alice 'correct horse battery')" "a right login"
for i in 1 2 3 4 5; do
  assert_eq 401 "$(login alice "wrong guess $i")" "wrong login $i"
  SECRETS+=("wrong guess $i")
done
assert_eq 429 "$(login alice 'wrong guess 6')" "a throttled login"
expect_event '.action == "login" and .actor == "alice" and .result == "ok" and .address == "127.0.0.1" and (.detail.token_id | length) == 12' "login ok"
assert_eq 5 "$(events | jq -s '[.[] | select(.action == "login" and .result == "failed")] | length')" "failed logins recorded"
expect_event '.action == "login" and .result == "throttled" and .detail.retry_after == 1' "login throttled"

step "settings changes: old and new values, secrets only as changed"
NEW_SECRET="a-brand-new-secret-$(date +%s%N)"
SECRETS+=("$NEW_SECRET")
expect_exit 0 run_npme settings set publication=read-only "secret=$NEW_SECRET" --root "$T/main"
expect_event '.action == "settings.change" and (.detail.changes | any(.key == "publication" and .old == "all" and .new == "read-only"))' "publication all -> read-only"
expect_event '.action == "settings.change" and (.detail.changes | any(.key == "secret" and .changed == true and (has("new") | not)))' "secret changed, no value"
expect_exit 2 run_npme settings set publication=sometimes --root "$T/main"
expect_event '.action == "settings.change" and .result == "failed" and .target == "publication"' "a refused settings change"
expect_exit 0 run_npme settings set publication=all --root "$T/main"

step "a wrong admin token is refused and recorded, without what was presented"
BAD_TOKEN="wrong-admin-token-$(date +%s%N)"
SECRETS+=("$BAD_TOKEN")
assert_eq 401 "$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BAD_TOKEN" "$ADMIN_URL/api/v1/status")" "a wrong admin token"
assert_eq 401 "$(curl -sS -o /dev/null -w '%{http_code}' "$ADMIN_URL/api/v1/audit")" "the audit log without a token"
expect_event '.action == "admin.auth" and .result == "refused" and .target == "GET /api/v1/status" and .detail.token_presented == true' "refused admin token"
expect_event '.action == "admin.auth" and .target == "GET /api/v1/audit" and .detail.token_presented == false' "no admin token"

step "follower reset and promotion on a replica"
start_instance replica
make_replica replica main
wait_synced replica main
expect_exit 0 run_npme --root "$T/replica" reset-follower --wait --timeout 60
"$NPME" --root "$T/replica" audit --json | jq -e '.events[] | select(.action == "follower.reset" and .result == "ok")' >/dev/null ||
  fail "no follower.reset event on the replica"
stop_instance main
expect_exit 0 run_npme --root "$T/replica" promote-to-primary --yes
"$NPME" --root "$T/replica" audit --json | jq -e '.events[] | select(.action == "promote" and .result == "ok" and .detail.epoch >= 2)' >/dev/null ||
  fail "no promote event on the replica"
stop_instance replica

step "snapshot create and restore (CLI, instance stopped): recorded by the CLI; the log survives the restore"
SNAPS="$T/snaps"
mkdir -p "$SNAPS"
expect_exit 0 run_npme --root "$T/main" snapshot create --dir "$SNAPS"
SNAP="$(ls "$SNAPS"/*.tar* | head -n 1)"
expect_event ".action == \"snapshot.create\" and .target == \"$SNAP\" and (.actor | startswith(\"cli (\")) and .result == \"ok\"" "snapshot.create"
BEFORE="$(events | wc -l)"
expect_exit 0 run_npme --root "$T/main" restore "$SNAP" --force
AFTER="$(events | wc -l)"
assert_eq "$((BEFORE + 1))" "$AFTER" "events after the restore (all kept, plus the restore)"
expect_event ".action == \"restore\" and .target == \"$SNAP\" and .result == \"ok\"" "restore"
expect_exit 0 run_npme settings set --offline publication=scoped --root "$T/main"
expect_event '.action == "settings.change" and .detail.offline == true and (.actor | startswith("cli ("))' "an offline settings change"
expect_exit 0 run_npme --root "$T/main" audit
assert_contains "$LAST_OUTPUT" "read from $LOG" "npme audit on a stopped instance"

step "npme audit --since and the file's mode"
start_instance main
assert_eq 600 "$(stat -c %a "$LOG")" "mode of data/audit.log"
expect_exit 0 run_npme --root "$T/main" audit --since 2099-01-01T00:00:00Z --json
assert_eq 0 "$(jq '.events | length' <<<"$LAST_STDOUT")" "events since 2099"
expect_exit 0 run_npme --root "$T/main" audit --since 1h --limit 3 --json
assert_eq 3 "$(jq '.events | length' <<<"$LAST_STDOUT")" "the newest 3 of the last hour"
expect_exit 2 run_npme --root "$T/main" audit --since yesterday
assert_contains "$LAST_OUTPUT" "expected an ISO 8601 UTC time" "a bad --since"

step "rotation by size keeps audit.keep files"
expect_exit 0 run_npme settings set audit.max_size=8K audit.keep=2 --root "$T/main"
for i in $(seq 1 150); do
  curl -sS -o /dev/null -H "Authorization: Bearer nope" "$ADMIN_URL/api/v1/status"
done
assert_file_exists "$LOG.1"
assert_file_exists "$LOG.2"
assert_file_missing "$LOG.3"
for f in "$LOG" "$LOG.1" "$LOG.2"; do
  [[ "$(stat -c %s "$f")" -le 8192 ]] || fail "$f is larger than audit.max_size: $(stat -c %s "$f")"
done
TOTAL="$(events --limit 100000 | wc -l)"
[[ "$TOTAL" -ge 50 ]] || fail "only $TOTAL events read across the rotated files"
info "ok: $TOTAL events in audit.log and its 2 rotated files"

step "no secret, token or password in any audit file"
for f in "$LOG"* "$T/replica/data/audit.log"*; do
  for secret in "${SECRETS[@]}"; do
    if grep -qF -- "$secret" "$f"; then
      fail "$f contains a secret (${secret:0:6}…)"
    fi
  done
done
info "ok: ${#SECRETS[@]} secrets checked against every audit file"

info "PASS"
