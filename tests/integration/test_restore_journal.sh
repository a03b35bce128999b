#!/usr/bin/env bash
# `npme restore --force` killed (SIGKILL, by strace's fault injection) at
# each rename of its swap: the three host directories are never found mixed.
# The restore writes a journal of its renames first (data.restore-journal);
# the next command that takes the instance lock (here, alternately,
# `npme doctor --offline` and `npme serve`) finishes them. Afterwards the
# instance is all the old snapshot or all the new one: its metadata, its
# tarballs and its data directory agree, and doctor finds nothing. Two
# restores in the same second keep their old directories under different
# names.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/snapshot_lib.sh"

have_tool strace "killing a restore at each of its renames" ||
  skip_test "strace is not installed (apt-get install strace)"

start_instance src
add_user src alice 'alice-password-1'
TOKEN="$(create_token src alice)"
step "two snapshots that differ in every directory"
publish_fast src "$TOKEN" npme-it-rj-one 1.0.0
printf 'npme-it-rj-one\n' >"$T/src/data/whitelist"
run_npme --root "$T/src" --quiet snapshot create -o "$T/a.tar.zst"
publish_fast src "$TOKEN" npme-it-rj-two 1.0.0
printf 'npme-it-rj-one\nnpme-it-rj-two\n' >"$T/src/data/whitelist"
run_npme --root "$T/src" --quiet snapshot create -o "$T/b.tar.zst"
stop_instance src

# which_snapshot — "a" or "b" when the target's three directories are all
# of one snapshot; fails on a mix.
which_snapshot() {
  local db tarball whitelist
  db="$(sqlite3 -readonly -batch "$T/target/couchdb/registry.sqlite" \
    "SELECT COUNT(*) FROM docs WHERE id = 'npme-it-rj-two'")"
  [[ -f "$(tarball_path target npme-it-rj-two 1.0.0)" ]] && tarball=1 || tarball=0
  grep -qx 'npme-it-rj-two' "$T/target/data/whitelist" && whitelist=1 || whitelist=0
  if [[ "$db$tarball$whitelist" == 000 ]]; then
    echo a
  elif [[ "$db$tarball$whitelist" == 111 ]]; then
    echo b
  else
    fail "the directories are a mix: metadata $db, packages $tarball, data $whitelist (1: snapshot b's)"
  fi
}

run_npme --root "$T/target" --quiet restore "$T/a.tar.zst"
assert_eq a "$(which_snapshot)" "the target after its first restore"

step "how many renames a restore makes (counted by strace)"
traced -f -qq -o "$T/renames" -e trace=rename,renameat,renameat2 \
  "$NPME" --root "$T/target" --quiet restore "$T/b.tar.zst" --force || fail "restore b failed under strace"
renames="$(wc -l <"$T/renames")"
info "$renames renames"
((renames >= 7)) || fail "a restore over three directories made only $renames renames: $(cat "$T/renames")"
assert_eq b "$(which_snapshot)" "the target after an uncut restore"

current=b
finished_journals=0
for ((when = 1; when <= renames; when++)); do
  [[ "$current" == a ]] && next=b || next=a
  step "restore $next over $current, killed at its rename number $when"
  rc=0
  traced -f -qq -o /dev/null -e trace=rename,renameat,renameat2 \
    -e inject=rename,renameat,renameat2:signal=KILL:when="$when" \
    "$NPME" --root "$T/target" --quiet restore "$T/$next.tar.zst" --force >"$T/restore.out" 2>&1 || rc=$?
  info "restore exit $rc"
  if [[ -e "$T/target/data.restore-journal" ]]; then
    finished_journals=$((finished_journals + 1))
    if ((when % 2 == 0)); then
      info "journal left: npme serve finishes it"
      start_instance target
      stop_instance target
      assert_contains "$(cat "$T/target.serve.log")" "finished the restore that was killed" "serve's log"
    else
      info "journal left: npme doctor --offline finishes it"
      run_npme --root "$T/target" doctor --offline
    fi
    [[ -e "$T/target/data.restore-journal" ]] && fail "the journal is still there"
    assert_eq "$next" "$(which_snapshot)" "the target once its journal is finished"
  fi
  state="$(which_snapshot)"
  if ((rc == 0)); then
    assert_eq "$next" "$state" "the target after a restore that was not killed"
  fi
  expect_exit 0 "$NPME" --root "$T/target" doctor --offline --json
  info "the target is snapshot $state"
  current="$state"
done
((finished_journals >= 6)) ||
  fail "only $finished_journals kills fell between the journal and its end: the swap was not exercised"
info "ok: $finished_journals interrupted swaps finished"

step "a restore run again to the end leaves no partial, scratch or journal file"
[[ "$current" == a ]] && next=b || next=a
run_npme --root "$T/target" --quiet restore "$T/$next.tar.zst" --force
assert_eq "$next" "$(which_snapshot)" "the target"
leftovers="$(find "$T" -maxdepth 2 \( -name '*.restore-partial' -o -name '*.restore-scratch' \
  -o -name '*.restore-journal*' \) -printf '%f ')"
assert_eq "" "$leftovers" "leftovers beside the target's directories"

step "two restores within one second keep the old directories under different names"
rm -rf "$T"/target/*.pre-restore-*
for s in a b a; do
  run_npme --root "$T/target" --quiet restore "$T/$s.tar.zst" --force
done
aside="$(find "$T/target" -maxdepth 1 -name 'couchdb.pre-restore-*' | wc -l)"
assert_eq 3 "$aside" "couchdb directories kept aside by three restores"
assert_eq a "$(which_snapshot)" "the target"

echo "PASS: $TEST_NAME"
