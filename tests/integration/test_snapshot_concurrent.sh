# Snapshots taken while 4 publishers and 1 unpublisher run for 10 s: each
# must verify, and after restore every version has its tarball; every
# unpublish took effect (gone from the instance and from the final snapshot).
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
  local n=0 rev code
  while ((SECONDS < DEADLINE)); do
    n=$((n + 1))
    publish_fast a "$TOKEN" "npme-it-victim-$n" 1.0.0 1 >/dev/null 2>&1 || echo "victim $n failed" >>"$T/errors"
    rev="$(curl -sS "$REGISTRY_URL/npme-it-victim-$n" | jq -r ._rev)"
    code="$(curl -sS -o "$T/unpublish.body" -w '%{http_code}' -X DELETE -H "Authorization: Bearer $TOKEN" \
      "$REGISTRY_URL/npme-it-victim-$n/-rev/$rev")"
    [[ "$code" == 200 ]] || echo "unpublish of victim $n (rev $rev) answered $code: $(cat "$T/unpublish.body")" >>"$T/errors"
    echo "$n" >"$T/unpublished"
  done
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
# The first snapshot once the writers are under way: a publish and an
# unpublish have happened.
for ((i = 0; i < 100; i++)); do
  [[ -s "$T/unpublished" ]] && (($(db_seq a) >= 3)) && break
  sleep 0.1
done
[[ -s "$T/unpublished" ]] || fail "the unpublisher did not unpublish within 10 s: $(cat "$T/errors" 2>/dev/null)"
while ((SECONDS < DEADLINE)); do
  COUNT=$((COUNT + 1))
  expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$T/snaps/s$COUNT.tar.zst" --json
  info "attempts: $(jq -r .attempts <<<"$LAST_STDOUT"), versions: $(jq -r .manifest.counts.versions <<<"$LAST_STDOUT")"
done
for pid in "${PIDS[@]}"; do
  wait "$pid"
done
[[ ! -s "$T/errors" ]] || { cat "$T/errors"; fail "some publishes or unpublishes failed"; }
UNPUBLISHED="$(cat "$T/unpublished")"
info "published: $(cat "$T"/published-* | awk "{s+=\$1} END {print s}") versions, unpublished $UNPUBLISHED packages, $COUNT snapshots"
((COUNT >= 2)) || fail "only $COUNT snapshots were taken"
((UNPUBLISHED >= 1)) || fail "the unpublisher unpublished nothing"

step "every unpublished package is gone: 404, no document, no tarball"
for ((n = 1; n <= UNPUBLISHED; n++)); do
  code="$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$REGISTRY_URL/npme-it-victim-$n")"
  [[ "$code" == 404 ]] || fail "npme-it-victim-$n answers $code after its unpublish"
  [[ ! -e "$T/a/packages/npme-it-victim-$n" ]] || fail "npme-it-victim-$n still has files: $(ls -R "$T/a/packages/npme-it-victim-$n")"
done
assert_eq 0 "$(db_query a "select count(*) from docs where id like 'npme-it-victim-%'")" "victim documents in the database"
assert_eq "$UNPUBLISHED" "$(db_query a "select count(*) from changes where id like 'npme-it-victim-%' and deleted = 1")" \
  "tombstones of the victims in the change log"

step "every snapshot verifies"
for f in "$T"/snaps/*.tar.zst; do
  expect_exit 0 "$NPME" snapshot verify "$f" --json
  assert_eq "$(jq -r .manifest.counts.tarballs <<<"$LAST_STDOUT")" "$(jq -r .tarballs <<<"$LAST_STDOUT")" "tarballs of $(basename "$f")"
done

step "restore the last snapshot: every version has its tarball"
expect_exit 0 "$NPME" --root "$T/r" restore "$T/snaps/s$COUNT.tar.zst"
sqlite3 -readonly -batch "$T/r/couchdb/registry.sqlite" \
  "$PACKUMENTS select json_extract(v.value, '$.dist.tarball') || ' ' || json_extract(v.value, '$.dist.integrity')
     from packuments as docs, json_each(docs.body, '$.versions') v where docs.id not like '\\_%' escape '\\'" >"$T/versions"
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
  "$PACKUMENTS select count(*) from packuments as docs, json_each(docs.body, '$.versions') v
     where docs.id like 'npme-it-conc-%'")"
assert_eq "$PUBLISHED" "$FINAL" "versions of the publishers in the final snapshot"
assert_eq 0 "$(sqlite3 -readonly -batch "$T/r2/couchdb/registry.sqlite" \
  "select count(*) from docs where id like 'npme-it-victim-%'")" "unpublished packages in the final snapshot"
assert_eq 0 "$(find "$T/r2/packages" -maxdepth 1 -name 'npme-it-victim-*' | wc -l)" \
  "tarballs of unpublished packages in the final snapshot"
