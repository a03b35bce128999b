#!/usr/bin/env bash
# Kill -9 campaign: `npme promote-to-primary` (tests/chaos/README.md).
#
# A primary with a user, a token and 3 packages. Each trial starts a new
# replica, lets it catch up, and runs `npme promote-to-primary --yes` on
# it in one of two drawn ways: `--fence <primary's admin URL>
# --fence-token-file F --wait-timeout 10` (the old primary set read-only
# first), or `--force --wait-timeout 0`. After a random delay drawn over
# the duration of a promotion, SIGKILL goes to a drawn victim: the CLI,
# or the replica's server (restarted then). Then the replica is one of:
# - still a replica: `upstream.url` still the primary's, publication
#   read-only, role "replica", and its follower catches up with the
#   primary again (a raised epoch is allowed: epochs only need to grow);
# - a working primary: upstream.url empty, publication all, role
#   "primary", epoch above the one before, and a publish answered 201;
# anything else (say, upstream.url cleared but still read-only) is
# "half-promoted". The same command run again must then exit 0 (it was
# still a replica) or 6 ("not a replica": it was promoted), and leave a
# working primary (epoch raised, a publish answered 201 and served).
# `npme doctor` through its admin API is clean. After a fenced trial the
# primary is set writable again. "mid-op": the CLI was still running at
# the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

campaign_setup() {
  start_instance primary
  add_user primary alice 'alice-password-1'
  TOKEN="$(create_token primary alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" 3 1 k9prom 1 8 || fail "gen_packages.js failed"
  bulk_publish primary "$TOKEN" "$T/gen/list"
  node "$FIXTURES/gen_packages.js" "$T/gen-new" $((2 * K9_TRIALS + 2)) 1 k9prom-new 1 4 || fail "gen_packages.js failed"
  mapfile -t NEW <"$T/gen-new/list"
  admin_token primary >"$T/primary.token"
  # How long a promotion takes (the fenced one: one more request than
  # --force; both are drawn over it).
  new_replica cal
  promote_args fence
  calibrate PROMOTE_MS "$NPME" --root "$T/cal" --quiet promote-to-primary "${PROMOTE_ARGS[@]}"
  stop_instance cal
  rm -rf "${T:?}/cal"
  run_npme --root "$T/primary" settings set publication=all >/dev/null || fail "cannot unfence the primary"
}

# new_replica NAME — a new instance, a caught-up replica of the primary.
new_replica() {
  start_instance "$1"
  make_replica "$1" primary
  wait_follower "$1" "$(db_seq primary)" 60 || fail "replica $1 did not catch up within 60 s"
}

# promote_args MODE — the command's arguments for "fence" or "force", in
# PROMOTE_ARGS.
PROMOTE_ARGS=()
promote_args() {
  if [[ "$1" == fence ]]; then
    PROMOTE_ARGS=(--yes --fence "${ADMIN[primary]}" --fence-token-file "$T/primary.token" --wait-timeout 10)
  else
    PROMOTE_ARGS=(--yes --force --wait-timeout 0)
  fi
}

# put_new NAME INDEX — PUTs new body INDEX to instance NAME; prints the status.
put_new() {
  local name file
  read -r name _ file <<<"${NEW[$2]}"
  curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data-binary "@$file" "${REGISTRY[$1]}/$name" || true
}

# role_of NAME — "role publication upstream.url epoch" of the instance
# (status for role and epoch, its settings file for the rest).
role_of() {
  local status
  status="$("$NPME" --root "$T/$1" status --json 2>/dev/null)" || { echo "unreachable - - -"; return 0; }
  printf '%s %s %s %s\n' "$(jq -r .role <<<"$status")" "$(jq -r '.publication // "all"' "$T/$1/settings.json")" \
    "$(jq -r '."upstream.url" // "" | if . == "" then "-" else . end' "$T/$1/settings.json")" "$(jq -r .epoch <<<"$status")"
}

