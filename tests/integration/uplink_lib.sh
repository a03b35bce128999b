# Helpers for the uplink tests: stand-in uplinks (fixtures/fake_uplink.js, a
# Node server the test controls) and instances that take public packages
# from them. Source after lib.sh.

declare -A UPLINK=() # stand-in name -> URL
declare -A UPLINK_PID=()

# start_uplink NAME [fake_uplink.js flags...] — starts a stand-in on a free
# loopback port; sets UPLINK[NAME].
start_uplink() {
  local name="$1"
  shift
  local url_file="$T/$name.uplink.url" i
  rm -f "$url_file"
  node "$FIXTURES/fake_uplink.js" --url-file "$url_file" --name "$name" "$@" >/dev/null 2>"$T/$name.uplink.log" &
  local pid=$!
  STARTED_PIDS+=("$pid")
  UPLINK_PID[$name]=$pid
  for ((i = 0; i < 200; i++)); do
    [[ -s "$url_file" ]] && break
    kill -0 "$pid" 2>/dev/null || fail "stand-in uplink '$name' exited before it listened"
    sleep 0.05
  done
  [[ -s "$url_file" ]] || fail "stand-in uplink '$name' did not listen within 10 s"
  UPLINK[$name]="$(cat "$url_file")"
  info "stand-in uplink '$name' at ${UPLINK[$name]} (pid $pid)"
}

stop_uplink() {
  local name="$1"
  kill -TERM "${UPLINK_PID[$name]}" 2>/dev/null || true
  wait "${UPLINK_PID[$name]}" 2>/dev/null || true
  info "stopped stand-in uplink '$name'"
}

# uplink_control NAME METHOD PATH [JSON] — a control call; prints the answer.
uplink_control() {
  local name="$1" method="$2" path="$3" body="${4:-}"
  curl -sS --max-time 30 -X "$method" ${body:+-H 'Content-Type: application/json' --data-binary "$body"} \
    "${UPLINK[$name]}/-/control/$path" || fail "control call $method $path to '$name' failed"
}

# uplink_publish NAME PACKAGE VERSION [dep@range...] — publishes on the stand-in.
uplink_publish() {
  local name="$1" package="$2" version="$3"
  shift 3
  local deps='{}' dep
  for dep in "$@"; do
    deps="$(jq -c --arg n "${dep%@*}" --arg r "${dep##*@}" '. + {($n): $r}' <<<"$deps")"
  done
  uplink_control "$name" POST publish \
    "$(jq -nc --arg n "$package" --arg v "$version" --argjson d "$deps" '{name: $n, version: $v, dependencies: $d}')" \
    >/dev/null
}

# uplink_integrity NAME PACKAGE VERSION — the stand-in's dist.integrity.
uplink_integrity() {
  curl -sS --max-time 10 -H 'Accept: application/json' "${UPLINK[$1]}/${2/\//%2f}" | jq -r --arg v "$3" '.versions[$v].dist.integrity'
}

# uplink_count NAME PATH — requests the stand-in got for PATH ("/pkg", "/pkg/-/pkg-1.0.0.tgz").
uplink_count() {
  uplink_control "$1" GET "count?path=$(jq -rn --arg p "$2" '$p | @uri')" | jq -r .count
}

uplink_fault() {
  uplink_control "$1" POST fault "$2" >/dev/null
}

# start_uplink_instance NAME UPLINK [settings JSON members] — an npme
# instance whose uplink is stand-in UPLINK; anonymous installs allowed.
start_uplink_instance() {
  local name="$1" uplink="$2" extra="${3:-}"
  mkdir -p "$T/$name"
  printf '{"uplink.url":"%s","auth.installs":"none"%s}\n' "${UPLINK[$uplink]}" "${extra:+,$extra}" \
    >"$T/$name/settings.json"
  start_instance "$name"
}

# uplink_status INSTANCE — the "uplink" object of `npme status --json`.
uplink_status() {
  "$NPME" --root "$T/$1" status --json | jq -c .uplink
}

# new_app DIR — an empty npm project.
new_app() {
  mkdir -p "$1"
  echo '{"name":"app","version":"1.0.0","private":true}' >"$1/package.json"
}

# wait_until SECONDS DESCRIPTION CMD... — polls CMD every 0.1 s.
wait_until() {
  local limit="$1" what="$2" i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    if "$@" >/dev/null 2>&1; then
      info "ok: $what"
      return 0
    fi
    sleep 0.1
  done
  fail "timed out after $limit s waiting for: $what"
}
