#!/usr/bin/env bash
# Kill -9 campaign: a burst of publishes (tests/chaos/README.md).
#
# One instance. Each trial sends 12 publishes (3 packages x 4 versions,
# 1-48 KB tarballs) as concurrent curl PUTs of npm's publish body, from 2 to
# 4 writers that publish versions of the same packages at once. The server
# gets SIGKILL after a random delay drawn over the burst's duration. One
# trial in three also runs a real `npm publish`: the kill then lands in
# [0.7, 1.7) of npm's duration (it PUTs at the end of its run), and the
# curl burst starts so that the kill lands at a drawn point of it too.
# Then, before the restart, `npme doctor --offline --repair` (orphan
# tarballs are the one defect a kill may leave; anything else is a
# violation) and `npme doctor --offline` (must be clean); after the restart:
# - every publish acknowledged to its client (201 to curl, exit 0 for npm)
#   is in its packument with the integrity the client sent, and the tarball
#   the registry serves hashes to it;
# - nothing is half-stored: every version in the database of the trial's
#   packages has its tarball file, matching dist.integrity, and
#   dist-tags.latest names a version that is there.
# "mid-op": at least one publish got no answer (the kill cut it).
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

PER_TRIAL_PACKAGES=3
VERSIONS=4

campaign_setup() {
  start_instance main
  add_user main alice 'alice-password-1'
  TOKEN="$(create_token main alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" $((K9_TRIALS * PER_TRIAL_PACKAGES)) "$VERSIONS" k9pub 1 48 ||
    fail "gen_packages.js failed"
  node "$FIXTURES/gen_packages.js" "$T/gen-cal" "$PER_TRIAL_PACKAGES" "$VERSIONS" k9pubcal 1 48 ||
    fail "gen_packages.js failed"
  mapfile -t GEN <"$T/gen/list"
  # How long a burst and an npm publish take here and now: the kill delays
  # are drawn over those.
  cp "$T/gen-cal/list" "$T/cal.items"
  calibrate BURST_MS run_writers "$T/cal" "$T/cal.items" 3 wait
  grep -qv ' 201 ' "$T/cal".log-* && fail "calibration burst: not every publish got 201: $(cat "$T/cal".log-*)"
  make_package "$T/npm-cal" k9pub-npm-cal 1.0.0
  calibrate NPM_MS in_dir "$T/npm-cal" npm_as main "$TOKEN" -- publish --json
  info "burst $BURST_MS ms, npm publish $NPM_MS ms"
}

# writer LOG ITEMS... — PUTs each "name version file" item in order; logs
# "name version status integrity time" per item (status 000: no answer;
# time: EPOCHREALTIME of the answer).
writer() {
  local log="$1" item name version file status
  shift
  for item in "$@"; do
    read -r name version file <<<"$item"
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data-binary "@$file" "${REGISTRY[main]}/${name/\//%2f}")" || true
    printf '%s %s %s %s %s\n' "$name" "$version" "${status:-000}" "$(body_integrity "$file")" "$EPOCHREALTIME" >>"$log"
  done
}

