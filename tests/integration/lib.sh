# Shared helpers for the npme integration tests. Each test script sources this
# file, starts its own instances on free loopback ports under its own temp
# directory, and drives them with the real `npm` client, curl and the `npme`
# CLI. Everything started here is stopped by PID at exit.
#
# Environment:
#   NPME             the npme binary under test (required)
#   NPME_SOURCE_DIR  the source tree (for fixtures; defaults to ../.. of this file)
#   NPME_TEST_NPM    the npm command to drive (default "npm"), e.g.
#                    "node /opt/npm9/bin/npm-cli.js" to test another npm
#   NPME_KEEP_TMP    when set, keep the temp directory after a failure

set -euo pipefail

: "${NPME:?NPME must point at the npme binary}"
NPME_SOURCE_DIR="${NPME_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
FIXTURES="$NPME_SOURCE_DIR/tests/integration/fixtures"
read -r -a NPM_CMD <<<"${NPME_TEST_NPM:-npm}"

if [[ ! -x "$NPME" ]]; then
  echo "FAIL: NPME='$NPME' is not an executable" >&2
  exit 1
fi
for tool in curl jq sqlite3 openssl node tar; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "FAIL: required tool '$tool' not found" >&2
    exit 1
  fi
done

# The machine's npm configuration must not leak into the tests (a global
# `omit-lockfile-registry-resolved` or a registry override would change what
# npm writes and where it goes).
while IFS= read -r var; do
  unset "$var"
done < <(compgen -e | grep -i '^npm_config_' || true)

# Diagnostics go to the test's own stderr even from inside a command
# substitution that captures stderr (out="$(cmd 2>&1)"): a failure there
# must still be seen.
exec {DIAG_FD}>&2

T="$(mktemp -d "${TMPDIR:-/tmp}/npme-it.XXXXXX")"
export HOME="$T/home"
mkdir -p "$HOME"
: >"$T/npm-globalrc"
TEST_NAME="$(basename "$0" .sh)"

declare -A INSTANCE_PID=()   # instance name -> pid of its `npme serve`
declare -A REGISTRY=()       # instance name -> registry URL (no trailing slash)
declare -A ADMIN=()          # instance name -> admin URL
declare -A DATA_DIR=()       # instance name -> its data directory, when storage.data moves it out of its root
declare -a STARTED_PIDS=()   # every background pid started by this file
REGISTRY_URL=""              # URLs of the instance started last
ADMIN_URL=""

step() {
  printf '\n==> [%s] %s\n' "$TEST_NAME" "$*"
}

info() {
  printf '    %s\n' "$*"
}

# have_tool NAME WHAT — true when NAME is installed; otherwise says that
# WHAT is not exercised and is false. In CI (CI set) a missing tool fails
# the test instead: scripts/deps installs every tool the tests use, so a
# skip there would hide a broken setup.
have_tool() {
  local name="$1" what="$2"
  if command -v "$name" >/dev/null 2>&1; then
    return 0
  fi
  [[ -z "${CI:-}" ]] || fail "$name is not installed (scripts/deps installs it): $what must run in CI"
  info "$name is not installed: $what is not exercised"
  return 1
}

# traced ARGS... — strace ARGS... with LeakSanitizer off in the traced
# processes (the sanitizer build): it cannot work under ptrace, and would
# fail the process at exit. ASan and UBSan stay on.
traced() {
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" strace "$@"
}

# skip_test REASON — ends the test as skipped (ctest's SKIP_RETURN_CODE 77),
# except in CI, where a skip is a failure.
skip_test() {
  [[ -z "${CI:-}" ]] || fail "cannot run in CI: $*"
  echo "SKIP: $*" >&2
  exit 77
}

