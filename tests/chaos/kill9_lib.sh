# The frame of the kill -9 campaigns (tests/chaos/kill9_*.sh; README.md in
# this folder): argument parsing, the trial loop, the seeded draws, the kill
# itself, `npme doctor`, and the record of each trial. A campaign script
# sources this file, defines campaign_setup and campaign_trial, and calls
# kill9_run. scripts/chaos runs the campaigns and prints the table; each
# script also runs on its own:
#
#   NPME=build/npme tests/chaos/kill9_publish.sh --trials 3 --seed 42 --keep
#
# Options: --trials N (default 100), --seed S (default random; trial i uses
# seed S+i-1, so `--trials 1 --seed <a failing trial's seed>` replays that
# trial's draws), --dir DIR (work directory, made by the caller), --results
# FILE (one line per trial, for scripts/chaos), --keep (keep DIR even when
# every trial passed), --no-doctor (do not call `npme doctor`), --npme PATH.
#
# What a trial reports: the violations of its invariants (each one a line
# "VIOLATION: ..." in the log), whether the kill landed in the middle of the
# operation ("mid-op"; a kill after the operation had finished still checks
# the invariants, but of a state that is no crash), and what the doctor said.
# A violation does not stop the campaign; a state it cannot go on from (an
# instance that will not start, a helper that fails) ends it, as a violation
# of that trial ("aborted").
#
# Synchronisation: every wait polls a condition (a file, a status, a pid).
# The only sleeps are the random schedule of the kill (kill_after, and
# pause_ms when a second load starts at a drawn moment before it), a
# `read -t` on a FIFO nobody writes to.

set -euo pipefail

K9_DIR_SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K9_CAMPAIGN="$(basename "$0" .sh)"
K9_TRIALS=100
K9_SEED=""
K9_WORK=""
K9_RESULTS=""
K9_KEEP=""
K9_DOCTOR_WANTED=1

k9_usage() {
  cat <<EOF
usage: $0 [--trials N] [--seed S] [--dir DIR] [--results FILE] [--keep] [--no-doctor] [--npme PATH]
(normally run by scripts/chaos; see tests/chaos/README.md)
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --trials) K9_TRIALS="${2:?--trials needs a value}"; shift 2 ;;
    --seed) K9_SEED="${2:?--seed needs a value}"; shift 2 ;;
    --dir) K9_WORK="${2:?--dir needs a value}"; shift 2 ;;
    --results) K9_RESULTS="${2:?--results needs a value}"; shift 2 ;;
    --keep) K9_KEEP=1; shift ;;
    --no-doctor) K9_DOCTOR_WANTED=""; shift ;;
    --npme) NPME="${2:?--npme needs a value}"; shift 2 ;;
    -h | --help) k9_usage; exit 0 ;;
    *) echo "$K9_CAMPAIGN: unknown argument '$1'" >&2; k9_usage >&2; exit 2 ;;
  esac
