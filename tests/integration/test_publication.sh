# Publication modes and anonymous installs with the real npm client: each
# change goes through `npme settings set` on the running instance and applies
# at once, without a restart (the serve pid stays the same throughout).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$T/main"
start_instance main
PID="${INSTANCE_PID[main]}"

add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"

UNSCOPED=npme-it-pub-plain
SCOPED=@npme-it/pub-scoped

# settings_set KEY=VALUE... — through the admin API; the value must read back.
settings_set() {
  expect_exit 0 run_npme settings set "$@" --root "$ROOT"
  local pair
  for pair in "$@"; do
    assert_eq "${pair#*=}" "$("$NPME" settings get "${pair%%=*}" --root "$ROOT")" "settings get ${pair%%=*}"
  done
}

# versions_of NAME — the published versions of NAME, from the registry itself.
versions_of() {
  curl -sS -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' "$(pkg_url "$1")" |
    jq -r '(.versions // {}) | keys | join(" ")'
}

step "publication=read-only: npm publish fails with E403 and says read-only"
settings_set publication=read-only
FILES_BEFORE="$(packages_listing main)"
make_package "$T/plain-1.0.0" "$UNSCOPED" 1.0.0
expect_exit '1' in_dir "$T/plain-1.0.0" npm_as main "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "E403" "npm output for a publish to a read-only instance"
assert_contains "$LAST_OUTPUT" "read-only" "npm output for a publish to a read-only instance"
assert_eq "" "$(versions_of "$UNSCOPED")" "versions of $UNSCOPED after the refused publish"
assert_eq "$FILES_BEFORE" "$(packages_listing main)" "files under packages/ after the refused publish"
# The other writes are refused the same way (checked with curl: npm needs an
# existing package for them, and there is none yet).
http PUT "$(pkg_url "$UNSCOPED")/-rev/1-0" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  --data '{"_id":"npme-it-pub-plain","name":"npme-it-pub-plain"}'
expect_json_error 403
assert_contains "$HTTP_BODY" "read-only" "403 body of a metadata write"

step "publication=all again: the same npm publish succeeds, no restart"
settings_set allowpublishes=all
expect_exit 0 in_dir "$T/plain-1.0.0" npm_as main "$TOKEN" -- publish
assert_eq "1.0.0" "$(versions_of "$UNSCOPED")" "versions of $UNSCOPED"

step "read-only refuses dist-tag and deprecate of an existing package (E403)"
settings_set publication=read-only
expect_exit 1 npm_as main "$TOKEN" -- dist-tag add "$UNSCOPED@1.0.0" stable
assert_contains "$LAST_OUTPUT" "E403" "npm dist-tag output on a read-only instance"
expect_exit 1 npm_as main "$TOKEN" -- deprecate "$UNSCOPED@1.0.0" "do not use"
assert_contains "$LAST_OUTPUT" "403" "npm deprecate output on a read-only instance"
expect_exit 1 npm_as main "$TOKEN" -- unpublish "$UNSCOPED@1.0.0" --force
assert_contains "$LAST_OUTPUT" "403" "npm unpublish output on a read-only instance"
assert_eq "1.0.0" "$(versions_of "$UNSCOPED")" "versions of $UNSCOPED after the refused writes"
# Reads keep working on a read-only instance.
expect_exit 0 npm_as main "" -- view "$UNSCOPED" version
assert_eq "1.0.0" "$(tail -n 1 <<<"$LAST_STDOUT")" "npm view on a read-only instance"

step "publication=scoped: unscoped publish E403, scoped publish succeeds"
settings_set publication=scoped
make_package "$T/plain-1.1.0" "$UNSCOPED" 1.1.0
expect_exit 1 in_dir "$T/plain-1.1.0" npm_as main "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "E403" "npm output for an unscoped publish in scoped mode"
assert_contains "$LAST_OUTPUT" "scoped" "npm output for an unscoped publish in scoped mode"
assert_eq "1.0.0" "$(versions_of "$UNSCOPED")" "versions of $UNSCOPED after the refused publish"
make_package "$T/scoped-1.0.0" "$SCOPED" 1.0.0
expect_exit 0 in_dir "$T/scoped-1.0.0" npm_as main "$TOKEN" -- publish --access public
assert_eq "1.0.0" "$(versions_of "$SCOPED")" "versions of $SCOPED"

step "auth.installs=all: anonymous npm install of an unscoped package fails E401, a token works"
settings_set publication=all auth.installs=all
mkdir -p "$T/proj-anon" "$T/proj-token"
printf '{"name":"proj-anon","version":"1.0.0","private":true}\n' >"$T/proj-anon/package.json"
printf '{"name":"proj-token","version":"1.0.0","private":true}\n' >"$T/proj-token/package.json"
expect_exit 1 in_dir "$T/proj-anon" npm_as main "" -- install "$UNSCOPED"
assert_contains "$LAST_OUTPUT" "E401" "anonymous npm install with auth.installs=all"
assert_file_missing "$T/proj-anon/node_modules/$UNSCOPED/package.json"
expect_exit 0 in_dir "$T/proj-token" npm_as main "$TOKEN" -- install "$UNSCOPED"
assert_eq "1.0.0" "$(jq -r .version "$T/proj-token/node_modules/$UNSCOPED/package.json")" \
  "installed $UNSCOPED with a token"
# The tarball itself is protected too, not only the packument.
TARBALL_URL="$(jq -r '.versions["1.0.0"].dist.tarball' < <(curl -sS -H "Authorization: Bearer $TOKEN" \
  -H 'Accept: application/json' "$(pkg_url "$UNSCOPED")"))"
http GET "$TARBALL_URL"
expect_json_error 401

step "auth.installs=none: anonymous install of a scoped package works"
expect_exit 0 run_npme settings set authfetch=false --root "$ROOT"
assert_eq scoped "$("$NPME" settings get auth.installs --root "$ROOT")" "authfetch=false maps to auth.installs"
expect_exit 1 in_dir "$T/proj-anon" npm_as main "" -- install "$SCOPED"
assert_contains "$LAST_OUTPUT" "E401" "anonymous scoped install with auth.installs=scoped"
settings_set auth.installs=none
expect_exit 0 in_dir "$T/proj-anon" npm_as main "" -- install "$SCOPED" "$UNSCOPED"
assert_eq "1.0.0" "$(jq -r .version "$T/proj-anon/node_modules/$SCOPED/package.json")" "anonymously installed $SCOPED"
assert_eq "1.0.0" "$(jq -r .version "$T/proj-anon/node_modules/$UNSCOPED/package.json")" \
  "anonymously installed $UNSCOPED"

step "every change applied without a restart"
kill -0 "$PID" || fail "npme serve (pid $PID) is gone"
assert_eq "$PID" "$(jq -r .pid "$ROOT/data/runtime.json")" "pid in runtime.json"
expect_exit 0 run_npme status --json --root "$ROOT"
assert_eq none "$(jq -r .auth_installs <<<"$LAST_STDOUT")" "status auth_installs"
assert_eq all "$(jq -r .publication <<<"$LAST_STDOUT")" "status publication"
assert_eq 2 "$(jq -r .counts.packages <<<"$LAST_STDOUT")" "status packages"
assert_eq 2 "$(jq -r .counts.versions <<<"$LAST_STDOUT")" "status versions"
# And the settings were saved, so they survive a restart.
assert_eq none "$(jq -r '."auth.installs"' "$ROOT/settings.json")" "auth.installs in settings.json"
assert_eq all "$(jq -r '.publication' "$ROOT/settings.json")" "publication in settings.json"
stop_instance main
