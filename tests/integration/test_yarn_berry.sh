# yarn berry (4, tests/clients/package.json) against one instance: yarn npm
# publish from a workspaces project, an install of a project with scoped
# token-protected packages (refused without the token) whose yarn.lock
# resolutions name the published versions at the registry's own tarball URLs
# and whose installed files are the published tarballs' (yarn's lockfile
# checksum is of its own archive format, not of the tarball), an immutable
# reinstall that fetches and checks everything again, yarn npm tag
# add/list/remove, the deprecation npm set as yarn shows it (yarn npm info,
# and the resolver passing over a deprecated version), and yarn npm login
# (couch-style, on a pty) with yarn npm whoami.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_clients

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
YARN_JS="$CLIENTS/node_modules/yarn-berry/bin/yarn.js"

# yarnrc FILE TOKEN — a .yarnrc.yml naming the instance for every package
# and the @npme-it scope, with TOKEN for both ("" for none): plain http allowed for it,
# no telemetry, no global cache, node_modules, and no minimal age (yarn 4
# passes over versions younger than a day by default, and ours are seconds
# old; the gate is per scope too).
yarnrc() {
  local file="$1" token="$2"
  {
    printf 'npmRegistryServer: "%s"\n' "$REGISTRY_URL"
    [[ -z "$token" ]] || printf 'npmAuthToken: "%s"\n' "$token"
    printf 'unsafeHttpWhitelist:\n  - "127.0.0.1"\n'
    printf 'npmMinimalAgeGate: 0\n'
    printf 'npmScopes:\n  npme-it:\n    npmRegistryServer: "%s"\n    npmMinimalAgeGate: 0\n' "$REGISTRY_URL"
    [[ -z "$token" ]] || printf '    npmAuthToken: "%s"\n' "$token"
    printf 'enableTelemetry: false\nenableGlobalCache: false\nnodeLinker: node-modules\n'
  } >"$file"
}

# yarn_in HOME args... — yarn 4 with HOME (its global folder and metadata
# cache), never as CI (where yarn makes every install --immutable).
yarn_in() {
  local home="$1"
  shift
  mkdir -p "$home"
  env -u CI HOME="$home" node "$YARN_JS" "$@"
}

UTIL=@npme-it/berry-util
CORE=@npme-it/berry-core
PLAIN=npme-it-berry-plain

step "yarn npm publish $UTIL, $CORE (depends on it) and $PLAIN 1.0.0 and 1.1.0 from a workspaces project"
MONO="$T/mono"
mkdir -p "$MONO"
printf '{"name":"berry-monorepo","private":true,"workspaces":["packages/*"]}\n' >"$MONO/package.json"
make_package "$MONO/packages/util" "$UTIL" 1.0.0
make_package "$MONO/packages/core" "$CORE" 1.0.0 "$UTIL@^1.0.0"
make_package "$MONO/packages/plain" "$PLAIN" 1.0.0
yarnrc "$MONO/.yarnrc.yml" "$TOKEN"
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-token" install
for dir in util core plain; do
  expect_exit 0 in_dir "$MONO/packages/$dir" yarn_in "$T/home-token" npm publish
  assert_contains "$LAST_OUTPUT" "Package archive published" "yarn npm publish output"
done
jq '.version = "1.1.0"' "$MONO/packages/plain/package.json" >"$T/plain.json"
mv "$T/plain.json" "$MONO/packages/plain/package.json"
expect_exit 0 in_dir "$MONO/packages/plain" yarn_in "$T/home-token" npm publish
for entry in "$UTIL 1.0.0" "$CORE 1.0.0" "$PLAIN 1.1.0"; do
  read -r name version <<<"$entry"
  check_published main "$name" "$version" "$TOKEN"
done

new_project() {
  mkdir -p "$1"
  jq -n --arg core "$CORE" --arg plain "$PLAIN" \
    '{name: "berry-project", version: "1.0.0", private: true, dependencies: {($core): "^1.0.0", ($plain): "^1.0.0"}}' \
    >"$1/package.json"
  yarnrc "$1/.yarnrc.yml" "$2"
}

step "yarn install without the token is refused (the scope needs one)"
new_project "$T/anonymous" ""
expect_exit 1 in_dir "$T/anonymous" yarn_in "$T/home-anonymous" install
assert_contains "$LAST_OUTPUT" "Invalid authentication (as an anonymous user)" "yarn install output without a token"
assert_file_missing "$T/anonymous/node_modules/$CORE/package.json"

