# Snapshots taken while 4 publishers and 1 unpublisher run for 10 s: each
# must verify, and after restore every version has its tarball.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/snapshot_lib.sh"

start_instance a
add_user a alice 'alice-password-1'
TOKEN="$(create_token a alice)"
DEADLINE=$((SECONDS + 10))

publisher() {
  local i="$1" n=0
  while ((SECONDS < DEADLINE)); do
    n=$((n + 1))
    publish_fast a "$TOKEN" "npme-it-conc-$i" "1.0.$n" >/dev/null 2>&1 || echo "publish $i/$n failed" >>"$T/errors"
  done
  echo "$n" >"$T/published-$i"
}

unpublisher() {
  local n=0 rev
  while ((SECONDS < DEADLINE)); do
    n=$((n + 1))
    publish_fast a "$TOKEN" "npme-it-victim-$n" 1.0.0 1 >/dev/null 2>&1 || echo "victim $n failed" >>"$T/errors"
    rev="$(curl -sS "$REGISTRY_URL/npme-it-victim-$n" | jq -r ._rev)"
    curl -sS -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" "$REGISTRY_URL/npme-it-victim-$n/-rev/$rev"
  done
  echo "$n" >"$T/unpublished"
}

step "4 publishers and 1 unpublisher for 10 s, snapshots meanwhile"
PIDS=()
for i in 1 2 3 4; do
  publisher "$i" &
  PIDS+=("$!")
  STARTED_PIDS+=("$!")
done
unpublisher &
PIDS+=("$!")
STARTED_PIDS+=("$!")
mkdir -p "$T/snaps"
COUNT=0
sleep 1
while ((SECONDS < DEADLINE)); do
  COUNT=$((COUNT + 1))
  expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$T/snaps/s$COUNT.tar.zst" --json
  info "attempts: $(jq -r .attempts <<<"$LAST_STDOUT"), versions: $(jq -r .manifest.counts.versions <<<"$LAST_STDOUT")"
done
for pid in "${PIDS[@]}"; do
  wait "$pid"
done
[[ ! -s "$T/errors" ]] || { cat "$T/errors"; fail "some publishes failed"; }
info "published: $(cat "$T"/published-* | awk "{s+=\$1} END {print s}") versions, unpublished $(cat "$T/unpublished") packages, $COUNT snapshots"
((COUNT >= 2)) || fail "only $COUNT snapshots were taken"

step "every snapshot verifies"
for f in "$T"/snaps/*.tar.zst; do
  expect_exit 0 "$NPME" snapshot verify "$f" --json
  assert_eq "$(jq -r .manifest.counts.tarballs <<<"$LAST_STDOUT")" "$(jq -r .tarballs <<<"$LAST_STDOUT")" "tarballs of $(basename "$f")"
done

step "restore the last snapshot: every version has its tarball"
expect_exit 0 "$NPME" --root "$T/r" restore "$T/snaps/s$COUNT.tar.zst"
sqlite3 -readonly -batch "$T/r/couchdb/registry.sqlite" \
  "select json_extract(v.value, '$.dist.tarball') || ' ' || json_extract(v.value, '$.dist.integrity')
     from docs, json_each(docs.body, '$.versions') v where docs.id not like '\\_%' escape '\\'" >"$T/versions"
VERSIONS="$(wc -l <"$T/versions")"
# How many versions a snapshot taken under load holds depends on how fast the
# (shared) machine published; the exact count is checked on the final one below.
((VERSIONS > 0)) || fail "no version in the last snapshot"
while read -r rel integrity; do
  f="$T/r/packages/$rel"
  [[ -f "$f" ]] || fail "version tarball $rel is missing after restore"
  [[ "$(sri_sha512 "$f")" == "$integrity" ]] || fail "tarball $rel does not match its integrity"
done <"$T/versions"
info "ok: all $VERSIONS versions have their tarball with the right integrity"

step "a snapshot after the writers stopped holds exactly what was published"
PUBLISHED="$(cat "$T"/published-* | awk '{s += $1} END {print s}')"
expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$T/snaps/final.tar.zst" --json
expect_exit 0 "$NPME" --root "$T/r2" restore "$T/snaps/final.tar.zst"
FINAL="$(sqlite3 -readonly -batch "$T/r2/couchdb/registry.sqlite" \
  "select count(*) from docs, json_each(docs.body, '$.versions') v where docs.id like 'npme-it-conc-%'")"
assert_eq "$PUBLISHED" "$FINAL" "versions of the publishers in the final snapshot"
