#!/usr/bin/env bash
# Kill -9 campaign: `npme restore` (tests/chaos/README.md).
#
# Two snapshots of one instance at two moments: A (18 packages x 2
# versions, 4-48 KB, and two 2 MiB tarballs; zstd) and B (A, then 7 more
# packages, a third 2 MiB tarball, two packages unpublished, a dist-tag,
# another data/whitelist; gzip): each of the three directories differs. Their content is known: what the instance served when each was
# taken (content digest through the registry), and what each restores to
# (every path and sha256 of the three host directories, restored once into
# a new root). A stopped target instance holds one of them; each trial
# runs `npme restore <the other> --force` and SIGKILLs the CLI after a
# random delay drawn over the duration of such a restore. Then:
# - the three directories (couchdb, packages, data; the lock and the
#   runtime file aside) are all the old ones (as listed just before) or
#   all the new snapshot's, never a mix and never a missing one, once the
#   next command that takes the instance lock has finished the journal of
#   renames a kill during the swap leaves (`data.restore-journal`);
# - started, the instance serves the content of that one (content digest);
# - `npme doctor --offline` is clean;
# - `npme restore <the same snapshot> --force` run again succeeds, leaves
#   the new directories, and no `<dir>.restore-partial` or
#   `<dir>.restore-scratch` beside them.
# The directories the restores keep aside (`<dir>.pre-restore-<UTC>`) are
# removed after each trial. "mid-op": the CLI was still running at the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

declare -A SNAP=() RESTORE_MS=()

campaign_setup() {
  start_instance src
  add_user src alice 'alice-password-1'
  TOKEN="$(create_token src alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" 25 2 k9rest 4 48 || fail "gen_packages.js failed"
  { awk '{ print $1 }' "$T/gen/list"; echo k9rest-big; } | sort -u >"$T/names"
  head -n 36 "$T/gen/list" >"$T/list.a"
  tail -n +37 "$T/gen/list" >"$T/list.b"
  bulk_publish src "$TOKEN" "$T/list.a"
  publish_fast src "$TOKEN" k9rest-big 1.0.0 2
  publish_fast src "$TOKEN" k9rest-big 1.0.1 2
  # A data directory of its own for each snapshot (else only the metadata
  # and the packages would tell A's from B's).
  printf 'k9rest-1\n' >"$T/src/data/whitelist"
  SNAP[a]="$T/snap-a.tar.zst"
  "$NPME" --root "$T/src" --quiet snapshot create -o "${SNAP[a]}" --compression zstd || fail "snapshot A failed"
  http_digest src "$TOKEN" "$T/names" >"$T/digest.a"
  bulk_publish src "$TOKEN" "$T/list.b"
  publish_fast src "$TOKEN" k9rest-big 1.0.2 2
  printf 'k9rest-1\nk9rest-2\n' >"$T/src/data/whitelist"
  local pkg rev
  for pkg in k9rest-3 k9rest-7; do
    rev="$(curl -sS -H "Authorization: Bearer $TOKEN" "${REGISTRY[src]}/$pkg" | jq -r ._rev)"
    http DELETE "${REGISTRY[src]}/$pkg/-rev/$rev" -H "Authorization: Bearer $TOKEN"
  done
  http PUT "${REGISTRY[src]}/-/package/k9rest-1/dist-tags/stable" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data-binary '"1.0.0"'
  SNAP[b]="$T/snap-b.tar.gz"
  "$NPME" --root "$T/src" --quiet snapshot create -o "${SNAP[b]}" --compression gzip || fail "snapshot B failed"
  http_digest src "$TOKEN" "$T/names" >"$T/digest.b"
  stop_instance src
  cmp -s "$T/digest.a" "$T/digest.b" && fail "snapshots A and B serve the same content"

  # What each snapshot restores to: its listing in a new root.
  local s
  for s in a b; do
    "$NPME" --root "$T/ref-$s" --quiet restore "${SNAP[$s]}" || fail "restore of $s into a new root failed"
    instance_listing "$T/ref-$s" >"$T/listing.$s"
    rm -rf "${T:?}/ref-$s"
  done
  local d
  for d in couchdb packages data; do
    cmp -s <(dir_listing "$T/listing.a" "$d") <(dir_listing "$T/listing.b" "$d") &&
      fail "snapshots A and B have the same $d directory: a mix could not be seen"
  done
  # The target, and how long a trial's restore takes: one of each over the
  # other, uncut.
  "$NPME" --root "$T/target" --quiet restore "${SNAP[a]}" || fail "restore of A into the target failed"
  for s in b a; do
    calibrate "RESTORE_MS[$s]" "$NPME" --root "$T/target" --quiet restore "${SNAP[$s]}" --force
    find "$T/target" -mindepth 1 -maxdepth 1 -name '*.pre-restore-*' -exec rm -rf {} +
  done
  CURRENT=a
}

# dir_listing FILE DIR — the part of an instance_listing for one directory.
dir_listing() {
  awk -v d="== $2" '/^== / { on = ($0 == d); next } on' "$1"
}

