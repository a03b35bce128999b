#!/usr/bin/env bash
# Kill -9 campaign: a follower in the middle of its initial sync
# (tests/chaos/README.md).
#
# One primary holding 100 packages (8-64 KB tarballs: the follower commits
# them in two windows), a user and a token. Each trial starts a new,
# empty instance, points it at the primary (`npme settings set
# upstream.url=... upstream.secret=... upstream.policy=mirror
# publication=read-only`), and SIGKILLs it after a random delay drawn over
# the duration of a whole initial sync. Then:
# - `npme doctor --offline --repair` on the killed replica finds nothing but
#   orphan tarballs, and `npme doctor --offline` nothing at all;
# - restarted, it converges: caught up with the primary's update_seq within
#   120 s, the same store digest (every package document's dist-tags and
#   versions with their integrity) and the same packuments through the
#   registry (content_digest), every tarball file matching dist.integrity,
#   and the primary's token works on it;
# - stopped with SIGTERM it exits 0, and `npme doctor --offline` is clean.
# "mid-op": the replica's data/sequence was behind the primary's
# update_seq at the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

campaign_setup() {
  start_instance primary
  add_user primary alice 'alice-password-1'
  TOKEN="$(create_token primary alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" 100 1 k9init 8 64 || fail "gen_packages.js failed"
  bulk_publish primary "$TOKEN" "$T/gen/list"
  awk '{ print $1 }' "$T/gen/list" | sort -u >"$T/names"
  TARGET="$(update_seq primary)"
  store_digest primary >"$T/digest.primary"
  http_digest primary "$TOKEN" "$T/names" >"$T/http.primary"
  # How long a whole initial sync takes: the kill delays are drawn over it.
  start_instance cal
  sync_from_scratch cal || fail "the calibration replica did not sync within 120 s"
  info "calibration: an initial sync took $SYNC_MS ms"
  ((SYNC_MS >= 20)) || SYNC_MS=20
  stop_instance cal
  rm -rf "${T:?}/cal"
}

# sync_from_scratch NAME — makes NAME a replica of the primary, then waits
# until its data/sequence reaches the primary's update_seq (measured from
# the moment the follower was told to start, as the kill delays are).
sync_from_scratch() {
  make_replica "$1" primary
  local t0="$EPOCHREALTIME"
  wait_sequence "$1" "$TARGET" 120 || return 1
  SYNC_MS="$(k9_ms_since "$t0")"
}

campaign_trial() {
  local name="r$TRIAL" delay seq
  kill_window delay "$SYNC_MS"
  start_instance "$name"
  make_replica "$name" primary
  kill9_instance_after "$name" "$delay"
  seq="$(tr -d '\n' <"$T/$name/data/sequence" 2>/dev/null || true)"
  [[ "$seq" =~ ^[0-9]+$ ]] || seq=0
  ((seq < TARGET)) && TRIAL_LANDED=1
  info "killed after $delay ms at sequence $seq of $TARGET"

  note_orphans "$name"
  doctor_offline "$name" orphans
  start_instance "$name"
  if ! wait_follower "$name" "$TARGET" 120; then
    violation "the restarted replica did not catch up with the primary (seq $TARGET) within 120 s"
  else
    store_digest "$name" >"$T/digest.$name"
    diff "$T/digest.primary" "$T/digest.$name" >"$T/diff.$name" ||
      violation "store digest differs from the primary's: $(head -c 400 "$T/diff.$name")"
    http_digest "$name" "$TOKEN" "$T/names" >"$T/http.$name"
    diff "$T/http.primary" "$T/http.$name" >"$T/diff.$name" ||
      violation "content digest differs from the primary's: $(head -c 400 "$T/diff.$name")"
    check_store_tarballs "$name"
    [[ "$(whoami_status "$name" "$TOKEN")" == 200 ]] || violation "the primary's token does not work on the replica"
  fi
  stop_instance_checked "$name"
  doctor_offline "$name"
  ((${#TRIAL_VIOLATIONS[@]} > 0)) || rm -rf "${T:?}/$name" "$T/$name.serve.log"
}

kill9_run
