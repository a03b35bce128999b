#!/usr/bin/env bash
# Kill -9 campaign: a follower in the middle of its live stream
# (tests/chaos/README.md).
#
# A primary and a caught-up replica. Each trial sends a burst of writes to
# the primary: 4 packages x 2 versions (2 writers of concurrent curl PUTs),
# a dist-tag added to a package of an earlier trial, and from trial 3 on
# the unpublish of a package of an earlier trial. The replica's server
# gets SIGKILL after a random delay drawn over the time the replica takes
# to apply such a burst. Then:
# - `npme doctor --offline --repair` on the killed replica finds nothing but
#   orphan tarballs, and `npme doctor --offline` nothing at all;
# - restarted, it converges: caught up with the primary's update_seq within
#   120 s, the same store digest (every package document's dist-tags and
#   versions with their integrity), the same packuments through the
#   registry for every name ever published here (unpublished ones: 404 on
#   both), and every tarball file of its store matching dist.integrity;
# - `npme doctor` through its admin API is clean.
# Every write to the primary must succeed (the primary is never killed).
# "mid-op": the replica's data/sequence was behind the primary's database
# at the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

PACKAGES=4
VERSIONS=2

campaign_setup() {
  start_instance primary
  start_instance replica
  add_user primary alice 'alice-password-1'
  TOKEN="$(create_token primary alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" $(((K9_TRIALS + 1) * PACKAGES)) "$VERSIONS" k9live 4 48 ||
    fail "gen_packages.js failed"
  mapfile -t GEN <"$T/gen/list"
  : >"$T/names"
  make_replica replica primary
  wait_follower replica "$(db_seq primary)" 60 || fail "the replica did not catch up within 60 s"
  # Trial 0, uncut: how long the replica takes to apply a burst.
  TRIAL=0
  local t0="$EPOCHREALTIME"
  burst 0 "$T/cal"
  [[ -s "$T/cal.failed" ]] && fail "calibration burst: $(cat "$T/cal.failed")"
  wait_sequence replica "$(db_seq primary)" 60 || fail "the replica did not apply the calibration burst within 60 s"
  BURST_MS="$(k9_ms_since "$t0")"
  info "calibration: the replica applied a burst $BURST_MS ms after it started"
}

# writer FAILED ITEMS... — PUTs each "name version file"; answers other than
# 201 go to FAILED.
writer() {
  local failed="$1" item name version file status
  shift
  for item in "$@"; do
    read -r name version file <<<"$item"
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "@$file" "${REGISTRY[primary]}/${name/\//%2f}")" || true
    [[ "$status" == 201 ]] || printf 'PUT %s@%s answered %s\n' "$name" "$version" "${status:-000}" >>"$failed"
  done
}

# extra_writes N FAILED — a dist-tag on a package of an earlier trial, and
# (trial 3 on) the unpublish of another one.
extra_writes() {
  local n="$1" failed="$2" pkg status rev
  ((n >= 1)) || return 0
  pkg="${UNPUB_CANDIDATES[0]:-}"
  [[ -n "$pkg" ]] || return 0
  status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data-binary '"1.0.0"' \
    "${REGISTRY[primary]}/-/package/$pkg/dist-tags/stable-$n")" || true
  [[ "$status" == 201 || "$status" == 200 ]] || printf 'dist-tag on %s answered %s\n' "$pkg" "${status:-000}" >>"$failed"
  if ((n >= 3)); then
    pkg="${UNPUB_CANDIDATES[1]:-}"
    [[ -n "$pkg" ]] || return 0
    rev="$(curl -s --max-time 30 -H "Authorization: Bearer $TOKEN" "${REGISTRY[primary]}/$pkg" | jq -r '._rev // empty')"
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X DELETE -H "Authorization: Bearer $TOKEN" \
      "${REGISTRY[primary]}/$pkg/-rev/$rev")" || true
    [[ "$status" == 200 || "$status" == 201 ]] || printf 'unpublish of %s answered %s\n' "$pkg" "${status:-000}" >>"$failed"
  fi
}

