# Helpers for the failover test (sourced after lib.sh and replication_lib.sh):
# a real HAProxy, and optionally nginx, started from the reference
# configurations in deploy/ on 127.0.0.1, and npm driven through them.

DEPLOY="$NPME_SOURCE_DIR/deploy"
HAPROXY_PID=""
HAPROXY_PORT=""
NGINX_PID=""
NGINX_PORT=""

# free_port — prints a TCP port that was free on 127.0.0.1 a moment ago.
# Each port is handed out once per test ($T/.ports): the kernel may offer a
# port just closed again, and two settings of one instance (registry.listen
# and admin.listen) on the same port would stop it from starting.
free_port() {
  local port i
  for ((i = 0; i < 50; i++)); do
    port="$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
    if ! grep -qx "$port" "$T/.ports" 2>/dev/null; then
      printf '%s\n' "$port" >>"$T/.ports"
      printf '%s\n' "$port"
      return 0
    fi
  done
  fail "free_port: no port not handed out already in 50 tries"
}

# hostport INSTANCE — the instance's registry address as host:port.
hostport() {
  local url="${REGISTRY[$1]:?unknown instance $1}"
  url="${url#http://}"
  printf '%s\n' "${url%%/*}"
}

# use_listen_address INSTANCE — points REGISTRY[INSTANCE] at the address the
# instance listens on. data/runtime.json (which start_instance reads) gives
# `registry.url`, which behind a load balancer is the load balancer's URL;
# the serve log names the listening address.
use_listen_address() {
  local name="$1" address
  address="$(sed -n 's/^npme: registry listening on \([^ ]*\) .*/\1/p' "$T/$name.serve.log" | tail -n 1)"
  [[ -n "$address" ]] || fail "no 'registry listening on' line in $name.serve.log"
  REGISTRY[$name]="http://$address"
  info "$name listens on ${REGISTRY[$name]}"
}

# render_template TEMPLATE OUT LISTEN PRIMARY REPLICA1 REPLICA2 — the file
# from deploy/ with its @...@ placeholders replaced, as the README says to.
render_template() {
  local template="$1" out="$2"
  # deploy/*-etcd.* name the three members @NODE1@..@NODE3@.
  sed -e "s|@LISTEN@|$3|g" -e "s|@PRIMARY@|$4|g" -e "s|@REPLICA1@|$5|g" -e "s|@REPLICA2@|$6|g" \
    -e "s|@NODE1@|$4|g" -e "s|@NODE2@|$5|g" -e "s|@NODE3@|$6|g" \
    "$template" >"$out.tmp"
  if grep -n '@[A-Z0-9]*@' "$out.tmp" >&2; then
    fail "$template has placeholders the README does not name"
  fi
  mv "$out.tmp" "$out"
}

# HAPROXY_ENV — `env` arguments HAProxy runs with: as root it drops to
# Debian's haproxy user in its chroot, as the config says; otherwise it stays
# the current user (NPME_LB_UNPRIVILEGED skips the user/chroot lines).
HAPROXY_ENV=(-u NPME_LB_UNPRIVILEGED)
if [[ "$(id -u)" != 0 ]] || ! id haproxy >/dev/null 2>&1 || [[ ! -d /var/lib/haproxy ]]; then
  HAPROXY_ENV=(NPME_LB_UNPRIVILEGED=1)
fi

# The load balancers are stopped on every exit, before lib.sh's on_exit:
# SIGKILL to an nginx master would leave its workers running.
failover_cleanup() {
  local pid
  for pid in "$NGINX_PID" "$HAPROXY_PID"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "$NGINX_PID" "$HAPROXY_PID"; do
    [[ -n "$pid" ]] || continue
    for _ in {1..50}; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  return 0
}
trap 'failover_rc=$?; set +e; failover_cleanup; (exit $failover_rc); on_exit' EXIT

# haproxy_loads — how many configurations the HAProxy master has loaded.
haproxy_loads() {
  grep -c 'Loading success' "$T/haproxy.log" 2>/dev/null || true
}

