# kill -9 in the middle of a burst of publishes: after a restart on the same
# root, every version in the metadata has its tarball with the right sha512,
# every publish that was acknowledged is there, and the instance works.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"
LOOPS=4
PER_LOOP=40
PKGS=(npme-it-crash @npme-it/crash)

step "prepare $((LOOPS * PER_LOOP)) publish bodies (${#PKGS[@]} packages, $LOOPS writers)"
# Writer w publishes versions w.0.0, w.0.1, ... alternately of both packages,
# so the writers contend for the same documents.
: >"$T/batch"
for ((w = 1; w <= LOOPS; w++)); do
  for ((i = 0; i < PER_LOOP; i++)); do
    name="${PKGS[$((i % ${#PKGS[@]}))]}"
    version="$w.0.$i"
    dir="$T/src/$w-$i"
    make_package "$dir" "$name" "$version"
    make_tarball "$dir" "$dir.tgz"
    printf '%s %s %s %s\n' "$dir/package.json" "$dir.tgz" "$REGISTRY_URL" "$dir.json" >>"$T/batch"
    printf '%s %s %s\n' "$name" "$version" "$dir.json" >>"$T/plan-$w"
  done
done
node "$FIXTURES/publish_body.js" --batch <"$T/batch"
info "bodies ready"

# writer W — PUTs its bodies in order; logs "name version status" per request
# (000 when the server was gone).
writer() {
  local w="$1" name version body status
  while read -r name version body; do
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -X PUT \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "@$body" "$REGISTRY_URL/${name/\//%2f}")" || true
    printf '%s %s %s\n' "$name" "$version" "${status:-000}" >>"$T/log-$w"
  done <"$T/plan-$w"
}

declare -a WRITER_PIDS=()
step "start $LOOPS writers and kill -9 the server in the middle of the burst"
for ((w = 1; w <= LOOPS; w++)); do
  : >"$T/log-$w"
  writer "$w" &
  STARTED_PIDS+=("$!")
  WRITER_PIDS+=("$!")
done
TOTAL=$((LOOPS * PER_LOOP))
KILL_AT=$((TOTAL / 4))
for ((i = 0; i < 600; i++)); do
  done_count="$(cat "$T"/log-* | wc -l)"
  [[ $done_count -ge $KILL_AT ]] && break
  sleep 0.05
done
kill9_instance main
info "killed after $done_count of $TOTAL requests had completed"
for pid in "${WRITER_PIDS[@]}"; do
  wait "$pid" || true
done
cat "$T"/log-* >"$T/log-all"
ACKED="$(awk '$3 == 200 || $3 == 201' "$T/log-all" | wc -l)"
REFUSED="$(awk '$3 != 200 && $3 != 201 && $3 != "000"' "$T/log-all")"
info "$ACKED publishes acknowledged before the kill"
[[ -z "$REFUSED" ]] || fail "publishes got an error status before the kill: $(head -n 5 <<<"$REFUSED")"
[[ $ACKED -gt 0 ]] || fail "no publish was acknowledged before the kill"
if [[ $ACKED -ge $TOTAL ]]; then
  info "note: the burst finished before the kill landed; the crash hit an idle server"
fi

start_instance main

step "every version in the metadata has its tarball, with the right sha512"
# doc_file NAME — where the packument fetched after the restart is kept.
doc_file() {
  printf '%s/doc-%s.json\n' "$T" "${1//\//_}"
}
CHECKED=0
for name in "${PKGS[@]}"; do
  http GET "$(pkg_url "$name")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json'
  [[ "$HTTP_STATUS" == 200 ]] || fail "GET $name after the restart answered $HTTP_STATUS"
  printf '%s' "$HTTP_BODY" >"$(doc_file "$name")"
  cp "$(doc_file "$name")" "$T/doc.json"
  while read -r version integrity; do
    file="$(tarball_path main "$name" "$version")"
    [[ -f "$file" ]] || fail "$name@$version is in the metadata but its tarball $file is missing"
    [[ "$(sri_sha512 "$file")" == "$integrity" ]] ||
      fail "$name@$version: tarball sha512 $(sri_sha512 "$file") != dist.integrity $integrity"
    CHECKED=$((CHECKED + 1))
  done < <(jq -r '.versions | to_entries[] | "\(.key) \(.value.dist.integrity)"' "$T/doc.json")
  latest="$(jq -r '."dist-tags".latest' "$T/doc.json")"
  jq -e --arg l "$latest" '.versions | has($l)' "$T/doc.json" >/dev/null ||
    fail "$name: dist-tags.latest '$latest' names a version that is not there"