# burst N PREFIX [nowait] — trial N's writes to the primary (waits for them
# unless "nowait"; their pids in BURST_PIDS). Failures in PREFIX.failed.
BURST_PIDS=()
UNPUB_CANDIDATES=()
burst() {
  local n="$1" prefix="$2" j pid
  : >"$prefix.failed"
  local -a one=() two=()
  for ((j = 0; j < PACKAGES * VERSIONS; j++)); do
    local item="${GEN[n * PACKAGES * VERSIONS + (j % PACKAGES) * VERSIONS + j / PACKAGES]}"
    if ((j % 2 == 0)); then one+=("$item"); else two+=("$item"); fi
    printf '%s\n' "${item%% *}" >>"$T/names"
  done
  sort -u -o "$T/names" "$T/names"
  BURST_PIDS=()
  bg_start pid writer "$prefix.failed" "${one[@]}"
  BURST_PIDS+=("$pid")
  bg_start pid writer "$prefix.failed" "${two[@]}"
  BURST_PIDS+=("$pid")
  bg_start pid extra_writes "$n" "$prefix.failed"
  BURST_PIDS+=("$pid")
  [[ "${3:-}" == nowait ]] && return 0
  for pid in "${BURST_PIDS[@]}"; do
    wait "$pid" || true
  done
}

campaign_trial() {
  local delay seq primary_seq pid
  # Packages of earlier trials (never the calibration's): the first package
  # of a drawn one gets a dist-tag; the second package of trial N-2 is
  # unpublished (each once).
  UNPUB_CANDIDATES=()
  if ((TRIAL >= 2)); then
    local earlier
    draw earlier $((TRIAL - 1))
    UNPUB_CANDIDATES+=("k9live-$(((earlier + 1) * PACKAGES))")
    ((TRIAL < 3)) || UNPUB_CANDIDATES+=("k9live-$(((TRIAL - 2) * PACKAGES + 1))")
  fi
  kill_window delay "$BURST_MS"
  info "trial $TRIAL: burst, kill of the replica after $delay ms (earlier packages: ${UNPUB_CANDIDATES[*]:-none})"
  burst "$TRIAL" "$T/trial" nowait
  kill9_instance_after replica "$delay"
  seq="$(tr -d '\n' <"$T/replica/data/sequence" 2>/dev/null || true)"
  [[ "$seq" =~ ^[0-9]+$ ]] || seq=0
  primary_seq="$(db_seq primary)"
  ((seq < primary_seq)) && TRIAL_LANDED=1
  info "killed at sequence $seq; the primary was at $primary_seq"
  for pid in "${BURST_PIDS[@]}"; do
    wait "$pid" || true
  done
  [[ -s "$T/trial.failed" ]] && violation "writes to the primary failed: $(head -n 3 "$T/trial.failed" | tr '\n' ' ')"

  note_orphans replica
  doctor_offline replica orphans
  start_instance replica
  if ! wait_follower replica "$(db_seq primary)" 120; then
    violation "the restarted replica did not catch up with the primary within 120 s"
  else
    store_digest primary >"$T/digest.primary"
    store_digest replica >"$T/digest.replica"
    diff "$T/digest.primary" "$T/digest.replica" >"$T/diff" ||
      violation "store digest differs from the primary's: $(head -c 400 "$T/diff")"
    http_digest primary "$TOKEN" "$T/names" >"$T/http.primary"
    http_digest replica "$TOKEN" "$T/names" >"$T/http.replica"
    diff "$T/http.primary" "$T/http.replica" >"$T/diff" ||
      violation "content digest differs from the primary's: $(head -c 400 "$T/diff")"
    check_store_tarballs replica
  fi
  doctor_online replica
}

kill9_run
