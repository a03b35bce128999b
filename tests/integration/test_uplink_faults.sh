#!/usr/bin/env bash
# A hostile or failing uplink gets a clear error and nothing unverified is
# stored: corrupt tarballs, malformed, oversized and misnamed packuments,
# tarball URLs on other hosts or with "..", a refused token, invalid and
# private names (never sent), an uplink that hangs (cached names keep their
# latency, misses get 504), the circuit breaker, kill -9 during a fetch,
# network.http_proxy, and a snapshot of an instance holding lazily fetched
# tarballs.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/uplink_lib.sh"

start_uplink up
start_uplink other
for p in good corrupt-pkg malformed-pkg huge-pkg misnamed-pkg th-pkg dd-pkg hang-pkg slow-pkg; do
  uplink_publish up "$p" 1.0.0
done
uplink_publish other th-pkg 1.0.0
start_uplink_instance reg up '"registry.max_body":"1M","uplink.maxage":"300"'
R="${REGISTRY[reg]}"
tarball_status() { curl -sS -o "$T/tgz.body" -w '%{http_code}' --max-time 30 "$R/$1/-/$1-1.0.0.tgz"; }
packument_status() { curl -sS -o "$T/pkg.body" -w '%{http_code}' --max-time 30 -H 'Accept: application/json' "$R/$1"; }

step "a cached name to compare with"
assert_eq 200 "$(packument_status good)" "packument of good"
assert_eq 200 "$(tarball_status good)" "tarball of good"

step "a tarball that does not match dist.integrity: 502, nothing stored"
uplink_fault up '{"mode":"corrupt","match":"corrupt-pkg-1.0.0.tgz"}'
assert_eq 502 "$(tarball_status corrupt-pkg)" "tarball with a flipped byte"
assert_contains "$(cat "$T/tgz.body")" "does not match dist.integrity" "the 502 says why"
assert_file_missing "$T/reg/packages/corrupt-pkg/-/corrupt-pkg-1.0.0.tgz"
new_app "$T/app"
out="$(cd "$T/app" && npm_as reg "" -- install corrupt-pkg 2>&1)" && fail "npm installed a corrupt tarball"
assert_contains "$out" "502" "npm reports the 502"

step "malformed, oversized and misnamed packuments: 502, never stored"
uplink_fault up '{"mode":"malformed","match":"/malformed-pkg"}'
uplink_fault up '{"mode":"huge","bytes":2097152,"match":"/huge-pkg"}'
uplink_fault up '{"mode":"wrong-name","match":"/misnamed-pkg"}'
assert_eq 502 "$(packument_status malformed-pkg)" "malformed packument"
assert_contains "$(cat "$T/pkg.body")" "malformed" "the 502 says why"
assert_eq 502 "$(packument_status huge-pkg)" "packument over registry.max_body"
assert_contains "$(cat "$T/pkg.body")" "registry.max_body" "the 502 says why"
assert_eq 502 "$(packument_status misnamed-pkg)" "packument of another package"
assert_contains "$(cat "$T/pkg.body")" "something-else" "the 502 names the package it got"
assert_eq "" "$(db_query reg "select id from docs where id in ('malformed-pkg','huge-pkg','misnamed-pkg')")" \
  "nothing stored for them"

step "tarball URLs on another host are fetched from the uplink's own origin; '..' is refused"
uplink_fault up "$(jq -nc --arg h "${UPLINK[other]}" '{mode: "tarball-host", host: $h, match: "/th-pkg"}')"
uplink_fault up '{"mode":"dotdot","match":"/dd-pkg"}'
assert_eq 200 "$(packument_status th-pkg)" "packument listing another host"
assert_eq 200 "$(tarball_status th-pkg)" "its tarball"
assert_eq 0 "$(uplink_count other /th-pkg/-/th-pkg-1.0.0.tgz)" "requests to the other host"
assert_eq 1 "$(uplink_count up /th-pkg/-/th-pkg-1.0.0.tgz)" "requests to the uplink's canonical path"
assert_eq 200 "$(packument_status dd-pkg)" "packument with a '..' tarball URL"
assert_eq 502 "$(tarball_status dd-pkg)" "its tarball"
assert_contains "$(cat "$T/tgz.body")" "'..'" "the 502 says why"
uplink_control up POST clear-faults >/dev/null

