#!/usr/bin/env bash
# Kill -9 campaign: `npme settings set` (tests/chaos/README.md).
#
# One instance. Each trial sets three keys to new drawn values
# (`uplink.maxage`, `replication.follower_timeout`, `storage.min_free`),
# in one of three drawn ways: through the admin API with SIGKILL to the
# server (which writes the file), through the admin API with SIGKILL to
# the CLI, or `--offline` on the stopped instance with SIGKILL to the CLI
# (which writes the file itself); the delay is drawn over the duration of
# that command. Right after the kill, before anything restarts:
# - settings.json is a regular file of mode 0600 holding valid JSON;
# - a temp file the write left beside it (settings.json.tmp.*) has mode
#   0600 too (it holds the secrets);
# then the server, if it was killed, starts again on that file, the same
# command runs again to the end, and the file right after the kill must be
# byte for byte the old one or the one the command writes (what it holds
# after the run again). The values are in force (`settings get` on the
# running instance, the file on a stopped one), and `npme doctor` (online,
# or --offline on a stopped instance) is clean. "mid-op": the CLI was still
# running at the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

declare -A SET_MS=()

campaign_setup() {
  start_instance main
  calibrate "SET_MS[online]" "$NPME" --root "$T/main" --quiet settings set uplink.maxage=301
  stop_instance main
  calibrate "SET_MS[offline]" "$NPME" --root "$T/main" --quiet settings set --offline uplink.maxage=302
  start_instance main
}

campaign_trial() {
  local mode delay pid rc maxage timeout min_free file="$T/main/settings.json"
  pick mode server cli offline
  draw maxage 100000
  draw timeout 1000
  draw min_free 4096
  local -a assignments=("uplink.maxage=$((maxage + 60))" "replication.follower_timeout=$((timeout + 10))"
    "storage.min_free=$((min_free + 1))M")
  local -a command=("$NPME" --root "$T/main" settings set)
  if [[ "$mode" == offline ]]; then
    command+=(--offline)
    [[ -z "${INSTANCE_PID[main]:-}" ]] || stop_instance_checked main
    kill_window delay "${SET_MS[offline]}"
  else
    [[ -n "${INSTANCE_PID[main]:-}" ]] || start_instance main
    kill_window delay "${SET_MS[online]}"
  fi
  command+=("${assignments[@]}")
  cp -p "$file" "$T/settings.old"
  find "$T/main" -maxdepth 1 -name 'settings.json.tmp.*' >"$T/tmp.before"
  info "trial $TRIAL: settings set ${assignments[*]} ($mode), kill after $delay ms"
  bg_start pid "${command[@]}" >"$T/set.out" 2>&1
  if [[ "$mode" == server ]]; then
    local server="${INSTANCE_PID[main]}"
    kill_after "$delay" "$server"
    KILL_LANDED=0
    k9_alive "$pid" && KILL_LANDED=1
    wait "$server" 2>/dev/null || true
    unset "INSTANCE_PID[main]"
  else
    kill_after "$delay" "$pid"
  fi
  TRIAL_LANDED="$KILL_LANDED"
  bg_wait rc "$pid"
  info "settings set exit $rc: $(head -c 300 "$T/set.out" | tr '\n' ' ')"

  # The file as the kill left it.
  if [[ ! -f "$file" || -L "$file" ]]; then
    violation "settings.json is not a regular file after the kill"
    : >"$T/settings.after"
  else
    cp -p "$file" "$T/settings.after"
    [[ "$(stat -c %a "$file")" == 600 ]] || violation "settings.json has mode $(stat -c %a "$file") after the kill"
    jq -e 'type == "object"' "$file" >/dev/null 2>&1 || violation "settings.json is not a JSON object after the kill"
  fi
  local tmp
  while IFS= read -r tmp; do
    grep -qxF "$tmp" "$T/tmp.before" && continue
    note "left ${tmp##*/}"
    [[ "$(stat -c %a "$tmp")" == 600 ]] || violation "${tmp##*/} has mode $(stat -c %a "$tmp")"
  done < <(find "$T/main" -maxdepth 1 -name 'settings.json.tmp.*')
  [[ "$mode" == server ]] && start_instance main

  # Run again, to the end: the new file.
  local again=0
  "${command[@]}" >"$T/again.out" 2>&1 || again=$?
  [[ "$again" == 0 ]] || violation "settings set run again exited $again: $(head -c 300 "$T/again.out")"
  if cmp -s "$T/settings.after" "$file"; then
    info "after the kill: the new file"
  elif cmp -s "$T/settings.after" "$T/settings.old"; then
    info "after the kill: the old file"
    # The CLI said it was done: the change must have been on disk.
    [[ "$rc" != 0 ]] || violation "settings set exited 0 before the kill, but the file was still the old one"
  else
    violation "after the kill settings.json was neither the old file nor the new one: $(diff "$T/settings.old" "$T/settings.after" | head -c 300)"
  fi
  local key value actual assignment
  for assignment in "${assignments[@]}"; do
    key="${assignment%%=*}"
    value="${assignment#*=}"
    if [[ -n "${INSTANCE_PID[main]:-}" ]]; then
      actual="$("$NPME" --root "$T/main" settings get "$key" 2>&1 || true)"
    else
      actual="$(jq -r --arg k "$key" '.[$k] // empty' "$file")"
    fi
    [[ "$actual" == "$value" ]] || violation "$key is '$actual' after the run again, not '$value'"
  done
  if [[ -n "${INSTANCE_PID[main]:-}" ]]; then
    doctor_online main
  else
    doctor_offline main
  fi
}

kill9_run
