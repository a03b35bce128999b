# Malformed and hostile requests against the registry: each gets the right
# 4xx status with a JSON {"error":...} body, never a 5xx or a dropped
# connection, and leaves the database and the packages directory unchanged.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
RO_TOKEN="$(create_token main alice --read-only)"
PKG=npme-it-bad-input
URL="$(pkg_url "$PKG")"

step "setup: publish $PKG 1.0.0 and 1.0.1 with curl"
make_publish_body "$T/v100" "$PKG" 1.0.0 "$T/v100.json"
put_json "$URL" "$T/v100.json" "$TOKEN"
[[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish of 1.0.0 answered $HTTP_STATUS"
http GET "$URL" -H 'Accept: application/json'
STALE_REV="$(jq -r '._rev' <<<"$HTTP_BODY")"
STALE_DOC="$HTTP_BODY"
make_publish_body "$T/v101" "$PKG" 1.0.1 "$T/v101.json"
put_json "$URL" "$T/v101.json" "$TOKEN"
[[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish of 1.0.1 answered $HTTP_STATUS"
http GET "$URL" -H 'Accept: application/json'
CURRENT_DOC="$HTTP_BODY"
CURRENT_REV="$(jq -r '._rev' <<<"$CURRENT_DOC")"
assert_ne "$STALE_REV" "$CURRENT_REV" "revision after the second publish"
assert_eq '["1.0.0","1.0.1"]' "$(jq -c '.versions | keys' <<<"$CURRENT_DOC")" "versions"

SEQ_BEFORE=""
LISTING_BEFORE=""
DIGEST_BEFORE=""
snapshot_state() {
  SEQ_BEFORE="$(db_seq main)"
  LISTING_BEFORE="$(packages_listing main)"
  DIGEST_BEFORE="$(digest_instance main "$TOKEN" "$PKG")"
}

# expect_unchanged — the database's change log, the packages directory (every
# file and its hash, temp files included) and the packument are as before.
expect_unchanged() {
  assert_eq "$SEQ_BEFORE" "$(db_seq main)" "max(seq) of the change log"
  [[ "$(packages_listing main)" == "$LISTING_BEFORE" ]] ||
    fail "packages/ changed: $(diff <(printf '%s\n' "$LISTING_BEFORE") <(packages_listing main) || true)"
  info "ok: packages/ unchanged"
  [[ "$(digest_instance main "$TOKEN" "$PKG")" == "$DIGEST_BEFORE" ]] ||
    fail "packument of $PKG changed: $(diff <(printf '%s\n' "$DIGEST_BEFORE") <(digest_instance main "$TOKEN" "$PKG") || true)"
  info "ok: packument unchanged"
}

# refused STATUS WHAT — the last response was a JSON error with STATUS and
# nothing changed.
refused() {
  local status="$1" what="$2"
  info "expect $status for: $what"
  expect_json_error "$status"
  expect_unchanged
}

# mutate IN OUT JQ_FILTER [jq args...] — a publish body changed by a filter.
mutate() {
  local in="$1" out="$2" filter="$3"
  shift 3
  jq -c "$@" "$filter" "$in" >"$out"
}

snapshot_state
info "state: seq $SEQ_BEFORE, $(wc -l <<<"$LISTING_BEFORE") files"

step "republishing an existing version is refused (403)"
put_json "$URL" "$T/v100.json" "$TOKEN"
refused 403 "republish of 1.0.0"
# Same version, different bytes: still never overwritten.
make_publish_body "$T/v100b" "$PKG" 1.0.0 "$T/v100b.json"
echo "// changed" >>"$T/v100b/index.js"
make_tarball "$T/v100b" "$T/v100b.tgz"
publish_body "$T/v100b/package.json" "$T/v100b.tgz" "$REGISTRY_URL" >"$T/v100b.json"
put_json "$URL" "$T/v100b.json" "$TOKEN"
refused 403 "republish of 1.0.0 with different content"

step "attachments that do not match their metadata are refused (400)"
make_publish_body "$T/v102" "$PKG" 1.0.2 "$T/v102.json"
OTHER_SRI="$(printf 'other bytes' | openssl dgst -sha512 -binary | base64 -w0)"
mutate "$T/v102.json" "$T/bad.json" '.versions["1.0.2"].dist.integrity = "sha512-" + $s' --arg s "$OTHER_SRI"
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "wrong sha512"
mutate "$T/v102.json" "$T/bad.json" '.versions["1.0.2"].dist.shasum = "0123456789abcdef0123456789abcdef01234567"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "wrong sha1"
mutate "$T/v102.json" "$T/bad.json" '._attachments[].length += 1'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "wrong length"
mutate "$T/v102.json" "$T/bad.json" '._attachments[].data = "not base64 at all!!"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "attachment data not base64"
mutate "$T/v102.json" "$T/bad.json" '._attachments = {}'
put_json "$URL" "$T/bad.json" "$TOKEN"
# Without an attachment and without _rev this is no valid publish; a
# metadata update without a revision is a conflict in CouchDB terms.
refused '400|409' "new version without attachment"

step "name and version must agree with the URL and the version key (400)"
mutate "$T/v102.json" "$T/bad.json" '.name = "npme-it-other" | ._id = "npme-it-other"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "name in body differs from the URL"
mutate "$T/v102.json" "$T/bad.json" '.versions["1.0.2"].name = "npme-it-other"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "name in the version differs from the URL"
mutate "$T/v102.json" "$T/bad.json" '.versions["1.0.2"].version = "1.0.3"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "version key 1.0.2 holds manifest version 1.0.3"
mutate "$T/v102.json" "$T/bad.json" '.versions = {"not-semver": .versions["1.0.2"]} | .versions["not-semver"].version = "not-semver" | ."dist-tags".latest = "not-semver"'
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "version that is not semver"

step "stale revisions are refused (409)"
# Unpublish of a version as npm sends it: the packument without the version,
# PUT to /<name>/-rev/<rev>; here with the revision before the last publish.
jq -c 'del(.versions["1.0.0"]) | del(.time["1.0.0"])' <<<"$CURRENT_DOC" >"$T/unpub.json"
put_json "$URL/-rev/$STALE_REV" "$T/unpub.json" "$TOKEN"
refused 409 "unpublish of a version with a stale _rev"
http DELETE "$URL/-rev/$STALE_REV" -H "Authorization: Bearer $TOKEN"
refused 409 "unpublish of the package with a stale _rev"
# Deprecate as npm sends it: the full packument with _rev and "deprecated" set.
jq -c --arg r "$STALE_REV" '._rev = $r | .versions["1.0.0"].deprecated = "stale"' <<<"$CURRENT_DOC" >"$T/deprecate.json"
put_json "$URL" "$T/deprecate.json" "$TOKEN"
refused 409 "deprecate with a stale _rev"

step "invalid package names are refused (400)"
LONG_NAME="$(printf 'a%.0s' $(seq 215))"
for name in '../x' '@/x' '.x' '_x' 'a b' "$LONG_NAME" '%2e%2e' '..' '@scope/../x' 'x/y' ''; do
  if [[ -z "$name" ]]; then
    path='%20'
  elif [[ "$name" == '%2e%2e' ]]; then
    path='%2e%2e' # the encoded traversal itself, as it would arrive
  else
    path="$(jq -rn --arg n "$name" '$n | @uri')"
  fi
  jq -c --arg n "$name" '
      .name = $n | ._id = $n
      | .versions["1.0.2"].name = $n | .versions["1.0.2"]._id = ($n + "@1.0.2")
      | ._attachments = (._attachments | to_entries | map(.key = ($n + "-1.0.2.tgz")) | from_entries)
    ' "$T/v102.json" >"$T/bad.json"
  put_json "$REGISTRY_URL/$path" "$T/bad.json" "$TOKEN" --path-as-is
  expected=400
  # A bare "/.." is a dot segment of the URL itself, not a name: curl sends
  # "PUT /", which only the replication feed's "GET /" matches (405).
  [[ "$name" != '..' ]] || expected='400|404|405'
  refused "$expected" "publish under the name '${name:0:40}' (URL /${path:0:40})"
done
[[ ! -e "$T/main/x" && ! -e "$T/x" && ! -e "$T/main/packages/x" ]] ||
  fail "a refused publish created a file or directory named x"
info "ok: nothing written outside packages/"

step "malformed JSON and wrong shapes are refused (400)"
printf '{"name": "%s", "versions": {' "$PKG" >"$T/bad.json"
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "truncated JSON"
printf '[1, 2, 3]' >"$T/bad.json"
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "JSON array instead of an object"
printf '{"name": "%s", "versions": "nope", "_attachments": 5}' "$PKG" >"$T/bad.json"
put_json "$URL" "$T/bad.json" "$TOKEN"
# Without _rev the server may refuse it as a conflicting update first.
refused '400|409' "versions and _attachments of the wrong type"
printf '{"_id": "%s", "name": "%s", "_rev": "%s", "versions": "nope", "dist-tags": []}' \
  "$PKG" "$PKG" "$CURRENT_REV" >"$T/bad.json"
put_json "$URL" "$T/bad.json" "$TOKEN"
refused 400 "metadata update with the current _rev but versions of the wrong type"

step "a body over the limit is refused from Content-Length alone (413)"
# Claim 2 GB and send nothing: the reply must come without reading a body.
REGISTRY_HOSTPORT="${REGISTRY_URL#http://}"
raw_request() {
  local request="$1" out="$2"
  timeout 15 bash -c '
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 97
    printf "%b" "$2" >&3
    cat <&3' _ "$REGISTRY_HOSTPORT" "$request" >"$out" 2>/dev/null || true
}
raw_request "PUT /$PKG HTTP/1.1\r\nHost: $REGISTRY_HOSTPORT\r\nAuthorization: Bearer $TOKEN\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n" "$T/raw413"
STATUS_LINE="$(head -n 1 "$T/raw413" | tr -d '\r')"
assert_contains "$STATUS_LINE" " 413" "status line of the 2 GB PUT"
HTTP_STATUS=413
HTTP_BODY="$(sed '1,/^\r\{0,1\}$/d' "$T/raw413")"
refused 413 "Content-Length: 2147483648 with no body"
# The same through curl, with a small body under a lying header.
http PUT "$URL" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -H 'Content-Length: 3000000000' --data-binary '{}' || true
refused 413 "Content-Length: 3000000000 with a 2-byte body"

step "oversized headers are refused (431)"
BIG="$(head -c 100000 /dev/zero | tr '\0' a)"
http GET "$URL" -H "X-Filler: $BIG"
refused 431 "a 100 kB header"
raw_request "GET /$PKG HTTP/1.1\r\nHost: $REGISTRY_HOSTPORT\r\nX-Filler: $BIG\r\n\r\n" "$T/raw431"
assert_contains "$(head -n 1 "$T/raw431" | tr -d '\r')" " 431" "status line for a 100 kB header on a raw socket"

step "authentication: missing and wrong tokens (401), read-only token (403)"
put_json "$URL" "$T/v102.json"
refused 401 "publish without a token"
put_json "$URL" "$T/v102.json" "npm_wrongtoken0000000000000000000000"
refused 401 "publish with a wrong token"
http PUT "$URL" -H 'Authorization: Basic YWxpY2U6d3Jvbmc=' -H 'Content-Type: application/json' --data-binary "@$T/v102.json"
refused 401 "publish with basic auth and a wrong password"
put_json "$URL" "$T/v102.json" "$RO_TOKEN"
refused 403 "publish with a read-only token"
http PUT "$REGISTRY_URL/-/package/$PKG/dist-tags/beta" -H "Authorization: Bearer $RO_TOKEN" \
  -H 'Content-Type: application/json' --data-binary '"1.0.0"'
refused 403 "dist-tag add with a read-only token"
http DELETE "$URL/-rev/$CURRENT_REV" -H "Authorization: Bearer $RO_TOKEN"
refused 403 "unpublish with a read-only token"
http DELETE "$URL/-rev/$CURRENT_REV"
refused 401 "unpublish without a token"

step "unknown packages and tarballs (404)"
http GET "$REGISTRY_URL/npme-it-no-such-package"
refused 404 "GET of an unknown package"
http GET "$REGISTRY_URL/@npme-it%2fno-such-package" -H "Authorization: Bearer $TOKEN"
refused 404 "GET of an unknown scoped package"
http GET "$URL/-/$PKG-9.9.9.tgz"
refused 404 "GET of an unknown tarball"
http GET "$URL/9.9.9"
refused 404 "GET of an unknown version"
http PUT "$REGISTRY_URL/-/package/$PKG/dist-tags/beta" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' --data-binary '"9.9.9"'
[[ "$HTTP_STATUS" == 400 || "$HTTP_STATUS" == 404 ]] ||
  fail "dist-tag to an unknown version answered $HTTP_STATUS, expected 400 or 404"
expect_unchanged

step "a legacy upper-case name such as JSONStream publishes fine"
make_publish_body "$T/jsonstream" JSONStream 1.0.0 "$T/jsonstream.json"
put_json "$(pkg_url JSONStream)" "$T/jsonstream.json" "$TOKEN"
[[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish of JSONStream answered $HTTP_STATUS: $HTTP_BODY"
info "ok: JSONStream published ($HTTP_STATUS)"
assert_file_exists "$(tarball_path main JSONStream 1.0.0)"
http GET "$(pkg_url JSONStream)"
assert_eq 200 "$HTTP_STATUS" "GET of JSONStream"
assert_eq "$(sri_sha512 "$T/jsonstream.tgz")" "$(jq -r '.versions["1.0.0"].dist.integrity' <<<"$HTTP_BODY")" \
  "integrity of JSONStream 1.0.0"
[[ "$(db_seq main)" -gt "$SEQ_BEFORE" ]] || fail "the JSONStream publish did not advance the change log"
info "ok: change log advanced to $(db_seq main)"

step "the instance is still healthy after all of it"
http GET "$REGISTRY_URL/-/ping"
assert_eq 200 "$HTTP_STATUS" "GET /-/ping"
make_publish_body "$T/v102ok" "$PKG" 1.0.2 "$T/v102ok.json"
put_json "$URL" "$T/v102ok.json" "$TOKEN"
[[ "$HTTP_STATUS" == 200 || "$HTTP_STATUS" == 201 ]] || fail "publish of 1.0.2 answered $HTTP_STATUS"
http GET "$URL"
assert_eq '["1.0.0","1.0.1","1.0.2"]' "$(jq -c '.versions | keys' <<<"$HTTP_BODY")" "versions at the end"