# render_haproxy PRIMARY REPLICA1 REPLICA2 — instance names (or host:port
# of a dead address) into $T/haproxy.cfg, checked with `haproxy -c`.
render_haproxy() {
  local addresses=() name
  for name in "$@"; do
    if [[ -n "${REGISTRY[$name]:-}" ]]; then
      addresses+=("$(hostport "$name")")
    else
      addresses+=("$name")
    fi
  done
  render_template "$DEPLOY/haproxy.cfg" "$T/haproxy.cfg" "127.0.0.1:$HAPROXY_PORT" "${addresses[@]}"
  env "${HAPROXY_ENV[@]}" haproxy -c -q -f "$T/haproxy.cfg" || fail "haproxy -c rejects the rendered deploy/haproxy.cfg"
  info "haproxy.cfg: primary ${addresses[0]}, replicas ${addresses[1]} ${addresses[2]}"
}

# wait_lb_ping URL — until URL/-/ping answers 200 (10 s).
wait_lb_ping() {
  local url="$1" i
  for ((i = 0; i < 100; i++)); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/-/ping")" == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  fail "$url/-/ping did not answer 200 within 10 s"
}

# start_haproxy PRIMARY REPLICA1 REPLICA2 — HAProxy in master-worker mode in
# the foreground (-W -db), its pid file and log in $T, on a free port; sets
# HAPROXY_PID (the master) and REGISTRY[lb].
start_haproxy() {
  step "start HAProxy with deploy/haproxy.cfg"
  HAPROXY_PORT="$(free_port)"
  render_haproxy "$@"
  env "${HAPROXY_ENV[@]}" haproxy -W -db -f "$T/haproxy.cfg" -p "$T/haproxy.pid" >>"$T/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  STARTED_PIDS+=("$HAPROXY_PID")
  REGISTRY[lb]="http://127.0.0.1:$HAPROXY_PORT"
  wait_lb_ping "${REGISTRY[lb]}"
  info "HAProxy master pid $HAPROXY_PID on ${REGISTRY[lb]}"
}

# reload_haproxy PRIMARY REPLICA1 REPLICA2 — renders the config again and
# reloads it (SIGUSR2 to the master); waits until the new workers run it.
reload_haproxy() {
  step "reload HAProxy: writes to $1"
  local before i
  before="$(haproxy_loads)"
  render_haproxy "$@"
  kill -USR2 "$HAPROXY_PID"
  for ((i = 0; i < 100; i++)); do
    (($(haproxy_loads) > before)) && break
    kill -0 "$HAPROXY_PID" 2>/dev/null || fail "HAProxy exited on reload"
    sleep 0.1
  done
  ((i < 100)) || fail "HAProxy did not load the new configuration within 10 s"
  info "ok: HAProxy reloaded"
}

# stop_haproxy — SIGTERM to the master, which stops its workers.
stop_haproxy() {
  step "stop HAProxy (SIGTERM to master pid $HAPROXY_PID)"
  kill -TERM "$HAPROXY_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$HAPROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$HAPROXY_PID" 2>/dev/null && fail "HAProxy did not stop within 10 s of SIGTERM"
  wait "$HAPROXY_PID" 2>/dev/null || true
  HAPROXY_PID=""
}

