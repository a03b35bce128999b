#!/usr/bin/env bash
# The admin console's serving and sign-in, over real HTTP (its pages are
# driven in chromium by test_console_browser.sh): GET / and its files with
# the security headers (CSP default-src 'self', no inline script, DENY
# framing, no referrer); sign-in refused with a wrong token and recorded;
# the session cookie (HttpOnly, SameSite=Strict) opens the admin API; a
# state-changing request without the X-NPME-CSRF header, or from another
# origin, is refused and changes nothing; sign-out ends the session on the
# server; npme console prints the URL.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
ADMIN_TOKEN="$(jq -r '."admin.token"' "$T/main/settings.json")"
HOSTPORT="${ADMIN_URL#http://}"
JAR="$T/cookies"

step "GET / serves the console with its security headers, and its files"
curl -sS -D "$T/index.headers" -o "$T/index.html" "$ADMIN_URL/"
HEADERS="$(tr -d '\r' <"$T/index.headers")"
assert_contains "$HEADERS" "HTTP/1.1 200" "GET /"
assert_contains "$HEADERS" "Content-Type: text/html" "GET /"
assert_contains "$HEADERS" "Content-Security-Policy: default-src 'self'; script-src 'self'" "the CSP"
assert_not_contains "$HEADERS" "unsafe-inline" "the CSP"
assert_contains "$HEADERS" "X-Frame-Options: DENY" "framing"
assert_contains "$HEADERS" "Referrer-Policy: no-referrer" "referrer"
assert_contains "$(cat "$T/index.html")" '<script type="module" src="/console/app.js"></script>' "the page's one script"
if grep -q '<script>' "$T/index.html" || grep -qi ' on[a-z]*=' "$T/index.html"; then
  fail "the page has inline script"
fi
for file in app.js style.css; do
  http GET "$ADMIN_URL/console/$file"
  assert_eq 200 "$HTTP_STATUS" "GET /console/$file"
done
http GET "$ADMIN_URL/console/nope.js"
assert_eq 404 "$HTTP_STATUS" "an unknown console file"
http GET "$ADMIN_URL/console/..%2fsettings.json"
assert_eq 404 "$HTTP_STATUS" "a path out of the console"

step "sign-in: a wrong token is refused (and recorded), the right one gives an HttpOnly SameSite=Strict cookie"
http POST "$ADMIN_URL/api/v1/session" -H 'Content-Type: application/json' --data '{"token":"not-the-admin-token"}'
expect_json_error 401
http GET "$ADMIN_URL/api/v1/status" -b "$JAR"
assert_eq 401 "$HTTP_STATUS" "the admin API without a session"
curl -sS -c "$JAR" -D "$T/signin.headers" -o "$T/signin.json" -H 'Content-Type: application/json' \
  --data "$(jq -cn --arg t "$ADMIN_TOKEN" '{token: $t}')" "$ADMIN_URL/api/v1/session"
