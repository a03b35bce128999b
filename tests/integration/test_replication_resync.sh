#!/usr/bin/env bash
# A full resync (an empty data/sequence, or reset-follower) repairs what a
# replica lost on disk: a deleted package directory and a damaged tarball
# are fetched again, while an in-sync resync moves no tarball. A resync
# interrupted by kill -9 is remembered: after the restart it still removes
# the documents its upstream does not have.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/sync_lib.sh"

# sequence_of INSTANCE — what its data/sequence holds (0 when empty).
sequence_of() {
  local text
  text="$(tr -d ' \n' <"$T/$1/data/sequence" 2>/dev/null || true)"
  echo "${text:-0}"
}

# meta INSTANCE KEY — a value of the database's meta table (stopped instance).
meta() {
  db_query "$1" "select coalesce((select value from meta where key = '$2'), '')"
}

start_instance primary
start_instance replica
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
node "$FIXTURES/gen_packages.js" "$T/gen" 20 2 resync 1 3
bulk_publish primary "$TOKEN" "$T/gen/list"
mapfile -t NAMES < <(awk '{ print $1 }' "$T/gen/list" | sort -u)
make_replica replica primary
wait_synced replica primary
verify_tarballs replica "$TOKEN" "${NAMES[@]}"

step "an in-sync resync (sequence emptied) moves no tarball"
stop_instance replica
: >"$T/replica/data/sequence"
requests_before="$(tarball_requests primary)"
start_instance replica
wait_synced replica primary
assert_eq 0 "$(tarballs_fetched replica)" "tarballs fetched by an in-sync resync"
assert_eq "$requests_before" "$(tarball_requests primary)" "tarball requests on the primary"
assert_eq 0 "$(meta replica resync)" "the resync mark once it is done"

step "a deleted package directory and a flipped byte: a resync fetches exactly those again"
stop_instance replica
gone="${NAMES[3]}"
rm -rf "$T/replica/packages/$gone"
damaged="$(tarball_path replica "${NAMES[7]}" 1.0.0)"
size="$(stat -c %s "$damaged")"
# Same size, one byte changed in the middle: only the tag can tell.
printf '\xff' | dd of="$damaged" bs=1 seek=$((size / 2)) conv=notrunc status=none
: >"$T/replica/data/sequence"
start_instance replica
wait_synced replica primary
verify_tarballs replica "$TOKEN" "${NAMES[@]}"
assert_eq 3 "$(tarballs_fetched replica)" "tarballs fetched (two of $gone, one of ${NAMES[7]})"
http GET "${REGISTRY[replica]}/$gone/-/$gone-1.0.1.tgz" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "the deleted tarball is served again"

step "the same through reset-follower on a running replica"
rm -f "$(tarball_path replica "${NAMES[9]}" 1.0.1)"
expect_exit 0 "$NPME" --root "$T/replica" reset-follower --wait --timeout 60
verify_tarballs replica "$TOKEN" "${NAMES[@]}"

step "a resync to another upstream, killed midway, still removes what that upstream lacks"
start_instance other
add_user other bob bob-password-1
OTHER_TOKEN="$(create_token other bob)"
node "$FIXTURES/gen_packages.js" "$T/gen2" 12 1 other 1 2
bulk_publish other "$OTHER_TOKEN" "$T/gen2/list"
mapfile -t OTHER < <(awk '{ print $1 }' "$T/gen2/list")
# One of its tarballs is missing on disk: the resync stops before that
# change (retrying it) and cannot finish until it is back.
held="$(tarball_path other "${OTHER[6]}" 1.0.0)"
mv "$held" "$T/held.tgz"
make_replica replica other
expect_exit 0 "$NPME" --root "$T/replica" reset-follower
wait_until 60 "the resync stops at the missing tarball" \
  bash -c "\"$NPME\" --root \"$T/replica\" status --json |
    jq -e '.follower.state == \"error\" and .follower.sequence > 0' >/dev/null"
kill9_instance replica
partial="$(sequence_of replica)"
info "sequence at the kill: $partial of $(update_seq other)"
(( partial > 0 && partial < $(update_seq other) )) || fail "the resync was not midway at the kill ($partial)"
assert_eq 1 "$(meta replica resync)" "the resync mark after the kill"
mv "$T/held.tgz" "$held"
start_instance replica
wait_synced replica other
assert_eq 0 "$(meta replica resync)" "the resync mark once it is done"
for name in "${NAMES[@]}"; do
  http GET "${REGISTRY[replica]}/$name" -H "Authorization: Bearer $OTHER_TOKEN"
  assert_eq 404 "$HTTP_STATUS" "$name, which the new upstream lacks, after the resumed resync"
done
verify_tarballs replica "$OTHER_TOKEN" "${OTHER[@]}"
assert_eq "$(content_digest other "$OTHER_TOKEN" "${OTHER[@]}")" \
  "$(content_digest replica "$OTHER_TOKEN" "${OTHER[@]}")" "content of the replica and its new upstream"

stop_instance replica
stop_instance other
stop_instance primary
echo "PASS: $TEST_NAME"
