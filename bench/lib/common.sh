# shellcheck shell=bash
# shellcheck disable=SC2154 # the variables below are set by the sourcing benchmark
# Shared by the benchmarks that measure npme against Verdaccio 6 and nginx
# (bench/registry-reads, bench/install): process bookkeeping, tools, the three
# servers, the static export nginx serves, and small report helpers.
#
# Source it after setting:
#   bench_name   the benchmark's name, the prefix of its log lines
#   cache_dir    bench/.cache: Verdaccio's install lives in $cache_dir/verdaccio
#   run_dir      where the servers' roots go ($run_dir/npme, /verdaccio, /nginx)
#   raw_dir      where the servers' logs go
#   npme_bin     the npme binary (start_npme)
# It installs an EXIT trap that stops every process started through it (by
# PID) and an INT/TERM trap that exits 130.

readonly k_verdaccio_version=6.8.0
readonly k_user=bench
readonly k_password=bench-password-1234
readonly k_accept_abbreviated='application/vnd.npm.install-v1+json'

log() { printf '%s: %s\n' "$bench_name" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Processes we start, stopped by PID on every exit path.

pids=()
broken=()

forget_pid() {
  local keep=() pid
  for pid in "${pids[@]}"; do
    [ "$pid" = "$1" ] || keep+=("$pid")
  done
  pids=("${keep[@]}")
}

stop_pid() {
  local pid=$1 i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    stop_pid "$pid"
  done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# mark_broken MESSAGE: logs MESSAGE and keeps it for the report; the run
# then exits 1.
mark_broken() {
  log "error: $*"
  broken+=("$*")
}

# ---------------------------------------------------------------------------
# Tools.

# ensure_tools TOOL...: installs the missing ones from Debian (as root); nginx
# as nginx-light where Debian still has it. Sets nginx_bin.
ensure_tools() {
  local missing=() tool
  for tool in "$@"; do
    case $tool in
      nginx) command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx) ;;
      node) command -v node >/dev/null 2>&1 || missing+=(nodejs) ;;
      *) command -v "$tool" >/dev/null 2>&1 || missing+=("$tool") ;;
    esac
  done
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root to install them with apt-get"
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || die "apt-get update failed"
    local packages=() package
    for package in "${missing[@]}"; do
      if [ "$package" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
        # nginx-light is enough for static files; newer Debian only has nginx.
        package=nginx-light
      fi
      packages+=("$package")
    done
    timeout 600 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null ||
      die "apt-get install ${packages[*]} failed"
  fi
  nginx_bin=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
}

