# Snapshots and restore with the real binary and the real npm: round trip
# (content digest equal, npm install works), list/inspect/prune, refusals
# (running instance, non-empty target), broken snapshots (exit 5, targets
# untouched), kill -9 during create and restore, a full disk during create.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/snapshot_lib.sh"

SNAPS="$T/snaps"
mkdir -p "$SNAPS"

start_instance a
add_user a alice 'alice-password-1'
TOKEN="$(create_token a alice)"

step "publish packages (npm and curl)"
make_package "$T/pkg-left" npme-it-snap-left 1.0.0
expect_exit 0 in_dir "$T/pkg-left" npm_as a "$TOKEN" -- publish
make_package "$T/pkg-right" @snap/right 2.0.0 npme-it-snap-left@^1.0.0
expect_exit 0 in_dir "$T/pkg-right" npm_as a "$TOKEN" -- publish --access public
publish_fast a "$TOKEN" npme-it-snap-left 1.1.0
expect_exit 0 npm_as a "$TOKEN" -- dist-tag add npme-it-snap-left@1.0.0 stable
publish_fast a "$TOKEN" npme-it-snap-gone 0.1.0
http DELETE "$REGISTRY_URL/npme-it-snap-gone/-rev/$(curl -sS "$REGISTRY_URL/npme-it-snap-gone" | jq -r ._rev)" \
  -H "Authorization: Bearer $TOKEN"
PKGS=(npme-it-snap-left @snap/right npme-it-snap-gone)
digest_instance a "$TOKEN" "${PKGS[@]}" >"$T/digest-a"
cat "$T/digest-a"
printf '42\n' >"$T/a/data/sequence"
printf 'npme-it-snap-left\n' >"$T/a/data/whitelist"

step "snapshot create while the instance runs"
expect_exit 0 "$NPME" --root "$T/a" snapshot create --dir "$SNAPS" --json
SNAP="$(jq -r .file <<<"$LAST_STDOUT")"
assert_file_exists "$SNAP"
assert_eq 600 "$(stat -c %a "$SNAP")" "snapshot file mode"
assert_eq true "$(jq -r .verified <<<"$LAST_STDOUT")" "verified"
assert_eq 3 "$(jq -r .manifest.counts.versions <<<"$LAST_STDOUT")" "versions in the snapshot"
assert_eq 42 "$(jq -r .manifest.sequence <<<"$LAST_STDOUT")" "sequence in the snapshot"
assert_eq "$(db_seq a)" "$(jq -r .manifest.update_seq <<<"$LAST_STDOUT")" "update_seq in the snapshot"
[[ "$(basename "$SNAP")" =~ ^npme-snapshot-[0-9]{8}T[0-9]{6}Z-.+\.tar\.zst$ ]] || fail "unexpected name $SNAP"
assert_eq 0 "$(find "$T/a/packages/.staging" -mindepth 1 | wc -l)" "nothing left in the staging area"

step "inspect, verify, list (ignores .part), gzip and none"
expect_exit 0 "$NPME" snapshot inspect "$SNAP" --json
assert_eq "$(cat "$T/a/data/instance-id")" "$(jq -r .instance_id <<<"$LAST_STDOUT")" "instance id"
expect_exit 0 "$NPME" snapshot verify "$SNAP"
assert_contains "$LAST_OUTPUT" "snapshot verified"
expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$SNAPS/b.tar.gz" --compression gzip
expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$SNAPS/c.tar" --compression none
expect_exit 1 "$NPME" --root "$T/a" snapshot create -o "$SNAPS/c.tar" --compression none
assert_contains "$LAST_OUTPUT" "file exists"
expect_exit 2 "$NPME" --root "$T/a" snapshot create --compression lz4 --dir "$SNAPS"
: >"$SNAPS/npme-snapshot-20000101T000000Z-x.tar.zst.part"
expect_exit 0 "$NPME" snapshot list --dir "$SNAPS" --json
assert_eq 3 "$(jq '.snapshots | length' <<<"$LAST_STDOUT")" "snapshots listed"
assert_not_contains "$LAST_STDOUT" ".part" "list"
rm -f "$SNAPS/npme-snapshot-20000101T000000Z-x.tar.zst.part"