print_server_logs() {
  local log
  for log in "$T"/*.serve.log; do
    [[ -e "$log" ]] || continue
    printf '\n----- %s (last 200 lines) -----\n' "$(basename "$log")" >&2
    tail -n 200 "$log" >&2 || true
  done
}

fail() {
  printf '\nFAIL: [%s] %s\n' "$TEST_NAME" "$*" >&"$DIAG_FD"
  exit 1
}

# Commands (strings for eval) that on_exit runs after stopping the
# processes: what a test changed outside $T.
CLEANUP_COMMANDS=()

# ---- Nothing leaks ----
# Every test ends with a scan (leak_scan, from on_exit): the secrets it made
# must appear in none of the places npme writes for others to read. The
# secrets: passwords given to add_user or note_secret, every secret setting
# of every settings file under $T, every npme token noted by create_token or
# printed by an npme command run through expect_exit. The places: the
# instances' logs (*.serve.log), audit logs, the status and /metrics of each
# instance still running at the end, the body of every error answer that
# http() saw, the error output of npme commands, and the manifest of every
# snapshot under $T. Any hit fails the test.
# Under $T/.leaks, named through $T at each use: the chaos campaigns move $T.
mkdir -p "$T/.leaks"
: >"$T/.leaks/secrets"
note_secret() {
  printf '%s\n' "$1" >>"$T/.leaks/secrets"
}
# The tokens in file $1 (npme's tokens: "npme_" and 40 random characters).
note_tokens_in() {
  grep -ohE 'npme_[A-Za-z0-9]{40}' "$1" >>"$T/.leaks/secrets" 2>/dev/null || true
}

leak_scan() {
  local LEAK_DIR="$T/.leaks"
  local sinks="$LEAK_DIR/sinks" name file
  mkdir -p "$sinks"
  # What each instance still running shows: its status and metrics.
  for name in "${!INSTANCE_PID[@]}"; do
    kill -0 "${INSTANCE_PID[$name]}" 2>/dev/null || continue
    timeout 20 "$NPME" --root "$T/$name" status --json >"$sinks/status-$name.json" 2>&1
    local admin_token
    admin_token="$(jq -r '."admin.token" // empty' "$T/$name/settings.json" 2>/dev/null)"
    curl -sS --max-time 20 -k -H "Authorization: Bearer $admin_token" "${ADMIN[$name]}/metrics" \
      >"$sinks/metrics-$name.txt" 2>&1
  done
  # The manifests of the snapshots the test made.
  while IFS= read -r -d '' file; do
    timeout 20 "$NPME" snapshot inspect --json "$file" >>"$sinks/snapshots.json" 2>/dev/null
  done < <(find "$T" -path "$LEAK_DIR" -prune -o -type f -name 'npme-snapshot-*' -print0 2>/dev/null)
  # Every secret setting of every instance.
  while IFS= read -r -d '' file; do
    jq -r '[."admin.token", .secret, ."upstream.secret", ."uplink.token", ."ha.etcd_password", ."network.http_proxy"] | .[] // empty' \
      "$file" >>"$LEAK_DIR/secrets" 2>/dev/null
  done < <(find "$T" -path "$LEAK_DIR" -prune -o -type f -name settings.json -print0 2>/dev/null)
  while IFS= read -r -d '' file; do
    note_tokens_in "$file"
  done < <(find "$T" -path "$LEAK_DIR" -prune -o -type f -name '*npmrc*' -size -1M -print0 2>/dev/null)
  # Secrets shorter than 8 characters would match by chance.
  awk 'length($0) >= 8' "$LEAK_DIR/secrets" | sort -u >"$LEAK_DIR/patterns"
  local -a files=()
  while IFS= read -r -d '' file; do
    files+=("$file")
  done < <(find "$T" \( -path "$LEAK_DIR/secrets" -o -path "$LEAK_DIR/patterns" \) -prune -o -type f \
    \( -name '*.serve.log' -o -name 'audit.log*' -o -path "$LEAK_DIR/*" \) -print0 2>/dev/null)
  [[ ${#files[@]} -gt 0 ]] || return 0
  local hits=""
  if [[ -s "$LEAK_DIR/patterns" ]]; then
    hits="$(grep -lF -f "$LEAK_DIR/patterns" "${files[@]}" 2>/dev/null)"
  fi
  # A token nobody noted is still a token.
  hits+=$'\n'"$(grep -lE 'npme_[A-Za-z0-9]{40}' "${files[@]}" 2>/dev/null)"
  hits="$(sed '/^$/d' <<<"$hits")"
  if [[ -n "$hits" ]]; then
    printf '\nFAIL: [%s] a secret leaked (%s secrets checked) into:\n' "$TEST_NAME" "$(wc -l <"$LEAK_DIR/patterns")" >&"$DIAG_FD"
    for file in $(sort -u <<<"$hits"); do
      printf '  %s:\n' "${file#"$T"/}" >&"$DIAG_FD"
      # The lines, with every secret masked: the report must not leak them either.
      grep -nF -f "$LEAK_DIR/patterns" "$file" 2>/dev/null | head -n 5 |
        sed -E 's/npme_[A-Za-z0-9]{40}/npme_<token>/g' | while IFS= read -r line; do
        while IFS= read -r secret; do
          line="${line//"$secret"/<secret ${#secret} chars>}"
        done <"$LEAK_DIR/patterns"
        printf '    %s\n' "${line:0:300}"
      done >&"$DIAG_FD"
      grep -nE 'npme_[A-Za-z0-9]{40}' "$file" 2>/dev/null | head -n 3 | sed -E 's/npme_[A-Za-z0-9]{40}/npme_<token>/g; s/^/    /' >&"$DIAG_FD"
    done
    return 1
  fi
  return 0
}

on_exit() {
  local rc=$?
  set +e
  local leaked=""
  if [[ $rc -eq 0 ]] && ! leak_scan; then
    rc=1
    leaked=yes
  fi
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  local command
  for command in "${CLEANUP_COMMANDS[@]}"; do
    eval "$command"
  done
  if [[ $rc -ne 0 ]]; then
    # Not after a leak: the logs hold the secret (leak_scan showed where, masked).
    [[ -n "$leaked" ]] || print_server_logs
    if [[ -n "${NPME_KEEP_TMP:-}" ]]; then
      echo "kept temp directory $T" >&2
      exit "$rc"
    fi
  else
    printf '\nPASS: [%s]\n' "$TEST_NAME"
  fi
  rm -rf "$T"
  exit "$rc"
}
trap on_exit EXIT

assert_eq() {
  local expected="$1" actual="$2" what="${3:-value}"
  if [[ "$expected" != "$actual" ]]; then
    fail "$what: expected '$expected', got '$actual'"
  fi
  info "ok: $what = '$actual'"
}

assert_ne() {
  local unexpected="$1" actual="$2" what="${3:-value}"
  if [[ "$unexpected" == "$actual" ]]; then
    fail "$what: expected anything but '$unexpected'"
  fi
  info "ok: $what = '$actual' (not '$unexpected')"
}

assert_contains() {
  local haystack="$1" needle="$2" what="${3:-output}"
  if [[ "$haystack" != *"$needle"* ]]; then
    printf '%s\n' "$haystack" | head -c 4000 >&2
    fail "$what does not contain '$needle'"
  fi
  info "ok: $what contains '$needle'"
}

assert_not_contains() {
  local haystack="$1" needle="$2" what="${3:-output}"
  if [[ "$haystack" == *"$needle"* ]]; then
    printf '%s\n' "$haystack" | head -c 4000 >&2
    fail "$what contains '$needle'"
  fi
  info "ok: $what does not contain '$needle'"
}

assert_file_exists() {
  [[ -f "$1" ]] || fail "expected file $1 to exist"
  info "ok: file exists: ${1#"$T"/}"
}

assert_file_missing() {
  [[ ! -e "$1" ]] || fail "expected $1 to be gone"
  info "ok: file gone: ${1#"$T"/}"
}

# expect_exit CODE cmd... — runs `cmd`, prints its output, fails unless it
# exits with CODE (or with one of several given as "1|2"). The combined
# output is left in LAST_OUTPUT, stdout alone in LAST_STDOUT: call it
# directly and read those, not inside $(...), where they would be lost
# (a failure's diagnostics still reach the test's stderr).
LAST_OUTPUT=""
LAST_STDOUT=""
expect_exit() {
  local expected="$1"
  shift
  local rc=0
  # Tokens in command lines are masked so CI logs do not carry them.
  info "\$ $(sed -E 's/(npme_[A-Za-z0-9]{4})[A-Za-z0-9]+/\1…/g' <<<"$*")"
  "$@" >"$T/last.stdout" 2>"$T/last.stderr" || rc=$?
  LAST_STDOUT="$(cat "$T/last.stdout")"
  LAST_OUTPUT="$(cat "$T/last.stdout" "$T/last.stderr")"
  # npme's own output: the tokens it printed are secrets from now on, and
  # its error output is a place they must never appear (the test's own
  # trace lines, "    $ npme ...", are not npme's).
  if [[ "$1" == run_npme || "$1" == "$NPME" ]]; then
    note_tokens_in "$T/last.stdout"
    grep -v '^ *\$ ' "$T/last.stderr" >>"$T/.leaks/npme-stderr" || true
  fi
  # Only the first lines are shown; head closing the pipe early must not
  # fail the test (pipefail would see sed's SIGPIPE).
  sed 's/^/    | /' "$T/last.stdout" "$T/last.stderr" | head -n 60 || true
  if [[ "|$expected|" != *"|$rc|"* ]]; then
    {
      printf '\n----- output of the failed command -----\n'
      cat "$T/last.stdout" "$T/last.stderr"
    } >&"$DIAG_FD"
    fail "'$*' exited $rc, expected $expected"
  fi
  info "ok: exit code $rc"
}

# in_dir DIR cmd... — runs `cmd` with DIR as working directory (in a
# subshell, so use it inside expect_exit to keep LAST_OUTPUT).
in_dir() {
  local dir="$1"
  shift
  (cd "$dir" && "$@")
}

# run_npme ARGS... — the CLI, printing the command line first.
run_npme() {
  info "\$ npme $*" >&2
  "$NPME" "$@"
}

# ---------------------------------------------------------------- instances

# start_instance NAME [extra serve flags...] — starts `npme serve` on root
# $T/NAME with free ports, waits until it has written data/runtime.json with
# its own pid, and sets REGISTRY[NAME], ADMIN[NAME], REGISTRY_URL, ADMIN_URL.
start_instance() {
  local name="$1"
  shift
  local root="$T/$name"
  local log="$T/$name.serve.log"
  step "start instance '$name' (root $root)"
  mkdir -p "$root"
  # Free ports unless the caller names its own (fixed ports that a load
  # balancer's configuration lists).
  local listen=()
  [[ " $* " == *" --registry-listen "* ]] || listen+=(--registry-listen 127.0.0.1:0)
  [[ " $* " == *" --admin-listen "* ]] || listen+=(--admin-listen 127.0.0.1:0)
  "$NPME" serve --root "$root" "${listen[@]}" "$@" >>"$log" 2>&1 &
  local pid=$!
  STARTED_PIDS+=("$pid")
  INSTANCE_PID[$name]=$pid
  local runtime="${DATA_DIR[$name]:-$root/data}/runtime.json" i
  # runtime.json may be left over from a killed run: wait for our own pid.
  for ((i = 0; i < 200; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" || rc=$?
      fail "npme serve for '$name' exited with $rc before it was ready"
    fi
    if [[ -s "$runtime" ]] && [[ "$(jq -r '.pid // empty' "$runtime" 2>/dev/null)" == "$pid" ]]; then
      break
    fi
    sleep 0.1
  done
  [[ $i -lt 200 ]] || fail "npme serve for '$name' did not write $runtime within 20 s"
  # The listening address, not registry.url (which may name a load balancer).
  REGISTRY[$name]="$(jq -r '.listen_url // .registry_url' "$runtime")"
  ADMIN[$name]="$(jq -r '.admin_url' "$runtime")"
  REGISTRY[$name]="${REGISTRY[$name]%/}"
  ADMIN[$name]="${ADMIN[$name]%/}"
  REGISTRY_URL="${REGISTRY[$name]}"
  ADMIN_URL="${ADMIN[$name]}"
  info "pid $pid, registry ${REGISTRY[$name]}, admin ${ADMIN[$name]}"
}

# stop_instance NAME — SIGTERM, waits (bounded), requires exit status 0 and
# runtime.json removed.
stop_instance() {
  local name="$1"
  local pid="${INSTANCE_PID[$name]:?unknown instance $name}"
  step "stop instance '$name' (SIGTERM to pid $pid)"
  kill -TERM "$pid"
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    # Where it hangs, for the report: every thread's stack.
    if command -v gdb >/dev/null 2>&1; then
      echo "----- stacks of the hung npme serve '$name' (pid $pid) -----" >&2
      timeout 60 gdb -p "$pid" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt' 2>&1 |
        grep -v '^\[New LWP\|^warning: ' >&2 || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
    fail "npme serve '$name' did not exit within 30 s of SIGTERM"
  fi
  local rc=0
  wait "$pid" || rc=$?
  unset "INSTANCE_PID[$name]"
  assert_eq 0 "$rc" "exit status of npme serve '$name' after SIGTERM"
  assert_file_missing "${DATA_DIR[$name]:-$T/$name/data}/runtime.json"
}

# kill9_instance NAME — SIGKILL, no cleanup by the server.
kill9_instance() {
  local name="$1"
  local pid="${INSTANCE_PID[$name]:?unknown instance $name}"
  step "kill -9 instance '$name' (pid $pid)"
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null || true
  unset "INSTANCE_PID[$name]"
}

# ---------------------------------------------------------------- users, tokens

# add_user INSTANCE NAME PASSWORD [EMAIL] — `npme user add` through the admin API.
add_user() {
  local instance="$1" name="$2" password="$3" email="${4:-$2@example.com}"
  info "\$ npme user add $name --password-stdin --email $email --root \$T/$instance"
  note_secret "$password"
  printf '%s\n' "$password" |
    "$NPME" user add "$name" --password-stdin --email "$email" --root "$T/$instance" ||
    fail "npme user add $name failed"
}

# create_token INSTANCE USER [--read-only] — prints the new token.
create_token() {
  local instance="$1" user="$2"
  shift 2
  local out token
  out="$("$NPME" token create --user "$user" "$@" --root "$T/$instance" --json)" ||
    fail "npme token create --user $user $* failed"
  token="$(jq -r '.token' <<<"$out")"
  [[ -n "$token" && "$token" != null ]] || fail "npme token create printed no token: $out"
  note_secret "$token"
  printf '%s\n' "$token"
}

# ---------------------------------------------------------------- npm

# npm_as NAME TOKEN -- args... — runs the real npm against instance NAME with
# TOKEN ("" for anonymous), isolated from the machine's npm configuration.
npm_as() {
  local name="$1" token="$2"
  [[ "$3" == "--" ]] || fail "npm_as: usage: npm_as NAME TOKEN -- args..."
  shift 3
  local url="${REGISTRY[$name]:?unknown instance $name}"
  local hostport="${url#*://}"
  local rc_file
  rc_file="$T/npmrc-$name-$(printf '%s' "$token" | openssl dgst -sha256 -r | cut -c1-12)"
  {
    printf 'registry=%s/\n' "$url"
    if [[ -n "$token" ]]; then
      printf '//%s/:_authToken=%s\n' "$hostport" "$token"
    fi
    # An https registry whose CA the system does not know (test_tls.sh).
    if [[ -n "${NPM_CAFILE:-}" ]]; then
      printf 'cafile=%s\n' "$NPM_CAFILE"
    fi
  } >"$rc_file"
  local who="anonymous"
  [[ -z "$token" ]] || who="token ${token:0:6}…"
  info "\$ npm $* (as $who on $name)" >&2
  "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$url/" \
    --no-audit --no-fund --no-update-notifier --fetch-retries=0 --prefer-online \
    "$@"
}

# ---------------------------------------------------------------- other clients

# require_clients — sets CLIENTS to the pnpm and yarn builds that
# tests/clients/install put into tests/.cache/clients (ctest runs it first,
# as the fixture integration.clients_install). Without them the test is
# skipped, and fails in CI.
require_clients() {
  CLIENTS="$NPME_SOURCE_DIR/tests/.cache/clients"
  local wanted
  for wanted in bin/pnpm-current bin/pnpm-previous node_modules/yarn-classic/bin/yarn.js \
    node_modules/yarn-berry/bin/yarn.js; do
    [[ -e "$CLIENTS/$wanted" ]] ||
      skip_test "the clients are not installed ($CLIENTS/$wanted is missing): run tests/clients/install"
  done
}

# require_browser — the admin console's browser tests need Debian's chromium
# (scripts/deps installs it) and puppeteer-core (tests/clients/install);
# without them the test is skipped, and fails in CI. Screenshots go to
# SHOTS: the build folder's console-screenshots/ (beside $NPME).
require_browser() {
  require_clients
  CHROMIUM="$(command -v chromium || true)"
  [[ -n "$CHROMIUM" ]] || skip_test "chromium is not installed: run scripts/deps"
  [[ -e "$CLIENTS/node_modules/puppeteer-core/package.json" ]] ||
    skip_test "puppeteer-core is not installed ($CLIENTS/node_modules/puppeteer-core): run tests/clients/install"
  SHOTS="${NPME_SCREENSHOTS:-$(cd "$(dirname "$NPME")" && pwd)/console-screenshots}"
  mkdir -p "$SHOTS"
}

# console_browser INSTANCE STEP [ARG...] — one step of
# fixtures/console_browser.mjs against INSTANCE's console, signed in with
# its admin token; prints what the step hands back (one JSON line).
console_browser() {
  local name="$1"
  shift
  info "browser: $* (console of '$name')" >&2
  CONSOLE_URL="${ADMIN[$name]}" CONSOLE_TOKEN="$(jq -r '."admin.token"' "$T/$name/settings.json")" \
    CLIENTS="$CLIENTS" CHROMIUM="$CHROMIUM" SHOTS="$SHOTS" \
    timeout 300 node "$FIXTURES/console_browser.mjs" "$@" || fail "browser step '$*' failed (screenshot in $SHOTS)"
}

# pty_run PATTERN ANSWER [PATTERN ANSWER...] -- COMMAND... — runs an
# interactive-only command on a pseudo-terminal and answers its prompts (see
# fixtures/pty_expect.js); the exit status is the command's.
pty_run() {
  node "$FIXTURES/pty_expect.js" --timeout 60 "$@"
}

# lock_field FILE KEY FIELD — FIELD of entry KEY in a pnpm or yarn lockfile
# (see fixtures/lock_field.js); fails the test when it is missing.
lock_field() {
  node "$FIXTURES/lock_field.js" "$@" || fail "lockfile $1: no $3 for $2"
}

# make_package DIR NAME VERSION [dep@range...] — a minimal package.
make_package() {
  local dir="$1" name="$2" version="$3"
  shift 3
  mkdir -p "$dir"
  local deps='{}' dep
  for dep in "$@"; do
    local dep_name="$dep" dep_range="*"
    if [[ "${dep:1}" == *@* ]]; then
      dep_name="${dep%@*}"
      dep_range="${dep##*@}"
    fi
    deps="$(jq -c --arg n "$dep_name" --arg r "$dep_range" '. + {($n): $r}' <<<"$deps")"
  done
  jq -n --arg n "$name" --arg v "$version" --argjson d "$deps" '{
      name: $n, version: $v,
      description: ("npme integration test package " + $n),
      main: "index.js", license: "MIT",
      keywords: ["npme-integration"],
      repository: {type: "git", url: "https://example.com/npme-test.git"},
      dependencies: $d
    }' >"$dir/package.json"
  printf 'module.exports = { name: %s, version: %s };\n' \
    "$(jq -c -n --arg n "$name" '$n')" "$(jq -c -n --arg v "$version" '$v')" >"$dir/index.js"
}

# make_tarball DIR OUT — packs DIR (holding package.json) into an npm-style
# tarball (entries under package/) without running npm, for fast bulk publishes.
make_tarball() {
  local dir="$1" out="$2"
  local stage
  stage="$(mktemp -d "$T/pack.XXXXXX")"
  mkdir -p "$stage/package"
  cp "$dir"/package.json "$dir"/index.js "$stage/package/"
  tar -czf "$out" -C "$stage" --owner=0 --group=0 --numeric-owner package
  rm -rf "$stage"
}

# publish_body PACKAGE_JSON TARBALL REGISTRY_URL [TAG] — prints the JSON body
# `npm publish` sends (see fixtures/publish_body.js).
publish_body() {
  node "$FIXTURES/publish_body.js" "$@"
}

# make_publish_body DIR NAME VERSION OUT [dep...] — a package, its tarball
# (DIR.tgz) and the publish body for the instance started last, in one go.
make_publish_body() {
  local dir="$1" name="$2" version="$3" out="$4"
  shift 4
  make_package "$dir" "$name" "$version" "$@"
  make_tarball "$dir" "$dir.tgz"
  publish_body "$dir/package.json" "$dir.tgz" "$REGISTRY_URL" >"$out"
}

# put_json URL FILE [TOKEN] — PUT a JSON body from FILE (sets HTTP_STATUS/BODY).
put_json() {
  local url="$1" file="$2" token="${3:-}"
  http PUT "$url" -H 'Content-Type: application/json' \
    ${token:+-H "Authorization: Bearer $token"} --data-binary "@$file"
}

# pkg_url NAME — the registry URL of a package as npm escapes it.
pkg_url() {
  local name="$1"
  printf '%s/%s\n' "$REGISTRY_URL" "${name/\//%2f}"
}

# sha512 of a file in npm's integrity form.
sri_sha512() {
  printf 'sha512-%s\n' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"
}

# tarball_path INSTANCE NAME VERSION — where the store keeps the tarball.
tarball_path() {
  local instance="$1" name="$2" version="$3"
  printf '%s/%s/packages/%s/-/%s-%s.tgz\n' "$T" "$instance" "$name" "${name##*/}" "$version"
}

