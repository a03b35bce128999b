# The npme CLI against a running instance: users, tokens, status counts,
# --json output, and the documented exit codes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$T/main"
start_instance main

step "settings.json was created private"
assert_file_exists "$ROOT/settings.json"
assert_eq 600 "$(stat -c '%a' "$ROOT/settings.json")" "mode of settings.json"

step "users: add, list, remove"
add_user main alice 'alice-password-1' alice@example.com
add_user main bob 'bob-password-1'
expect_exit 0 run_npme user list --json --root "$ROOT"
USERS="$LAST_STDOUT"
jq -e . <<<"$USERS" >/dev/null || fail "user list --json is not JSON: $USERS"
# Accept {"users":[...]} or a bare array of user objects.
user_names() {
  jq -r 'if type == "array" then .[] else .users[] end | .name' <<<"$1" | sort | tr '\n' ' '
}
assert_eq "alice bob " "$(user_names "$USERS")" "user names"
assert_eq alice@example.com \
  "$(jq -r 'if type == "array" then .[] else .users[] end | select(.name == "alice") | .email' <<<"$USERS")" \
  "alice's email"
expect_exit 0 run_npme user list --root "$ROOT"
assert_contains "$LAST_STDOUT" "alice" "user list"
expect_exit 1 bash -c 'printf "pw\n" | "$1" user add alice --password-stdin --root "$2"' _ "$NPME" "$ROOT"
assert_contains "$LAST_OUTPUT" "alice" "error for an existing user"
expect_exit '1|2' bash -c 'printf "pw\n" | "$1" user add "Not Valid!" --password-stdin --root "$2"' _ "$NPME" "$ROOT"
expect_exit 0 run_npme user remove bob --root "$ROOT"
expect_exit 0 run_npme user list --json --root "$ROOT"
assert_eq "alice " "$(user_names "$LAST_STDOUT")" "user names after removing bob"
expect_exit 1 run_npme user remove bob --root "$ROOT"

step "tokens: create, list, use, revoke"
expect_exit 0 run_npme token create --user alice --root "$ROOT" --json
CREATED="$LAST_STDOUT"
TOKEN_ID="$(jq -r '.id' <<<"$CREATED")"
TOKEN="$(jq -r '.token' <<<"$CREATED")"
assert_eq alice "$(jq -r '.user' <<<"$CREATED")" "token create .user"
assert_eq false "$(jq -r '.read_only' <<<"$CREATED")" "token create .read_only"
[[ -n "$TOKEN_ID" && "$TOKEN_ID" != null && -n "$TOKEN" && "$TOKEN" != null ]] ||
  fail "token create --json lacks id or token: $CREATED"
jq -e '.created | type == "string" and length > 0' <<<"$CREATED" >/dev/null ||
  fail "token create --json lacks created: $CREATED"
expect_exit 0 run_npme token create --user alice --read-only --root "$ROOT"
RO_TOKEN="$(tail -n 1 <<<"$LAST_STDOUT")"
[[ "$RO_TOKEN" =~ ^[^[:space:]]+$ ]] || fail "token create printed '$RO_TOKEN', not a token alone on its line"
expect_exit '1|2' run_npme token create --user nobody --root "$ROOT"

expect_exit 0 run_npme token list --json --root "$ROOT"
TOKENS="$LAST_STDOUT"
assert_eq 2 "$(jq '.tokens | length' <<<"$TOKENS")" "number of tokens"
assert_eq alice "$(jq -r --arg id "$TOKEN_ID" '.tokens[] | select(.id == $id) | .user' <<<"$TOKENS")" "listed token user"
assert_eq false "$(jq -r --arg id "$TOKEN_ID" '.tokens[] | select(.id == $id) | .read_only' <<<"$TOKENS")" "listed token read_only"
assert_eq 1 "$(jq '[.tokens[] | select(.read_only == true)] | length' <<<"$TOKENS")" "read-only tokens listed"
PREFIX="$(jq -r --arg id "$TOKEN_ID" '.tokens[] | select(.id == $id) | .token_prefix' <<<"$TOKENS")"
[[ -n "$PREFIX" && "$TOKEN" == "$PREFIX"* && "$PREFIX" != "$TOKEN" ]] ||
  fail "token_prefix '$PREFIX' is not a proper prefix of the token"
info "ok: token_prefix '$PREFIX'"
assert_not_contains "$TOKENS" "$TOKEN" "token list output (must not reveal tokens)"

http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "whoami with the new token"
assert_eq alice "$(jq -r '.username' <<<"$HTTP_BODY")" "whoami username"

