# yarn classic (1.22, tests/clients/package.json) against one instance:
# yarn publish with a token, an install of a project with scoped
# token-protected packages (refused without the token) whose yarn.lock
# integrity and resolved URLs are the stored tarballs', yarn tag
# add/list/remove, the deprecation npm set shown by yarn's install and info,
# and yarn login, which only stores a name: the password is asked by yarn
# publish, which logs in couch-style, publishes and revokes that token.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_clients

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
HOSTPORT="${REGISTRY_URL#http://}"
YARN_JS="$CLIENTS/node_modules/yarn-classic/bin/yarn.js"

# yarn_home NAME TOKEN — prints a new HOME for yarn: .npmrc naming the
# instance for every package and the @npme-it scope (with TOKEN, "" for
# none) and .yarnrc naming it as yarn's own registry, without the daily
# self-update check (which asks the public yarnpkg.com).
yarn_home() {
  local home="$T/yarn-$1" token="$2"
  mkdir -p "$home"
  {
    printf 'registry=%s/\n@npme-it:registry=%s/\n' "$REGISTRY_URL" "$REGISTRY_URL"
    [[ -z "$token" ]] || printf '//%s/:_authToken=%s\n' "$HOSTPORT" "$token"
  } >"$home/.npmrc"
  printf 'registry "%s/"\ndisable-self-update-check true\n' "$REGISTRY_URL" >"$home/.yarnrc"
  printf '%s\n' "$home"
}

# yarn_in HOME args... — yarn with HOME and its own cache under it, never
# as CI (yarn changes its defaults there). FAKEROOTKEY makes yarn 1 keep its
# home config in HOME when run as root (CI is): it otherwise reads and writes
# /usr/local/share/.yarnrc, outside the test.
yarn_in() {
  local home="$1"
  shift
  env -u CI HOME="$home" FAKEROOTKEY=1 YARN_CACHE_FOLDER="$home/cache" \
    node "$YARN_JS" --no-progress "$@"
}

WITH_TOKEN="$(yarn_home token "$TOKEN")"
ANONYMOUS="$(yarn_home anonymous "")"

UTIL=@npme-it/yarn1-util
CORE=@npme-it/yarn1-core
PLAIN=npme-it-yarn1-plain

step "yarn publish $UTIL, $CORE (depends on it) and $PLAIN 1.0.0 and 1.1.0 with the token"
make_package "$T/util" "$UTIL" 1.0.0
make_package "$T/core" "$CORE" 1.0.0 "$UTIL@^1.0.0"
make_package "$T/plain-1.0.0" "$PLAIN" 1.0.0
make_package "$T/plain-1.1.0" "$PLAIN" 1.1.0
for dir in util core plain-1.0.0 plain-1.1.0; do
  # --non-interactive: no "new version" question; the version is package.json's.
  expect_exit 0 in_dir "$T/$dir" yarn_in "$WITH_TOKEN" publish --non-interactive
  assert_contains "$LAST_OUTPUT" "Published." "yarn publish output"
done
for entry in "$UTIL 1.0.0" "$CORE 1.0.0" "$PLAIN 1.1.0"; do
  read -r name version <<<"$entry"
  check_published main "$name" "$version" "$TOKEN"
done

new_project() {
  mkdir -p "$1"
  jq -n --arg core "$CORE" --arg plain "$PLAIN" \
    '{name: "yarn1-project", version: "1.0.0", private: true, dependencies: {($core): "^1.0.0", ($plain): "^1.0.0"}}' \
    >"$1/package.json"
}

step "yarn install without the token is refused (the scope needs one)"
new_project "$T/anonymous"
expect_exit 1 in_dir "$T/anonymous" yarn_in "$ANONYMOUS" install --non-interactive
assert_contains "$LAST_OUTPUT" "@npme-it%2fyarn1-core: authentication required" "yarn install output without a token"
assert_file_missing "$T/anonymous/node_modules/$CORE/package.json"

step "yarn install with the token; yarn.lock integrity and resolved URL = the stored tarballs'"
PROJ="$T/project"
new_project "$PROJ"
expect_exit 0 in_dir "$PROJ" yarn_in "$WITH_TOKEN" install --non-interactive
for entry in "$UTIL ^1.0.0 1.0.0" "$CORE ^1.0.0 1.0.0" "$PLAIN ^1.0.0 1.1.0"; do
  read -r name range version <<<"$entry"
  file="$(tarball_path main "$name" "$version")"
  assert_eq "$version" "$(lock_field "$PROJ/yarn.lock" "$name@$range" version)" "yarn.lock version of $name@$range"
  assert_eq "$(sri_sha512 "$file")" "$(lock_field "$PROJ/yarn.lock" "$name@$range" integrity)" \
    "yarn.lock integrity of $name@$range"
  assert_eq "$REGISTRY_URL/$name/-/${name##*/}-$version.tgz#$(openssl dgst -sha1 -r "$file" | cut -c1-40)" \
    "$(lock_field "$PROJ/yarn.lock" "$name@$range" resolved)" "yarn.lock resolved of $name@$range"
  assert_eq "$version" "$(jq -r .version "$PROJ/node_modules/$name/package.json")" "installed $name"