SIGNIN_HEADERS="$(tr -d '\r' <"$T/signin.headers")"
assert_contains "$SIGNIN_HEADERS" "HTTP/1.1 201" "sign-in"
assert_contains "$SIGNIN_HEADERS" "Set-Cookie: npme_console=" "the cookie"
assert_contains "$SIGNIN_HEADERS" "; HttpOnly; SameSite=Strict" "the cookie's attributes"
assert_not_contains "$SIGNIN_HEADERS" "Secure" "no Secure flag over plain http"
CSRF="$(jq -r .csrf "$T/signin.json")"
[[ ${#CSRF} -ge 40 ]] || fail "no CSRF token in the sign-in answer: $(cat "$T/signin.json")"
EVENTS="$("$NPME" --root "$T/main" audit --json)"
assert_eq 1 "$(jq '[.events[] | select(.action == "console.signin" and .result == "refused")] | length' <<<"$EVENTS")" "refused sign-ins"
assert_eq 1 "$(jq '[.events[] | select(.action == "console.signin" and .result == "ok")] | length' <<<"$EVENTS")" "sign-ins"

step "the session opens the admin API; reads need nothing more"
http GET "$ADMIN_URL/api/v1/status" -b "$JAR"
assert_eq 200 "$HTTP_STATUS" "status with the session"
http GET "$ADMIN_URL/api/v1/session" -b "$JAR"
assert_eq "$CSRF" "$(jq -r .csrf <<<"$HTTP_BODY")" "the session's CSRF token after a reload"
http GET "$ADMIN_URL/api/v1/settings" -b "$JAR"
assert_eq read-only "$(jq -r '.settings[] | select(.key == "publication") | .allowed[1]' <<<"$HTTP_BODY")" "settings carry their allowed values"
assert_eq restart_instance "$(jq -r '.settings[] | select(.key == "registry.listen") | .effect' <<<"$HTTP_BODY")" "settings say which need a restart"

step "cross-site requests are refused and change nothing"
BEFORE="$(sha256sum <"$T/main/settings.json")"
PATCH='{"publication":"read-only"}'
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' --data "$PATCH"
expect_json_error 403
assert_contains "$HTTP_BODY" "X-NPME-CSRF" "without the header"
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' -H "X-NPME-CSRF: wrong" --data "$PATCH"
expect_json_error 403
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' -H "X-NPME-CSRF: $CSRF" \
  -H 'Origin: https://evil.example' --data "$PATCH"
expect_json_error 403
assert_contains "$HTTP_BODY" "another site" "from another origin"
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' -H "X-NPME-CSRF: $CSRF" \
  -H 'Sec-Fetch-Site: cross-site' --data "$PATCH"
expect_json_error 403
# A form post as a cross-site page would send it: no header, a form body.
http POST "$ADMIN_URL/api/v1/follower/stop" -b "$JAR" -H 'Content-Type: application/x-www-form-urlencoded' \
  -H 'Origin: https://evil.example' --data 'x=1'
expect_json_error 403
assert_eq "$BEFORE" "$(sha256sum <"$T/main/settings.json")" "settings.json after the refused requests"
assert_eq all "$("$NPME" --root "$T/main" settings get publication)" "publication after the refused requests"
assert_eq 5 "$("$NPME" --root "$T/main" audit --json | jq '[.events[] | select(.action == "console.csrf")] | length')" "refusals in the audit log"

step "with the header and its own origin, the session changes settings like the CLI, recorded as the console"
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' -H "X-NPME-CSRF: $CSRF" \
  -H "Origin: http://$HOSTPORT" --data "$PATCH"
assert_eq 200 "$HTTP_STATUS" "PATCH from the console"
assert_eq read-only "$("$NPME" --root "$T/main" settings get publication)" "publication"
http PATCH "$ADMIN_URL/api/v1/settings" -b "$JAR" -H 'Content-Type: application/json' -H "X-NPME-CSRF: $CSRF" \
  --data '{"publication":"sometimes"}'
expect_json_error 400
assert_contains "$HTTP_BODY" "allowed values are all, read-only, scoped" "the same validation as the CLI"
"$NPME" --root "$T/main" audit --json | jq -e '.events[] | select(.action == "settings.change" and .actor == "console (admin token)")' >/dev/null ||
  fail "the console's settings change is not in the audit log as the console's"

step "sign-out ends the session on the server"
http DELETE "$ADMIN_URL/api/v1/session" -b "$JAR"
expect_json_error 403
http DELETE "$ADMIN_URL/api/v1/session" -b "$JAR" -H "X-NPME-CSRF: $CSRF"
assert_eq 200 "$HTTP_STATUS" "sign-out"
http GET "$ADMIN_URL/api/v1/status" -b "$JAR"
assert_eq 401 "$HTTP_STATUS" "the old cookie after sign-out"

step "admin.console_idle is at least a minute (expiry itself: tests/unit/test_console.cpp)"
expect_exit 2 run_npme settings set admin.console_idle=10 --root "$T/main"
assert_contains "$LAST_OUTPUT" "from 60" "the shortest idle time"

step "npme console prints the console's URL"
expect_exit 0 run_npme console --root "$T/main"
assert_eq "$ADMIN_URL/" "$LAST_STDOUT" "npme console"
expect_exit 1 env PATH=/nonexistent BROWSER= "$NPME" console --open --root "$T/main"
assert_contains "$LAST_OUTPUT" "no browser found" "npme console --open without a browser"

info "PASS"
