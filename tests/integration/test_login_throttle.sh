#!/usr/bin/env bash
# Login throttling: after five failed logins in a row for a user, or from a
# client address, further attempts get 429 with Retry-After (seen by the
# real npm client as E429), blocks doubling from 1 s; a success clears
# them. A flood of 500 bad logins in parallel, each for another user from
# another address (so that throttling lets every one through to the
# password hash), is answered 401 or 503 "busy" while wrk reads packuments:
# every read succeeds and the read latencies with and without the flood are
# printed (the 2x target is judged there, not asserted: the machine is shared).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

have_tool wrk "the login flood test" || skip_test "wrk (Debian package wrk) is not installed; scripts/deps installs it"

start_instance main
add_user main alice 'correct horse battery'
add_user main bob 'bob password 123'

login() { # login USER PASSWORD [curl args...] — couch-style login; HTTP_STATUS, HTTP_BODY, RETRY_AFTER
  local user="$1" password="$2"
  shift 2
  http PUT "$REGISTRY_URL/-/user/org.couchdb.user:$user" -H 'Content-Type: application/json' \
    -D "$T/login.headers" --data "$(jq -cn --arg n "$user" --arg p "$password" '{name: $n, password: $p}')" "$@"
  RETRY_AFTER="$(sed -n 's/^[Rr]etry-[Aa]fter: *\([0-9]*\).*/\1/p' "$T/login.headers")"
}

step "five wrong passwords for alice are answered 401; the sixth attempt, even right, gets 429"
for i in 1 2 3 4 5; do
  login alice "wrong $i"
  assert_eq 401 "$HTTP_STATUS" "wrong password $i"
done
login alice 'correct horse battery'
assert_eq 429 "$HTTP_STATUS" "the right password while throttled"
assert_eq 1 "$RETRY_AFTER" "Retry-After after five failures"
assert_eq "too many failed logins for user 'alice'; retry in 1 s" "$(jq -r .error <<<"$HTTP_BODY")" "the 429's reason"
assert_not_contains "$HTTP_BODY" "correct horse" "the 429's body"

step "the block doubles with each failure after the fifth: 1 s, 2 s, 4 s, 8 s"
# After each block runs out one attempt goes through; failing it doubles
# the block. Retry-After is rounded up from what is left of it.
for block in 2 4 8; do
  sleep "$RETRY_AFTER"
  sleep 0.2
  login alice "wrong after the block"
  assert_eq 401 "$HTTP_STATUS" "one attempt after the block ran out"
  login alice 'x'
  assert_eq 429 "$HTTP_STATUS" "blocked again"
  [[ "$RETRY_AFTER" -ge $((block - 1)) && "$RETRY_AFTER" -le "$block" ]] ||
    fail "Retry-After after the next failure: '$RETRY_AFTER', expected $block (less what passed since)"
  info "ok: Retry-After $RETRY_AFTER (a block of $block s)"
done

step "npm login sees E429 with the reason"
npm_login() { # npm_login USER PASSWORD — npm login --auth-type=legacy, answering its prompts
  printf 'registry=%s/\n' "$REGISTRY_URL" >"$T/npmrc-login"
  node "$FIXTURES/npm_login.js" "$1" "$2" "$1@example.com" -- \
    "${NPM_CMD[@]}" --userconfig "$T/npmrc-login" --globalconfig "$T/npm-globalrc" \
    --cache "$T/npm-cache" --registry "$REGISTRY_URL/" --no-update-notifier \
    --fetch-retries=0 login --auth-type=legacy
}
# Within the 8 s block, even with the right password.
expect_exit 1 npm_login alice 'correct horse battery'
assert_contains "$LAST_OUTPUT" "E429" "npm login while throttled"
assert_contains "$LAST_OUTPUT" "too many failed logins for user 'alice'" "npm's message"
login alice 'x'
assert_eq 429 "$HTTP_STATUS" "still blocked"
sleep "$RETRY_AFTER"
sleep 0.2

step "a success clears the count: alice logs in, and five failures are free again"
login alice 'correct horse battery'
assert_eq 201 "$HTTP_STATUS" "the right password after the block"
for i in 1 2 3 4 5; do
  login alice "wrong $i"
  assert_eq 401 "$HTTP_STATUS" "wrong password $i after a success"
done

