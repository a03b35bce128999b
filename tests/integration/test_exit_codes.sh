# The exit codes of DESIGN.md §4 for every command that talks to an instance
# (status, settings list/get/set, user add/list/remove, token
# create/list/revoke), and the --json error document: exactly one JSON
# document {"error":{"code","message"}} on stdout, the message on stderr.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$T/main"
STOPPED="$T/stopped"
start_instance main
add_user main alice 'alice-password-1'
create_token main alice >/dev/null

PASSWORD_FILE="$T/password"
printf 'carol-password-1\n' >"$PASSWORD_FILE"

# with_password ARGS... — the CLI with a password on standard input (user add).
with_password() {
  "$NPME" "$@" <"$PASSWORD_FILE"
}

# Every command that goes through the admin API, as argument lists.
COMMANDS=(
  "status"
  "settings list"
  "settings get publication"
  "settings set publication=all"
  "user add carol --password-stdin"
  "user list"
  "user remove carol"
  "token create --user alice"
  "token list"
  "token revoke 0123456789ab"
)

# free_port — a loopback port nobody listens on (bound once, then released).
free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
    console.log(s.address().port); s.close(); })'
}

# expect_json_failure EXIT CODE_NAME ARGS... — `npme ARGS --json` exits EXIT,
# prints exactly one JSON document {"error":{"code":CODE_NAME,"message"}} on
# stdout and the same message on stderr.
expect_json_failure() {
  local exit_status="$1" code_name="$2"
  shift 2
  local rc=0
  info "\$ npme $* --json"
  with_password "$@" --json >"$T/json.stdout" 2>"$T/json.stderr" || rc=$?
  sed 's/^/    | /' "$T/json.stdout" "$T/json.stderr" | head -n 20 || true
  [[ "$rc" == "$exit_status" ]] || fail "'npme $* --json' exited $rc, expected $exit_status"
  local documents
  documents="$(jq -s 'length' <"$T/json.stdout" 2>/dev/null)" ||
    fail "'npme $* --json': stdout is not JSON: $(cat "$T/json.stdout")"
  [[ "$documents" == 1 ]] || fail "'npme $* --json': $documents JSON documents on stdout, expected exactly 1"
  jq -e --arg code "$code_name" '(keys == ["error"]) and (.error | keys == ["code", "message"])
      and .error.code == $code and (.error.message | type == "string" and length > 0)' \
    <"$T/json.stdout" >/dev/null ||
    fail "'npme $* --json': not {\"error\":{\"code\":\"$code_name\",\"message\":...}}: $(cat "$T/json.stdout")"
  local message
  message="$(jq -r .error.message <"$T/json.stdout")"
  assert_contains "$(cat "$T/json.stderr")" "$message" "stderr of 'npme $* --json'"
  info "ok: exit $rc, one JSON error document with code $code_name"
}

step "--help exits 0 for every command"
expect_exit 0 run_npme --help
assert_contains "$LAST_STDOUT" "settings" "npme --help"
for cmd in "status" "settings" "settings list" "settings get" "settings set" "user" "user add" "user list" \
  "user remove" "token" "token create" "token list" "token revoke" "serve"; do
  # shellcheck disable=SC2086
  expect_exit 0 run_npme $cmd --help
  assert_contains "$LAST_STDOUT" "Usage" "npme $cmd --help"
done

step "bad flags, missing arguments and unknown subcommands exit 2"
for cmd in "${COMMANDS[@]}"; do
  # shellcheck disable=SC2086
  expect_exit 2 with_password $cmd --no-such-flag --root "$ROOT"
  assert_contains "$LAST_OUTPUT" "no-such-flag" "error of 'npme $cmd --no-such-flag'"
done
for args in "frob" "settings frob" "user frob" "token frob" "settings" "user" "token" "settings get" \
  "settings set" "user add" "user remove" "token create" "token revoke" "token create --user"; do
  # shellcheck disable=SC2086
  expect_exit 2 run_npme $args --root "$ROOT"
done
# The usage errors of the parser print no partial output under --json:
# stdout is empty or one JSON error document.
for args in "frob" "settings get" "status --no-such-flag"; do
  rc=0
  # shellcheck disable=SC2086
  "$NPME" $args --json --root "$ROOT" >"$T/usage.stdout" 2>"$T/usage.stderr" || rc=$?
  assert_eq 2 "$rc" "exit status of 'npme $args --json'"
  if [[ -s "$T/usage.stdout" ]]; then
    jq -e -s 'length == 1 and (.[0].error.code | type == "string")' <"$T/usage.stdout" >/dev/null ||
      fail "'npme $args --json' printed something other than one JSON error: $(cat "$T/usage.stdout")"
  fi
  info "ok: no stray output on stdout"
done

step "unknown setting key or bad value: exit 2 with the key and what is allowed"
expect_exit 2 run_npme settings get no.such.key --root "$ROOT"
assert_contains "$LAST_OUTPUT" "no.such.key" "settings get of an unknown key"
assert_contains "$LAST_OUTPUT" "known settings are" "settings get of an unknown key"
expect_exit 2 run_npme settings set no.such.key=1 --root "$ROOT"
assert_contains "$LAST_OUTPUT" "known settings are" "settings set of an unknown key"
expect_exit 2 run_npme settings set publication=sometimes --root "$ROOT"
assert_contains "$LAST_OUTPUT" "publication" "settings set of a bad value"
assert_contains "$LAST_OUTPUT" "all, read-only, scoped" "settings set of a bad value"
expect_json_failure 2 usage settings get no.such.key --root "$ROOT"
expect_json_failure 2 usage settings set no.such.key=1 --root "$ROOT"
expect_json_failure 2 invalid settings set publication=sometimes --root "$ROOT"
expect_json_failure 2 usage settings set not-an-assignment x=1 --root "$ROOT"