step "restore refuses while the instance runs (exit 6)"
expect_exit 6 "$NPME" --root "$T/a" restore "$SNAP" --force
stop_instance a

step "restore into a fresh install, serve, compare, npm install"
expect_exit 0 "$NPME" --root "$T/b" restore "$SNAP" --json
assert_eq '[]' "$(jq -c .kept_aside <<<"$LAST_STDOUT")" "nothing kept aside on a fresh install"
assert_eq 42 "$(cat "$T/b/data/sequence")" "restored sequence"
assert_eq npme-it-snap-left "$(cat "$T/b/data/whitelist")" "restored whitelist"
[[ ! -e "$T/b/settings.json" ]] || fail "restore wrote a settings file"
start_instance b
digest_instance b "$TOKEN" "${PKGS[@]}" >"$T/digest-b"
assert_eq "$(cat "$T/digest-a")" "$(cat "$T/digest-b")" "content digest after restore"
for v in 1.0.0 1.1.0; do
  assert_eq "$(sha256sum <"$(tarball_path a npme-it-snap-left $v)")" \
    "$(sha256sum <"$(tarball_path b npme-it-snap-left $v)")" "tarball npme-it-snap-left@$v"
done
mkdir -p "$T/consumer"
echo '{"name":"consumer","version":"1.0.0"}' >"$T/consumer/package.json"
expect_exit 0 in_dir "$T/consumer" npm_as b "$TOKEN" -- install @snap/right
assert_eq 2.0.0 "$(jq -r .version "$T/consumer/node_modules/@snap/right/package.json")" "installed version"
assert_eq 1.1.0 "$(jq -r .version "$T/consumer/node_modules/npme-it-snap-left/package.json")" "installed dependency"
stop_instance b

step "restore over a non-empty target: refused without --force, kept aside with it"
BEFORE="$(instance_listing "$T/b")"
expect_exit 6 "$NPME" --root "$T/b" restore "$SNAP"
assert_contains "$LAST_OUTPUT" "--force"
expect_exit 0 "$NPME" --root "$T/b" restore "$SNAP" --dry-run --force --json
assert_eq 3 "$(jq '.would_keep_aside | length' <<<"$LAST_STDOUT")" "dry run would keep 3 aside"
assert_eq "$BEFORE" "$(instance_listing "$T/b")" "dry run changed nothing"
expect_exit 0 "$NPME" --root "$T/b" restore "$SNAP" --force --json
assert_eq 3 "$(jq '.kept_aside | length' <<<"$LAST_STDOUT")" "old directories kept aside"
for d in $(jq -r '.kept_aside[]' <<<"$LAST_STDOUT"); do
  [[ -d "$d" && "$d" == *.pre-restore-* ]] || fail "kept-aside directory $d"
done

step "broken snapshots: exit 5, target untouched"
BEFORE="$(instance_listing "$T/b")"
SIZE="$(stat -c %s "$SNAPS/c.tar")"
cp "$SNAPS/c.tar" "$T/flipped.tar"
# Flip one byte in the middle of the (uncompressed) archive: inside a tarball or the database.
OFF=$((SIZE / 2))
printf "$(printf '\\x%02x' $(( ($(od -An -tu1 -j "$OFF" -N1 "$T/flipped.tar") ^ 0xff) )))" |
  dd of="$T/flipped.tar" bs=1 seek="$OFF" conv=notrunc status=none
expect_exit 5 "$NPME" snapshot verify "$T/flipped.tar"
expect_exit 5 "$NPME" --root "$T/b" restore "$T/flipped.tar" --force
head -c $((SIZE / 3)) "$SNAPS/c.tar" >"$T/truncated.tar"
expect_exit 5 "$NPME" snapshot verify "$T/truncated.tar"
expect_exit 5 "$NPME" --root "$T/b" restore "$T/truncated.tar" --force
head -c 100000 /dev/urandom >"$T/noise.tar.zst"
expect_exit 5 "$NPME" snapshot verify "$T/noise.tar.zst"
expect_exit 5 "$NPME" snapshot inspect "$T/noise.tar.zst"
expect_exit 5 "$NPME" --root "$T/b" restore "$T/noise.tar.zst" --force
assert_eq "$BEFORE" "$(instance_listing "$T/b")" "target after refused restores"
assert_eq 0 "$(find "$T" -maxdepth 2 -name '*.restore-partial' | wc -l)" "no partial directories left"
expect_exit 5 "$NPME" snapshot verify "$T/flipped.tar" --json
assert_eq verify "$(jq -r .error.code <<<"$LAST_STDOUT")" "JSON error code"