# check_published INSTANCE NAME VERSION TOKEN — a client's publish is
# stored: the tarball holds NAME@VERSION's package.json, the packument's
# dist.integrity is the tarball's sha512 and latest points at VERSION.
check_published() {
  local instance="$1" name="$2" version="$3" token="$4" file
  file="$(tarball_path "$instance" "$name" "$version")"
  assert_file_exists "$file"
  assert_eq "$name@$version" "$(tar -xzOf "$file" package/package.json | jq -r '"\(.name)@\(.version)"')" \
    "package.json in the stored tarball of $name@$version"
  http GET "${REGISTRY[$instance]}/${name/\//%2f}" -H "Authorization: Bearer $token" -H 'Accept: application/json'
  assert_eq 200 "$HTTP_STATUS" "GET packument $name"
  assert_eq "$(sri_sha512 "$file")" "$(jq -r --arg v "$version" '.versions[$v].dist.integrity' <<<"$HTTP_BODY")" \
    "dist.integrity of $name@$version"
  assert_eq "$version" "$(jq -r '."dist-tags".latest' <<<"$HTTP_BODY")" "latest of $name"
}

# ---------------------------------------------------------------- HTTP

# http METHOD URL [curl args...] — one request; sets HTTP_STATUS, HTTP_BODY
# (NUL bytes dropped) and HTTP_BODY_FILE (the exact bytes, overwritten by the
# next request). Fails the test when the connection gets no response at all
# and on any 5xx.
HTTP_STATUS=""
HTTP_BODY=""
HTTP_BODY_FILE=""
http() {
  local method="$1" url="$2"
  shift 2
  local rc=0
  HTTP_STATUS="$(curl -sS -o "$T/http.body" -w '%{http_code}' -X "$method" \
    --max-time 30 "$@" "$url")" || rc=$?
  if [[ $rc -ne 0 ]]; then
    fail "$method $url: curl failed with exit $rc (no complete response)"
  fi
  HTTP_BODY_FILE="$T/http.body"
  HTTP_BODY="$(tr -d '\0' <"$T/http.body")"
  if [[ "$HTTP_STATUS" -ge 400 ]]; then
    # An error answer never echoes a credential (leak_scan).
    head -c 65536 "$T/http.body" >>"$T/.leaks/error-answers"
    printf '\n' >>"$T/.leaks/error-answers"
  fi
  local shown="${HTTP_BODY:0:200}"
  if LC_ALL=C grep -q '[^[:print:][:space:]]' "$T/http.body"; then
    shown="<$(stat -c %s "$T/http.body") bytes of binary>"
  fi
  info "$method ${url#"$REGISTRY_URL"} -> $HTTP_STATUS $shown"
  if [[ "$HTTP_STATUS" -ge 500 || "$HTTP_STATUS" -lt 100 ]]; then
    fail "$method $url answered $HTTP_STATUS: ${HTTP_BODY:0:300}"
  fi
}