# run_writers PREFIX ITEMS_FILE W [wait] — W writers over the items (item j
# to writer j mod W, so the versions of a package go to different writers at
# once); their pids in WRITER_PIDS; waits for them with "wait".
WRITER_PIDS=()
run_writers() {
  local prefix="$1" items_file="$2" writers="$3" w j pid
  local -a items
  mapfile -t items <"$items_file"
  WRITER_PIDS=()
  for ((w = 0; w < writers; w++)); do
    local -a mine=()
    for ((j = w; j < ${#items[@]}; j += writers)); do
      mine+=("${items[j]}")
    done
    : >"$prefix.log-$w"
    bg_start pid writer "$prefix.log-$w" "${mine[@]}"
    WRITER_PIDS+=("$pid")
  done
  if [[ "${4:-}" == wait ]]; then
    for pid in "${WRITER_PIDS[@]}"; do
      wait "$pid" || return 1
    done
  fi
}

campaign_trial() {
  local writers npm delay base j p v pid npm_pid="" dir="$T/trial-$TRIAL"
  mkdir -p "$dir"
  draw writers 3
  writers=$((writers + 2))
  draw npm 3
  # Item j: version j / 3 of package j % 3 (all packages' 1.0.0 first).
  base=$(((TRIAL - 1) * PER_TRIAL_PACKAGES * VERSIONS))
  : >"$dir/items"
  for ((j = 0; j < PER_TRIAL_PACKAGES * VERSIONS; j++)); do
    p=$((j % PER_TRIAL_PACKAGES))
    v=$((j / PER_TRIAL_PACKAGES))
    printf '%s\n' "${GEN[base + p * VERSIONS + v]}" >>"$dir/items"
  done
  awk '{ print $1 }' "$dir/items" | sort -u >"$dir/names"
  local burst_at=0
  if ((npm == 0)); then
    # npm spends most of its run starting up and PUTs last: the kill lands
    # in [0.7, 1.7) of its measured duration (it runs slower beside the
    # burst than alone). The curl burst starts so that the kill lands at a
    # drawn point of it too.
    local part frac
    draw frac 1000
    delay=$((NPM_MS * (700 + frac) / 1000))
    kill_window part "$BURST_MS"
    burst_at=$((delay > part ? delay - part : 0))
    make_package "$dir/npm" "k9pub-npm-$TRIAL" 1.0.0
    echo "k9pub-npm-$TRIAL" >>"$dir/names"
    info "trial $TRIAL: npm publish, $writers writers from $burst_at ms, kill after $delay ms"
  else
    kill_window delay "$BURST_MS"
    info "trial $TRIAL: $writers writers, kill after $delay ms"
  fi
  local t0="$EPOCHREALTIME"
  if ((npm == 0)); then
    # The port is new after each restart: npm's configuration too.
    printf 'registry=%s/\n//%s/:_authToken=%s\n' "${REGISTRY[main]}" "${REGISTRY[main]#http://}" "$TOKEN" \
      >"$T/npmrc-main"
    bg_start npm_pid bash -c 'cd "$1" && shift && "$@" >"$0.json" 2>"$0.err"; echo $? "$EPOCHREALTIME" >"$0.rc"' \
      "$dir/npm.out" "$dir/npm" "${NPM_CMD[@]}" --userconfig "$T/npmrc-main" --globalconfig "$T/npm-globalrc" \
      --cache "$T/npm-cache" --registry "${REGISTRY[main]}/" --no-audit --no-fund --no-update-notifier \
      --fetch-retries=0 --prefer-online publish --json
    pause_ms "$burst_at"
  fi
  run_writers "$dir/w" "$dir/items" "$writers"
  delay=$((delay - burst_at))
  kill9_instance_after main "$delay"
  for pid in "${WRITER_PIDS[@]}" $npm_pid; do
    wait "$pid" || true
  done

  # What the clients were told.
  cat "$dir"/w.log-* >"$dir/answers"
  : >"$dir/acked"
  awk '$3 == 201 || $3 == 200 { print $1, $2, $4 }' "$dir/answers" >>"$dir/acked"
  local unanswered refused npm_rc=-
  unanswered="$(awk '$3 == "000"' "$dir/answers" | wc -l)"
  refused="$(awk '$3 != "000" && $3 != 201 && $3 != 200' "$dir/answers")"
  [[ -z "$refused" ]] || violation "publishes refused before the kill: $(head -n 3 <<<"$refused" | tr '\n' ' ')"
  if ((npm == 0)); then
    local npm_end=""
    read -r npm_rc npm_end <"$dir/npm.out.rc" 2>/dev/null || npm_rc=000
    if [[ "$npm_rc" == 0 ]]; then
      observed NPM_MS "$(awk -v s="$t0" -v e="$npm_end" 'BEGIN { printf "%d", (e - s) * 1000 }')"
      local integrity
      integrity="$(jq -r 'if has("integrity") then .integrity else (.[] | .integrity) end' "$dir/npm.out.json" 2>/dev/null || true)"
      [[ "$integrity" == sha512-* ]] || violation "npm publish exited 0 without an integrity: $(head -c 300 "$dir/npm.out.json")"
      printf 'k9pub-npm-%s 1.0.0 %s\n' "$TRIAL" "$integrity" >>"$dir/acked"
    else
      unanswered=$((unanswered + 1))
    fi
  fi
  if ((unanswered > 0)); then
    TRIAL_LANDED=1
  elif ((npm != 0)); then
    # Every publish answered before the kill: the burst's real duration.
    observed BURST_MS "$(awk -v s="$t0" '$5 > e { e = $5 } END { printf "%d", (e - s) * 1000 }' "$dir/answers")"
  fi
  info "$(wc -l <"$dir/acked") acknowledged, $unanswered cut by the kill (npm exit $npm_rc)"

  note_orphans main
  doctor_offline main orphans
  start_instance main

  local line
  while IFS= read -r line; do
    violation "acknowledged publish: $line"
  done < <($K9_CHECK acked "${REGISTRY[main]}" "$TOKEN" "$dir/acked" || true)
  # Nothing half-stored: the trial's packages as the database holds them.
  check_store_tarballs main
  local name latest
  while read -r name; do
    latest="$(doc_body main "$name" | jq -r '."dist-tags".latest // empty' 2>/dev/null || true)"
    [[ -z "$latest" ]] && continue
    doc_body main "$name" | jq -e --arg l "$latest" '.versions | has($l)' >/dev/null ||
      violation "$name: dist-tags.latest '$latest' names a version that is not there"
  done <"$dir/names"
  ((${#TRIAL_VIOLATIONS[@]} > 0)) || rm -rf "$dir"
}

kill9_run
