#!/usr/bin/env bash
# Snapshot create and restore cut short: SIGINT or SIGTERM ends them with exit
# 130 (DESIGN.md §4, interrupted) and nothing half-done (no .part file, no
# work directory, no hard links under packages/.staging, restore targets
# untouched), and a command that only reads (snapshot verify) ends at once
# with 130; kill -9 of a create writing a timestamped name leaves its
# .part-work directory, which the next create in that directory removes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/snapshot_lib.sh"

start_instance a
add_user a alice 'alice-password-1'
TOKEN="$(create_token a alice)"
step "publish 45 MiB of incompressible tarballs: every create and restore takes a while"
for i in 1 2 3; do
  publish_fast a "$TOKEN" npme-it-intr-big "1.0.$i" 15
done
publish_fast a "$TOKEN" npme-it-intr-small 1.0.0

# start_bg NAME cmd... — runs cmd in the background (output in $T/NAME.log); sets BG_PID.
start_bg() {
  local name="$1"
  shift
  "$@" >"$T/$name.log" 2>&1 &
  BG_PID=$!
  STARTED_PIDS+=("$BG_PID")
}

# finish_bg — waits for BG_PID; sets BG_RC to its exit status.
finish_bg() {
  BG_RC=0
  wait "$BG_PID" || BG_RC=$?
}

