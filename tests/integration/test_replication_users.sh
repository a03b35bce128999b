#!/usr/bin/env bash
# Users on a replica: users and tokens made on the primary replicate; a
# password login (npm login) against a read-only replica is refused with a
# message naming the primary, and creates nothing there, while the token of
# a login on the primary works on the replica; a user made on the replica
# (npme user add there) works there until a resync (reset-follower) removes
# it with its tokens, as the upstream does not have it.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

start_instance primary
start_instance replica
add_user primary alice 'alice-password-1'
make_replica replica primary
wait_synced replica primary
PRIMARY_URL="${REGISTRY[primary]}"

# npm_login INSTANCE RCFILE USER PASSWORD — `npm login --auth-type=legacy`
# against INSTANCE, answering npm's prompts through fixtures/npm_login.js.
npm_login() {
  local instance="$1" rc_file="$2" user="$3" password="$4"
  local url="${REGISTRY[$instance]}"
  printf 'registry=%s/\n' "$url" >"$rc_file"
  info "\$ npm login --auth-type=legacy (as $user on $instance)" >&2
  node "$FIXTURES/npm_login.js" "$user" "$password" "$user@example.com" -- \
    "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$url/" --no-update-notifier \
    --fetch-retries=0 login --auth-type=legacy
}

# tokens INSTANCE — "user token_prefix" of every token, sorted.
tokens() {
  "$NPME" --root "$T/$1" token list --json | jq -r '.tokens[] | "\(.user) \(.token_prefix)"' | LC_ALL=C sort
}

# users INSTANCE — user names, sorted.
users() {
  "$NPME" --root "$T/$1" user list --json | jq -r '[.users[].name] | sort | join(" ")'
}

step "npm login with the right password against the replica: refused (read-only), the primary named"
tokens_before="$(tokens replica)"
seq_before="$(db_seq replica)"
expect_exit 1 npm_login replica "$T/npmrc-replica" alice 'alice-password-1'
assert_contains "$LAST_OUTPUT" "E403" "npm's error"
assert_contains "$LAST_OUTPUT" "read-only" "npm's error"
assert_contains "$LAST_OUTPUT" "$PRIMARY_URL" "npm's error names the primary"
assert_not_contains "$(cat "$T/npmrc-replica")" "_authToken" "npmrc after the refused login"
assert_eq "$tokens_before" "$(tokens replica)" "tokens on the replica after the refused login"
assert_eq "$seq_before" "$(db_seq replica)" "the replica's database after the refused login"

step "a wrong password gets the same answer: the replica reveals nothing about passwords"
expect_exit 1 npm_login replica "$T/npmrc-wrong" alice 'not-the-password'
assert_contains "$LAST_OUTPUT" "E403" "npm's error"
http PUT "${REGISTRY[replica]}/-/user/org.couchdb.user:alice" -H 'Content-Type: application/json' \
  --data-binary '{"name":"alice","password":"not-the-password"}'
expect_json_error 403

step "npm login on the primary: its token works on the replica once replicated"
expect_exit 0 npm_login primary "$T/npmrc-primary" alice 'alice-password-1'
assert_contains "$LAST_OUTPUT" "Logged in" "npm login on the primary"
LOGIN_TOKEN="$(sed -n "s|^//${PRIMARY_URL#http://}/:_authToken=||p" "$T/npmrc-primary")"
[[ -n "$LOGIN_TOKEN" ]] || fail "npm login wrote no token: $(cat "$T/npmrc-primary")"
wait_synced replica primary
expect_exit 0 npm_as replica "$LOGIN_TOKEN" -- whoami
assert_eq alice "$LAST_STDOUT" "npm whoami on the replica with the primary's login token"
assert_eq "$(tokens primary)" "$(tokens replica)" "tokens on the replica and the primary"

step "a token's expiry and address ranges replicate with it"
RANGED="$(create_token primary alice --cidr 10.0.0.0/8 --expires 30d)"
wait_synced replica primary
limits() {
  "$NPME" --root "$T/$1" token list --json |
    jq -c --arg p "${RANGED:0:9}" '.tokens[] | select(.token_prefix == $p) | [.expires, .cidr]'
}
assert_eq "$(limits primary)" "$(limits replica)" "the ranged token's limits on the replica"
[[ "$(limits replica)" == *'["10.0.0.0/8"]'* ]] || fail "the replica lost the token's ranges: $(limits replica)"
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $RANGED"
expect_json_error 403
assert_contains "$HTTP_BODY" "token not allowed from 127.0.0.1" "the replica's answer to the ranged token"

step "npm logout against the replica is refused too (a write); the token keeps working"
http DELETE "${REGISTRY[replica]}/-/user/token/$LOGIN_TOKEN" -H "Authorization: Bearer $LOGIN_TOKEN"
expect_json_error 403
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $LOGIN_TOKEN"
assert_eq 200 "$HTTP_STATUS" "whoami after the refused logout"

step "a user made on the replica works there, and only there"
add_user replica bob 'bob-password-1'
BOB_TOKEN="$(create_token replica bob)"
assert_eq "alice bob" "$(users replica)" "users on the replica"
assert_eq "alice" "$(users primary)" "users on the primary (nothing goes upstream)"
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $BOB_TOKEN"
assert_eq 200 "$HTTP_STATUS" "bob's token on the replica"
assert_eq bob "$(jq -r .username <<<"$HTTP_BODY")" "whoami with bob's token"
http GET "$PRIMARY_URL/-/whoami" -H "Authorization: Bearer $BOB_TOKEN"
assert_eq 401 "$HTTP_STATUS" "bob's token on the primary"

step "a resync removes what the upstream lacks: bob and his token go, alice stays"
expect_exit 0 "$NPME" --root "$T/replica" reset-follower --wait --timeout 60
assert_eq "alice" "$(users replica)" "users on the replica after the resync"
assert_eq "$(tokens primary)" "$(tokens replica)" "tokens on the replica after the resync"
assert_eq 0 "$(db_query replica "select count(*) from docs where id like '\_user:bob' escape '\'")" \
  "bob's user document"
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $BOB_TOKEN"
assert_eq 401 "$HTTP_STATUS" "bob's token on the replica after the resync"
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $LOGIN_TOKEN"
assert_eq 200 "$HTTP_STATUS" "alice's login token after the resync"

step "a user removed on the primary is removed on the replica, with its tokens"
run_npme --root "$T/primary" user remove alice >/dev/null
wait_synced replica primary
assert_eq "" "$(users replica)" "users on the replica"
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $LOGIN_TOKEN"
assert_eq 401 "$HTTP_STATUS" "alice's login token on the replica after her removal"

stop_instance replica
stop_instance primary
echo "PASS: $TEST_NAME"
