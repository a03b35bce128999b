# pnpm, the current major and the one before (tests/clients/package.json),
# against one instance: pnpm publish, an install of a project with scoped
# token-protected packages (refused without the token) whose pnpm-lock.yaml
# integrity is the stored tarball's, pnpm login (couch-style, on a pty),
# whoami, dist-tag add/ls/rm, and the deprecation npm set shown by pnpm's
# install and view.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_clients

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
HOSTPORT="${REGISTRY_URL#http://}"

# pnpm_as VERSION TOKEN -- args... — runs pnpm VERSION ("current" or
# "previous") with its own HOME (so its config, store, cache and state stay
# under $T, one set per version and token) holding an .npmrc that names the
# instance for every package and for the @npme-it scope, with TOKEN ("" for
# none). pnpm 11 and 12 read the registry and auth from ~/.npmrc.
pnpm_as() {
  local version="$1" token="$2"
  [[ "$3" == "--" ]] || fail "pnpm_as: usage: pnpm_as VERSION TOKEN -- args..."
  shift 3
  local home="$T/pnpm-$version-anonymous"
  [[ -z "$token" ]] || home="$T/pnpm-$version-$(printf '%s' "$token" | openssl dgst -sha256 -r | cut -c1-12)"
  mkdir -p "$home"
  {
    printf 'registry=%s/\n@npme-it:registry=%s/\n' "$REGISTRY_URL" "$REGISTRY_URL"
    [[ -z "$token" ]] || printf '//%s/:_authToken=%s\n' "$HOSTPORT" "$token"
  } >"$home/.npmrc"
  pnpm_env "$home" "$CLIENTS/bin/pnpm-$version" "$@"
}

# pnpm_env HOME command... — runs `command` with HOME and the XDG folders
# under HOME, and without CI (which makes pnpm's install --frozen-lockfile by
# default; ctest runs with CI=true in CI).
pnpm_env() {
  local home="$1"
  shift
  env -u CI HOME="$home" XDG_CONFIG_HOME="$home/.config" XDG_CACHE_HOME="$home/.cache" \
    XDG_DATA_HOME="$home/.local/share" XDG_STATE_HOME="$home/.local/state" "$@"
}