done
info "ok: $CHECKED versions checked against their tarballs"

step "every acknowledged publish survived the crash"
while read -r name version status; do
  [[ "$status" == 200 || "$status" == 201 ]] || continue
  jq -e --arg v "$version" '.versions | has($v)' "$(doc_file "$name")" >/dev/null ||
    fail "$name@$version was acknowledged ($status) before the kill but is gone after the restart"
done <"$T/log-all"
info "ok: all $ACKED acknowledged versions present"
[[ $CHECKED -ge $ACKED ]] || fail "fewer versions in the metadata ($CHECKED) than acknowledged ($ACKED)"

step "orphaned tarballs (renamed into place, metadata never committed)"
# The store renames a tarball into place before the metadata commits, so a
# kill in between may leave a file without its version; the retry below must
# replace it.
ORPHANS=0
while IFS= read -r file; do
  rel="${file#"$T/main/packages/"}"
  base="${rel##*/}"
  case "$rel" in
    @npme-it/crash/-/crash-*.tgz) name=@npme-it/crash version="${base#crash-}" ;;
    npme-it-crash/-/npme-it-crash-*.tgz) name=npme-it-crash version="${base#npme-it-crash-}" ;;
    *) fail "unexpected file $rel in packages/" ;;
  esac
  version="${version%.tgz}"
  if ! jq -e --arg v "$version" '.versions | has($v)' "$(doc_file "$name")" >/dev/null; then
    info "orphan: $rel"
    ORPHANS=$((ORPHANS + 1))
  fi
done < <(find "$T/main/packages" -path "$T/main/packages/.*" -prune -o -type f -name '*.tgz' -print)
info "$ORPHANS orphaned tarball(s)"

step "clients retry every publish that got no answer: each succeeds or is already there"
RETRIED=0
while read -r name version status; do
  [[ "$status" == 200 || "$status" == 201 ]] && continue
  body="$(awk -v n="$name" -v v="$version" '$1 == n && $2 == v { print $3 }' "$T"/plan-*)"
  status="$(curl -sS -o "$T/retry.body" -w '%{http_code}' --max-time 30 -X PUT \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary "@$body" "$REGISTRY_URL/${name/\//%2f}")" || fail "retry of $name@$version got no response"
  # 403: the publish had committed but its answer was lost in the crash.
  [[ "$status" == 201 || "$status" == 200 || "$status" == 403 ]] ||
    fail "retry of $name@$version answered $status: $(cat "$T/retry.body")"
  RETRIED=$((RETRIED + 1))
done < <(cat "$T"/plan-* | while read -r name version body; do
  grep -q "^$name $version " "$T/log-all" || echo "$name $version 000"
  grep "^$name $version " "$T/log-all" || true
done)
info "ok: $RETRIED publishes retried"
CHECKED=0
for name in "${PKGS[@]}"; do
  http GET "$(pkg_url "$name")" -H "Authorization: Bearer $TOKEN" -H 'Accept: application/json'
  printf '%s' "$HTTP_BODY" >"$T/doc.json"
  while read -r version integrity; do
    file="$(tarball_path main "$name" "$version")"
    [[ -f "$file" && "$(sri_sha512 "$file")" == "$integrity" ]] ||
      fail "$name@$version: tarball missing or not matching dist.integrity after the retries"
    CHECKED=$((CHECKED + 1))
  done < <(jq -r '.versions | to_entries[] | "\(.key) \(.value.dist.integrity)"' "$T/doc.json")
done
assert_eq "$TOTAL" "$CHECKED" "versions present and intact after the retries"

step "the restarted instance serves installs and accepts a new publish"
make_package "$T/after" npme-it-crash 9.0.0
expect_exit 0 in_dir "$T/after" npm_as main "$TOKEN" -- publish
PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"scratch-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
expect_exit 0 in_dir "$PROJ" npm_as main "$TOKEN" -- install npme-it-crash@9.0.0 @npme-it/crash
assert_eq 9.0.0 "$(jq -r .version "$PROJ/node_modules/npme-it-crash/package.json")" "installed npme-it-crash"
[[ -f "$PROJ/node_modules/@npme-it/crash/package.json" ]] || fail "@npme-it/crash was not installed"
info "ok: installed @npme-it/crash@$(jq -r .version "$PROJ/node_modules/@npme-it/crash/package.json")"
stop_instance main
