#!/usr/bin/env bash
# Kill -9 campaign: `npme snapshot create` (tests/chaos/README.md).
#
# A running instance holding 20 packages x 2 versions (4-48 KB) and three
# 2 MiB tarballs of random bytes. Each trial runs `npme snapshot create`
# into an empty directory, with a drawn compression (zstd, gzip, none) and
# a drawn name (`-o snap.tar...`, or `--dir` and the default name with its
# timestamp), and SIGKILLs the CLI after a random delay drawn over the
# duration of that create. Then, in that directory:
# - a final snapshot file (.tar, .tar.zst, .tar.gz) passes `npme snapshot
#   verify` and has mode 0600; when the CLI had exited 0 before the kill,
#   it is there;
# - besides final files only `<name>.part` files and `<name>.part-work/`
#   directories are left;
# - `npme snapshot list --dir` lists the final files and nothing else;
# - a new `snapshot create -o <other name>` in that directory succeeds and
#   verifies, and removes the stale `.part-work/` directories whatever
#   their names (README, "Good to know"); no `snapshot-<pid>` link
#   directory of a dead process is left in packages/.staging;
# - `npme doctor` through the admin API is clean.
# "mid-op": the CLI was still running at the kill.
# shellcheck disable=SC2034 # TRIAL_LANDED is read by kill9_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kill9_lib.sh"

declare -A CREATE_MS=()

campaign_setup() {
  start_instance main
  add_user main alice 'alice-password-1'
  TOKEN="$(create_token main alice)"
  node "$FIXTURES/gen_packages.js" "$T/gen" 20 2 k9snap 4 48 || fail "gen_packages.js failed"
  bulk_publish main "$TOKEN" "$T/gen/list"
  local i
  for i in 1 2 3; do
    publish_fast main "$TOKEN" k9snap-big "1.0.$i" 2
  done
  # How long each compression takes: the kill delays are drawn over it.
  local c
  for c in zstd gzip none; do
    mkdir -p "$T/cal-$c"
    calibrate "CREATE_MS[$c]" "$NPME" --root "$T/main" --quiet snapshot create --dir "$T/cal-$c" --compression "$c"
    rm -rf "${T:?}/cal-$c"
  done
}

ext_of() {
  case "$1" in
    zstd) echo .tar.zst ;;
    gzip) echo .tar.gz ;;
    none) echo .tar ;;
  esac
}

campaign_trial() {
  local dir="$T/snaps-$TRIAL" compression naming delay pid rc
  mkdir -p "$dir"
  pick compression zstd gzip none
  pick naming output dir
  kill_window delay "${CREATE_MS[$compression]}"
  local -a target=(-o "$dir/snap$(ext_of "$compression")")
  [[ "$naming" == dir ]] && target=(--dir "$dir")
  info "trial $TRIAL: snapshot create ${target[*]} --compression $compression, kill after $delay ms"
  bg_start pid "$NPME" --root "$T/main" --json snapshot create "${target[@]}" --compression "$compression" \
    >"$T/create.out" 2>"$T/create.err"
  kill_after "$delay" "$pid"
  bg_wait rc "$pid"
  TRIAL_LANDED="$KILL_LANDED"
  info "create exit $rc: $(head -c 300 "$T/create.out" "$T/create.err" | tr '\n' ' ')"

  # What the killed run left.
  local entry base finals=() parts=0 works=0
  while IFS= read -r entry; do
    base="${entry##*/}"
    if [[ -f "$entry" && ( "$base" == *.tar || "$base" == *.tar.zst || "$base" == *.tar.gz ) ]]; then
      finals+=("$entry")
      if ! "$NPME" snapshot verify "$entry" >"$T/verify.out" 2>&1; then
        violation "final file $base fails snapshot verify: $(tail -n 3 "$T/verify.out" | tr '\n' ' ')"
      fi
      [[ "$(stat -c %a "$entry")" == 600 ]] || violation "final file $base has mode $(stat -c %a "$entry"), not 600"
    elif [[ -f "$entry" && "$base" == *.part ]]; then
      parts=$((parts + 1))
    elif [[ -d "$entry" && "$base" == *.part-work ]]; then
      works=$((works + 1))
    else
      violation "unexpected entry '$base' in the snapshot directory"
    fi
  done < <(find "$dir" -mindepth 1 -maxdepth 1 | LC_ALL=C sort)
  if [[ "$rc" == 0 ]] && ((${#finals[@]} == 0)); then
    violation "create exited 0 but no snapshot file is there"
  fi
  ((${#finals[@]} <= 1)) || violation "${#finals[@]} final files from one create"
  info "left: ${#finals[@]} final, $parts .part, $works .part-work"
  ((parts + works == 0)) || note "left $parts .part file(s) and $works .part-work dir(s)"
  local listed expected
  if "$NPME" snapshot list --dir "$dir" --json >"$T/list.json" 2>"$T/list.err"; then
    listed="$(jq -r '.snapshots[].file' "$T/list.json" | xargs -r -n1 basename | LC_ALL=C sort)"
    expected="$(for entry in "${finals[@]}"; do basename "$entry"; done | LC_ALL=C sort)"
    [[ "$listed" == "$expected" ]] || violation "snapshot list shows '$listed', the directory holds '$expected'"
  else
    violation "snapshot list --dir failed: $(head -c 300 "$T/list.err")"
  fi

  # A new run in the same directory.
  local again
  again="$dir/again$(ext_of "$compression")"
  if ! "$NPME" --root "$T/main" --quiet snapshot create -o "$again" --compression "$compression" >"$T/again.out" 2>&1; then
    violation "a new snapshot create after the kill failed: $(tail -n 3 "$T/again.out" | tr '\n' ' ')"
  elif ! "$NPME" snapshot verify "$again" >"$T/verify.out" 2>&1; then
    violation "the new snapshot fails snapshot verify: $(tail -n 3 "$T/verify.out" | tr '\n' ' ')"
  fi
  local stale
  stale="$(find "$dir" -mindepth 1 -maxdepth 1 -name '*.part-work' -printf '%f ')"
  [[ -z "$stale" ]] || violation "the new create left stale work directories: $stale"
  stale="$(find "$T/main/packages/.staging" -mindepth 1 -maxdepth 1 -name 'snapshot-*' -printf '%f ' 2>/dev/null)"
  [[ -z "$stale" ]] || violation "link directories left in packages/.staging: $stale"

  doctor_online main
  ((${#TRIAL_VIOLATIONS[@]} > 0)) || rm -rf "$dir"
}

kill9_run
