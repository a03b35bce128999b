#!/usr/bin/env bash
# A slowloris against the registry: 2,000 idle connections from one client
# address (127.0.0.2) hold no more than registry.max_connections_per_client
# of them; the rest are closed at accept and counted in /metrics, and a
# fresh `npm install` from another address (127.0.0.1) succeeds meanwhile.
# npme serve raises its open-file soft limit to the hard limit, so that even
# without a cap the flood costs descriptors, not installs. (That a header
# trickled byte by byte is cut at the idle timeout is in the unit tests:
# waiting 60 s here would add nothing.)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CAP=100
FLOOD=2000

step "preconditions: 127.0.0.2 is a local address, descriptors for the flood"
node -e "require('net').createServer().listen(0, '127.0.0.2', function () { this.close(); })" 2>/dev/null ||
  skip_test "127.0.0.2 cannot be bound (the flood needs a second loopback address)"
HARD="$(ulimit -Hn)"
if [[ "$HARD" != unlimited ]] && ((HARD < FLOOD + 500)); then
  skip_test "the open-file hard limit ($HARD) is too low for $FLOOD connections"
fi
ulimit -Sn "$HARD"
info "open-file limit of the test: $(ulimit -Sn)"

step "registry.max_connections_per_client: validated, set to $CAP before the start"
expect_exit 2 run_npme settings set --offline registry.max_connections_per_client=100001 --root "$T/main"
assert_contains "$LAST_OUTPUT" "from 0 to 100000" "a cap over the maximum"
expect_exit 2 run_npme settings set --offline admin.max_connections_per_client=-1 --root "$T/main"
expect_exit 0 run_npme settings set --offline registry.max_connections_per_client=$CAP --root "$T/main"

# start_low NAME — starts the instance with the usual soft limit of 1024
# descriptors, which `npme serve` must raise to the hard limit itself.
start_low() {
  ulimit -Sn 1024
  start_instance "$1"
  ulimit -Sn "$HARD"
  local limits
  limits="$(awk '/^Max open files/ { print $4, $5 }' "/proc/${INSTANCE_PID[$1]}/limits")"
  assert_eq "$HARD $HARD" "$limits" "open-file limits (soft hard) of npme serve started with a soft limit of 1024"
}
start_low main
PORT="${REGISTRY_URL##*:}"

add_user main alice 'alice password'
TOKEN="$(create_token main alice)"
step "publish a package with npm"
make_package "$T/pkg" flood-target 1.0.0
expect_exit 0 in_dir "$T/pkg" npm_as main "$TOKEN" -- publish

PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"slowloris-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
# install_fresh — `npm install flood-target` with an empty cache, anonymous,
# from 127.0.0.1; its wall time in ms goes to INSTALL_MS.
INSTALL_MS=0
install_fresh() {
  rm -rf "$PROJ/node_modules" "$PROJ/package-lock.json" "$T/npm-cache"
  local started
  started="$(date +%s%N)"
  expect_exit 0 in_dir "$PROJ" npm_as main "" -- install flood-target
  INSTALL_MS=$((($(date +%s%N) - started) / 1000000))
  assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/flood-target/package.json")" "installed flood-target"
}

step "a fresh install without a flood (for comparison)"
install_fresh
QUIET_MS=$INSTALL_MS
info "npm install took $QUIET_MS ms"

# scrape — the admin /metrics text into METRICS; sample NAME — one value.
METRICS=""
scrape() {
  METRICS="$(curl -sS --max-time 10 "$ADMIN_URL/metrics")" || fail "GET /metrics failed"
}
sample() {
  awk -v w="$1" '$1 == w { print $2; found = 1 } END { if (!found) print "missing" }' <<<"$METRICS"
}
flood_status() {
  cat "$T/flood.json" 2>/dev/null || echo '{}'
}

# flood — starts $FLOOD idle connections from 127.0.0.2 and waits until every
# one has connected and the server has closed all it will close at once:
# `open` connections stay ($CAP, or all of them without a cap).
FLOOD_PID=""
flood() {
  local open="$1"
  step "$FLOOD idle connections from 127.0.0.2 (each sends half a request line, then nothing)"
  rm -f "$T/flood.json"
  node "$FIXTURES/idle_flood.js" --port "$PORT" --from 127.0.0.2 --count "$FLOOD" \
    --status-file "$T/flood.json" >"$T/flood.log" 2>&1 &
  FLOOD_PID=$!
  STARTED_PIDS+=("$FLOOD_PID")
  local i status
  for ((i = 0; i < 600; i++)); do
    status="$(flood_status)"
    if [[ "$(jq -r '"\(.connected) \(.open)"' <<<"$status")" == "$FLOOD $open" ]]; then
      break
    fi
    kill -0 "$FLOOD_PID" 2>/dev/null || fail "idle_flood.js exited early: $(cat "$T/flood.log")"
    sleep 0.1
  done
  ((i < 600)) || fail "the flood did not settle at $FLOOD connected, $open open within 60 s: $status"
  info "flood: $status"
}

stop_flood() {
  kill -TERM "$FLOOD_PID"
  wait "$FLOOD_PID" || true
}

flood "$CAP"
scrape
assert_eq "$((FLOOD - CAP))" "$(sample 'npme_connections_refused_total{listener="registry"}')" \
  "registry connections refused at the cap"

step "a fresh npm install from 127.0.0.1 while the flood holds its $CAP connections"
install_fresh
FLOODED_MS=$INSTALL_MS
info "npm install took $FLOODED_MS ms during the flood ($QUIET_MS ms without)"
# Sanity only (the flood's connections would time out after 60 s anyway).
((FLOODED_MS < 60000)) || fail "npm install took $FLOODED_MS ms during the flood"
STATUS="$(flood_status)"
assert_eq "$CAP" "$(jq -r .open <<<"$STATUS")" "flood connections the server kept open, after the install"
assert_eq "$((FLOOD - CAP))" "$(jq -r .closed <<<"$STATUS")" "flood connections the server closed"
scrape
assert_eq "$((FLOOD - CAP))" "$(sample 'npme_connections_refused_total{listener="registry"}')" \
  "registry connections refused (npm's own were not)"
OPEN_NOW="$(sample 'npme_connections_open{listener="registry"}')"
((OPEN_NOW >= CAP)) || fail "npme_connections_open{listener=\"registry\"} is $OPEN_NOW during the flood"
info "npme_connections_open{listener=\"registry\"} = $OPEN_NOW"
stop_flood

step "without a cap (0) the server holds all $FLOOD; descriptors suffice since it raised its limit"
stop_instance main
expect_exit 0 run_npme settings set --offline registry.max_connections_per_client=0 --root "$T/main"
start_low main
PORT="${REGISTRY_URL##*:}"
flood "$FLOOD"
install_fresh
info "npm install took $INSTALL_MS ms during an uncapped flood"
assert_eq "$FLOOD" "$(jq -r .open <<<"$(flood_status)")" "flood connections open after the install (no cap)"
scrape
assert_eq 0 "$(sample 'npme_connections_refused_total{listener="registry"}')" "refused without a cap"

# With every flood connection still open: they are idle, so stop closes them.
stop_instance main
stop_flood
