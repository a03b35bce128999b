# A package with a long history (issue 14 item 4): its document is kept as a
# head and one row per version, so each publish writes one version; its
# packument, over 1 MiB, is cached only in its gzip form and still served
# plain to a client without gzip, with correct ETags; new versions, a reused
# version, a restart and the real npm client all see the same document.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly PKG=npme-it-big
readonly VERSIONS=90
start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"

# A manifest of ~13 KB per version, so that the full packument passes 1 MiB
# (above which the cache keeps only the gzip form) with 90 versions.
PAD="$(head -c 12000 /dev/zero | tr '\0' 'x')"

# publish_version VERSION — publishes one version through the registry API.
publish_version() {
  local version="$1" dir="$T/pkgs/$PKG-$1"
  make_package "$dir" "$PKG" "$version"
  jq --arg pad "$PAD-$version" '. + {config: {pad: $pad}}' "$dir/package.json" >"$dir/package.json.new"
  mv "$dir/package.json.new" "$dir/package.json"
  make_tarball "$dir" "$dir.tgz"
  publish_body "$dir/package.json" "$dir.tgz" "$REGISTRY_URL" >"$dir.json"
  put_json "$(pkg_url "$PKG")" "$dir.json" "$TOKEN" >/dev/null
}

step "publish $VERSIONS versions, one at a time"
for ((i = 0; i < VERSIONS; i++)); do
  publish_version "1.$i.0"
  [[ "$HTTP_STATUS" == 201 ]] || fail "publish of $PKG@1.$i.0 answered $HTTP_STATUS: ${HTTP_BODY:0:300}"
done
info "ok: $VERSIONS publishes answered 201"

step "the store keeps a head and one row per version"
assert_eq "$VERSIONS" "$(db_query main "select count(*) from doc_versions where id = '$PKG'")" "rows of $PKG's versions"
assert_eq 1 "$(db_query main "select split from docs where id = '$PKG'")" "docs.split of $PKG"
HEAD_BYTES="$(db_query main "select length(body) from docs where id = '$PKG'")"
((HEAD_BYTES < 40000)) || fail "the head of $PKG holds $HEAD_BYTES bytes: the manifests are in it"
assert_eq "$VERSIONS" "$(db_query main "$PACKUMENTS select count(*) from packuments, json_each(body, '\$.versions')
  where packuments.id = '$PKG'")" "versions of the assembled document"
info "ok: head $HEAD_BYTES bytes"

step "the full packument: gzip to npm, plain to a client without gzip, the same JSON"
curl -sS -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' -H 'Accept-Encoding: gzip' \
  -D "$T/gzip.headers" -o "$T/gzip.body" "$(pkg_url "$PKG")" || fail "GET (gzip) failed"
assert_contains "$(tr -d '\r' <"$T/gzip.headers")" "Content-Encoding: gzip" "headers of the compressed answer"
curl -sS -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' \
  -D "$T/plain.headers" -o "$T/plain.body" "$(pkg_url "$PKG")" || fail "GET (plain) failed"
assert_not_contains "$(tr -d '\r' <"$T/plain.headers")" "Content-Encoding" "headers of the plain answer"
assert_contains "$(tr -d '\r' <"$T/plain.headers")" "Vary: Accept-Encoding" "headers of the plain answer"
PLAIN_BYTES="$(stat -c %s "$T/plain.body")"
((PLAIN_BYTES > 1048576)) || fail "the full packument has $PLAIN_BYTES bytes; the test needs more than 1 MiB"
cmp -s "$T/plain.body" <(gunzip -c "$T/gzip.body") || fail "the plain answer differs from the gzip one, inflated"
assert_eq "$VERSIONS" "$(jq '.versions | length' "$T/plain.body")" "versions in the packument"
assert_eq "1.$((VERSIONS - 1)).0" "$(jq -r '."dist-tags".latest' "$T/plain.body")" "latest"
PLAIN_ETAG="$(tr -d '\r' <"$T/plain.headers" | sed -n 's/^ETag: //Ip')"
GZIP_ETAG="$(tr -d '\r' <"$T/gzip.headers" | sed -n 's/^ETag: //Ip')"
assert_eq "${PLAIN_ETAG%\"}-gzip\"" "$GZIP_ETAG" "the compressed form's ETag"
for etag in "$PLAIN_ETAG" "$GZIP_ETAG"; do
  http GET "$(pkg_url "$PKG")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' -H "If-None-Match: $etag"
  assert_eq 304 "$HTTP_STATUS" "GET with If-None-Match $etag (no gzip)"
done
info "ok: $PLAIN_BYTES bytes plain, $(stat -c %s "$T/gzip.body") compressed"

step "the cache keeps the compressed form of the large packument only"
CACHE_BYTES="$(curl -sS "$ADMIN_URL/metrics" | awk '$1 == "npme_cache_bytes" { print $2 }')"
[[ -n "$CACHE_BYTES" ]] || fail "/metrics has no npme_cache_bytes"
((CACHE_BYTES > 0 && CACHE_BYTES < PLAIN_BYTES)) ||
  fail "npme_cache_bytes is $CACHE_BYTES after GETs of a $PLAIN_BYTES-byte packument (expected its gzip form only)"
info "ok: npme_cache_bytes $CACHE_BYTES"

step "a reused version is refused; a new one lands and is served at once"
put_json "$(pkg_url "$PKG")" "$T/pkgs/$PKG-1.3.0.json" "$TOKEN"
expect_json_error 403
assert_contains "$HTTP_BODY" "cannot publish over the previously published version 1.3.0" "refusal"
publish_version 2.0.0
assert_eq 201 "$HTTP_STATUS" "publish of 2.0.0"
http GET "$(pkg_url "$PKG")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json' -H "If-None-Match: $PLAIN_ETAG"
assert_eq 200 "$HTTP_STATUS" "GET with the old ETag after a publish"
assert_eq "$((VERSIONS + 1))" "$(jq '.versions | length' "$HTTP_BODY_FILE")" "versions after the publish"
assert_eq 2.0.0 "$(jq -r '."dist-tags".latest' "$HTTP_BODY_FILE")" "latest after the publish"
assert_eq "$(sri_sha512 "$T/pkgs/$PKG-1.3.0.tgz")" "$(jq -r '.versions["1.3.0"].dist.integrity' "$HTTP_BODY_FILE")" \
  "an old version's integrity"
# The document without the serving address (a restart takes a new port).
same_doc() {
  jq -S '.versions |= map_values(.dist.tarball |= sub("^http://[^/]+"; ""))' "$1" | sha256sum | cut -d" " -f1
}
AFTER="$(same_doc "$HTTP_BODY_FILE")"

step "npm installs an old version of it"
mkdir -p "$T/app"
echo '{"name":"app","version":"1.0.0","private":true}' >"$T/app/package.json"
expect_exit 0 in_dir "$T/app" npm_as main "$TOKEN" -- install "$PKG@1.7.0"
assert_eq 1.7.0 "$(jq -r .version "$T/app/node_modules/$PKG/package.json")" "installed version"
assert_eq "$(sri_sha512 "$T/pkgs/$PKG-1.7.0.tgz")" "$(jq -r --arg k "node_modules/$PKG" '.packages[$k].integrity' "$T/app/package-lock.json")" \
  "integrity in package-lock.json"

step "after a restart, the same document"
stop_instance main
start_instance main
http GET "$(pkg_url "$PKG")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json'
assert_eq 200 "$HTTP_STATUS" "GET after the restart"
assert_eq "$AFTER" "$(same_doc "$HTTP_BODY_FILE")" "the packument after the restart"
