#!/usr/bin/env bash
# Settings that change where and what an instance accepts, checked by their
# effects: registry.max_body (a publish over it gets 413 naming the limit
# and the setting, nothing is stored; raised and restarted, the same publish
# passes) and storage.metadata/packages/data (the database, the tarballs and
# the small files land in the configured directories, none under the root).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# body_of NAME VERSION KIB OUT — a publish body whose tarball holds KIB KiB of
# random (incompressible) bytes; base64 makes the body about 4/3 of that.
body_of() {
  local name="$1" version="$2" kib="$3" out="$4"
  local dir="$T/src/$name-$version" stage
  make_package "$dir" "$name" "$version"
  stage="$(mktemp -d "$T/pack.XXXXXX")"
  mkdir -p "$stage/package"
  cp "$dir/package.json" "$dir/index.js" "$stage/package/"
  head -c "$((kib * 1024))" /dev/urandom >"$stage/package/blob.bin"
  tar -czf "$dir.tgz" -C "$stage" --owner=0 --group=0 --numeric-owner package
  rm -rf "$stage"
  publish_body "$dir/package.json" "$dir.tgz" "$REGISTRY_URL" >"$out"
  info "$name@$version: body of $(stat -c %s "$out") bytes"
}

# db_query_at DIR SQL — a read-only query on the database in DIR.
db_query_at() {
  sqlite3 -readonly -batch "$1/registry.sqlite" "$2"
}

ROOT="$T/inst"
META="$T/elsewhere/metadata"
PKGS="$T/elsewhere/packages"
DATA="$T/elsewhere/data"
DATA_DIR[inst]="$DATA" # where start_instance finds runtime.json
mkdir -p "$ROOT"
step "registry.max_body=1M and the three storage paths outside the root, set before the first start"
run_npme --root "$ROOT" settings set --offline registry.max_body=1M "storage.metadata=$META" \
  "storage.packages=$PKGS" "storage.data=$DATA" >/dev/null
start_instance inst
add_user inst alice alice-password-1
TOKEN="$(create_token inst alice)"

step "storage.*: the database, the instance's files and a published tarball are where the settings say"
body_of npme-it-small 1.0.0 4 "$T/small.json"
put_json "$(pkg_url npme-it-small)" "$T/small.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish under the limit"
assert_file_exists "$META/registry.sqlite"
assert_file_exists "$PKGS/npme-it-small/-/npme-it-small-1.0.0.tgz"
assert_eq "$(sri_sha512 "$T/src/npme-it-small-1.0.0.tgz")" \
  "$(sri_sha512 "$PKGS/npme-it-small/-/npme-it-small-1.0.0.tgz")" "the stored tarball"
assert_file_exists "$DATA/runtime.json"
assert_file_exists "$DATA/instance-id"
assert_file_exists "$DATA/instance.lock"
assert_eq "${INSTANCE_PID[inst]}" "$(jq -r .pid "$DATA/runtime.json")" "pid in the configured data directory"
assert_eq 1 "$(db_query_at "$META" "select count(*) from docs where id = 'npme-it-small'")" \
  "the package in the configured database"
assert_file_missing "$ROOT/couchdb"
assert_file_missing "$ROOT/packages"
# (settings set --offline locked the instance where it was then: only that lock file)
assert_eq "" "$(find "$ROOT" -mindepth 1 ! -name settings.json ! -path "$ROOT/data" ! -name instance.lock)" \
  "files under the root besides settings.json"
status="$(run_npme --root "$ROOT" status --json)"
assert_eq "$META $PKGS $DATA" "$(jq -r '[.disk[] | .path] | join(" ")' <<<"$status")" "directories npme status reports"
assert_eq "$(cat "$DATA/instance-id")" "$(jq -r .instance <<<"$status")" "instance id from the configured data directory"

step "registry.max_body: a publish over 1M gets 413 naming the limit and the setting; nothing is stored"
body_of npme-it-big 1.0.0 900 "$T/big.json"
(($(stat -c %s "$T/big.json") > 1048576)) || fail "the body is not over 1M"
seq_before="$(db_query_at "$META" 'select coalesce(max(seq), 0) from changes')"
listing_before="$(cd "$PKGS" && find . -path ./.staging -prune -o -print | LC_ALL=C sort)"
put_json "$(pkg_url npme-it-big)" "$T/big.json" "$TOKEN"
expect_json_error 413
assert_eq "request body too large: over the registry's limit of 1M (registry.max_body)" \
  "$(jq -r .error <<<"$HTTP_BODY")" "the 413 message"
assert_eq "$seq_before" "$(db_query_at "$META" 'select coalesce(max(seq), 0) from changes')" "database sequence"
assert_eq "$listing_before" "$(cd "$PKGS" && find . -path ./.staging -prune -o -print | LC_ALL=C sort)" \
  "the packages directory"
http GET "$(pkg_url npme-it-big)" -H "Authorization: Bearer $TOKEN"
assert_eq 404 "$HTTP_STATUS" "the refused package"

step "the real npm gets the same 413 and message"
make_package "$T/npm-big" npme-it-npm-big 1.0.0
head -c $((900 * 1024)) /dev/urandom >"$T/npm-big/blob.bin"
expect_exit 1 in_dir "$T/npm-big" npm_as inst "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "413" "npm's error"
assert_contains "$LAST_OUTPUT" "registry.max_body" "npm's error"

step "raised to 2M: applies at the next start, then the same publish passes"
expect_exit 0 run_npme --root "$ROOT" settings set --json registry.max_body=2M
assert_eq true "$(jq -r .restart_required <<<"$LAST_STDOUT")" "restart required"
put_json "$(pkg_url npme-it-big)" "$T/big.json" "$TOKEN"
assert_eq 413 "$HTTP_STATUS" "before the restart"
stop_instance inst
start_instance inst
put_json "$(pkg_url npme-it-big)" "$T/big.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "after the restart"
assert_eq "$(sri_sha512 "$T/src/npme-it-big-1.0.0.tgz")" "$(sri_sha512 "$PKGS/npme-it-big/-/npme-it-big-1.0.0.tgz")" \
  "the stored big tarball"
stop_instance inst
echo "PASS: $TEST_NAME"
