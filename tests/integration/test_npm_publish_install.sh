# The real npm client against one instance: publish (unscoped and scoped),
# view, install with a lockfile, dist-tags, deprecate, unpublish, search, ping.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main

step "create user alice and a token"
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
info "token ${TOKEN:0:6}…"

step "npm ping"
expect_exit 0 npm_as main "" -- ping
assert_contains "$LAST_OUTPUT" "PONG" "npm ping output"

step "npm whoami with the token"
expect_exit 0 npm_as main "$TOKEN" -- whoami
assert_eq alice "$(tail -n 1 <<<"$LAST_STDOUT")" "npm whoami"

ALPHA=npme-it-alpha
BETA=@npme-it/beta

step "npm publish $ALPHA 1.0.0 and 1.1.0 (unscoped)"
make_package "$T/alpha-1.0.0" "$ALPHA" 1.0.0
make_package "$T/alpha-1.1.0" "$ALPHA" 1.1.0
# A description word and a keyword that occur nowhere else, for npm search.
for dir in "$T/alpha-1.0.0" "$T/alpha-1.1.0"; do
  jq '.description = "zebrafish helpers for integration tests" | .keywords = ["quokkalike"]' \
    "$dir/package.json" >"$dir/package.json.new"
  mv "$dir/package.json.new" "$dir/package.json"
done
expect_exit 0 in_dir "$T/alpha-1.0.0" npm_as main "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "$ALPHA@1.0.0" "npm publish output"
expect_exit 0 in_dir "$T/alpha-1.1.0" npm_as main "$TOKEN" -- publish

step "npm publish $BETA 1.0.0 (scoped, depends on $ALPHA@^1.0.0)"
make_package "$T/beta-1.0.0" "$BETA" 1.0.0 "$ALPHA@^1.0.0"
expect_exit 0 in_dir "$T/beta-1.0.0" npm_as main "$TOKEN" -- publish --access public

ALPHA_100_FILE="$(tarball_path main "$ALPHA" 1.0.0)"
ALPHA_110_FILE="$(tarball_path main "$ALPHA" 1.1.0)"
BETA_FILE="$(tarball_path main "$BETA" 1.0.0)"
assert_file_exists "$ALPHA_100_FILE"
assert_file_exists "$ALPHA_110_FILE"
assert_file_exists "$BETA_FILE"

step "npm view shows name, latest version and dist-tags"
expect_exit 0 npm_as main "" -- view "$ALPHA" --json
VIEW="$LAST_STDOUT"
assert_eq "$ALPHA" "$(jq -r '.name' <<<"$VIEW")" "view name"
assert_eq 1.1.0 "$(jq -r '.version' <<<"$VIEW")" "view version"
assert_eq 1.1.0 "$(jq -r '."dist-tags".latest' <<<"$VIEW")" "view dist-tags.latest"
assert_eq '["1.0.0","1.1.0"]' "$(jq -c '.versions' <<<"$VIEW")" "view versions"
assert_eq "$(sri_sha512 "$ALPHA_110_FILE")" "$(jq -r '.dist.integrity' <<<"$VIEW")" \
  "view dist.integrity = sha512 of the stored tarball"
assert_eq "$REGISTRY_URL/$ALPHA/-/$ALPHA-1.1.0.tgz" "$(jq -r '.dist.tarball' <<<"$VIEW")" \
  "view dist.tarball"
expect_exit 0 npm_as main "$TOKEN" -- view "$BETA" --json
assert_eq "$BETA" "$(jq -r '.name' <<<"$LAST_STDOUT")" "scoped view name"
assert_eq 1.0.0 "$(jq -r '.version' <<<"$LAST_STDOUT")" "scoped view version"
assert_eq '^1.0.0' "$(jq -r ".dependencies[\"$ALPHA\"]" <<<"$LAST_STDOUT")" "scoped view dependency"

step "npm install $BETA (pulls $ALPHA@1.1.0) and $ALPHA@1.0.0 into a project"
PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"scratch-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
expect_exit 0 in_dir "$PROJ" npm_as main "$TOKEN" -- install "$BETA"
assert_eq 1.0.0 "$(jq -r '.version' "$PROJ/node_modules/$BETA/package.json")" "installed $BETA"
assert_eq 1.1.0 "$(jq -r '.version' "$PROJ/node_modules/$ALPHA/package.json")" "installed transitive $ALPHA"
LOCK="$PROJ/package-lock.json"
assert_eq "$(sri_sha512 "$BETA_FILE")" \
  "$(jq -r ".packages[\"node_modules/$BETA\"].integrity" "$LOCK")" "lock integrity of $BETA"