step "a 404 of the uplink is remembered; add-package fetches the name anyway"
assert_eq 404 "$(packument_status later-pkg)" "a name the uplink lacks"
uplink_publish up later-pkg 1.0.0
assert_eq 404 "$(packument_status later-pkg)" "asked again at once"
assert_eq 1 "$(uplink_count up /later-pkg)" "uplink requests for it (the 404 was remembered)"
expect_exit 0 "$NPME" --root "$T/reg" add-package later-pkg --json
assert_eq 200 "$(packument_status later-pkg)" "after add-package"

step "invalid and private names are never sent to the uplink"
before="$(uplink_control up GET requests | jq '.requests | length')"
for path in '%2e%2e%2fetc%2fpasswd' '_private' '.hidden' 'a%20b' "$(printf 'x%.0s' {1..215})"; do
  code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$R/$path")"
  [[ "$code" == 400 || "$code" == 404 ]] || fail "GET /$path answered $code"
done
run_npme --root "$T/reg" settings set 'uplink.private=@corp,corp-*' >/dev/null
assert_eq 404 "$(packument_status corp-thing)" "a private glob"
assert_eq 404 "$(packument_status @corp%2fthing)" "a private scope"
assert_eq "$before" "$(uplink_control up GET requests | jq '.requests | length')" "requests the uplink got meanwhile"

step "a refused token: 502 saying so; with uplink.token the uplink answers"
start_uplink sec --token sec-token-0123456789
uplink_publish sec tok-pkg 1.0.0
start_uplink_instance tok sec
assert_eq 502 "$(curl -sS -o "$T/tok.body" -w '%{http_code}' "${REGISTRY[tok]}/tok-pkg")" "without uplink.token"
assert_contains "$(cat "$T/tok.body")" "401" "the 502 says the uplink answered 401"
run_npme --root "$T/tok" settings set uplink.token=sec-token-0123456789 >/dev/null
sleep 0.1
assert_eq 200 "$(curl -sS -o /dev/null -w '%{http_code}' "${REGISTRY[tok]}/tok-pkg")" "with uplink.token"
assert_eq 200 "$(curl -sS -o /dev/null -w '%{http_code}' "${REGISTRY[tok]}/tok-pkg/-/tok-pkg-1.0.0.tgz")" "its tarball"
auths="$(uplink_control sec GET requests | jq -r '[.requests[] | select(.status == 200) | .authorization] | unique | join(",")')"
assert_eq "Bearer sec-token-0123456789" "$auths" "what the uplink's successful requests carried"
stop_instance tok

step "kill -9 during a read-through fetch: nothing half-stored"
uplink_fault up '{"mode":"slow","ms":4000,"match":"slow-pkg-1.0.0.tgz"}'
run_npme --root "$T/reg" settings set uplink.private= >/dev/null
assert_eq 200 "$(packument_status slow-pkg)" "packument of slow-pkg"
curl -sS -o /dev/null --max-time 30 "$R/slow-pkg/-/slow-pkg-1.0.0.tgz" &
slow_curl=$!
sleep 1
kill9_instance reg
wait "$slow_curl" || true
assert_file_missing "$T/reg/packages/slow-pkg/-/slow-pkg-1.0.0.tgz"
leftovers="$(find "$T/reg/packages" -type f -name '*.tmp*' | wc -l)"
assert_eq 0 "$leftovers" "temp files left in packages/"
uplink_control up POST clear-faults >/dev/null
start_instance reg
R="${REGISTRY[reg]}"
assert_eq 200 "$(tarball_status slow-pkg)" "the tarball after the restart"
assert_file_exists "$T/reg/packages/slow-pkg/-/slow-pkg-1.0.0.tgz"

