# `npm login` (legacy couch auth, driven without a terminal), whoami, logout
# revoking the token, and the default read policy (auth.installs = scoped).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main

step "npme user add alice"
add_user main alice 'correct horse battery'

# npm_login RCFILE USER PASSWORD — `npm login --auth-type=legacy` writing its
# token into RCFILE, answering npm's prompts through fixtures/npm_login.js.
npm_login() {
  local rc_file="$1" user="$2" password="$3"
  printf 'registry=%s/\n' "$REGISTRY_URL" >"$rc_file"
  info "\$ npm login --auth-type=legacy (as $user)" >&2
  node "$FIXTURES/npm_login.js" "$user" "$password" "$user@example.com" -- \
    "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$REGISTRY_URL/" --no-update-notifier \
    --fetch-retries=0 login --auth-type=legacy
}

# npm_rc RCFILE args... — npm with a given user config (as written by login).
npm_rc() {
  local rc_file="$1"
  shift
  info "\$ npm $*" >&2
  "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$REGISTRY_URL/" --no-update-notifier \
    --no-audit --no-fund --fetch-retries=0 --prefer-online "$@"
}

HOSTPORT="${REGISTRY_URL#http://}"

step "npm login with the wrong password fails and stores no token"
RC_BAD="$T/npmrc-bad"
expect_exit 1 npm_login "$RC_BAD" alice 'wrong password'
assert_contains "$LAST_OUTPUT" "E401" "npm login output"
assert_not_contains "$(cat "$RC_BAD")" "_authToken" "npmrc after the failed login"

step "npm login with the right password"
RC="$T/npmrc-alice"
expect_exit 0 npm_login "$RC" alice 'correct horse battery'
assert_contains "$LAST_OUTPUT" "Logged in" "npm login output"
TOKEN="$(sed -n "s|^//$HOSTPORT/:_authToken=||p" "$RC")"
[[ -n "$TOKEN" ]] || fail "npm login wrote no token for //$HOSTPORT/ into $RC: $(cat "$RC")"
info "ok: npm login stored token ${TOKEN:0:6}…"

step "npm whoami prints alice"
expect_exit 0 npm_rc "$RC" whoami
assert_eq alice "$LAST_STDOUT" "npm whoami"

step "the login token is listed by npme token list"
TOKENS="$(run_npme token list --json --root "$T/main")"
assert_eq 1 "$(jq '[.tokens[] | select(.user == "alice")] | length' <<<"$TOKENS")" "alice's tokens"
PREFIX="$(jq -r '.tokens[] | select(.user == "alice") | .token_prefix' <<<"$TOKENS")"
[[ -n "$PREFIX" && "$TOKEN" == "$PREFIX"* ]] || fail "token_prefix '$PREFIX' is not a prefix of the login token"
info "ok: token_prefix '$PREFIX' matches"

step "publish an unscoped and a scoped package with the login token"
make_package "$T/open" npme-it-open 1.0.0
make_package "$T/secret" @npme-corp/secret 1.0.0
expect_exit 0 in_dir "$T/open" npm_rc "$RC" publish
expect_exit 0 in_dir "$T/secret" npm_rc "$RC" publish --access restricted

step "npm logout revokes the token"
expect_exit 0 npm_rc "$RC" logout
assert_not_contains "$(cat "$RC")" "_authToken" "npmrc after logout"
assert_eq 0 "$(run_npme token list --json --root "$T/main" |
  jq '[.tokens[] | select(.user == "alice")] | length')" "alice's tokens after logout"
expect_exit 1 npm_as main "$TOKEN" -- whoami
assert_contains "$LAST_OUTPUT" "E401" "npm whoami with the revoked token"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $TOKEN"
assert_eq 401 "$HTTP_STATUS" "GET /-/whoami with the revoked token"

step "anonymous install: unscoped works, scoped fails with E401"
PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"scratch-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
expect_exit 0 in_dir "$PROJ" npm_as main "" -- install npme-it-open
assert_eq 1.0.0 "$(jq -r '.version' "$PROJ/node_modules/npme-it-open/package.json")" "installed npme-it-open"
expect_exit 1 in_dir "$PROJ" npm_as main "" -- install @npme-corp/secret
assert_contains "$LAST_OUTPUT" "E401" "anonymous scoped install"
[[ ! -e "$PROJ/node_modules/@npme-corp/secret" ]] || fail "the scoped package was installed anonymously"
http GET "$REGISTRY_URL/@npme-corp%2fsecret"
assert_eq 401 "$HTTP_STATUS" "anonymous GET of the scoped packument"
http GET "$REGISTRY_URL/@npme-corp/secret/-/secret-1.0.0.tgz"
assert_eq 401 "$HTTP_STATUS" "anonymous GET of the scoped tarball"

step "the revoked token cannot install the scoped package either"
expect_exit 1 in_dir "$PROJ" npm_as main "$TOKEN" -- install @npme-corp/secret
assert_contains "$LAST_OUTPUT" "E401" "scoped install with the revoked token"

step "logging in again gives a new working token that installs the scoped package"
expect_exit 0 npm_login "$RC" alice 'correct horse battery'
TOKEN2="$(sed -n "s|^//$HOSTPORT/:_authToken=||p" "$RC")"
assert_ne "$TOKEN" "$TOKEN2" "new login token"
expect_exit 0 in_dir "$PROJ" npm_rc "$RC" install @npme-corp/secret
assert_eq 1.0.0 "$(jq -r '.version' "$PROJ/node_modules/@npme-corp/secret/package.json")" "installed @npme-corp/secret"