# wait_open PID FILE — until process PID has FILE open (or has exited).
wait_open() {
  local pid="$1" file="$2" i fd
  for ((i = 0; i < 3000; i++)); do
    for fd in /proc/"$pid"/fd/*; do
      [[ "$(readlink "$fd" 2>/dev/null)" == "$file" ]] && return 0
    done
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.005
  done
  return 1
}

# no_leftovers DIR — no .part file and no work directory in DIR, and no
# snapshot hard links of a live or dead run under the instance's staging.
no_leftovers() {
  local dir="$1"
  assert_eq "" "$(find "$dir" -maxdepth 1 -name '*.part' -printf '%f\n')" ".part files in $(basename "$dir")"
  assert_eq "" "$(find "$dir" -maxdepth 1 -name '*.part-work' -printf '%f\n')" "work directories in $(basename "$dir")"
  assert_eq "" "$(find "$T/a/packages/.staging" -mindepth 1 -maxdepth 1 -name 'snapshot-*' -printf '%f\n')" \
    "snapshot link directories under packages/.staging"
}

for signal in INT TERM; do
  step "SIG$signal during snapshot create --dir: exit 130, nothing left"
  dir="$T/snaps-$signal"
  mkdir -p "$dir"
  start_bg "create-$signal" "$NPME" --root "$T/a" snapshot create --dir "$dir" --compression gzip
  wait_for_path "$dir/*.part" "$BG_PID" || fail "create finished before it could be interrupted: $(cat "$T/create-$signal.log")"
  kill "-$signal" "$BG_PID"
  finish_bg
  cat "$T/create-$signal.log"
  assert_eq 130 "$BG_RC" "exit status of snapshot create after SIG$signal"
  assert_contains "$(cat "$T/create-$signal.log")" "not written: interrupted" "the message"
  assert_eq "" "$(find "$dir" -mindepth 1 -printf '%f\n')" "what the interrupted create left in its directory"
  no_leftovers "$dir"
done

step "SIGINT during snapshot create -o: exit 130, no .part"
start_bg create-o "$NPME" --root "$T/a" snapshot create -o "$T/named.tar.zst"
wait_for_path "$T/named.tar.zst.part" "$BG_PID" || fail "create finished before it could be interrupted"
kill -INT "$BG_PID"
finish_bg
assert_eq 130 "$BG_RC" "exit status of snapshot create -o after SIGINT"
assert_file_missing "$T/named.tar.zst"
no_leftovers "$T"

step "kill -9 of a create with a timestamped name leaves its work directory; the next create removes it"
KILLED="$T/snaps-killed"
mkdir -p "$KILLED"
start_bg create-killed "$NPME" --root "$T/a" snapshot create --dir "$KILLED" --compression gzip
wait_for_path "$KILLED/*.part" "$BG_PID" || fail "create finished before it could be killed"
kill -KILL "$BG_PID"
finish_bg
work="$(find "$KILLED" -maxdepth 1 -name '*.part-work' -printf '%f\n')"
[[ -n "$work" ]] || fail "expected the killed run's work directory in $KILLED: $(ls -la "$KILLED")"
info "left by kill -9: $work"
expect_exit 0 "$NPME" --root "$T/a" snapshot create --dir "$KILLED" --compression gzip --json
SNAP="$(jq -r .file <<<"$LAST_STDOUT")"
assert_file_exists "$SNAP"
assert_eq "" "$(find "$KILLED" -maxdepth 1 -name '*.part-work' -printf '%f\n')" "work directories after the next create"
assert_eq "" "$(find "$T/a/packages/.staging" -mindepth 1 -maxdepth 1 -name 'snapshot-*' -printf '%f\n')" \
  "link directories after the next create"
expect_exit 0 "$NPME" snapshot list --dir "$KILLED" --json
assert_eq "$SNAP" "$(jq -r '.snapshots[].file' <<<"$LAST_STDOUT")" "list: the new snapshot only (the .part is ignored)"

step "SIGTERM during snapshot verify (it only reads): exit 130 at once"
# Verifying 45 MiB takes a fraction of a second: each read is slowed by
# 50 ms under strace (it reads 1 MiB at a time), so that the signal lands
# mid-verify on any machine.
start_bg verify traced -f -qq -o /dev/null -e trace=read -e inject=read:delay_exit=50000 \
  "$NPME" snapshot verify "$SNAP"
VERIFY_PID=""
for ((i = 0; i < 500; i++)); do
  VERIFY_PID="$(pgrep -f -- "^$NPME snapshot verify $SNAP\$" || true)" # not strace, whose command line holds it too
  [[ -z "$VERIFY_PID" ]] || break
  sleep 0.01
done
[[ -n "$VERIFY_PID" ]] || fail "snapshot verify did not start under strace: $(cat "$T/verify.log")"
wait_open "$VERIFY_PID" "$SNAP" || fail "verify finished before it could be interrupted: $(cat "$T/verify.log")"
kill -TERM "$VERIFY_PID"
finish_bg
assert_eq 130 "$BG_RC" "exit status of snapshot verify after SIGTERM"
# (strace may add a line of its own)
assert_eq "npme: error: interrupted" "$(grep -v "^strace: " "$T/verify.log")" "what it printed"
stop_instance a

for signal in INT TERM; do
  step "SIG$signal during restore --force: exit 130, the old directories untouched"
  mkdir -p "$T/b-$signal"
  expect_exit 0 "$NPME" --root "$T/b-$signal" restore "$SNAP"
  # What the snapshot does not hold: a restore that went through would drop it.
  printf 'npme-it-intr-small\n' >"$T/b-$signal/data/whitelist"
  BEFORE="$(instance_listing "$T/b-$signal")"
  start_bg "restore-$signal" "$NPME" --root "$T/b-$signal" restore "$SNAP" --force
  wait_for_path "$T/b-$signal/packages.restore-partial/npme-it-intr-big" "$BG_PID" ||
    fail "restore finished before it could be interrupted: $(cat "$T/restore-$signal.log")"
  kill "-$signal" "$BG_PID"
  finish_bg
  cat "$T/restore-$signal.log"
  assert_eq 130 "$BG_RC" "exit status of restore after SIG$signal"
  assert_contains "$(cat "$T/restore-$signal.log")" "interrupted: nothing restored" "the message"
  assert_eq "$BEFORE" "$(instance_listing "$T/b-$signal")" "the instance's directories after SIG$signal"
  assert_eq "" "$(find "$T/b-$signal" -maxdepth 1 -name '*.restore-*' -printf '%f\n')" "partial and scratch directories"
  assert_eq "" "$(find "$T/b-$signal" -maxdepth 1 -name '*.pre-restore-*' -printf '%f\n')" "directories kept aside"
  # The lock was released: the instance starts and serves what it had.
  start_instance "b-$signal"
  http GET "${REGISTRY[b-$signal]}/npme-it-intr-small" -H "Authorization: Bearer $TOKEN"
  assert_eq 200 "$HTTP_STATUS" "a package of the old directories"
  stop_instance "b-$signal"
done
echo "PASS: $TEST_NAME"