step "operations that fail: exit 1 (unknown token id, unknown user, existing user)"
expect_exit 1 run_npme token revoke 0123456789ab --root "$ROOT"
assert_contains "$LAST_OUTPUT" "0123456789ab" "error of revoking an unknown token"
expect_json_failure 1 not_found token revoke 0123456789ab --root "$ROOT"
expect_exit 1 run_npme user remove nobody --root "$ROOT"
expect_json_failure 1 not_found user remove nobody --root "$ROOT"
expect_exit 0 with_password user add carol --password-stdin --root "$ROOT"
expect_json_failure 1 conflict user add carol --password-stdin --root "$ROOT"
expect_exit 0 run_npme user remove carol --root "$ROOT"

step "every command with a bad admin token exits 4"
printf 'wrong-admin-token-wrong-admin-token\n' >"$T/wrong-token"
printf '%s\n' "$(jq -r '."admin.token"' "$ROOT/settings.json")" >"$T/right-token"
for cmd in "${COMMANDS[@]}"; do
  # shellcheck disable=SC2086
  expect_exit 4 env NPME_ADMIN_TOKEN=wrong "$NPME" $cmd --root "$ROOT" <"$PASSWORD_FILE"
  assert_contains "$LAST_OUTPUT" "admin token" "error of '$cmd' with NPME_ADMIN_TOKEN=wrong"
  # shellcheck disable=SC2086
  expect_exit 4 with_password $cmd --admin-token-file "$T/wrong-token" --root "$ROOT"
  # shellcheck disable=SC2086
  NPME_ADMIN_TOKEN=wrong expect_json_failure 4 unauthorized $cmd --root "$ROOT"
  # shellcheck disable=SC2086
  expect_json_failure 4 unauthorized $cmd --admin-token-file "$T/wrong-token" --root "$ROOT"
done
# Nothing was done with the wrong token.
expect_exit 0 run_npme user list --json --root "$ROOT"
assert_eq alice "$(jq -r '[.users[].name] | join(" ")' <<<"$LAST_STDOUT")" "users after the refused commands"
# --admin-token-file beats NPME_ADMIN_TOKEN; the admin URL alone (no --root)
# works with a token from either.
expect_exit 0 env NPME_ADMIN_TOKEN=wrong "$NPME" status --admin-token-file "$T/right-token" --root "$ROOT"
expect_exit 0 env NPME_ADMIN_TOKEN="$(cat "$T/right-token")" "$NPME" status --admin-url "$ADMIN_URL" --root "$T/nowhere"
expect_exit 4 env NPME_ADMIN_TOKEN=wrong "$NPME" status --admin-url "$ADMIN_URL" --root "$T/nowhere"

step "precondition refused: exit 6 (offline set while running, second serve)"
cp -p "$ROOT/settings.json" "$T/settings.before"
expect_exit 6 run_npme settings set --offline publication=read-only --root "$ROOT"
expect_json_failure 6 precondition settings set --offline publication=read-only --root "$ROOT"
cmp "$T/settings.before" "$ROOT/settings.json" || fail "a refused offline set changed settings.json"
info "ok: settings.json unchanged"
expect_exit 6 run_npme serve --root "$ROOT" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
assert_contains "$LAST_OUTPUT" "running" "error of a second serve"
expect_json_failure 6 precondition serve --root "$ROOT" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
# The first instance is unharmed.
expect_exit 0 run_npme status --root "$ROOT"

step "admin API unreachable: every command exits 3"
# A stopped instance whose admin.listen nobody listens on: the address comes
# from its settings file, as an operator's CLI would find it.
CLOSED_PORT="$(free_port)"
expect_exit 0 run_npme settings set --offline "admin.listen=127.0.0.1:$CLOSED_PORT" --root "$STOPPED"
# Offline edits of a stopped instance validate like online ones.
expect_json_failure 2 invalid settings set --offline publication=sometimes --root "$STOPPED"
expect_json_failure 2 usage settings get --offline no.such.key --root "$STOPPED"
for cmd in "${COMMANDS[@]}"; do
  # shellcheck disable=SC2086
  expect_exit 3 with_password $cmd --root "$STOPPED"
  assert_contains "$LAST_OUTPUT" "127.0.0.1:$CLOSED_PORT" "error of '$cmd' with the admin API down"
  # shellcheck disable=SC2086
  expect_json_failure 3 unreachable $cmd --root "$STOPPED"
  # The same through --admin-url and NPME_ADMIN_URL against the running root's token.
  # shellcheck disable=SC2086
  expect_exit 3 with_password $cmd --admin-url "http://127.0.0.1:$CLOSED_PORT" --root "$ROOT"
done
expect_exit 3 env NPME_ADMIN_URL="http://127.0.0.1:$CLOSED_PORT" "$NPME" status --root "$ROOT"
# A stopped instance is unreachable too: runtime.json is gone and nothing
# listens on its configured admin address.
stop_instance main
expect_exit 0 run_npme settings set --offline "admin.listen=127.0.0.1:$CLOSED_PORT" --root "$ROOT"
expect_exit 3 run_npme status --root "$ROOT"
expect_json_failure 3 unreachable settings get publication --root "$ROOT"