expect_exit 0 run_npme token revoke "$TOKEN_ID" --root "$ROOT"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $TOKEN"
assert_eq 401 "$HTTP_STATUS" "whoami with the revoked token"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $RO_TOKEN"
assert_eq 200 "$HTTP_STATUS" "whoami with the other token"
expect_exit 0 run_npme token list --json --root "$ROOT"
assert_eq 0 "$(jq --arg id "$TOKEN_ID" '[.tokens[] | select(.id == $id)] | length' <<<"$LAST_STDOUT")" "revoked token listed"
expect_exit 1 run_npme token revoke "$TOKEN_ID" --root "$ROOT"

step "status --json counts match what was published"
TOKEN="$(create_token main alice)"
make_publish_body "$T/a1" npme-it-cli-a 1.0.0 "$T/a1.json"
make_publish_body "$T/a2" npme-it-cli-a 1.1.0 "$T/a2.json"
make_publish_body "$T/b1" @npme-it/cli-b 0.1.0 "$T/b1.json"
for body in a1 a2; do
  put_json "$(pkg_url npme-it-cli-a)" "$T/$body.json" "$TOKEN"
  [[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish $body answered $HTTP_STATUS"
done
put_json "$(pkg_url @npme-it/cli-b)" "$T/b1.json" "$TOKEN"
[[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish b1 answered $HTTP_STATUS"
BYTES=$(($(stat -c %s "$T/a1.tgz") + $(stat -c %s "$T/a2.tgz") + $(stat -c %s "$T/b1.tgz")))
expect_exit 0 run_npme status --json --root "$ROOT"
STATUS="$LAST_STDOUT"
assert_eq 2 "$(jq '.counts.packages' <<<"$STATUS")" "status counts.packages"
assert_eq 3 "$(jq '.counts.versions' <<<"$STATUS")" "status counts.versions"
assert_eq 3 "$(jq '.counts.tarballs' <<<"$STATUS")" "status counts.tarballs"
assert_eq "$BYTES" "$(jq '.counts.tarball_bytes' <<<"$STATUS")" "status counts.tarball_bytes"
assert_eq "$(db_seq main)" "$(jq '.update_seq' <<<"$STATUS")" "status update_seq = max(seq) in the database"
assert_eq primary "$(jq -r '.role' <<<"$STATUS")" "status role"
assert_eq all "$(jq -r '.publication' <<<"$STATUS")" "status publication"
assert_eq "$REGISTRY_URL" "$(jq -r '.registry_url // .registry.url // empty' <<<"$STATUS" | sed 's|/$||')" "status registry URL"
expect_exit 0 run_npme status --root "$ROOT"
assert_contains "$LAST_STDOUT" "primary" "human status"

step "exit codes: usage errors (2)"
expect_exit 2 "$NPME" frobnicate
expect_exit 2 "$NPME" status --root "$ROOT" --no-such-flag
expect_exit 2 "$NPME" token create --root "$ROOT"
expect_exit 2 "$NPME" --json token frobnicate --root "$ROOT"

step "exit codes: bad admin token (4), with a JSON error under --json"
expect_exit 4 env NPME_ADMIN_TOKEN=wrong "$NPME" status --root "$ROOT"
expect_exit 4 env NPME_ADMIN_TOKEN=wrong "$NPME" token list --root "$ROOT" --json
jq -e '.error.code and .error.message' <<<"$LAST_STDOUT" >/dev/null ||
  fail "--json failure did not print {\"error\":{\"code\",\"message\"}}: $LAST_STDOUT"
info "ok: JSON error $(jq -c . <<<"$LAST_STDOUT")"

step "exit codes: a second serve on a locked root (6)"
expect_exit 6 timeout 30 "$NPME" serve --root "$ROOT" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
kill -0 "${INSTANCE_PID[main]}" || fail "the running instance died when a second serve was tried"
http GET "$REGISTRY_URL/-/ping"
assert_eq 200 "$HTTP_STATUS" "ping of the running instance"

step "exit codes: admin API unreachable (3)"
expect_exit 3 "$NPME" status --admin-url http://127.0.0.1:1 --root "$ROOT"
expect_exit 3 "$NPME" status --admin-url http://127.0.0.1:1 --root "$ROOT" --json
jq -e '.error.code' <<<"$LAST_STDOUT" >/dev/null || fail "--json failure did not print a JSON error: $LAST_STDOUT"
stop_instance main
expect_exit 3 "$NPME" token list --admin-url http://127.0.0.1:1 --root "$ROOT"

step "the stopped root can be served again (lock released)"
start_instance main
expect_exit 0 run_npme status --json --root "$ROOT"
assert_eq 3 "$(jq '.counts.versions' <<<"$LAST_STDOUT")" "versions after the restart"
stop_instance main