assert_eq "$(sri_sha512 "$ALPHA_110_FILE")" \
  "$(jq -r ".packages[\"node_modules/$ALPHA\"].integrity" "$LOCK")" "lock integrity of $ALPHA"
for dep in "$BETA" "$ALPHA"; do
  resolved="$(jq -r ".packages[\"node_modules/$dep\"].resolved" "$LOCK")"
  [[ "$resolved" == "$REGISTRY_URL/"* ]] || fail "lock resolved URL of $dep is '$resolved', not under $REGISTRY_URL/"
  info "ok: resolved $resolved"
done

expect_exit 0 in_dir "$PROJ" npm_as main "$TOKEN" -- install "$ALPHA@1.0.0"
assert_eq 1.0.0 "$(jq -r '.version' "$PROJ/node_modules/$ALPHA/package.json")" "installed $ALPHA@1.0.0"
assert_eq "$(sri_sha512 "$ALPHA_100_FILE")" \
  "$(jq -r ".packages[\"node_modules/$ALPHA\"].integrity" "$LOCK")" "lock integrity of $ALPHA@1.0.0"
assert_eq '{"name":"npme-it-alpha","version":"1.0.0"}' \
  "$(cd "$PROJ" && node -e "process.stdout.write(JSON.stringify(require('$ALPHA')))")" "require('$ALPHA')"

step "packuments go gzip-compressed to clients that accept it (npm does), with their own ETag"
curl -sS -H 'Accept: application/json' -D "$T/plain.headers" -o "$T/plain.json" "$(pkg_url "$ALPHA")"
curl -sS -H 'Accept: application/json' -H 'Accept-Encoding: gzip' -D "$T/gzip.headers" -o "$T/gzip.body" \
  "$(pkg_url "$ALPHA")"
PLAIN_BYTES="$(stat -c %s "$T/plain.json")"
(( PLAIN_BYTES >= 1024 )) || fail "the packument of $ALPHA is $PLAIN_BYTES bytes: too small to be compressed"
assert_contains "$(tr -d '\r' <"$T/gzip.headers")" "Content-Encoding: gzip" "headers of the compressed answer"
assert_contains "$(tr -d '\r' <"$T/gzip.headers")" "Vary: Accept-Encoding" "headers of the compressed answer"
assert_not_contains "$(tr -d '\r' <"$T/plain.headers")" "Content-Encoding" "headers of the plain answer"
assert_eq "$(cat "$T/plain.json")" "$(gunzip -c <"$T/gzip.body")" "the compressed packument, decompressed"
PLAIN_ETAG="$(tr -d '\r' <"$T/plain.headers" | sed -n 's/^ETag: //Ip')"
GZIP_ETAG="$(tr -d '\r' <"$T/gzip.headers" | sed -n 's/^ETag: //Ip')"
assert_eq "${PLAIN_ETAG%\"}-gzip\"" "$GZIP_ETAG" "the compressed form's ETag"
info "ok: $PLAIN_BYTES bytes plain, $(stat -c %s "$T/gzip.body") compressed"

step "npm ci reinstalls from the lockfile alone"
rm -rf "$PROJ/node_modules"
expect_exit 0 in_dir "$PROJ" npm_as main "$TOKEN" -- ci
assert_eq 1.0.0 "$(jq -r '.version' "$PROJ/node_modules/$ALPHA/package.json")" "npm ci $ALPHA"

step "npm dist-tag add/ls/rm"
expect_exit 0 npm_as main "$TOKEN" -- dist-tag add "$ALPHA@1.0.0" stable
expect_exit 0 npm_as main "" -- dist-tag ls "$ALPHA"
assert_contains "$LAST_STDOUT" "stable: 1.0.0" "dist-tag ls"
assert_contains "$LAST_STDOUT" "latest: 1.1.0" "dist-tag ls"
expect_exit 0 npm_as main "" -- view "$ALPHA" dist-tags --json
assert_eq '{"latest":"1.1.0","stable":"1.0.0"}' "$(jq -cS . <<<"$LAST_STDOUT")" "view dist-tags"
expect_exit 0 npm_as main "$TOKEN" -- dist-tag rm "$ALPHA" stable
expect_exit 0 npm_as main "" -- dist-tag ls "$ALPHA"
assert_not_contains "$LAST_STDOUT" "stable" "dist-tag ls after rm"
assert_contains "$LAST_STDOUT" "latest: 1.1.0" "dist-tag ls after rm"