# start_nginx PRIMARY REPLICA1 REPLICA2 — nginx in the foreground with its
# own prefix under $T; deploy/nginx.conf (or deploy/$NGINX_TEMPLATE, e.g.
# nginx-etcd.conf with three members) rendered, is included in a minimal
# main configuration, as Debian's nginx.conf includes conf.d/*.conf. Sets
# NGINX_PID and REGISTRY[nginx].
start_nginx() {
  step "start nginx with deploy/${NGINX_TEMPLATE:-nginx.conf}"
  local dir="$T/nginx" module temp_paths="" user_line=""
  mkdir -p "$dir/logs"
  NGINX_PORT="$(free_port)"
  render_nginx "$@"
  # Only the temp paths of the modules this build has.
  for module in client_body proxy fastcgi uwsgi scgi; do
    if [[ "$module" == client_body ]] || nginx -V 2>&1 | grep -q -- "--http-$module-temp-path"; then
      temp_paths+="  ${module}_temp_path $dir/temp-$module;"$'\n'
    fi
  done
  # As root, workers would run as nobody and could not write under $T.
  [[ "$(id -u)" != 0 ]] || user_line="user root root;"
  cat >"$dir/main.conf" <<EOF
$user_line
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log notice;
events { worker_connections 256; }
http {
  access_log $dir/logs/access.log;
$temp_paths
  include $dir/npme.conf;
}
EOF
  nginx -p "$dir" -c "$dir/main.conf" -t -q || fail "nginx -t rejects the rendered deploy/nginx.conf"
  nginx -p "$dir" -c "$dir/main.conf" -g 'daemon off;' >>"$T/nginx.log" 2>&1 &
  NGINX_PID=$!
  STARTED_PIDS+=("$NGINX_PID")
  REGISTRY[nginx]="http://127.0.0.1:$NGINX_PORT"
  wait_lb_ping "${REGISTRY[nginx]}"
  info "nginx master pid $NGINX_PID on ${REGISTRY[nginx]}"
}

render_nginx() {
  local addresses=() name
  for name in "$@"; do
    if [[ -n "${REGISTRY[$name]:-}" ]]; then
      addresses+=("$(hostport "$name")")
    else
      addresses+=("$name")
    fi
  done
  render_template "$DEPLOY/${NGINX_TEMPLATE:-nginx.conf}" "$T/nginx/npme.conf" "127.0.0.1:$NGINX_PORT" "${addresses[@]}"
}

# reload_nginx PRIMARY REPLICA1 REPLICA2 — renders again, SIGHUP to the master.
reload_nginx() {
  step "reload nginx: writes to $1"
  render_nginx "$@"
  nginx -p "$T/nginx" -c "$T/nginx/main.conf" -t -q || fail "nginx -t rejects the re-rendered config"
  # The old workers keep accepting until the master has started new ones and
  # told the old ones to quit; a request they take still goes to the old
  # primary. The reload is done when every old worker has exited.
  local old_workers
  old_workers="$(pgrep -P "$NGINX_PID" || true)"
  kill -HUP "$NGINX_PID"
  local i pid alive
  for ((i = 0; i < 200; i++)); do
    alive=0
    for pid in $old_workers; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive == 0)) && [[ -n "$(pgrep -P "$NGINX_PID" || true)" ]] && break
    sleep 0.1
  done
  ((i < 200)) || fail "nginx did not reload within 20 s (old workers: $old_workers)"
  info "ok: nginx reloaded"
}

stop_nginx() {
  step "stop nginx (SIGQUIT to master pid $NGINX_PID)"
  kill -QUIT "$NGINX_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$NGINX_PID" 2>/dev/null && fail "nginx did not stop within 10 s of SIGQUIT"
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID=""
}

# npm_lb LB TOKEN CACHE -- args... — the real npm through load balancer LB
# ("lb" or "nginx") with its own cache directory CACHE (a fresh one fetches
# every packument and tarball through the load balancer).
npm_lb() {
  local lb="$1" token="$2" cache="$3"
  [[ "$4" == "--" ]] || fail "npm_lb: usage: npm_lb LB TOKEN CACHE -- args..."
  shift 4
  local url="${REGISTRY[$lb]:?unknown load balancer $lb}"
  local rc_file="$T/npmrc-$lb"
  {
    printf 'registry=%s/\n' "$url"
    printf '//%s/:_authToken=%s\n' "${url#http://}" "$token"
  } >"$rc_file"
  "${NPM_CMD[@]}" --userconfig "$rc_file" --globalconfig "$T/npm-globalrc" \
    --cache "$cache" --registry "$url/" \
    --no-audit --no-fund --no-update-notifier --fetch-retries=0 --prefer-online \
    "$@"
}

# packument_requests INSTANCE — packument GETs the instance has answered
# (its metrics; health checks are not counted).
packument_requests() {
  curl -sS --max-time 2 "${ADMIN[$1]}/metrics" |
    awk '/^npme_http_requests_total\{route="packument"/ { n += $2 } END { print n + 0 }'
}