# expect_json_error STATUS — the last response had STATUS (or one of several
# given as "400|409") and a JSON body {"error": ...}.
expect_json_error() {
  local expected="$1"
  if [[ "|$expected|" != *"|$HTTP_STATUS|"* ]]; then
    fail "HTTP status: expected $expected, got $HTTP_STATUS: ${HTTP_BODY:0:300}"
  fi
  info "ok: HTTP status $HTTP_STATUS"
  jq -e 'has("error")' <<<"$HTTP_BODY" >/dev/null 2>&1 ||
    fail "response body is not a JSON {\"error\":...}: ${HTTP_BODY:0:300}"
  info "ok: JSON error body"
}

# ---------------------------------------------------------------- state

# db_query INSTANCE SQL — runs a read-only query on the instance's database.
# PACKUMENTS — SQL: the common table expression `packuments(id, body)` of
# every document whole, as the store assembles it (a package's versions are
# kept in the table doc_versions, core/store/documents.hpp). Prefix a query
# with it and read `from packuments`.
# shellcheck disable=SC2016 # SQL, not shell
PACKUMENTS='with packuments(id, body) as (select id, case when split then json_set(body, '"'"'$.versions'"'"',
  json((select json_group_object(version, json(v.body)) from doc_versions v where v.id = docs.id))) else body end
  from docs)'