# check_primary NAME EPOCH_BEFORE INDEX WHAT — NAME works as a primary.
check_primary() {
  local name="$1" before="$2" index="$3" what="$4" role publication upstream epoch status
  read -r role publication upstream epoch < <(role_of "$name")
  [[ "$role $publication $upstream" == "primary all -" ]] ||
    violation "$what: not a working primary: role $role, publication $publication, upstream.url $upstream"
  [[ "$epoch" =~ ^[0-9]+$ ]] && ((epoch > before)) || violation "$what: epoch $epoch, not above $before"
  status="$(put_new "$name" "$index")"
  [[ "$status" == 201 ]] || violation "$what: a publish answered $status"
  local pkg="${NEW[$index]%% *}"
  status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H "Authorization: Bearer $TOKEN" "${REGISTRY[$name]}/$pkg")"
  [[ "$status" == 200 ]] || violation "$what: the package just published answers $status"
}

campaign_trial() {
  local name="r$TRIAL" mode victim delay pid rc epoch_before role publication upstream epoch
  pick mode fence force
  pick victim cli server
  kill_window delay "$PROMOTE_MS"
  new_replica "$name"
  epoch_before="$("$NPME" --root "$T/$name" status --json | jq -r .epoch)"
  promote_args "$mode"
  info "trial $TRIAL: promote-to-primary ($mode), kill -9 of the $victim after $delay ms"
  bg_start pid "$NPME" --root "$T/$name" --json promote-to-primary "${PROMOTE_ARGS[@]}" >"$T/promote.out" 2>&1
  if [[ "$victim" == cli ]]; then
    kill_after "$delay" "$pid"
  else
    local server="${INSTANCE_PID[$name]}"
    kill_after "$delay" "$server"
    KILL_LANDED=0
    k9_alive "$pid" && KILL_LANDED=1
    wait "$server" 2>/dev/null || true
    unset "INSTANCE_PID[$name]"
  fi
  TRIAL_LANDED="$KILL_LANDED"
  bg_wait rc "$pid"
  info "promote exit $rc: $(head -c 300 "$T/promote.out" | tr '\n' ' ')"
  [[ "$victim" == server ]] && start_instance "$name"

  read -r role publication upstream epoch < <(role_of "$name")
  info "after the kill: role $role, publication $publication, upstream.url $upstream, epoch $epoch (before: $epoch_before)"
  local state
  if [[ "$role $publication $upstream" == "replica read-only ${REGISTRY[primary]}" ]]; then
    state=replica
    [[ "$epoch" == "$epoch_before" ]] || note "still a replica, with its epoch raised to $epoch"
    [[ "$rc" == 0 ]] && violation "promote exited 0 but the instance is still a replica"
    wait_follower "$name" "$(db_seq primary)" 60 || violation "still a replica, but its follower did not catch up with the primary within 60 s"
  elif [[ "$role $publication $upstream" == "primary all -" ]]; then
    state=primary
    check_primary "$name" "$epoch_before" $((2 * TRIAL)) "promoted by the killed run"
  else
    state=half
    violation "half-promoted: role $role, publication $publication, upstream.url $upstream, epoch $epoch (before $epoch_before)"
  fi

  # Run again, to the end.
  rc=0
  "$NPME" --root "$T/$name" --json promote-to-primary "${PROMOTE_ARGS[@]}" >"$T/again.out" 2>&1 || rc=$?
  info "promote run again: exit $rc: $(head -c 300 "$T/again.out" | tr '\n' ' ')"
  case "$state" in
    replica) [[ "$rc" == 0 ]] || violation "promote run again on the replica exited $rc: $(head -c 300 "$T/again.out")" ;;
    primary) [[ "$rc" == 6 ]] && grep -q 'not a replica' "$T/again.out" ||
      violation "promote run again on the promoted instance exited $rc: $(head -c 300 "$T/again.out")" ;;
  esac
  check_primary "$name" "$epoch_before" $((2 * TRIAL + 1)) "after the run again"
  doctor_online "$name"
  stop_instance_checked "$name"
  if [[ "$mode" == fence ]]; then
    run_npme --root "$T/primary" settings set publication=all >/dev/null || fail "cannot unfence the primary"
  fi
  ((${#TRIAL_VIOLATIONS[@]} > 0)) || rm -rf "${T:?}/$name" "$T/$name.serve.log"
}

kill9_run