# new_project DIR DEP@RANGE... — a private project depending on DEPs. Its
# pnpm-workspace.yaml sets minimumReleaseAge to 0: the versions here are
# seconds old, and under pnpm's default (a day, in 11 and 12) a range picks
# the oldest matching version instead of the newest and pnpm writes it into
# minimumReleaseAgeExclude.
new_project() {
  local dir="$1" deps='{}' dep
  shift
  mkdir -p "$dir"
  for dep in "$@"; do
    deps="$(jq -c --arg n "${dep%@*}" --arg r "${dep##*@}" '. + {($n): $r}' <<<"$deps")"
  done
  jq -n --argjson d "$deps" '{name: "pnpm-project", version: "1.0.0", private: true, dependencies: $d}' \
    >"$dir/package.json"
  printf 'minimumReleaseAge: 0\n' >"$dir/pnpm-workspace.yaml"
}

for V in current previous; do
  PNPM_VERSION="$("$CLIENTS/bin/pnpm-$V" --version)"
  UTIL="@npme-it/pnpm-$V-util"
  CORE="@npme-it/pnpm-$V-core"
  PLAIN="npme-it-pnpm-$V-plain"

  step "pnpm $PNPM_VERSION ($V): pnpm publish $UTIL, $CORE (depends on it) and $PLAIN"
  make_package "$T/$V/util" "$UTIL" 1.0.0
  make_package "$T/$V/core" "$CORE" 1.0.0 "$UTIL@^1.0.0"
  make_package "$T/$V/plain-1.0.0" "$PLAIN" 1.0.0
  make_package "$T/$V/plain-1.1.0" "$PLAIN" 1.1.0
  for dir in util core plain-1.0.0 plain-1.1.0; do
    expect_exit 0 in_dir "$T/$V/$dir" pnpm_as "$V" "$TOKEN" -- publish --no-git-checks
  done
  assert_contains "$LAST_OUTPUT" "$PLAIN@1.1.0" "pnpm publish output"
  check_published main "$UTIL" 1.0.0 "$TOKEN"
  check_published main "$CORE" 1.0.0 "$TOKEN"
  check_published main "$PLAIN" 1.1.0 "$TOKEN"

  step "pnpm $PNPM_VERSION: the abbreviated packument carries the publish times pnpm's minimumReleaseAge reads"
  http GET "$(pkg_url "$CORE")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/vnd.npm.install-v1+json'
  assert_eq 200 "$HTTP_STATUS" "GET abbreviated $CORE"
  PUBLISHED="$(jq -r '.time["1.0.0"] // empty' <<<"$HTTP_BODY")"
  [[ "$PUBLISHED" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]] || fail "abbreviated packument of $CORE has no time[\"1.0.0\"]: $HTTP_BODY"
  info "ok: time[\"1.0.0\"] = $PUBLISHED"

  step "pnpm $PNPM_VERSION: install without the token is refused (the scope needs one)"
  new_project "$T/$V/anonymous" "$CORE@^1.0.0" "$PLAIN@^1.0.0"
  expect_exit 1 in_dir "$T/$V/anonymous" pnpm_as "$V" "" -- install
  assert_contains "$LAST_OUTPUT" "401" "pnpm install output without a token"
  assert_file_missing "$T/$V/anonymous/node_modules/$CORE/package.json"

  step "pnpm $PNPM_VERSION: install with the token; pnpm-lock.yaml integrity = the stored tarballs'"
  PROJ="$T/$V/project"
  new_project "$PROJ" "$CORE@^1.0.0" "$PLAIN@^1.0.0"
  expect_exit 0 in_dir "$PROJ" pnpm_as "$V" "$TOKEN" -- install
  for entry in "$UTIL 1.0.0" "$CORE 1.0.0" "$PLAIN 1.1.0"; do
    read -r name version <<<"$entry"
    assert_eq "$(sri_sha512 "$(tarball_path main "$name" "$version")")" \
      "$(lock_field "$PROJ/pnpm-lock.yaml" "$name@$version" integrity)" "pnpm-lock.yaml integrity of $name@$version"
  done
  assert_eq '{"name":"@npme-it/pnpm-'"$V"'-core","version":"1.0.0"}' \
    "$(cd "$PROJ" && node -e "process.stdout.write(JSON.stringify(require('$CORE')))")" "require('$CORE')"
  assert_eq 1.1.0 "$(jq -r .version "$PROJ/node_modules/$PLAIN/package.json")" "installed $PLAIN"
  assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/.pnpm/node_modules/$UTIL/package.json")" \
    "installed transitive $UTIL"

  step "pnpm $PNPM_VERSION: a frozen-lockfile install from pnpm-lock.yaml alone"
  rm -rf "$PROJ/node_modules"
  expect_exit 0 in_dir "$PROJ" pnpm_as "$V" "$TOKEN" -- install --frozen-lockfile
  assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/$CORE/package.json")" "reinstalled $CORE"

  step "pnpm $PNPM_VERSION: dist-tag add/ls/rm"
  expect_exit 0 pnpm_as "$V" "$TOKEN" -- dist-tag add "$PLAIN@1.0.0" stable
  expect_exit 0 pnpm_as "$V" "$TOKEN" -- dist-tag ls "$PLAIN"
  assert_contains "$LAST_STDOUT" "stable: 1.0.0" "pnpm dist-tag ls"
  assert_contains "$LAST_STDOUT" "latest: 1.1.0" "pnpm dist-tag ls"
  http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
  assert_eq '{"latest":"1.1.0","stable":"1.0.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags"
  expect_exit 0 pnpm_as "$V" "$TOKEN" -- dist-tag rm "$PLAIN" stable
  expect_exit 0 pnpm_as "$V" "$TOKEN" -- dist-tag ls "$PLAIN"
  assert_not_contains "$LAST_STDOUT" "stable" "pnpm dist-tag ls after rm"
  http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
  assert_eq '{"latest":"1.1.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags after rm"

  step "pnpm $PNPM_VERSION: npm deprecates $PLAIN@1.0.0; pnpm's install and view show it"
  expect_exit 0 npm_as main "$TOKEN" -- deprecate "$PLAIN@1.0.0" "use 1.1.0 of pnpm-$V instead"
  new_project "$T/$V/deprecated" "$PLAIN@1.0.0"
  # pnpm takes an exact version it has in its metadata cache from there,
  # without asking the registry: the refused install above cached $PLAIN.
  rm -rf "$T/pnpm-$V-anonymous/.cache"
  expect_exit 0 in_dir "$T/$V/deprecated" pnpm_as "$V" "" -- install
  # "+ NAME 1.0.0 deprecated", or "+ NAME 1.0.0 (1.1.0 is available) deprecated. ..."
  assert_contains "$(grep -F "+ $PLAIN 1.0.0" <<<"$LAST_OUTPUT" || true)" "deprecated" "pnpm install's line for $PLAIN"
  expect_exit 0 pnpm_as "$V" "" -- view "$PLAIN@1.0.0"
  assert_contains "$LAST_OUTPUT" "DEPRECATED! - use 1.1.0 of pnpm-$V instead" "pnpm view output"

  step "pnpm $PNPM_VERSION: pnpm login (interactive only: driven on a pty) makes a token; whoami uses it"
  LOGIN_HOME="$T/pnpm-$V-login"
  mkdir -p "$LOGIN_HOME"
  expect_exit 0 pty_run 'Username:' alice 'Password:' alice-password-1 'Email' alice@example.com -- \
    env -u CI HOME="$LOGIN_HOME" XDG_CONFIG_HOME="$LOGIN_HOME/.config" XDG_CACHE_HOME="$LOGIN_HOME/.cache" \
    XDG_DATA_HOME="$LOGIN_HOME/.local/share" XDG_STATE_HOME="$LOGIN_HOME/.local/state" \
    "$CLIENTS/bin/pnpm-$V" login --registry "$REGISTRY_URL/"
  assert_contains "$LAST_OUTPUT" "Logged in as alice" "pnpm login output"
  AUTH_FILE="$LOGIN_HOME/.config/pnpm/auth.ini"
  assert_file_exists "$AUTH_FILE"
  LOGIN_TOKEN="$(sed -n "s|^//$HOSTPORT/:_authToken=||p" "$AUTH_FILE")"
  [[ "$LOGIN_TOKEN" == npme_* ]] || fail "$AUTH_FILE holds no npme token for //$HOSTPORT/"
  info "ok: pnpm stored a token for //$HOSTPORT/ in ~/.config/pnpm/auth.ini"
  expect_exit 0 pnpm_env "$LOGIN_HOME" "$CLIENTS/bin/pnpm-$V" whoami --registry "$REGISTRY_URL/"
  assert_eq alice "$(tail -n 1 <<<"$LAST_STDOUT")" "pnpm whoami after pnpm login"
  http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $LOGIN_TOKEN"
  assert_eq alice "$(jq -r .username <<<"$HTTP_BODY")" "the registry's whoami for the login token"
done