done
[[ "$K9_TRIALS" =~ ^[0-9]+$ && "$K9_TRIALS" -gt 0 ]] || { echo "$K9_CAMPAIGN: --trials must be a positive integer" >&2; exit 2; }
[[ -z "$K9_SEED" ]] && K9_SEED=$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 + 1 ))
[[ "$K9_SEED" =~ ^[0-9]+$ ]] || { echo "$K9_CAMPAIGN: --seed must be a number" >&2; exit 2; }
: "${NPME:=$K9_DIR_SELF/../../build/npme}"
[[ "$NPME" == /* ]] || NPME="$PWD/$NPME"
export NPME
export NPME_SOURCE_DIR="${NPME_SOURCE_DIR:-$(cd "$K9_DIR_SELF/../.." && pwd)}"

# Everything goes to stdout (scripts/chaos: the campaign's log); progress
# lines also go to fd 3 when the caller opened it (scripts/chaos: its
# terminal).
K9_PROGRESS=""
if { true >&3; } 2>/dev/null; then
  exec {K9_PROGRESS}>&3
fi
say() {
  [[ -z "$K9_PROGRESS" ]] || printf '%s\n' "$*" >&"$K9_PROGRESS"
  printf '%s\n' "$*"
}

# The integration tests' helpers: $T, instances on free loopback ports,
# npm_as, make_package, wait_synced, content_digest, ...
source "$NPME_SOURCE_DIR/tests/integration/lib.sh"
source "$NPME_SOURCE_DIR/tests/integration/replication_lib.sh"
source "$NPME_SOURCE_DIR/tests/integration/snapshot_lib.sh"
source "$NPME_SOURCE_DIR/tests/integration/sync_lib.sh"
TEST_NAME="$K9_CAMPAIGN"

# lib.sh made $T as npme-it.*: a campaign works in the directory it was
# given (or in one of its own name when run alone).
if [[ -z "$K9_WORK" ]]; then
  K9_WORK="$(mktemp -d "${TMPDIR:-/tmp}/npme-chaos-$K9_CAMPAIGN.XXXXXX")"
fi
mkdir -p "$K9_WORK"
K9_WORK="$(cd "$K9_WORK" && pwd)"
shopt -s dotglob
mv "$T"/* "$K9_WORK"/
shopt -u dotglob
rmdir "$T"
T="$K9_WORK"
export HOME="$T/home"
[[ -n "$K9_RESULTS" ]] || K9_RESULTS="$T/results"
: >"$K9_RESULTS"

K9_CHECK="node $K9_DIR_SELF/kill9_check.js"
mkfifo "$T/.never"
exec {K9_NEVER}<>"$T/.never"

# ---------------------------------------------------------------- the record

TRIAL=0            # the trial under way (0: setup)
TRIAL_SEED=0
TRIAL_VIOLATIONS=()
TRIAL_NOTES=()
TRIAL_LANDED=0     # 1 when the kill hit the operation in the middle
TRIAL_DOCTOR=""    # "ok", "missing", "off" or "defects"
K9_VIOLATING=0     # trials with at least one violation
K9_LANDED=0
K9_DONE=0
K9_FAILED_SEEDS=()
K9_FINISHED=""
K9_STARTED_S=$SECONDS

# violation TEXT — an invariant of this trial does not hold.
violation() {
  TRIAL_VIOLATIONS+=("$*")
  printf 'VIOLATION: [%s trial %s seed %s] %s\n' "$K9_CAMPAIGN" "$TRIAL" "$TRIAL_SEED" "$*"
}

# note TEXT — something worth knowing about this trial, not a violation.
note() {
  TRIAL_NOTES+=("$*")
  info "note: $*"
}

# record_trial MS — one line in the results file and one progress line.
record_trial() {
  local ms="$1" result=ok detail=""
  ((${#TRIAL_VIOLATIONS[@]} == 0)) || result=violation
  if ((${#TRIAL_VIOLATIONS[@]} > 0)); then
    detail="$(printf '%s; ' "${TRIAL_VIOLATIONS[@]}")"
  elif ((${#TRIAL_NOTES[@]} > 0)); then
    detail="$(printf '%s; ' "${TRIAL_NOTES[@]}")"
  fi
  detail="${detail%; }"
  detail="${detail//$'\n'/ }"
  detail="${detail//$'\t'/ }"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$TRIAL" "$TRIAL_SEED" "$result" "$TRIAL_LANDED" "${TRIAL_DOCTOR:-ok}" \
    "$ms" "${detail:--}" >>"$K9_RESULTS"
  K9_DONE=$((K9_DONE + 1))
  K9_LANDED=$((K9_LANDED + TRIAL_LANDED))
  if [[ "$result" != ok ]]; then
    K9_VIOLATING=$((K9_VIOLATING + 1))
    K9_FAILED_SEEDS+=("$TRIAL_SEED")
  fi
  say "$(printf '[%s] %-22s trial %3d/%d seed %-7s %-4s %-9s %6.1f s%s' "$(date -u +%H:%M:%S)" "$K9_CAMPAIGN" \
    "$TRIAL" "$K9_TRIALS" "$TRIAL_SEED" "$([[ $TRIAL_LANDED == 1 ]] && echo mid || echo late)" \
    "$([[ $result == ok ]] && echo ok || echo VIOLATION)" "$(awk -v m="$ms" 'BEGIN { print m / 1000 }')" \
    "$([[ "$result" == ok ]] || printf '  %s' "${detail:0:300}")")"
}

# lib.sh's fail ends the script: during a trial that trial is recorded as
# violated (the campaign cannot go on from an unknown state); during the
# setup the campaign fails as a harness error (exit 3).
fail() {
  printf '\nFAIL: [%s] %s\n' "$TEST_NAME" "$*" >&"$DIAG_FD"
  if ((TRIAL > 0)) && [[ -z "$K9_FINISHED" ]]; then
    violation "aborted: $*"
    record_trial "$(k9_ms_since "$K9_TRIAL_T0")"
    K9_FINISHED=aborted
    say "$K9_CAMPAIGN: aborted in trial $TRIAL (seed $TRIAL_SEED): $*"
    exit 1
  fi
  say "$K9_CAMPAIGN: setup failed: $*"
  K9_FINISHED=setup-failed
  exit 3
}

# ---------------------------------------------------------------- processes

# k9_stop_pid PID [SECONDS] — SIGTERM, SIGKILL after SECONDS; reaps it.
k9_stop_pid() {
  local pid="$1" limit="${2:-20}" i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    [[ "$(k9_proc_state "$pid")" == Z ]] && break
    read -r -t 0.05 -u "$K9_NEVER" || true
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

k9_exit() {
  local rc=$?
  set +e
  trap - HUP INT TERM
  local name pid
  for name in "${!INSTANCE_PID[@]}"; do
    k9_stop_pid "${INSTANCE_PID[$name]}" 20
  done
  for pid in "${STARTED_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && k9_stop_pid "$pid" 5
  done
  if [[ -z "$K9_FINISHED" && $rc -ne 0 ]]; then
    say "$K9_CAMPAIGN: stopped (exit $rc) after $K9_DONE trials; see $T"
  fi
  # scripts/chaos removes its run directory itself; alone, a campaign
  # removes its own when everything passed.
  if [[ -z "${K9_UNDER_RUNNER:-}" ]]; then
    if [[ $rc -ne 0 || -n "$K9_KEEP" ]]; then
      echo "kept temp directory $T" >&2
    else
      rm -rf "$T"
    fi
  fi
  exit "$rc"
}
trap k9_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# k9_proc_state PID — the state letter of PID (R, S, D, Z, ...), "-" when gone.
k9_proc_state() {
  local line
  if ! { read -r line <"/proc/$1/stat"; } 2>/dev/null; then
    printf '%s\n' -
    return 0
  fi
  line="${line##*) }"
  printf '%s\n' "${line%% *}"
}

# k9_alive PID — true while PID runs (a zombie, ended but not reaped, does not).
k9_alive() {
  local state
  state="$(k9_proc_state "$1")"
  [[ "$state" != - && "$state" != Z && "$state" != X ]]
}

# kill_after MS PID — the random delay (the one sleep of a campaign), then
# SIGKILL of PID. KILL_LANDED=1 when PID was still running at that moment.
KILL_LANDED=0
kill_after() {
  local ms="$1" pid="$2"
  if ((ms > 0)); then
    read -r -t "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))" -u "$K9_NEVER" || true
  fi
  KILL_LANDED=0
  k9_alive "$pid" && KILL_LANDED=1
  kill -KILL "$pid" 2>/dev/null || true
  info "kill -9 of pid $pid after $ms ms ($([[ $KILL_LANDED == 1 ]] && echo 'it was running' || echo 'it had already exited'))"
}

# pause_ms MS — a drawn pause that is part of a trial's random schedule
# (when a second load starts before the kill), never a wait for an event.
pause_ms() {
  (($1 > 0)) || return 0
  read -r -t "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))" -u "$K9_NEVER" || true
}

# kill9_instance_after NAME MS — kill_after of instance NAME's server, reaped.
kill9_instance_after() {
  local name="$1" ms="$2" pid="${INSTANCE_PID[$1]:?unknown instance $1}"
  kill_after "$ms" "$pid"
  wait "$pid" 2>/dev/null || true
  unset "INSTANCE_PID[$name]"
}

# stop_instance_checked NAME — like lib.sh's stop_instance, but a server that
# does not exit 0 within 30 s of SIGTERM is a violation, not the end.
stop_instance_checked() {
  local name="$1" pid="${INSTANCE_PID[$1]:?unknown instance $1}" i rc=0
  kill -TERM "$pid"
  for ((i = 0; i < 600; i++)); do
    k9_alive "$pid" || break
    read -r -t 0.05 -u "$K9_NEVER" || true
  done
  if k9_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    violation "npme serve '$name' did not exit within 30 s of SIGTERM"
  fi
  wait "$pid" || rc=$?
  unset "INSTANCE_PID[$name]"
  ((rc == 0)) || violation "npme serve '$name' exited $rc after SIGTERM"
}

# bg_start VAR cmd... — runs cmd in the background; its pid in VAR (and in
# STARTED_PIDS, which the exit handler stops).
bg_start() {
  local _bg_var="$1"
  shift
  "$@" &
  printf -v "$_bg_var" '%s' "$!"
  STARTED_PIDS+=("$!")
}

# bg_wait VAR PID — waits for PID (started by this shell: never inside a
# $(...)); its exit status in VAR, without tripping set -e.
bg_wait() {
  local _bg_rc=0
  wait "$2" || _bg_rc=$?
  printf -v "$1" '%s' "$_bg_rc"
}

# ---------------------------------------------------------------- draws

# draw VAR N — a number in [0, N) from the trial's seeded sequence (30 bits;
# never in a $(...), whose draws would not advance this shell's RANDOM).
draw() {
  local _draw_n="$2"
  ((_draw_n > 0)) || { printf -v "$1" '%d' 0; return 0; }
  printf -v "$1" '%d' $(((RANDOM * 32768 + RANDOM) % _draw_n))
}

# pick VAR WORD... — one of the words, drawn.
pick() {
  local _pick_var="$1" _pick_i
  shift
  draw _pick_i $#
  local -a _pick_words=("$@")
  printf -v "$_pick_var" '%s' "${_pick_words[$_pick_i]}"
}

# k9_ms_since EPOCHREALTIME — whole milliseconds since then.
k9_ms_since() {
  local start="$1" now="$EPOCHREALTIME"
  local s_sec="${start%.*}" s_us="${start#*.}" n_sec="${now%.*}" n_us="${now#*.}"
  printf '%d\n' $((((n_sec - s_sec) * 1000000 + 10#$n_us - 10#$s_us) / 1000))
}

# kill_window VAR MS — the delay before a kill: a drawn fraction of MS (the
# operation's duration measured on this machine), uniform in [0, 1.2), so
# that about one kill in six lands after the operation has finished. The
# seed fixes the fraction; the measurement scales it.
kill_window() {
  local _kw_permille
  draw _kw_permille 1200
  printf -v "$1" '%d' $(($2 * _kw_permille / 1000))
  info "kill delay: $((_kw_permille / 10)).$((_kw_permille % 10))% of $2 ms"
}

# observed VAR MS — an uncut operation took MS: VAR, the estimate the kill
# delays are drawn over, moves half-way towards it (the machine's load
# changes during a long campaign).
observed() {
  local _obs_old="${!1}"
  printf -v "$1" '%d' $(((_obs_old + $2) / 2))
  info "observed an uncut run of $2 ms: estimate ${!1} ms (was $_obs_old)"
}

# calibrate VAR cmd... — runs cmd (which must succeed) and puts its
# duration in ms (at least 20) in VAR.
calibrate() {
  local _cal_var="$1" _cal_t0 _cal_ms
  shift
  _cal_t0="$EPOCHREALTIME"
  "$@" || fail "calibration run failed: $*"
  _cal_ms="$(k9_ms_since "$_cal_t0")"
  ((_cal_ms >= 20)) || _cal_ms=20
  printf -v "$_cal_var" '%s' "$_cal_ms"
  info "calibration: $* took $_cal_ms ms"
}

# ---------------------------------------------------------------- doctor

# One of: present, missing (the binary has no `doctor` subcommand yet), off
# (--no-doctor).
if [[ -z "$K9_DOCTOR_WANTED" ]]; then
  K9_DOCTOR=off
elif "$NPME" --help 2>/dev/null | grep -qE '^[[:space:]]+doctor[[:space:]]'; then
  K9_DOCTOR=present
else
  K9_DOCTOR=missing
fi

# k9_doctor_missing — the error, once per trial, when the binary lacks it.
k9_doctor_missing() {
  if [[ "$TRIAL_DOCTOR" != missing ]]; then
    printf "ERROR: 'npme doctor' is not a subcommand of %s: the doctor's invariants are not checked\n" "$NPME"
  fi
  TRIAL_DOCTOR=missing
}

# k9_doctor_defects FILE WHAT [KIND_ALLOWED] — the violations in a doctor
# report (its JSON in FILE, exit status in DOCTOR_RC); defects of kind
# KIND_ALLOWED are counted in DOCTOR_ALLOWED instead.
DOCTOR_ALLOWED=0
k9_doctor_defects() {
  local file="$1" what="$2" allowed="${3:-}" line bad=0
  if ! jq -e '.defects | type == "array"' "$file" >/dev/null 2>&1; then
    violation "$what exited $DOCTOR_RC without a report: $(head -c 300 "$file")"
    TRIAL_DOCTOR=defects
    return 0
  fi
  DOCTOR_ALLOWED=$((DOCTOR_ALLOWED + $(jq --arg k "$allowed" '[.defects[] | select(.kind == $k)] | length' "$file")))
  while IFS= read -r line; do
    violation "$what: $line"
    bad=1
  done < <(jq -r --arg k "$allowed" '.defects[] | select(.kind != $k) |
      "\(.kind) \(.id // "-") \(.path // "-"): \(.detail)\(if .action then "; " + .action else "" end)"' "$file")
  if ((bad == 0)) && [[ "$DOCTOR_RC" != 0 && "$DOCTOR_RC" != 5 ]]; then
    violation "$what exited $DOCTOR_RC: $(jq -c '.error // .summary' "$file" 2>/dev/null | head -c 300)"
    bad=1
  fi
  ((bad == 0)) || TRIAL_DOCTOR=defects
}

# k9_run_doctor OUT ARGS... — `npme ARGS... doctor --json`; DOCTOR_RC.
DOCTOR_RC=0
k9_run_doctor() {
  local out="$1"
  shift
  DOCTOR_RC=0
  info "\$ npme $* --json"
  "$NPME" "$@" --json >"$out" 2>"$out.err" || DOCTOR_RC=$?
  info "doctor exit $DOCTOR_RC: $(jq -r '.summary // .error.message // empty' "$out" 2>/dev/null | head -c 300)"
}

# doctor_offline NAME [orphans] — `npme doctor --offline` on the stopped
# instance NAME must find nothing. With "orphans" (a kill -9 in the middle of
# a store write may leave a tarball its metadata never got: a known defect),
# `doctor --offline --repair` runs first, every defect it finds other than
# an orphan is a violation, and then the check must be clean.
doctor_offline() {
  local name="$1" allow="${2:-}" root="$T/$1" out="$T/doctor.json"
  case "$K9_DOCTOR" in
    missing) k9_doctor_missing; return 0 ;;
    off) TRIAL_DOCTOR=off; return 0 ;;
  esac
  [[ -n "$TRIAL_DOCTOR" ]] || TRIAL_DOCTOR=ok
  if [[ "$allow" == orphans ]]; then
    local before="$DOCTOR_ALLOWED"
    k9_run_doctor "$out" --root "$root" doctor --offline --repair
    k9_doctor_defects "$out" "doctor --offline --repair on $name" orphan
    ((DOCTOR_ALLOWED == before)) || note "$((DOCTOR_ALLOWED - before)) orphan tarball(s) quarantined by doctor --repair"
  fi
  k9_run_doctor "$out" --root "$root" doctor --offline
  k9_doctor_defects "$out" "doctor --offline on $name"
  if [[ "$DOCTOR_RC" != 0 ]] && [[ "$TRIAL_DOCTOR" != defects ]]; then
    violation "doctor --offline on $name exited $DOCTOR_RC"
    TRIAL_DOCTOR=defects
  fi
}

# doctor_online NAME — `npme doctor` against the running instance NAME (its
# admin API) must find nothing.
doctor_online() {
  local name="$1" out="$T/doctor.json"
  case "$K9_DOCTOR" in
    missing) k9_doctor_missing; return 0 ;;
    off) TRIAL_DOCTOR=off; return 0 ;;
  esac
  [[ -n "$TRIAL_DOCTOR" ]] || TRIAL_DOCTOR=ok
  k9_run_doctor "$out" --root "$T/$name" doctor --timeout 120
  k9_doctor_defects "$out" "doctor on $name"
  if [[ "$DOCTOR_RC" != 0 ]] && [[ "$TRIAL_DOCTOR" != defects ]]; then
    violation "doctor on $name exited $DOCTOR_RC"
    TRIAL_DOCTOR=defects
  fi
}

# ---------------------------------------------------------------- followers

# wait_sequence NAME TARGET SECONDS — polls NAME's data/sequence (a file
# read every 10 ms: no process started) until it reaches TARGET; false
# after SECONDS.
wait_sequence() {
  local file="$T/$1/data/sequence" target="$2" deadline=$((SECONDS + $3)) seq
  while true; do
    seq=""
    { read -r seq <"$file"; } 2>/dev/null || true
    [[ "$seq" =~ ^[0-9]+$ ]] && ((seq >= target)) && return 0
    ((SECONDS < deadline)) || return 1
    read -r -t 0.01 -u "$K9_NEVER" || true
  done
}

# wait_follower NAME TARGET SECONDS — NAME's follower is caught up at
# TARGET or beyond (`npme status`), waiting on data/sequence first; false
# after SECONDS.
wait_follower() {
  local name="$1" target="$2" deadline=$((SECONDS + $3)) status=""
  wait_sequence "$name" "$target" "$3" || true
  while true; do
    status="$("$NPME" --root "$T/$name" status --json 2>/dev/null || true)"
    if jq -e --argjson t "$target" '.follower.state == "caught-up" and .follower.sequence >= $t' \
      <<<"$status" >/dev/null 2>&1; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      info "$name not caught up with $target: $(jq -c .follower <<<"$status" 2>/dev/null)"
      return 1
    fi
    read -r -t 0.2 -u "$K9_NEVER" || true
  done
}

# ---------------------------------------------------------------- content

# store_digest NAME — every package document of the instance's own
# database: id, dist-tags and each version with its integrity (sorted).
# Reads the store, not the registry: a replica's registry may fetch a name
# it misses from its upstream.
store_digest() {
  db_query "$1" "$PACKUMENTS select id, json_extract(body, '\$.\"dist-tags\"'),
      (select group_concat(k || '=' || i, ' ') from (select key as k,
         json_extract(value, '\$.dist.integrity') as i from json_each(docs.body, '\$.versions') order by key))
    from packuments as docs where id not like '\\_%' escape '\\' order by id"
}

# store_tarballs NAME — "file integrity" for every version in the
# instance's own database (the path as tarball_path makes it).
store_tarballs() {
  db_query "$1" "$PACKUMENTS select '$T/$1/packages/' || docs.id || '/-/' ||
        (case when docs.id like '@%/%' then substr(docs.id, instr(docs.id, '/') + 1) else docs.id end) ||
        '-' || v.key || '.tgz ' || json_extract(v.value, '\$.dist.integrity')
      from packuments as docs, json_each(docs.body, '\$.versions') as v where docs.id not like '\\_%' escape '\\'"
}

# note_orphans NAME — notes the tarball files in NAME's packages directory
# (`.staging` aside) that no version in its database names: what a kill in
# the middle of a store write may leave (the known defect that doctor
# --repair clears), counted even when the binary has no doctor. Those
# already seen after an earlier kill are counted apart: nothing but doctor
# --repair (or a later write of the same version) removes them.
K9_ORPHANS=0
note_orphans() {
  local name="$1" seen="$T/orphans.seen.$1" count old
  touch "$seen"
  { store_tarballs "$name" 2>/dev/null || true; } | awk '{ print $1 }' | LC_ALL=C sort >"$T/referenced"
  { find "$T/$name/packages" -path "$T/$name/packages/.staging" -prune -o -type f -print 2>/dev/null || true; } |
    LC_ALL=C sort >"$T/files"
  LC_ALL=C comm -13 "$T/referenced" "$T/files" >"$T/orphans"
  count="$(LC_ALL=C comm -13 "$seen" "$T/orphans" | wc -l)"
  old="$(LC_ALL=C comm -12 "$seen" "$T/orphans" | wc -l)"
  if ((count > 0)); then
    K9_ORPHANS=$((K9_ORPHANS + count))
    note "$count new orphan tarball(s) on disk after the kill: $(LC_ALL=C comm -13 "$seen" "$T/orphans" | head -n 3 |
      sed "s|^$T/$name/packages/||" | tr '\n' ' ')"
  fi
  ((old == 0)) || note "$old orphan tarball(s) of earlier kills still there"
  LC_ALL=C sort -u -o "$seen" "$seen" "$T/orphans"
}

# check_store_tarballs NAME — every version in NAME's database has its
# tarball file, matching dist.integrity; each one that does not is a
# violation.
check_store_tarballs() {
  local name="$1" line
  store_tarballs "$name" >"$T/tarballs.list"
  while IFS= read -r line; do
    violation "$name: $line"
  done < <($K9_CHECK files "$T/tarballs.list" 2>&1 || true)
}

# http_digest NAME TOKEN NAMES_FILE — content_digest through the registry,
# all the names of NAMES_FILE (one process, 8 requests at a time).
http_digest() {
  $K9_CHECK packuments "${REGISTRY[$1]}" "$2" "$3"
}

# ---------------------------------------------------------------- the run

# kill9_run — campaign_setup, then campaign_trial TRIALS times, each with
# its own seed; exit 0 when no trial violated anything, 1 otherwise.
K9_TRIAL_T0=""
kill9_run() {
  say "$K9_CAMPAIGN: npme $NPME ($("$NPME" --version 2>/dev/null | head -n 1)), $K9_TRIALS trials, seed $K9_SEED (trial i: seed $K9_SEED+i-1), doctor $K9_DOCTOR, work directory $T"
  if [[ "$K9_DOCTOR" == missing ]]; then
    say "$K9_CAMPAIGN: ERROR: 'npme doctor' is not a subcommand of $NPME: the doctor's invariants are not checked (every trial reports it; --no-doctor to leave it out)"
  fi
  step "setup"
  local t0="$EPOCHREALTIME"
  campaign_setup
  info "setup took $(k9_ms_since "$t0") ms"
  for ((TRIAL = 1; TRIAL <= K9_TRIALS; TRIAL++)); do
    TRIAL_SEED=$((K9_SEED + TRIAL - 1))
    RANDOM=$TRIAL_SEED
    TRIAL_VIOLATIONS=()
    TRIAL_NOTES=()
    TRIAL_LANDED=0
    TRIAL_DOCTOR=""
    step "trial $TRIAL of $K9_TRIALS, seed $TRIAL_SEED"
    K9_TRIAL_T0="$EPOCHREALTIME"
    campaign_trial
    record_trial "$(k9_ms_since "$K9_TRIAL_T0")"
  done
  TRIAL=0
  K9_FINISHED="done"
  say "$(printf '%s: %d trials, %d with the kill mid-operation, %d violating%s, %d orphan tarballs seen, in %d s' \
    "$K9_CAMPAIGN" "$K9_DONE" "$K9_LANDED" "$K9_VIOLATING" \
    "$( ((${#K9_FAILED_SEEDS[@]} == 0)) || printf ' (seeds %s)' "${K9_FAILED_SEEDS[*]}")" "$K9_ORPHANS" \
    $((SECONDS - K9_STARTED_S)))"
  ((K9_VIOLATING == 0)) || exit 1
  exit 0
}