step "per client address: failures for several users from one address block that address only"
expect_exit 0 run_npme settings set registry.trusted_proxies=127.0.0.1/32 --root "$T/main"
for user in carol dave erin frank grace; do
  login "$user" 'guess' -H 'X-Forwarded-For: 10.1.1.1'
  assert_eq 401 "$HTTP_STATUS" "$user from 10.1.1.1"
done
login bob 'bob password 123' -H 'X-Forwarded-For: 10.1.1.1'
assert_eq 429 "$HTTP_STATUS" "bob from the throttled address"
assert_contains "$HTTP_BODY" "too many failed logins from 10.1.1.1" "the 429's reason"
login bob 'bob password 123' -H 'X-Forwarded-For: 10.2.2.2'
assert_eq 201 "$HTTP_STATUS" "bob from another address"

step "metrics count the refusals"
ADMIN_TOKEN="$("$NPME" --root "$T/main" settings get admin.token --reveal)"
THROTTLED="$(curl -sS -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN_URL/metrics" | sed -n 's/^npme_logins_throttled_total //p')"
[[ "$THROTTLED" -ge 4 ]] || fail "npme_logins_throttled_total is '$THROTTLED', expected at least 4"
info "ok: npme_logins_throttled_total $THROTTLED"

step "a flood of 500 bad logins (distinct users and addresses) while wrk reads packuments"
TOKEN="$(create_token main bob)"
make_package "$T/pkg" flood-read-lib 1.0.0
expect_exit 0 in_dir "$T/pkg" npm_as main "$TOKEN" -- publish
PACKUMENT="$REGISTRY_URL/flood-read-lib"
read_p99() { # read_p99 LABEL — wrk for 6 s; prints p99 in ms; fails on any non-2xx or socket error
  wrk -t1 -c8 -d6s --latency -H 'Accept: application/vnd.npm.install-v1+json' "$PACKUMENT" >"$T/wrk-$1.out" 2>&1
  if grep -q 'Non-2xx\|Socket errors' "$T/wrk-$1.out"; then
    cat "$T/wrk-$1.out" >&"$DIAG_FD"
    fail "packument reads failed during '$1'"
  fi
  awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }' "$T/wrk-$1.out"
}
cat >"$T/flood.js" <<'EOF'
const http = require('http');
const [base, count] = [process.argv[2], Number(process.argv[3])];
const statuses = {};
let done = 0;
const started = Date.now();
for (let i = 0; i < count; i++) {
  const body = JSON.stringify({ name: `flood${i}`, password: 'not the password' });
  const req = http.request(`${base}/-/user/org.couchdb.user:flood${i}`, {
    method: 'PUT', agent: false,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body),
               'x-forwarded-for': `10.9.${i >> 8}.${i & 255}` },
  }, (res) => {
    res.resume();
    res.on('end', () => { statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1; finish(); });
  });
  req.on('error', (e) => { statuses[e.code] = (statuses[e.code] || 0) + 1; finish(); });
  req.end(body);
}
function finish() {
  if (++done === count) {
    console.log(JSON.stringify({ statuses, ms: Date.now() - started }));
  }
}
EOF
BASE_P99="$(read_p99 baseline)"
( sleep 1; for round in 1 2 3; do node "$T/flood.js" "$REGISTRY_URL" 500 >>"$T/flood.out"; done ) &
FLOOD_PID=$!
STARTED_PIDS+=("$FLOOD_PID")
FLOOD_P99="$(read_p99 flood)"
wait "$FLOOD_PID"
info "flood results: $(tr '\n' ' ' <"$T/flood.out")"
for status in $(jq -rs '[.[].statuses | keys[]] | unique[]' "$T/flood.out"); do
  [[ "$status" == 401 || "$status" == 503 ]] || fail "a flood login was answered '$status' (expected 401 or 503)"
done
BUSY="$(jq -s '[.[].statuses["503"] // 0] | add' "$T/flood.out")"
[[ "$BUSY" -gt 0 ]] || fail "no flood login was answered 503: the password pool did not bound the hashing"
info "read p99 without the flood ${BASE_P99} ms, during it ${FLOOD_P99} ms (ratio $(awk -v a="$FLOOD_P99" -v b="$BASE_P99" 'BEGIN { printf "%.2f", a / b }'); target <= 2)"

step "after the flood, a right password still logs in"
login bob 'bob password 123' -H 'X-Forwarded-For: 10.3.3.3'
assert_eq 201 "$HTTP_STATUS" "bob after the flood"

info "PASS"