step "network.http_proxy: requests to the uplink go through the proxy"
node "$FIXTURES/forward_proxy.js" --url-file "$T/proxy.url" 2>"$T/proxy.log" &
STARTED_PIDS+=($!)
wait_until 10 "the proxy listens" test -s "$T/proxy.url"
proxy="$(cat "$T/proxy.url")"
run_npme --root "$T/reg" settings set "network.http_proxy=$proxy" >/dev/null
uplink_publish up proxied-pkg 1.0.0
assert_eq 200 "$(packument_status proxied-pkg)" "a miss through the proxy"
assert_eq 200 "$(tarball_status proxied-pkg)" "its tarball through the proxy"
assert_eq 2 "$(curl -sS "$proxy/-/proxy/count" | jq -r .count)" "requests the proxy forwarded"
run_npme --root "$T/reg" settings set network.http_proxy= >/dev/null

step "an uplink that hangs: cached names keep their latency, a miss gets 504"
uplink_fault up '{"mode":"hang","match":"/hang-pkg"}'
curl -sS -o "$T/hang.body" -w '%{http_code}' --max-time 60 "$R/hang-pkg" >"$T/hang.code" &
hang_curl=$!
sleep 0.5
start_ns="$(date +%s%N)"
for i in $(seq 1 20); do
  [[ "$(packument_status good)" == 200 ]] || fail "a cached name failed while the uplink hangs"
done
per_ms=$((($(date +%s%N) - start_ns) / 20000000))
((per_ms < 200)) || fail "cached reads took $per_ms ms each while the uplink hangs"
info "ok: cached reads took $per_ms ms each while the uplink hangs"
wait "$hang_curl" || true
assert_eq 504 "$(cat "$T/hang.code")" "the miss on a hanging uplink"
assert_contains "$(cat "$T/hang.body")" "timed out" "the 504 says why"
uplink_control up POST clear-faults >/dev/null
uplink_publish up midbody-pkg 1.0.0
assert_eq 200 "$(packument_status midbody-pkg)" "packument of midbody-pkg"
uplink_fault up '{"mode":"hang-mid-body","match":"midbody-pkg-1.0.0.tgz"}'
start_ns="$(date +%s%N)"
assert_eq 504 "$(tarball_status midbody-pkg)" "a tarball whose body stalls half-way"
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
((elapsed_ms < 15000)) || fail "the stalled tarball took $elapsed_ms ms to fail"
info "ok: the stalled tarball failed after $elapsed_ms ms"
assert_file_missing "$T/reg/packages/midbody-pkg/-/midbody-pkg-1.0.0.tgz"
uplink_control up POST clear-faults >/dev/null

step "repeated failures mark the uplink down: misses fail fast, hits are served"
uplink_fault up '{"mode":"status","status":500}'
for p in down-1 down-2 down-3; do
  assert_eq 502 "$(packument_status "$p")" "miss of $p on a failing uplink"
done
assert_eq down "$(uplink_status reg | jq -r .state)" "uplink state after 3 failures"
start_ns="$(date +%s%N)"
assert_eq 502 "$(packument_status down-4)" "a miss while the uplink is down"
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
assert_contains "$(cat "$T/pkg.body")" "is down" "the 502 says the uplink is down"
((elapsed_ms < 500)) || fail "the miss took $elapsed_ms ms while the uplink is marked down"
assert_eq 200 "$(packument_status good)" "a hit while the uplink is down"
uplink_control up POST clear-faults >/dev/null

step "a snapshot of an instance holding lazily fetched tarballs verifies and restores"
expect_exit 0 "$NPME" --root "$T/reg" snapshot create -o "$T/snap.tar.zst" --json
expect_exit 0 "$NPME" snapshot verify "$T/snap.tar.zst" --json
expect_exit 0 "$NPME" --root "$T/restored" restore "$T/snap.tar.zst" --json
assert_file_exists "$T/restored/packages/good/-/good-1.0.0.tgz"
assert_eq "$(db_query reg "select count(*) from docs")" "$(db_query restored "select count(*) from docs")" \
  "documents restored"

stop_instance reg