campaign_trial() {
  local new old="$CURRENT" delay pid rc state d
  [[ "$CURRENT" == a ]] && new=b || new=a
  kill_window delay "${RESTORE_MS[$new]}"
  instance_listing "$T/target" >"$T/listing.before"
  info "trial $TRIAL: restore ${SNAP[$new]##*/} over $old, kill after $delay ms"
  bg_start pid "$NPME" --root "$T/target" restore "${SNAP[$new]}" --force >"$T/restore.out" 2>&1
  kill_after "$delay" "$pid"
  bg_wait rc "$pid"
  TRIAL_LANDED="$KILL_LANDED"
  info "restore exit $rc: $(head -c 300 "$T/restore.out" | tr '\n' ' ')"

  # A kill while the directories were being moved into place leaves the
  # journal of those renames; the next command that takes the instance lock
  # finishes them (a doctor --offline here: it changes nothing else). The
  # directories are judged after that, as any command would find them.
  if [[ -e "$T/target/data.restore-journal" ]]; then
    note "killed while moving the directories into place: journal left"
    "$NPME" --root "$T/target" doctor --offline >"$T/finish.out" 2>&1 || true
    [[ -e "$T/target/data.restore-journal" ]] &&
      violation "the next command that took the lock did not finish the journal: $(tail -n 3 "$T/finish.out" | tr '\n' ' ')"
  fi
  # Old or new, each directory; and all of them the same.
  instance_listing "$T/target" >"$T/listing.now"
  local -a states=()
  for d in couchdb packages data; do
    dir_listing "$T/listing.now" "$d" >"$T/dir.now"
    if cmp -s "$T/dir.now" <(dir_listing "$T/listing.before" "$d"); then
      # Both, when the directory was the same in the old and the new state.
      if cmp -s "$T/dir.now" <(dir_listing "$T/listing.$new" "$d"); then
        states+=("$d=both")
      else
        states+=("$d=old")
      fi
    elif cmp -s "$T/dir.now" <(dir_listing "$T/listing.$new" "$d"); then
      states+=("$d=new")
    elif grep -q '^<missing ' "$T/dir.now"; then
      states+=("$d=missing")
    else
      states+=("$d=other")
    fi
  done
  info "after the kill: ${states[*]}"
  if [[ " ${states[*]} " != *=new\ * && " ${states[*]} " != *=missing\ * && " ${states[*]} " != *=other\ * ]]; then
    state="$old"
  elif [[ " ${states[*]} " != *=old\ * && " ${states[*]} " != *=missing\ * && " ${states[*]} " != *=other\ * ]]; then
    state="$new"
  else
    state=mix
    violation "after the kill the directories are a mix: ${states[*]} (old: snapshot $old, new: snapshot $new; restore exit $rc)"
    cp "$T/listing.now" "$T/listing.mix-$TRIAL"
  fi
  [[ "$rc" == 0 && "$state" != "$new" ]] && violation "restore exited 0 but the directories are not the new ones"
  local leftovers
  leftovers="$(find "$T/target" -mindepth 1 -maxdepth 1 \( -name '*.restore-partial' -o -name '*.restore-scratch' \) \
    -printf '%f ')"
  [[ -z "$leftovers" ]] || note "left beside the directories: $leftovers"

  if [[ "$state" != mix ]]; then
    start_instance target
    http_digest target "$TOKEN" "$T/names" >"$T/digest.now"
    cmp -s "$T/digest.now" "$T/digest.$state" ||
      violation "the restarted instance does not serve snapshot $state's content: $(diff "$T/digest.$state" "$T/digest.now" | head -c 300)"
    stop_instance_checked target
    doctor_offline target
  fi

  # Run again, to the end.
  if ! "$NPME" --root "$T/target" restore "${SNAP[$new]}" --force >"$T/again.out" 2>&1; then
    violation "restore run again after the kill failed: $(tail -n 3 "$T/again.out" | tr '\n' ' ')"
    # The state of the target is unknown now: the campaign cannot go on
    # with the same directories. A fresh restore (next second: the names
    # kept aside carry the time to the second) into an emptied target.
    rm -rf "${T:?}/target"
    "$NPME" --root "$T/target" --quiet restore "${SNAP[$new]}" || fail "a fresh restore of $new failed"
  fi
  instance_listing "$T/target" >"$T/listing.now"
  cmp -s "$T/listing.now" "$T/listing.$new" ||
    violation "after the run again the directories are not snapshot $new's: $(diff "$T/listing.$new" "$T/listing.now" | head -c 300)"
  leftovers="$(find "$T/target" -mindepth 1 -maxdepth 1 \( -name '*.restore-partial' -o -name '*.restore-scratch' \) \
    -printf '%f ')"
  [[ -z "$leftovers" ]] || violation "left beside the directories after the run again: $leftovers"
  find "$T/target" -mindepth 1 -maxdepth 1 -name '*.pre-restore-*' -exec rm -rf {} +
  CURRENT="$new"
}

kill9_run
