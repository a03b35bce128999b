#!/usr/bin/env bash
# Tokens with an expiry and client address ranges (npme token create
# --expires/--cidr): the real npm client sees E401 for an expired token and
# E403 from outside the ranges, each with the registry's reason; token list
# shows the limits; X-Forwarded-For counts only from registry.trusted_proxies;
# bad limits are refused and create nothing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
add_user main alice 'alice password'
OPEN="$(create_token main alice)"

step "publish a scoped package (reads of scoped packages need a token)"
make_package "$T/pkg" @corp/lib 1.0.0
expect_exit 0 in_dir "$T/pkg" npm_as main "$OPEN" -- publish

PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"limits-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
install_with() { # install_with TOKEN — a fresh install of @corp/lib
  rm -rf "$PROJ/node_modules" "$PROJ/package-lock.json" "$T/npm-cache"
  in_dir "$PROJ" npm_as main "$1" -- install @corp/lib
}

step "bad limits are refused (exit 2) and create nothing"
BEFORE="$(run_npme token list --json --root "$T/main" | jq '.tokens | length')"
expect_exit 2 run_npme token create --user alice --expires 0d --root "$T/main"
assert_contains "$LAST_OUTPUT" "expected a whole number and a unit" "--expires 0d"
expect_exit 2 run_npme token create --user alice --expires 1y --root "$T/main"
expect_exit 2 run_npme token create --user alice --expires 2020-01-01T00:00:00Z --root "$T/main"
assert_contains "$LAST_OUTPUT" "is not in the future" "an expiry in the past"
expect_exit 2 run_npme token create --user alice --cidr 10.1.0.0/8 --root "$T/main"
assert_contains "$LAST_OUTPUT" "did you mean 10.0.0.0/8?" "--cidr with host bits"
expect_exit 2 run_npme token create --user alice --cidr 'intranet' --root "$T/main"
assert_contains "$LAST_OUTPUT" "not an IPv4 or IPv6 address" "--cidr intranet"
assert_eq "$BEFORE" "$(run_npme token list --json --root "$T/main" | jq '.tokens | length')" "tokens after refusals"

step "a token limited to loopback installs; one limited to 10.0.0.0/8 gets E403 saying why"
LOOPBACK="$(create_token main alice --cidr 127.0.0.0/8,::1/128)"
expect_exit 0 install_with "$LOOPBACK"
assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/@corp/lib/package.json")" "installed @corp/lib"
ELSEWHERE="$(create_token main alice --cidr 10.0.0.0/8)"
expect_exit 1 install_with "$ELSEWHERE"
assert_contains "$LAST_OUTPUT" "E403" "npm install with a token for 10.0.0.0/8"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE"
expect_json_error 403
assert_eq "token not allowed from 127.0.0.1 (its ranges: 10.0.0.0/8)" "$(jq -r .error <<<"$HTTP_BODY")" \
  "the 403's reason"
assert_not_contains "$HTTP_BODY" "$ELSEWHERE" "the 403's body"

step "X-Forwarded-For counts only when the peer is a trusted proxy"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE" -H "X-Forwarded-For: 10.1.2.3"
assert_eq 403 "$HTTP_STATUS" "X-Forwarded-For from an untrusted peer"
expect_exit 0 run_npme settings set registry.trusted_proxies 127.0.0.1/32 --root "$T/main"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE" -H "X-Forwarded-For: 10.1.2.3"
assert_eq 200 "$HTTP_STATUS" "a client in 10.0.0.0/8 behind the trusted proxy"
# What the client writes left of the address the proxy appended is not believed.
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE" -H "X-Forwarded-For: 10.1.2.3, 8.8.8.8"
expect_json_error 403
assert_contains "$HTTP_BODY" "token not allowed from 8.8.8.8" "a forged X-Forwarded-For entry"
# The same as two fields, as HAProxy's `option forwardfor` sends them.
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE" -H "X-Forwarded-For: 10.1.2.3" \
  -H "X-Forwarded-For: 8.8.8.8"
assert_eq 403 "$HTTP_STATUS" "a forged X-Forwarded-For field before the proxy's"
expect_exit 2 run_npme settings set registry.trusted_proxies 'lb.example.com' --root "$T/main"
expect_exit 0 run_npme settings unset registry.trusted_proxies --root "$T/main"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE" -H "X-Forwarded-For: 10.1.2.3"
assert_eq 403 "$HTTP_STATUS" "X-Forwarded-For after registry.trusted_proxies was unset"

step "an expiring token works until it expires, then npm gets E401 saying when"
SHORT="$(create_token main alice --expires 4s)"
expect_exit 0 install_with "$SHORT"
TOKENS="$(run_npme token list --json --root "$T/main")"
EXPIRES="$(jq -r --arg p "${SHORT:0:9}" '.tokens[] | select(.token_prefix == $p) | .expires' <<<"$TOKENS")"
[[ "$EXPIRES" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]] || fail "token list shows no expiry for the short token: $TOKENS"
sleep 5
expect_exit 1 install_with "$SHORT"
assert_contains "$LAST_OUTPUT" "E401" "npm install with the expired token"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $SHORT"
expect_json_error 401
assert_contains "$(jq -r .error <<<"$HTTP_BODY")" "token expired at $EXPIRES" "the 401's reason"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $SHORT"
assert_eq 401 "$HTTP_STATUS" "whoami with the expired token"
# The unlimited token is untouched by all of this.
expect_exit 0 install_with "$OPEN"

step "token list shows each token's expiry and ranges"
expect_exit 0 run_npme token list --root "$T/main"
assert_contains "$LAST_STDOUT" "EXPIRES" "token list header"
assert_contains "$LAST_STDOUT" "$EXPIRES" "token list: the expiry"
assert_contains "$LAST_STDOUT" "127.0.0.0/8,::1/128" "token list: the ranges"
assert_contains "$LAST_STDOUT" "anywhere" "token list: an unlimited token"
assert_contains "$LAST_STDOUT" "never" "token list: a token without expiry"
TOKENS="$(run_npme token list --json --root "$T/main")"
assert_eq '["10.0.0.0/8"]' "$(jq -c --arg p "${ELSEWHERE:0:9}" '.tokens[] | select(.token_prefix == $p) | .cidr' \
  <<<"$TOKENS")" "token list --json: cidr"

step "the limits survive a restart"
stop_instance main
start_instance main
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $ELSEWHERE"
assert_eq 403 "$HTTP_STATUS" "the ranged token after a restart"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $SHORT"
assert_eq 401 "$HTTP_STATUS" "the expired token after a restart"
http GET "$(pkg_url @corp/lib)" -H "Authorization: Bearer $LOOPBACK"
assert_eq 200 "$HTTP_STATUS" "the loopback token after a restart"

