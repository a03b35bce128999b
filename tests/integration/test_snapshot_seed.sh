# Seeding a replica from a primary's snapshot: `npme restore --as-replica`
# on a fresh root, pointed at the primary with `settings set --offline`,
# fetches only what changed after the snapshot. Counted on the primary: its
# tarball GETs (admin /metrics) grow by exactly the versions published after
# the snapshot, and both instances end with the same content digest.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/replication_lib.sh"

BEFORE_N=24
AFTER_M=7

start_instance primary
add_user primary alice 'alice-password-1'
TOKEN="$(create_token primary alice)"

step "publish $BEFORE_N packages, then snapshot the running primary"
node "$FIXTURES/gen_packages.js" "$T/gen-before" "$BEFORE_N" 1 seed-old 2 8
bulk_publish primary "$TOKEN" "$T/gen-before/list"
expect_exit 0 run_npme --root "$T/primary" snapshot create -o "$T/seed.tar.zst" --json
SNAP_SEQ="$(jq -r .manifest.update_seq <<<"$LAST_STDOUT")"
assert_eq "$(update_seq primary)" "$SNAP_SEQ" "update_seq recorded in the snapshot"
assert_eq "$BEFORE_N" "$(jq -r .manifest.counts.tarballs <<<"$LAST_STDOUT")" "tarballs in the snapshot"
assert_eq "primary admin-api $SNAP_SEQ" \
  "$(jq -r '.manifest.reported_state | "\(.role) \(.source) \(.update_seq)"' <<<"$LAST_STDOUT")" \
  "state reported by the running primary's admin API"

step "after the snapshot: $AFTER_M new packages, a new tag and an unpublish"
node "$FIXTURES/gen_packages.js" "$T/gen-after" "$AFTER_M" 1 seed-new 2 8
bulk_publish primary "$TOKEN" "$T/gen-after/list"
expect_exit 0 npm_as primary "$TOKEN" -- dist-tag add seed-old-0@1.0.0 stable
expect_exit 0 npm_as primary "$TOKEN" -- unpublish seed-old-1 --force
mapfile -t NAMES < <(awk '{ print $1 }' "$T/gen-before/list" "$T/gen-after/list")
((${#NAMES[@]} == BEFORE_N + AFTER_M)) || fail "expected $((BEFORE_N + AFTER_M)) package names, got ${#NAMES[@]}"

step "seed a fresh replica from the snapshot"
expect_exit 0 run_npme --root "$T/replica" restore "$T/seed.tar.zst" --as-replica --json
assert_eq "$SNAP_SEQ" "$(jq -r .sequence <<<"$LAST_STDOUT")" "sequence the restore reports"
assert_eq "$SNAP_SEQ" "$(tr -d '\n' <"$T/replica/data/sequence")" "sequence file of the seeded replica"
assert_ne "$(cat "$T/primary/data/instance-id")" "$(cat "$T/replica/data/instance-id" 2>/dev/null || true)" \
  "the seeded replica does not take the primary's identity"
SECRET="$("$NPME" --root "$T/primary" settings get secret --reveal)"
expect_exit 0 run_npme --root "$T/replica" settings set --offline "upstream.url=${REGISTRY[primary]}" \
  "upstream.secret=$SECRET" upstream.policy=mirror

step "serve the replica: it fetches only the later changes"
start_instance replica
wait_synced replica primary
# (In one window of more than 8 changes: through the bulk route, not GETs.)
assert_eq "$AFTER_M" "$(tarballs_fetched replica)" "tarballs the replica fetched while seeding"
assert_eq "$(content_digest primary "$TOKEN" "${NAMES[@]}")" "$(content_digest replica "$TOKEN" "${NAMES[@]}")" \
  "content digest of primary and seeded replica"
digest="$(content_digest replica "$TOKEN" seed-old-0 seed-old-1 "seed-new-$((AFTER_M - 1))")"
assert_contains "$digest" "seed-old-0 tag stable=1.0.0" "tag made after the snapshot"
assert_contains "$digest" "seed-old-1 404" "package unpublished after the snapshot"
assert_contains "$digest" "seed-new-$((AFTER_M - 1)) version 1.0.0" "package published after the snapshot"
verify_tarballs replica "$TOKEN" "${NAMES[@]:2}"
assert_file_missing "$(tarball_path replica seed-old-1 1.0.0)"

step "the seeded replica keeps following"
node "$FIXTURES/gen_packages.js" "$T/gen-late" 2 1 seed-late 2 4
bulk_publish primary "$TOKEN" "$T/gen-late/list"
wait_synced replica primary
assert_eq "$((AFTER_M + 2))" "$(tarballs_fetched replica)" "tarballs the replica fetched after two more"

step "snapshot.json of a running replica and of a stopped instance"
expect_exit 0 run_npme --root "$T/replica" snapshot create -o "$T/replica.tar.zst" --json
assert_eq replica "$(jq -r .manifest.role <<<"$LAST_STDOUT")" "role of the replica's snapshot"
assert_eq "replica $(update_seq primary) caught-up" \
  "$(jq -r '.manifest.reported_state | "\(.role) \(.follower_sequence) \(.follower_state)"' <<<"$LAST_STDOUT")" \
  "follower state reported by the replica's admin API"
assert_eq "$(update_seq primary)" "$(jq -r .manifest.sequence <<<"$LAST_STDOUT")" "sequence file in the replica's snapshot"
stop_instance replica
stop_instance primary
expect_exit 0 run_npme --root "$T/primary" snapshot create -o "$T/stopped.tar.zst" --json
assert_eq null "$(jq -c .manifest.reported_state <<<"$LAST_STDOUT")" "no admin API state for a stopped instance"
assert_eq false "$(jq -r .manifest.instance_running <<<"$LAST_STDOUT")" "taken while stopped"