step "prune keeps the newest N"
expect_exit 0 "$NPME" snapshot prune --dir "$SNAPS" --keep 1 --dry-run --json
assert_eq 2 "$(jq '.deleted | length' <<<"$LAST_STDOUT")" "dry run would delete 2"
assert_eq 3 "$(find "$SNAPS" -type f | wc -l)" "dry run deleted nothing"
expect_exit 0 "$NPME" snapshot prune --dir "$SNAPS" --keep 1 --keep-within 1h
assert_eq 3 "$(find "$SNAPS" -type f | wc -l)" "--keep-within 1h keeps the fresh ones"
expect_exit 0 "$NPME" snapshot prune --dir "$SNAPS" --keep 1
assert_eq "$SNAPS/c.tar" "$(find "$SNAPS" -type f)" "the newest remains"

step "kill -9 during create: no final file, list ignores the .part, rerun completes"
start_instance a
for i in 1 2 3; do
  publish_fast a "$TOKEN" npme-it-snap-big "1.0.$i" 15
done
"$NPME" --root "$T/a" snapshot create -o "$T/big.tar.gz" --compression gzip >"$T/create.log" 2>&1 &
CREATE_PID=$!
STARTED_PIDS+=("$CREATE_PID")
wait_for_path "$T/big.tar.gz.part" "$CREATE_PID" || fail "create finished before it could be killed"
kill -KILL "$CREATE_PID"
wait "$CREATE_PID" 2>/dev/null || true
assert_file_missing "$T/big.tar.gz"
mkdir -p "$T/killed" && mv "$T/big.tar.gz.part" "$T/killed/"
expect_exit 0 "$NPME" snapshot list --dir "$T/killed" --json
assert_eq 0 "$(jq '.snapshots | length' <<<"$LAST_STDOUT")" "list ignores the .part"
expect_exit 0 "$NPME" --root "$T/a" snapshot create -o "$T/big.tar.gz" --compression gzip
expect_exit 0 "$NPME" snapshot verify "$T/big.tar.gz"

step "full disk during create: clear error, no file"
expect_exit 1 bash -c "ulimit -f 2048; exec \"\$0\" --root \"$T/a\" snapshot create -o \"$T/full.tar\" --compression none" "$NPME"
assert_contains "$LAST_OUTPUT" "cannot write snapshot"
assert_file_missing "$T/full.tar"
assert_file_missing "$T/full.tar.part"
digest_instance a "$TOKEN" npme-it-snap-big "${PKGS[@]}" >"$T/digest-a2"
stop_instance a

step "kill -9 during restore: old directories usable, rerun completes"
BEFORE="$(instance_listing "$T/b")"
"$NPME" --root "$T/b" restore "$T/big.tar.gz" --force >"$T/restore.log" 2>&1 &
RESTORE_PID=$!
STARTED_PIDS+=("$RESTORE_PID")
wait_for_path "$T/b/packages.restore-partial/npme-it-snap-big" "$RESTORE_PID" || fail "restore finished before it could be killed"
kill -KILL "$RESTORE_PID"
wait "$RESTORE_PID" 2>/dev/null || true
assert_eq "$BEFORE" "$(instance_listing "$T/b")" "old directories after kill -9"
start_instance b
digest_instance b "$TOKEN" "${PKGS[@]}" >"$T/digest-b2"
assert_eq "$(cat "$T/digest-a")" "$(cat "$T/digest-b2")" "old instance still serves its content"
stop_instance b
expect_exit 0 "$NPME" --root "$T/b" restore "$T/big.tar.gz" --force
assert_eq 0 "$(find "$T/b" -maxdepth 1 -name '*.restore-partial' | wc -l)" "no partial directories left"
start_instance b
digest_instance b "$TOKEN" npme-it-snap-big "${PKGS[@]}" >"$T/digest-b3"
assert_eq "$(cat "$T/digest-a2")" "$(cat "$T/digest-b3")" "content digest after the rerun"
stop_instance b