step "yarn install with the token: yarn.lock names the published versions; the installed files are the tarballs'"
PROJ="$T/project"
new_project "$PROJ" "$TOKEN"
expect_exit 0 in_dir "$PROJ" yarn_in "$T/home-project" install
for entry in "$UTIL 1.0.0" "$CORE 1.0.0" "$PLAIN 1.1.0"; do
  read -r name version <<<"$entry"
  # No ::__archiveUrl= in the resolution: yarn found the tarball where it
  # expects it on this registry ($REGISTRY_URL/<name>/-/<base>-<version>.tgz).
  assert_eq "$name@npm:$version" "$(lock_field "$PROJ/yarn.lock" "$name@npm:^1.0.0" resolution)" \
    "yarn.lock resolution of $name@npm:^1.0.0"
  checksum="$(lock_field "$PROJ/yarn.lock" "$name@npm:^1.0.0" checksum)"
  [[ "$checksum" =~ ^[0-9a-z]+/[0-9a-f]{128}$ ]] || fail "yarn.lock checksum of $name is '$checksum'"
  rm -rf "$T/unpacked" && mkdir -p "$T/unpacked"
  tar -xzf "$(tarball_path main "$name" "$version")" -C "$T/unpacked"
  diff -r "$T/unpacked/package" "$PROJ/node_modules/$name" || fail "installed $name differs from its stored tarball"
  info "ok: node_modules/$name = the files of the stored $name@$version tarball"
done
assert_eq "{\"name\":\"$CORE\",\"version\":\"1.0.0\"}" \
  "$(cd "$PROJ" && node -e "process.stdout.write(JSON.stringify(require('$CORE')))")" "require('$CORE')"

step "yarn install --immutable --check-cache: fetches every tarball again and checks it against yarn.lock"
rm -rf "$PROJ/node_modules" "$PROJ/.yarn/cache"
expect_exit 0 in_dir "$PROJ" yarn_in "$T/home-project" install --immutable --check-cache
assert_eq 1.1.0 "$(jq -r .version "$PROJ/node_modules/$PLAIN/package.json")" "reinstalled $PLAIN"

step "yarn npm tag add/list/remove"
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-token" npm tag add "$PLAIN@1.0.0" stable
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-token" npm tag list "$PLAIN"
assert_contains "$LAST_STDOUT" "$PLAIN@stable → 1.0.0" "yarn npm tag list"
assert_contains "$LAST_STDOUT" "$PLAIN@latest → 1.1.0" "yarn npm tag list"
http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
assert_eq '{"latest":"1.1.0","stable":"1.0.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags"
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-token" npm tag remove "$PLAIN" stable
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-token" npm tag list "$PLAIN"
assert_not_contains "$LAST_STDOUT" "stable" "yarn npm tag list after remove"
http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
assert_eq '{"latest":"1.1.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags after remove"

step "npm deprecates $PLAIN@1.1.0: yarn npm info shows it, and yarn resolves ^1.0.0 to 1.0.0 instead"
expect_exit 0 npm_as main "$TOKEN" -- deprecate "$PLAIN@1.1.0" "broken, stay on 1.0.0"
expect_exit 0 in_dir "$MONO" yarn_in "$T/home-info" npm info "$PLAIN@1.1.0" --fields deprecated --json
assert_eq "broken, stay on 1.0.0" "$(jq -r .deprecated <<<"$LAST_STDOUT")" "yarn npm info deprecated"
mkdir -p "$T/deprecated"
printf '{"name":"berry-deprecated","private":true,"dependencies":{"%s":"^1.0.0"}}\n' "$PLAIN" >"$T/deprecated/package.json"
yarnrc "$T/deprecated/.yarnrc.yml" ""
expect_exit 0 in_dir "$T/deprecated" yarn_in "$T/home-deprecated" install
assert_eq "$PLAIN@npm:1.0.0" "$(lock_field "$T/deprecated/yarn.lock" "$PLAIN@npm:^1.0.0" resolution)" \
  "yarn.lock resolution of $PLAIN@npm:^1.0.0 with 1.1.0 deprecated"

step "yarn npm login (interactive only: driven on a pty) stores a token in ~/.yarnrc.yml; whoami uses it"
LOGIN="$T/login"
mkdir -p "$LOGIN" "$T/home-login"
printf '{"name":"berry-login","private":true}\n' >"$LOGIN/package.json"
yarnrc "$LOGIN/.yarnrc.yml" ""
expect_exit 0 in_dir "$LOGIN" pty_run 'Username:' alice 'Password:' alice-password-1 -- \
  env -u CI HOME="$T/home-login" node "$YARN_JS" npm login
assert_contains "$LAST_OUTPUT" "Successfully logged in" "yarn npm login output"
LOGIN_TOKEN="$(sed -n 's/^ *npmAuthToken: *"\{0,1\}\(npme_[A-Za-z0-9]*\)"\{0,1\}$/\1/p' "$T/home-login/.yarnrc.yml")"
[[ "$LOGIN_TOKEN" == npme_* ]] || fail "~/.yarnrc.yml holds no npme token after yarn npm login"
assert_contains "$(cat "$T/home-login/.yarnrc.yml")" "$REGISTRY_URL" "~/.yarnrc.yml after yarn npm login"
expect_exit 0 in_dir "$LOGIN" yarn_in "$T/home-login" npm whoami
assert_contains "$LAST_STDOUT" "alice" "yarn npm whoami after yarn npm login"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $LOGIN_TOKEN"
assert_eq alice "$(jq -r .username <<<"$HTTP_BODY")" "the registry's whoami for the login token"