ensure_verdaccio() {
  local dir=$cache_dir/verdaccio installed
  installed=$(node -p 'require(process.argv[1]).version' "$dir/node_modules/verdaccio/package.json" 2>/dev/null || true)
  if [ "$installed" = "$k_verdaccio_version" ]; then
    return
  fi
  log "installing verdaccio@$k_verdaccio_version into $dir"
  mkdir -p "$dir"
  # node-fetch 2.7.0: the version Verdaccio's dependency range resolves to
  # otherwise needs a newer Node than Debian's.
  cat >"$dir/package.json" <<EOF
{
  "name": "npme-bench-verdaccio",
  "private": true,
  "dependencies": { "verdaccio": "$k_verdaccio_version" },
  "overrides": { "node-fetch": "2.7.0" }
}
EOF
  (cd "$dir" && timeout 600 npm install --no-audit --no-fund --loglevel=error >/dev/null) ||
    die "npm install verdaccio@$k_verdaccio_version failed"
}

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# wait_http URL PID SECONDS: waits until URL answers (any HTTP status) while PID lives.
wait_http() {
  local url=$1 pid=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if curl -s -o /dev/null --max-time 2 "$url"; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

vm_hwm_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# cpu_ns PID...: the time the processes' threads have run, in nanoseconds
# (the first field of /proc/PID/task/TID/schedstat, summed): exact where
# cpu_ticks counts 10 ms ticks. A thread that ends between two readings
# takes its time with it: use it for servers whose threads live on.
cpu_ns() {
  local pid file run rest total=0
  for pid in "$@"; do
    for file in /proc/"$pid"/task/*/schedstat; do
      read -r run rest 2>/dev/null <"$file" || continue
      total=$((total + run))
    done
  done
  printf '%s\n' "$total"
}

# cpu_ticks PID...: utime + stime of the processes (all their threads), in
# clock ticks (getconf CLK_TCK, 100 a second on Linux), from /proc/PID/stat.
cpu_ticks() {
  local pid stat total=0
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    # Fields after the command name (which may hold spaces): utime and stime
    # are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    local -a fields
    read -r -a fields <<<"${stat##*) }"
    total=$((total + fields[11] + fields[12]))
  done
  printf '%s\n' "$total"
}

# ---------------------------------------------------------------------------
# Servers.

# start_npme [SETTINGS_JSON]: a fresh `npme serve` on free loopback ports in
# $run_dir/npme (its settings.json SETTINGS_JSON when given), a user and a
# token. Sets npme_url, npme_pid, npme_root, npme_token, npme_version.
start_npme() {
  npme_root=$run_dir/npme
  rm -rf "$npme_root"
  mkdir -p "$npme_root"
  if (($#)); then
    printf '%s\n' "$1" >"$npme_root/settings.json"
  fi
  launch_npme new-user
}

# start_npme_copy SOURCE: like start_npme, on a copy of SOURCE (a root that
# start_npme made, its server stopped since): its documents, files,
# settings and user stay; a new token is made. Every start begins from the
# same state, whatever runs on the copy did.
start_npme_copy() {
  npme_root=$run_dir/npme
  rm -rf "$npme_root"
  cp -a "$1" "$npme_root"
  # Left by the server that made SOURCE: the start waits for a new one.
  rm -f "$npme_root/data/runtime.json" "$npme_root/data/instance.lock"
  launch_npme existing-user
}

# launch_npme new-user|existing-user: serves $npme_root; adds the user
# unless it exists, and makes a token.
launch_npme() {
  "$npme_bin" serve --root "$npme_root" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    >"$raw_dir/npme.log" 2>&1 &
  npme_pid=$!
  pids+=("$npme_pid")
  local runtime=$npme_root/data/runtime.json deadline=$((SECONDS + 30))
  while [ ! -s "$runtime" ]; do
    if ! kill -0 "$npme_pid" 2>/dev/null; then
      mark_broken "npme serve exited at start (see $raw_dir/npme.log)"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      mark_broken "npme serve wrote no $runtime within 30 s"
      return 1
    fi
    sleep 0.1
  done
  npme_url=$(jq -r '.registry_url | sub("/$"; "")' "$runtime")
  if [ "$1" = new-user ]; then
    printf '%s\n' "$k_password" |
      "$npme_bin" user add "$k_user" --password-stdin --email bench@example.com --root "$npme_root" >/dev/null ||
      { mark_broken "npme user add failed"; return 1; }
  fi
  npme_token=$("$npme_bin" token create --user "$k_user" --root "$npme_root" --json | jq -r .token) ||
    { mark_broken "npme token create failed"; return 1; }
  if [ -z "$npme_token" ] || [ "$npme_token" = null ]; then
    mark_broken "npme token create printed no token"
    return 1
  fi
  npme_version=$("$npme_bin" --version 2>/dev/null | head -1 | sed "s/^npme //" || true)
  log "npme $npme_version at $npme_url (pid $npme_pid)"
}

# start_verdaccio [ACCESS]: a fresh Verdaccio in $run_dir/verdaccio, no
# uplinks, reads allowed to ACCESS (default \$all; \$authenticated makes
# every read carry a token), and a user with a token. Sets verdaccio_url,
# verdaccio_pid, verdaccio_token, verdaccio_dir.
start_verdaccio() {
  verdaccio_dir=$run_dir/verdaccio
  rm -rf "$verdaccio_dir"
  mkdir -p "$verdaccio_dir/storage"
  launch_verdaccio new-user "$@"
}

# start_verdaccio_copy SOURCE [ACCESS]: like start_verdaccio, on a copy of
# the storage and htpasswd of SOURCE (a $run_dir/verdaccio that
# start_verdaccio made, its server stopped since): the packages and the
# user stay; the user logs in again for a token.
start_verdaccio_copy() {
  local source=$1
  shift
  verdaccio_dir=$run_dir/verdaccio
  rm -rf "$verdaccio_dir"
  mkdir -p "$verdaccio_dir"
  cp -a "$source/storage" "$verdaccio_dir/storage"
  cp -a "$source/htpasswd" "$verdaccio_dir/htpasswd"
  launch_verdaccio existing-user "$@"
}

# launch_verdaccio new-user|existing-user [ACCESS]: writes the config and
# serves $verdaccio_dir; adds the user, or logs the existing one in.
launch_verdaccio() {
  local user_mode=$1
  shift
  # shellcheck disable=SC2016 # Verdaccio's literal $all
  local access=${1:-'$all'} dir=$verdaccio_dir port
  port=$(free_port)
  # JWT API tokens: verified by signature alone. The legacy AES tokens make
  # Verdaccio check the password (bcrypt) on every request, which would
  # measure bcrypt, not Verdaccio. No uplinks: it never proxies to npmjs.org.
  cat >"$dir/config.yaml" <<EOF
storage: $dir/storage
plugins: $dir/plugins
web:
  enable: false
auth:
  htpasswd:
    file: $dir/htpasswd
    max_users: 100
security:
  api:
    legacy: false
    jwt:
      sign:
        expiresIn: 7d
  web:
    sign:
      expiresIn: 1h
uplinks: {}
packages:
  '**':
    access: $access
    publish: \$authenticated
    unpublish: \$authenticated
max_body_size: 100mb
server:
  keepAliveTimeout: 60
log: { type: stdout, format: pretty, level: error }
EOF
  node "$cache_dir/verdaccio/node_modules/verdaccio/bin/verdaccio" --config "$dir/config.yaml" \
    --listen "127.0.0.1:$port" >"$raw_dir/verdaccio.log" 2>&1 &
  verdaccio_pid=$!
  pids+=("$verdaccio_pid")
  verdaccio_url=http://127.0.0.1:$port
  wait_http "$verdaccio_url/-/ping" "$verdaccio_pid" 60 ||
    { mark_broken "verdaccio did not start (see $raw_dir/verdaccio.log)"; return 1; }
  local body login=()
  body=$(jq -cn --arg n "$k_user" --arg p "$k_password" '{name: $n, password: $p, email: "bench@example.com"}')
  # An existing user logs in as npm does after a 409: the same PUT, with
  # its password as basic credentials.
  [ "$user_mode" = existing-user ] && login=(-u "$k_user:$k_password")
  verdaccio_token=$(curl -sf --max-time 30 "${login[@]}" -X PUT -H 'content-type: application/json' -d "$body" \
    "$verdaccio_url/-/user/org.couchdb.user:$k_user" | jq -r .token) ||
    { mark_broken "verdaccio refused to create user $k_user"; return 1; }
  if [ -z "$verdaccio_token" ] || [ "$verdaccio_token" = null ]; then
    mark_broken "verdaccio returned no token for user $k_user"
    return 1
  fi
  log "verdaccio $k_verdaccio_version at $verdaccio_url (pid $verdaccio_pid)"
}

# export_static SOURCE_URL TOKEN MANIFEST TARBALL_DIR: what nginx serves, as
# files under $run_dir/nginx/www (sets www): every package's full and
# abbreviated packument as SOURCE_URL serves them, tarball URLs pointed at
# $nginx_url, each with a .json.gz beside it for gzip_static; and the
# tarballs of MANIFEST (lib/packages.js) from TARBALL_DIR.
export_static() {
  local source=$1 token=$2 manifest=$3 tarballs=$4 name kind accept
  www=$run_dir/nginx/www
  rm -rf "$www"
  mkdir -p "$www/full" "$www/abbreviated" "$www/tarballs"
  while read -r name; do
    for kind in full abbreviated; do
      accept=application/json
      [ "$kind" = abbreviated ] && accept=$k_accept_abbreviated
      curl -sf --max-time 30 -H "Accept: $accept" -H "Authorization: Bearer $token" \
        "$source/$name" -o "$www/$kind/$name.json.tmp" ||
        { mark_broken "cannot fetch the $kind packument of $name from $source"; return 1; }
      # Same bytes apart from the host in the tarball URLs.
      sed -E "s#(\"tarball\" *: *\")https?://[^/\"]+#\\1$nginx_url#g" \
        "$www/$kind/$name.json.tmp" >"$www/$kind/$name.json"
      # gzip_static serves this to clients that accept gzip (as npme, compressed once).
      gzip -6 -n -c "$www/$kind/$name.json" >"$www/$kind/$name.json.gz"
      rm -f "$www/$kind/$name.json.tmp"
    done
    mkdir -p "$www/tarballs/$name/-"
  done < <(jq -r '.packages[].name' "$manifest")
  while read -r name file; do
    cp "$tarballs/$file" "$www/tarballs/$name/-/$file"
  done < <(jq -r '.packages[] | .name as $n | .versions[] | "\($n) \(.file)"' "$manifest")
}

# start_nginx: nginx in the foreground on $nginx_port with its own prefix in
# $run_dir/nginx, serving $www: tarballs, and packuments abbreviated when the
# Accept header asks for npm's install format, full otherwise. Sets
# nginx_pid, nginx_version.
start_nginx() {
  local dir=$run_dir/nginx temp_paths="" module
  mkdir -p "$dir/logs" "$dir/temp"
  # Only the temp path directives of the modules this build has, so that a
  # lighter nginx build does not reject the config.
  for module in client_body proxy fastcgi uwsgi scgi; do
    if [ "$module" = client_body ] || "$nginx_bin" -V 2>&1 | grep -q -- "--http-$module-temp-path"; then
      temp_paths+="  ${module}_temp_path $dir/temp/$module;"$'\n'
    fi
  done
  cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/logs/error.log error;
events {
  worker_connections 1024;
}
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  open_file_cache max=10000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_errors on;
  gzip_static on;
  gzip_vary on;
  types {}
  map \$http_accept \$packument_form {
    "~application/vnd\\.npm\\.install-v1\\+json" abbreviated;
    default full;
  }
$temp_paths
  server {
    listen 127.0.0.1:$nginx_port;
    location ~ "^/(?<pkg>[^/]+)/-/(?<file>[^/]+\\.tgz)\$" {
      default_type application/octet-stream;
      alias $www/tarballs/\$pkg/-/\$file;
    }
    location ~ "^/(?<pkg>[^/]+)\$" {
      default_type application/json;
      alias $www/\$packument_form/\$pkg.json;
    }
    location / {
      return 404;
    }
  }
}
EOF
  "$nginx_bin" -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
    >"$raw_dir/nginx.log" 2>&1 &
  nginx_pid=$!
  pids+=("$nginx_pid")
  wait_http "$nginx_url/" "$nginx_pid" 20 ||
    { mark_broken "nginx did not start (see $raw_dir/nginx.log and $dir/logs/error.log)"; return 1; }
  nginx_version=$("$nginx_bin" -v 2>&1 | sed 's#.*/##')
  log "nginx $nginx_version at $nginx_url (pid $nginx_pid)"
}

# nginx_pids: the master and its workers.
nginx_pids() {
  printf '%s\n' "$nginx_pid"
  pgrep -P "$nginx_pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Report helpers.

# median VALUE...: the median of the non-empty values ("" if none).
median() {
  local v values=()
  for v in "$@"; do
    [ -n "$v" ] && values+=("$v")
  done
  ((${#values[@]})) || { printf '\n'; return; }
  printf '%s\n' "${values[@]}" | LC_ALL=C sort -g |
    LC_ALL=C awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# machine_line: "N × CPU, kernel, RAM" of this machine.
machine_line() {
  local cpu
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  printf '%s × %s, %s, %s RAM' "$(nproc)" "${cpu:-unknown CPU}" "$(uname -sr)" \
    "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
}