done
assert_eq "{\"name\":\"$CORE\",\"version\":\"1.0.0\"}" \
  "$(cd "$PROJ" && node -e "process.stdout.write(JSON.stringify(require('$CORE')))")" "require('$CORE')"

step "yarn install --frozen-lockfile from yarn.lock alone, with an empty cache"
rm -rf "$PROJ/node_modules" "$WITH_TOKEN/cache"
expect_exit 0 in_dir "$PROJ" yarn_in "$WITH_TOKEN" install --frozen-lockfile --non-interactive
assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/$UTIL/package.json")" "reinstalled $UTIL"

step "yarn tag add/list/remove"
expect_exit 0 yarn_in "$WITH_TOKEN" tag add "$PLAIN@1.0.0" stable
expect_exit 0 yarn_in "$ANONYMOUS" tag list "$PLAIN"
assert_contains "$LAST_STDOUT" "stable: 1.0.0" "yarn tag list"
assert_contains "$LAST_STDOUT" "latest: 1.1.0" "yarn tag list"
http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
assert_eq '{"latest":"1.1.0","stable":"1.0.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags"
expect_exit 0 yarn_in "$WITH_TOKEN" tag remove "$PLAIN" stable
expect_exit 0 yarn_in "$ANONYMOUS" tag list "$PLAIN"
assert_not_contains "$LAST_STDOUT" "stable" "yarn tag list after remove"
http GET "$(pkg_url "$PLAIN")" -H 'Accept: application/json'
assert_eq '{"latest":"1.1.0"}' "$(jq -cS '."dist-tags"' <<<"$HTTP_BODY")" "stored dist-tags after remove"

step "npm deprecates $PLAIN@1.0.0; yarn's install and info show it"
expect_exit 0 npm_as main "$TOKEN" -- deprecate "$PLAIN@1.0.0" "use 1.1.0 instead"
mkdir -p "$T/deprecated"
printf '{"name":"yarn1-deprecated","version":"1.0.0","private":true,"dependencies":{"%s":"1.0.0"}}\n' "$PLAIN" \
  >"$T/deprecated/package.json"
expect_exit 0 in_dir "$T/deprecated" yarn_in "$ANONYMOUS" install --non-interactive
assert_contains "$LAST_OUTPUT" "warning $PLAIN@1.0.0: use 1.1.0 instead" "yarn install output"
expect_exit 0 yarn_in "$ANONYMOUS" info "$PLAIN@1.0.0" deprecated
assert_contains "$LAST_STDOUT" "use 1.1.0 instead" "yarn info $PLAIN@1.0.0 deprecated"

step "yarn login asks a name and an email and stores them, no token (interactive only: on a pty)"
LOGIN_HOME="$T/yarn-login"
mkdir -p "$LOGIN_HOME"
printf 'registry=%s/\n' "$REGISTRY_URL" >"$LOGIN_HOME/.npmrc"
printf 'registry "%s/"\ndisable-self-update-check true\n' "$REGISTRY_URL" >"$LOGIN_HOME/.yarnrc"
TOKENS_BEFORE="$("$NPME" token list --root "$T/main" --json | jq -c '[.tokens[].id] | sort')"
expect_exit 0 pty_run 'npm username:' alice 'npm email:' alice@example.com -- \
  env -u CI HOME="$LOGIN_HOME" FAKEROOTKEY=1 node "$YARN_JS" login
assert_contains "$(cat "$LOGIN_HOME/.yarnrc")" "username alice" "~/.yarnrc after yarn login"
assert_contains "$(cat "$LOGIN_HOME/.yarnrc")" "email alice@example.com" "~/.yarnrc after yarn login"
assert_not_contains "$(cat "$LOGIN_HOME/.yarnrc" "$LOGIN_HOME/.npmrc")" "npme_" "yarn's config files after yarn login"

step "yarn publish after yarn login: asks the password, logs in couch-style, publishes, revokes that token"
make_package "$T/login-pkg" npme-it-yarn1-login 1.0.0
expect_exit 0 in_dir "$T/login-pkg" pty_run 'npm password:' alice-password-1 -- \
  env -u CI HOME="$LOGIN_HOME" FAKEROOTKEY=1 YARN_CACHE_FOLDER="$LOGIN_HOME/cache" node "$YARN_JS" publish \
  --new-version 1.0.0
assert_contains "$LAST_OUTPUT" "Logged in." "yarn publish output"
assert_contains "$LAST_OUTPUT" "Revoked login token." "yarn publish output"
assert_file_exists "$(tarball_path main npme-it-yarn1-login 1.0.0)"
http GET "$(pkg_url npme-it-yarn1-login)" -H 'Accept: application/json'
assert_eq alice "$(jq -r '.versions["1.0.0"]._npmUser.name' <<<"$HTTP_BODY")" \
  "publisher of npme-it-yarn1-login"
assert_eq "$TOKENS_BEFORE" "$("$NPME" token list --root "$T/main" --json | jq -c '[.tokens[].id] | sort')" \
  "the registry's tokens after yarn's login, publish and revoke"