db_query() {
  local instance="$1" sql="$2"
  sqlite3 -readonly -batch "$T/$instance/couchdb/registry.sqlite" "$sql"
}

# db_seq INSTANCE — the highest change sequence in the database.
db_seq() {
  db_query "$1" 'select coalesce(max(seq), 0) from changes'
}

# packages_listing INSTANCE — every directory and every file under
# packages/ with its sha256, temp files included (a refused publish must not
# leave anything behind).
packages_listing() {
  local dir="$T/$1/packages"
  [[ -d "$dir" ]] || return 0
  (cd "$dir" && find . -type d | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

# digest_instance INSTANCE TOKEN PACKAGE... — per package: revision,
# dist-tags, and every version with its integrity and deprecation, from the
# registry's full packuments. Missing packages print "<name> 404".
digest_instance() {
  local instance="$1" token="$2"
  shift 2
  (($#)) || return 0
  local url="${REGISTRY[$instance]}" dir name i=0
  dir="$(mktemp -d "$T/digest.XXXXXX")"
  # One curl for every packument (one connection) and one jq over all of
  # them: a process per package made a 500-package digest take a minute.
  local args=()
  for name in "$@"; do
    args+=(-o "$dir/$i.json" "$url/${name/\//%2f}")
    i=$((i + 1))
  done
  local statuses=()
  mapfile -t statuses < <(curl -sS -w '%{http_code}\n' ${token:+-H "Authorization: Bearer $token"} \
    -H 'Accept: application/json' "${args[@]}" || true)
  ((${#statuses[@]} == $#)) || fail "digest_instance: $# packuments asked, ${#statuses[@]} answers"
  for ((i = 0; i < $#; i++)); do
    [[ "${statuses[$i]}" == 200 ]] || echo null >"$dir/$i.json"
  done
  local files=()
  for ((i = 0; i < $#; i++)); do
    files+=("$dir/$i.json")
  done
  jq -r -n '
    [inputs] as $docs | range(0; $docs | length) as $i | $ARGS.positional[$i] as $n |
    if $docs[$i] == null then "\($n) \($ARGS.positional[$i + ($docs | length)])" else
      ($docs[$i] |
        "\($n) rev \(._rev // "-")",
        (."dist-tags" // {} | to_entries | sort_by(.key)[] | "\($n) tag \(.key)=\(.value)"),
        (.versions // {} | to_entries | sort_by(.key)[] |
          "\($n) version \(.key) \(.value.dist.integrity) \(.value.deprecated // "-")"))
    end
  ' "${files[@]}" --args "$@" "${statuses[@]}"
  rm -rf "$dir"
}