step "npm deprecate $ALPHA@1.0.0"
expect_exit 0 npm_as main "$TOKEN" -- deprecate "$ALPHA@1.0.0" "use 1.1.0 instead"
expect_exit 0 npm_as main "" -- view "$ALPHA@1.0.0" deprecated
assert_eq "use 1.1.0 instead" "$LAST_STDOUT" "view deprecated of 1.0.0"
expect_exit 0 npm_as main "" -- view "$ALPHA@1.1.0" deprecated
assert_eq "" "$LAST_STDOUT" "view deprecated of 1.1.0"
PROJ2="$T/project2"
mkdir -p "$PROJ2"
printf '{"name":"scratch-project-2","version":"1.0.0","private":true}\n' >"$PROJ2/package.json"
expect_exit 0 in_dir "$PROJ2" npm_as main "" -- install "$ALPHA@1.0.0"
assert_contains "$LAST_OUTPUT" "deprecated" "npm install warning"
assert_contains "$LAST_OUTPUT" "use 1.1.0 instead" "npm install warning"

step "npm search by name, description word and keyword"
expect_exit 0 npm_as main "" -- search --json "$ALPHA"
assert_eq "$ALPHA" "$(jq -r --arg n "$ALPHA" '[.[] | select(.name == $n)][0].name' <<<"$LAST_STDOUT")" "search by name"
expect_exit 0 npm_as main "" -- search --json zebrafish
assert_eq "$ALPHA" "$(jq -r '.[0].name' <<<"$LAST_STDOUT")" "search by description word"
assert_eq 1 "$(jq 'length' <<<"$LAST_STDOUT")" "results for the description word"
expect_exit 0 npm_as main "" -- search --json quokkalike
assert_eq "$ALPHA" "$(jq -r '.[0].name' <<<"$LAST_STDOUT")" "search by keyword"
expect_exit 0 npm_as main "" -- search --json no-such-word-anywhere-zz
assert_eq 0 "$(jq 'length' <<<"$LAST_STDOUT")" "results for an unknown word"

step "npm unpublish $ALPHA@1.0.0 (one version)"
expect_exit 0 npm_as main "$TOKEN" -- unpublish "$ALPHA@1.0.0"
expect_exit 0 npm_as main "" -- view "$ALPHA" versions --json
assert_eq '["1.1.0"]' "$(jq -c 'if type == "array" then . else [.] end' <<<"$LAST_STDOUT")" "versions after unpublish"
expect_exit 0 npm_as main "" -- view "$ALPHA" dist-tags.latest
assert_eq 1.1.0 "$LAST_STDOUT" "latest after unpublish"
assert_file_missing "$ALPHA_100_FILE"
assert_file_exists "$ALPHA_110_FILE"
http GET "$REGISTRY_URL/$ALPHA/-/$ALPHA-1.0.0.tgz"
assert_eq 404 "$HTTP_STATUS" "GET of the unpublished tarball"
http GET "$REGISTRY_URL/$ALPHA/-/$ALPHA-1.1.0.tgz"
assert_eq 200 "$HTTP_STATUS" "GET of the remaining tarball"
assert_eq "$(sri_sha512 "$ALPHA_110_FILE")" "$(sri_sha512 "$HTTP_BODY_FILE")" \
  "downloaded tarball = stored tarball"

step "npm unpublish $BETA --force (whole package)"
expect_exit 0 npm_as main "$TOKEN" -- unpublish "$BETA" --force
expect_exit 1 npm_as main "$TOKEN" -- view "$BETA"
assert_contains "$LAST_OUTPUT" "E404" "npm view of the unpublished package"
http GET "$(pkg_url "$BETA")" -H "Authorization: Bearer $TOKEN"
assert_eq 404 "$HTTP_STATUS" "GET of the unpublished packument"
assert_file_missing "$BETA_FILE"
[[ -z "$(find "$T/main/packages/@npme-it" -type f 2>/dev/null)" ]] ||
  fail "tarballs of $BETA remain: $(find "$T/main/packages/@npme-it" -type f)"
info "ok: no tarball of $BETA remains"

step "the other package is untouched"
expect_exit 0 npm_as main "" -- view "$ALPHA" version
assert_eq 1.1.0 "$LAST_STDOUT" "$ALPHA latest"
