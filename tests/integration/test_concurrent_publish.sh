# Eight `npm publish` processes publish eight versions of one package at the
# same time: every version must survive, each with its own intact tarball.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
PKG=npme-it-concurrent
VERSIONS=(1.0.0 1.0.1 1.0.2 1.0.3 1.1.0 1.2.0 2.0.0 2.0.1)

step "prepare ${#VERSIONS[@]} package directories"
for v in "${VERSIONS[@]}"; do
  make_package "$T/pkg-$v" "$PKG" "$v"
done

step "start ${#VERSIONS[@]} npm publish processes at once"
declare -A PUBLISH_PID=()
for v in "${VERSIONS[@]}"; do
  # Each under its own tag: npm 11 refuses to move "latest" to a lower
  # version, and eight tags written at once also test the dist-tag merge.
  in_dir "$T/pkg-$v" npm_as main "$TOKEN" -- publish --tag "tag-${v//./-}" >"$T/publish-$v.log" 2>&1 &
  PUBLISH_PID[$v]=$!
  STARTED_PIDS+=("$!")
done
FAILED=0
for v in "${VERSIONS[@]}"; do
  rc=0
  wait "${PUBLISH_PID[$v]}" || rc=$?
  info "npm publish $PKG@$v exited $rc"
  if [[ $rc -ne 0 ]]; then
    sed 's/^/    | /' "$T/publish-$v.log"
    FAILED=1
  fi
done
[[ $FAILED -eq 0 ]] || fail "some concurrent publishes failed"

step "all versions are present, each tarball matches its integrity"
expect_exit 0 npm_as main "" -- view "$PKG" versions --json
assert_eq "$(printf '%s\n' "${VERSIONS[@]}" | jq -R . | jq -sc .)" "$(jq -c '.' <<<"$LAST_STDOUT")" "versions"
http GET "$(pkg_url "$PKG")" -H 'Accept: application/json'
DOC="$HTTP_BODY"
for v in "${VERSIONS[@]}"; do
  assert_eq "$v" "$(jq -r --arg t "tag-${v//./-}" '."dist-tags"[$t]' <<<"$DOC")" "dist-tag tag-${v//./-}"
done
LATEST="$(jq -r '."dist-tags".latest // empty' <<<"$DOC")"
if [[ -n "$LATEST" ]]; then
  [[ " ${VERSIONS[*]} " == *" $LATEST "* ]] || fail "dist-tags.latest '$LATEST' is not one of the published versions"
  info "ok: latest = $LATEST"
fi
for v in "${VERSIONS[@]}"; do
  file="$(tarball_path main "$PKG" "$v")"
  assert_file_exists "$file"
  assert_eq "$(sri_sha512 "$file")" "$(jq -r --arg v "$v" '.versions[$v].dist.integrity' <<<"$DOC")" \
    "integrity of $v"
  assert_eq "$(openssl dgst -sha1 -r "$file" | cut -d' ' -f1)" \
    "$(jq -r --arg v "$v" '.versions[$v].dist.shasum' <<<"$DOC")" "shasum of $v"
  # The tarball holds this version's own package.json, not another's.
  assert_eq "$v" "$(tar -xzOf "$file" package/package.json | jq -r .version)" "version inside the $v tarball"
done
assert_eq "${#VERSIONS[@]}" "$(find "$T/main/packages/$PKG" -type f | wc -l | tr -d ' ')" \
  "files under packages/$PKG (no leftovers)"

step "every version installs"
PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"scratch-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
for v in 1.0.2 2.0.1; do
  expect_exit 0 in_dir "$PROJ" npm_as main "" -- install "$PKG@$v"
  assert_eq "$v" "$(jq -r '.version' "$PROJ/node_modules/$PKG/package.json")" "installed $PKG@$v"
done
